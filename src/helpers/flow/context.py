"""The notebook side of a stage: validate the injected parameters, find the inputs, write, commit.

In a notebook::

    ctx = begin("language_shares", globals())   # validate + print parameters, open the output folder
    runs = ctx.runs("main")                      # the inputs, per run
    ...; ctx.commit()
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import artifacts, config
from ..study import Run, Study, load
from .fingerprint import fingerprint, loaded_modules
from .graph import run_instance, study_instance
from .stage import Stage, get
from .store import RECORD, MissingStageError, damage, folder, lock, manifest, read_record


@dataclass
class RunInputs:
    """The committed outputs a stage reads from one run: ``folders[stage]``."""

    run: Run
    folders: dict[str, Path]

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def params(self) -> dict[str, Any]:
        return self.run.params

    def __getitem__(self, stage: str) -> Path:
        return self.folders[stage]


_HELD: dict[Path, Any] = {}  # the stage locks this process holds, by lock file
_BEGUN: set[str] = set()  # the stages begun in this process


class StageContext:
    """A stage instance being computed in a notebook: validated parameters, its inputs, its output folder.

    ``ctx.path`` is where to write; :meth:`commit` records provenance (``stage.json``, ``env.json``) and publishes
    the folder atomically, so an interrupted stage never looks complete.
    """

    def __init__(self, stage: Stage, cfg: dict[str, Any], study: Study, run: Run | None):
        self.stage, self.cfg, self.study, self.run = stage, cfg, study, run
        params = {k: cfg[k] for k in stage.params}
        if run is not None:
            inst = run_instance(stage, Run(run.name, run.variant, run.seed, {**run.params, **params}), study)
        else:
            inst = study_instance(stage, Study(study.name, study.profile, {**study.params, **params}, study.runs))
        self.instance = inst
        self.inputs: dict[tuple[str, str | None], Path] = {}
        self.read: list[dict[str, Any]] = []
        upstream = []
        for i in inst.inputs:
            path = folder(study.name, i)
            record = read_record(path)
            where = f" of run {i.run!r}" if i.run else ""
            rerun = f"run the study first: python -m helpers.pipeline run --profile {study.profile}"
            if record is None:
                raise MissingStageError(f"stage {i.stage!r}{where} has no complete outputs in {path}; {rerun}")
            broken = damage(path, record)
            if broken:
                raise MissingStageError(f"stage {i.stage!r}{where} is damaged: {broken} (in {path}); {rerun} "
                                        "(it recomputes damaged stages)")
            self.inputs[(i.stage, i.run)] = path
            self.read.append({**i.__dict__, "commit": record.get("commit")})
            upstream.append(record["fingerprint"])
        self.fingerprint = fingerprint(inst, upstream)
        self.final = folder(study.name, inst)
        lock_path = self.final.parent / f".{self.final.name}.lock"
        if lock_path in _HELD:  # the same stage begun again in this process (a notebook cell run twice)
            _HELD.pop(lock_path).__exit__(None, None, None)
        self._lock = _HELD[lock_path] = lock(lock_path, f"stage {inst.label} of study {study.name!r}")
        self._lock.__enter__()  # held until commit, or until this process ends
        #: the package's modules loaded before the stage's work (its notebook's imports, the machinery): what the
        #: work loads after this is recorded at commit and checked against the fingerprint by the runner
        self.loaded_before = set(loaded_modules())
        self.path = self.final.parent / f".{self.final.name}.partial"
        if self.path.exists():  # left by an interrupted run (the lock says nobody is writing it now)
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)

    def input(self, stage: str, run: str | None = None) -> Path:
        """The folder of an input stage (of ``run``; default: this stage's own run)."""
        key = (stage, run if run is not None else (self.run.name if self.run else None))
        if key not in self.inputs:
            raise KeyError(f"stage {self.stage.name!r} does not read {stage!r} of run {key[1]!r}; it reads "
                           f"{sorted(self.inputs, key=str)}")
        return self.inputs[key]

    def optional_input(self, stage: str) -> Path | None:
        """The folder of an input stage that only some runs have (:attr:`Stage.when`); None for this run."""
        return self.input(stage) if get(stage).applies(self.run) else None

    def runs(self, role: str, stages: tuple[str, ...] | None = None) -> list[RunInputs]:
        """The runs of ``role`` this chapter reads, each with the folders of the stages it reads from them."""
        wanted = [up for up, r in self.stage.reads if r == role] if stages is None else list(stages)
        return [RunInputs(run, {up: self.input(up, run.name) for up in wanted if get(up).applies(run)})
                for run in self.study.role(role)]

    def chapter_folders(self) -> dict[str, Path]:
        """For the scoreboard: every chapter's committed folder."""
        return {stage: path for (stage, run), path in self.inputs.items() if run is None}

    def commit(self) -> Path:
        """Record what the stage wrote (every file's size and checksum) and its provenance, then publish the folder
        in one rename. Each commit gets a new id: stages that read an earlier commit of it are stale."""
        artifacts.write_json(self.path / "env.json", artifacts.environment())
        files = manifest(self.path)
        record = {"stage": self.stage.name, "run": self.run.name if self.run else None,
                  "identity": self.instance.identity, "fingerprint": self.fingerprint, "params": self.instance.params,
                  "inputs": self.read, "files": files, "loaded": sorted(set(loaded_modules()) - self.loaded_before),
                  "commit": uuid.uuid4().hex[:16]}
        artifacts.write_json(self.path / RECORD, record)
        artifacts.replace_dir(self.path, self.final)
        _HELD.pop(self.final.parent / f".{self.final.name}.lock", None)
        self._lock.__exit__(None, None, None)
        print(f"Stage {self.instance.label} committed to {self.final}")
        return self.final


def begin(stage_name: str, namespace: dict[str, Any], show: bool = True) -> StageContext:
    """What a notebook's first code cell calls: validate the injected parameters (the study's name, the run's name
    for run stages, and the stage's own parameters, read from ``namespace``), print them, open the output folder."""
    stage = get(stage_name)
    unknown = sorted(set(_injected(namespace)) - {"study", "run", *stage.params})
    if unknown and stage_name not in _BEGUN:  # (begun again in the same kernel: the names are its own results)
        raise config.ConfigError(f"notebook {stage.notebook} got unknown parameter(s) {unknown}; it takes "
                                 f"{['study', *(['run'] if stage.scope == 'run' else []), *stage.params]} "
                                 "(papermill --help-notebook lists them)")
    _BEGUN.add(stage_name)
    if not isinstance(namespace.get("study"), str):
        raise config.ConfigError(f"notebook {stage.notebook} needs a 'study' parameter (the study's name)")
    cfg = config.check({k: namespace[k] for k in stage.params if k in namespace}, keys=stage.params)
    study = load(namespace["study"])
    run = None
    if stage.scope == "run":
        name = namespace.get("run")
        if name not in study.runs:
            raise config.ConfigError(f"parameter 'run' is {name!r}; the study {study.name!r} has runs "
                                     f"{list(study.runs)}")
        run = study.runs[name]
        config.check_relations({**run.params, **cfg})
    if show:
        head = f"run {run.name!r} of " if run else ""
        config.show(cfg, f"Stage {stage.name!r}, {head}study {study.name!r}; effective parameters:")
    return StageContext(stage, {**cfg, "study": study.name, **({"run": run.name} if run else {})}, study, run)


_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def _injected(namespace: dict[str, Any]) -> list[str]:
    """The plain values a notebook's namespace holds before it begins its stage: its parameters, and whatever
    papermill injected (modules, functions, classes and IPython's own names are not parameters)."""
    return [k for k, v in namespace.items()
            if not k.startswith("_") and k not in _IPYTHON_NAMES and not callable(v)
            and type(v).__name__ != "module"]
