"""Each stage notebook's ``parameters`` cell, generated from the parameter table (:mod:`helpers.config`), so that
``papermill --help-notebook`` lists every parameter with its type, meaning and allowed values; its defaults are the
smoke study's (nbval runs the notebooks as stored)."""

from __future__ import annotations

from typing import Any

from .. import config
from .stage import Stage, all_stages


def parameters_cell(stage: Stage, values: dict[str, Any]) -> str:
    """The source of a stage notebook's ``parameters`` cell: every parameter with its type and meaning, so that
    ``papermill --help-notebook`` lists them (``values``: the defaults it shows, those of the smoke study)."""
    lines = ["# Parameters (defaults: the smoke study; the runner injects the study's values below)",
             f"study: str = {values['study']!r}  # the study: its manifest is artifacts/<study>/study.json"]
    if stage.scope == "run":
        lines.append(f"run: str = {values['run']!r}  # which run of the study (<variant>-s<seed>)")
    for name in stage.params:
        p = config.PARAMETERS[name]
        bounds = [f"{word} {v:g}" for word, v in (("min", p.minimum), ("max", p.maximum)) if v is not None]
        allowed = p.allowed()
        extra = (f"; {'items from' if p.type is list else 'one of'} {list(allowed)}" if allowed is not None else
                 f"; {', '.join(bounds)}" if bounds else "")  # ('>=' would stop papermill's parameter parser)
        lines.append(f"{name}: {p.type.__name__} = {values[name]!r}  # {p.help}{extra}")
    return "\n".join(lines)


def sync_parameter_cells(check_only: bool = False) -> list[str]:
    """Rewrite every stage notebook's ``parameters`` cell from :func:`parameters_cell` with the smoke study's main
    run; returns the notebooks that differed (``check_only``: change nothing)."""
    import nbformat

    from ..study import resolve

    smoke = resolve("smoke")
    first = smoke.first
    values = {**first.params, **smoke.params, "study": smoke.name, "run": first.name}
    differ = []
    for stage in all_stages().values():
        nb = nbformat.read(stage.path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        wanted = parameters_cell(stage, values)
        if cell.source != wanted:
            differ.append(stage.notebook)
            if not check_only:
                cell.source = wanted
                nbformat.write(nb, stage.path)
    return differ
