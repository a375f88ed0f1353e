"""What a stage is, and where the stages are declared.

Two kinds of stage:

* **run stages** run once per run of a study that needs them and read earlier stages of the same run (data,
  fine-tuning, TracIn, ...). Each is declared as ``STAGE`` in its module of :mod:`helpers.compute`.
* **study stages** run once per study and read stages of the runs of a role (``main``, ``parallel``, ...; see
  :data:`helpers.study.ROLES`) or other study stages: the expensive ones (retrainings) in :mod:`helpers.compute`, the
  chapters (cheap: tables, claims, prose) in :mod:`helpers.chapters`.

The machinery finds the declarations by the packages' names (:data:`STAGE_PACKAGES`), never by importing a stage's
module by name, so it sits below them.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .. import config, paths

#: The packages whose modules declare a ``STAGE``: compute stages first, then chapters.
STAGE_PACKAGES = ("helpers.compute", "helpers.chapters")
#: The role under which a study stage reads another study-scope stage.
STUDY_ROLE = "study"


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str  # file name in notebooks/
    title: str
    params: tuple[str, ...] = ()  # its own parameters (helpers.config names)
    #: (stage, role): run stages of the runs of a role ("same" for run stages), or (stage, "study"): another
    #: study-scope stage, run before this one
    reads: tuple[tuple[str, str], ...] = ()
    #: helpers modules (paths under src/helpers, no suffix) whose code it runs besides those its notebook imports:
    #: its fingerprint covers them and everything they import, at any depth, inside functions too
    modules: tuple[str, ...] = ()
    scope: str = "study"  # "run" or "study"
    reads_chapters: bool = False  # the scoreboard: reads every other chapter's claims
    always_run: bool = False  # cheap summaries that must see the latest timings (not fingerprinted)
    #: run stages only: the runs that have this stage, by their parameters (None: every run). A stage reading it
    #: reads it only in those runs (fine-tuning reads pre-training only when the model is pre-trained here).
    when: Callable[[dict[str, Any]], bool] | None = None
    #: files of the repository (relative to its root) it reads besides the code: a profile whose design a page states
    files: tuple[str, ...] = ()

    def applies(self, run: Any) -> bool:
        """Does ``run`` (a :class:`helpers.study.Run`) have this stage?"""
        return self.when is None or self.when(run.params)

    @property
    def local_inputs(self) -> tuple[str, ...]:
        """Its parameters that name a local folder (:data:`helpers.config.PATH_PARAMETERS`): what is there is part of
        its fingerprint (:func:`helpers.flow.fingerprint.local_inputs`)."""
        return tuple(p for p in self.params if p in config.PATH_PARAMETERS)

    @property
    def path(self) -> Path:
        return paths.NOTEBOOKS / self.notebook

    @property
    def module(self) -> str | None:
        """The module that declares it (``compute/finetune``; None for a stage declared elsewhere, e.g. in a test)."""
        dotted = _index().get(self.name)
        return dotted.replace(".", "/").removeprefix("helpers/") if dotted else None


@cache
def _index() -> dict[str, str]:
    """Stage name -> the dotted name of the module declaring it, read from the source (``STAGE = Stage("name", ...``)
    without importing anything: a notebook imports only its own stage's module and its inputs'."""
    found: dict[str, str] = {}
    root = Path(__file__).resolve().parents[2]  # src/
    for package in STAGE_PACKAGES:
        for path in sorted((root / package.replace(".", "/")).glob("*.py")):
            if path.name.startswith("_"):
                continue
            for node in ast.parse(path.read_text()).body:
                named = any(isinstance(t, ast.Name) and t.id == "STAGE" for t in getattr(node, "targets", ()))
                if isinstance(node, ast.Assign) and named and isinstance(node.value, ast.Call):
                    first = node.value.args[0] if node.value.args else None
                    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                        raise RuntimeError(f"{path}: STAGE must be declared as Stage(\"<name>\", ...) with its name "
                                           "written out")
                    if first.value in found:
                        raise RuntimeError(f"two modules declare stage {first.value!r}: {found[first.value]} and "
                                           f"{package}.{path.stem}")
                    found[first.value] = f"{package}.{path.stem}"
    return found


def _load(name: str) -> Stage:
    stage = importlib.import_module(_index()[name]).STAGE
    if not isinstance(stage, Stage) or stage.name != name:
        raise RuntimeError(f"module {_index()[name]} declares {stage!r}, not stage {name!r}")
    return stage


@cache
def _declared() -> tuple[Stage, ...]:
    return tuple(sorted((_load(name) for name in _index()), key=lambda s: s.notebook))


def run_stages() -> tuple[Stage, ...]:
    """Every run stage, in notebook order (inputs before readers)."""
    return tuple(s for s in _declared() if s.scope == "run")


def study_stages() -> tuple[Stage, ...]:
    """Every study stage (retrainings and chapters), in notebook order."""
    return tuple(s for s in _declared() if s.scope == "study")


def all_stages() -> dict[str, Stage]:
    return {s.name: s for s in (*run_stages(), *study_stages())}


def get(name: str) -> Stage:
    """One stage's declaration (importing its module only)."""
    if name not in _index():
        raise ValueError(f"unknown stage {name!r}; allowed: {list(_index())}")
    return _load(name)
