"""A study's stage instances: what each reads, its identity, the order they run in.

A stage instance is stored in ``artifacts/<study>/stages/<stage>-<identity>/``. Its **identity** hashes the stage's
name, every one of its own parameters (by value, defaults included: a changed declared default makes a new folder)
and its inputs' identities, so identical stages of several runs (a variant that changes only TracIn's parameters
shares data and fine-tuning with the main run) are one folder, computed once. What makes a committed instance stale
besides its identity is its fingerprint (:mod:`helpers.flow.fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..study import Run, Study
from .stage import STUDY_ROLE, Stage, get, run_stages, study_stages


def digest(*parts: Any) -> str:
    """SHA-256 over JSON-encoded parts (bytes as they are), each followed by a separator."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class Input:
    """One input of a stage instance: which stage of which run (None for study stages)."""

    role: str
    stage: str
    run: str | None
    identity: str


@dataclass
class Instance:
    """One stage of one run (or of the study), as planned."""

    stage: Stage
    run: Run | None
    params: dict[str, Any]  # its own parameters
    inputs: list[Input] = field(default_factory=list)
    identity: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.stage.name, self.identity

    @property
    def label(self) -> str:
        return f"{self.stage.name}[{self.run.name}]" if self.run else self.stage.name


def run_instance(stage: Stage, run: Run, study: Study) -> Instance:
    inputs = [Input("same", up, run.name, run_instance(get(up), run, study).identity) for up, _ in stage.reads
              if get(up).applies(run)]
    params = {k: run.params[k] for k in stage.params}
    identity = digest(stage.name, params, [i.identity for i in inputs])[:16]
    return Instance(stage, run, params, inputs, identity)


def _reads_every_chapter(stage: Stage) -> list[Stage]:
    return [c for c in study_stages() if c.name != stage.name and c.module and c.module.startswith("chapters/")
            and not c.reads_chapters and not c.always_run]


def study_inputs(stage: Stage, study: Study) -> list[Input]:
    inputs = []
    for up, role in stage.reads:
        if role == STUDY_ROLE:  # another study stage, which computes what this one reads
            inputs.append(Input(role, up, None, study_instance(get(up), study).identity))
        else:
            inputs += [Input(role, up, run.name, run_instance(get(up), run, study).identity)
                       for run in study.role(role) if get(up).applies(run)]
    if stage.reads_chapters:
        inputs += [Input("chapter", c.name, None, study_instance(c, study).identity)
                   for c in _reads_every_chapter(stage)]
    return inputs


def study_instance(stage: Stage, study: Study) -> Instance:
    inputs = study_inputs(stage, study)
    params = {k: study.params[k] for k in stage.params}
    identity = digest(stage.name, params, [(i.role, i.stage, i.run, i.identity) for i in inputs])[:16]
    return Instance(stage, None, params, inputs, identity)


def instance(stage: Stage, study: Study, run: Run | None) -> Instance:
    return run_instance(stage, run, study) if stage.scope == "run" else study_instance(stage, study)


def plan(study: Study) -> list[Instance]:
    """Every stage instance the study needs, inputs first, each identity once (shared stages are computed once).

    Run stages are planned only where a study stage reads them (through its inputs): each run's chain, run by run,
    then the study stages in notebook order (those reading another study stage after it), those reading every
    chapter last."""
    ordered: dict[tuple[str, str], Instance] = {}

    def add_run_stage(name: str, run: Run) -> None:
        inst = run_instance(get(name), run, study)
        for i in inst.inputs:
            add_run_stage(i.stage, run)
        ordered.setdefault(inst.key, inst)

    def add_study_stage(stage: Stage) -> None:
        for up, role in stage.reads:
            if role == STUDY_ROLE:
                add_study_stage(get(up))
        inst = study_instance(stage, study)
        ordered.setdefault(inst.key, inst)

    studies = sorted(study_stages(), key=lambda c: (c.reads_chapters or c.always_run, c.always_run, c.notebook))
    needed = {(up, run.name) for c in studies for up, role in c.reads if role != STUDY_ROLE
              for run in study.role(role) if get(up).applies(run)}
    for run in study.runs.values():
        for stage in run_stages():
            if (stage.name, run.name) in needed:
                add_run_stage(stage.name, run)
    for c in studies:
        add_study_stage(c)
    return list(ordered.values())
