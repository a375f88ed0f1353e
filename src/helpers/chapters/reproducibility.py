"""The reproducibility page: every run's parameters, every stage's timing and environment, the re-run command."""

from __future__ import annotations

import shlex

import pandas as pd

from .. import artifacts, config
from ..flow.graph import plan, run_instance
from ..flow.stage import Stage
from ..flow.store import folder as stage_folder
from ..flow.store import read_runlog
from ..study import Study, load_profile

STAGE = Stage("reproducibility", "91_reproducibility.ipynb", "Reproducibility", always_run=True,
              modules=("chapters/reproducibility",))


def parameter_table(study: Study) -> pd.DataFrame:
    """Rows: parameters; columns: the study's analyses and each run (only where a run differs from the first)."""
    rows = []
    first = study.first.params
    for key, p in config.PARAMETERS.items():
        row = {"parameter": key, "scope": p.scope, "meaning": p.help}
        if p.scope == "study":
            row["value"] = repr(study.params[key])
        else:
            row["value"] = repr(first[key])
            for run in study.runs.values():
                if run.params[key] != first[key]:
                    row[f"in {run.name}"] = repr(run.params[key])
        rows.append(row)
    return pd.DataFrame(rows).set_index("parameter").fillna("")


def timing_table(study: Study) -> pd.DataFrame:
    """Seconds per stage instance as last computed ('reused': skipped because up to date)."""
    log = read_runlog(study.name).get("stages", {})
    rows = []
    for inst in plan(study):
        if inst.stage.always_run:  # this page itself: still running while the table is made
            continue
        entry = log.get(f"{inst.stage.name}-{inst.identity}", {})
        users = [r.name for r in study.runs.values()
                 if inst.run is not None and run_instance(inst.stage, r, study).identity == inst.identity]
        rows.append({"stage": inst.stage.name, "runs": ", ".join(users) or "(study)",
                     "status in the last run": entry.get("status", "not run by the runner (e.g. nbval)"),
                     "seconds when computed": entry.get("seconds"), "finished (UTC)": entry.get("finished")})
    return pd.DataFrame(rows)


def environment_table(study: Study) -> pd.DataFrame:
    """Versions and machine of the first run's stages (the others were computed by the same runner)."""
    rows = {}
    for inst in plan(study):
        if inst.run is not None and inst.run.name != study.first.name:
            continue
        folder = stage_folder(study.name, inst)
        if (folder / "env.json").exists():
            env = artifacts.read_json(folder / "env.json")
            flat = {"python": env.get("python"), "platform": env.get("platform"), "cpus": env.get("cpu_count"),
                    "torch threads": env.get("torch_threads"), "cuda device": env.get("cuda") or "none",
                    "git commit": env.get("git"), "time (UTC)": env.get("time")}
            flat.update({f"package {k}": v for k, v in env.get("packages", {}).items()})
            rows[inst.label] = flat
    return pd.DataFrame(rows)


def _yaml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(value) + "]"
    return str(value)


def rerun_command(study: Study) -> str:
    """A command line that recomputes this study from scratch with the same parameters."""
    spec = load_profile(study.profile)
    base = {**config.defaults(), **spec["parameters"]}
    first = {**study.first.params, **study.params}
    overrides = [f"-p {shlex.quote(f'{k}={_yaml(v)}')}" for k, v in first.items()
                 if k != "seed" and base.get(k) != v]
    # The main run's seeds: --seeds selects those, and a variant keeps the seeds it declares that are among them
    # (or its first); the union of every run's seeds would add main runs the study did not have.
    seeds = [r.seed for r in study.role("main")]
    return " ".join(["python -m helpers.pipeline run", f"--profile {study.profile}", *overrides,
                     f"--study {study.name}", f"--seeds {','.join(map(str, seeds))}", "--force"])
