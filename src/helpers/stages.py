"""The stage graph, declared once: what each stage runs, what it reads, which parameters it owns.

Two kinds of stage:

* **run stages** (:data:`RUN_STAGES`: data, finetune, tracin, tracin_groups) run once per run of a study that needs
  them and read earlier stages of the same run;
* **chapters** (one module each in :mod:`helpers.chapters`, discovered) run once per study and read run stages of
  the runs of a role (``main``, ``parallel``, ...; see :data:`helpers.study.ROLES`), or every other chapter.

A stage instance is stored in ``artifacts/<study>/stages/<stage>-<identity>/``. Its **identity** hashes the stage's
own parameters and its inputs' identities, so identical stages of several runs (e.g. a variant that changes only
TracIn's parameters shares data and fine-tuning with the main run) are one folder, computed once. Its
**fingerprint** adds the source of its notebook and its code modules and its inputs' fingerprints; it is recorded in
``stage.json`` when the stage commits. A stage is up to date when its folder holds a ``stage.json`` with the
fingerprint expected now: changing ``top_k`` changes only the chapters' identities; editing ``helpers/finetune.py``
changes fine-tuning's fingerprint and so every stage downstream of it.

In a notebook::

    ctx = stages.begin("language_shares", globals())   # validate + print parameters, open the output folder
    runs = ctx.runs("main")                             # the inputs, per run
    ...; ctx.commit()
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import artifacts, config, paths
from .study import Run, Study, load

RECORD = "stage.json"


class MissingStageError(RuntimeError):
    """An input stage has no committed outputs."""


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str  # file name in notebooks/
    title: str
    params: tuple[str, ...] = ()  # its own parameters (helpers.config names)
    reads: tuple[tuple[str, str], ...] = ()  # (stage, role): run stages of the runs of a role ("same" for run stages)
    modules: tuple[str, ...] = ()  # helpers modules (paths under src/helpers, no suffix) whose source it depends on
    scope: str = "study"  # "run" or "study"
    reads_chapters: bool = False  # the scoreboard: reads every other chapter's claims
    always_run: bool = False  # cheap summaries that must see the latest timings (not fingerprinted)

    @property
    def path(self) -> Path:
        return paths.NOTEBOOKS / self.notebook


RUN_STAGES: tuple[Stage, ...] = (
    Stage("data", "01_data.ipynb", "Data", scope="run", modules=("data",),
          params=("seed", "dataset", "fine_tune_languages", "zero_shot_languages", "label", "train_per_language",
                  "test_per_language", "parallel_train", "test_translations_in_train", "imbalance_language",
                  "imbalance_factor", "permuted_language", "permuted_share")),
    Stage("finetune", "02_finetune.ipynb", "Fine-tuning", scope="run", reads=(("data", "same"),),
          modules=("finetune", "models"),
          params=("model", "trim_vocabulary", "max_length", "epochs", "batch_size", "learning_rate", "warmup_ratio")),
    Stage("tracin", "03_tracin.ipynb", "TracIn", scope="run", reads=(("finetune", "same"),), modules=("tracin",),
          params=("tracin_params", "tracin_similarity", "tracin_batch_size", "device")),
    Stage("tracin_groups", "04_tracin_groups.ipynb", "TracIn by parameter group", scope="run",
          reads=(("finetune", "same"),), modules=("tracin",),
          params=("attribution_groups", "attribution_test_per_language", "tracin_batch_size", "device")),
)


@lru_cache(maxsize=None)
def chapters() -> tuple[Stage, ...]:
    """Every chapter: the ``STAGE`` of each module in :mod:`helpers.chapters`, in notebook order."""
    from . import chapters as package

    found = [importlib.import_module(f"{package.__name__}.{m.name}").STAGE
             for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]
    return tuple(sorted(found, key=lambda s: s.notebook))


def all_stages() -> dict[str, Stage]:
    return {s.name: s for s in (*RUN_STAGES, *chapters())}


def get(name: str) -> Stage:
    stages = all_stages()
    if name not in stages:
        raise ValueError(f"unknown stage {name!r}; allowed: {list(stages)}")
    return stages[name]


# ----------------------------------------------------------------------------------------------------------------
# Identities and fingerprints


def _hash(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def source_hash(stage: Stage) -> str:
    """The notebook and the code modules the stage depends on (a change of either makes it stale)."""
    files = [stage.path] + [paths.REPO_ROOT / "src" / "helpers" / f"{m}.py" for m in stage.modules]
    return _hash(*[f.read_bytes() if f.exists() else str(f).encode() for f in files])


@dataclass(frozen=True)
class Input:
    """One input of a stage instance: which stage of which run (None for chapters read by the scoreboard)."""

    role: str
    stage: str
    run: str | None
    identity: str


@dataclass
class Instance:
    """One stage of one run (or of the study, for chapters), as planned."""

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
    inputs = [Input("same", up, run.name, run_instance(get(up), run, study).identity) for up, _ in stage.reads]
    params = {k: run.params[k] for k in stage.params}
    identity = _hash(stage.name, params, [i.identity for i in inputs])[:16]
    return Instance(stage, run, params, inputs, identity)


def chapter_inputs(stage: Stage, study: Study) -> list[Input]:
    inputs = [Input(role, up, run.name, run_instance(get(up), run, study).identity)
              for up, role in stage.reads for run in study.role(role)]
    if stage.reads_chapters:
        inputs += [Input("chapter", c.name, None, chapter_instance(c, study).identity)
                   for c in chapters() if c.name != stage.name and not c.reads_chapters and not c.always_run]
    return inputs


def chapter_instance(stage: Stage, study: Study) -> Instance:
    inputs = chapter_inputs(stage, study)
    params = {k: study.params[k] for k in stage.params}
    identity = _hash(stage.name, params, [(i.role, i.stage, i.run, i.identity) for i in inputs])[:16]
    return Instance(stage, None, params, inputs, identity)


def plan(study: Study) -> list[Instance]:
    """Every stage instance the study needs, inputs first, each identity once (shared stages are computed once).

    Run stages are planned only where a chapter reads them (through its inputs): each run's chain, run by run, then
    the chapters in notebook order, those reading every other chapter last."""
    ordered: dict[tuple[str, str], Instance] = {}

    def add_run_stage(name: str, run: Run) -> None:
        inst = run_instance(get(name), run, study)
        for up, _ in inst.stage.reads:
            add_run_stage(up, run)
        ordered.setdefault(inst.key, inst)

    chapter_list = sorted(chapters(), key=lambda c: (c.reads_chapters or c.always_run, c.always_run, c.notebook))
    needed = {(up, run.name) for c in chapter_list for up, role in c.reads for run in study.role(role)}
    for run in study.runs.values():
        for stage in RUN_STAGES:
            if (stage.name, run.name) in needed:
                add_run_stage(stage.name, run)
    for c in chapter_list:
        inst = chapter_instance(c, study)
        ordered.setdefault(inst.key, inst)
    return list(ordered.values())


def expected_fingerprints(instances: list[Instance]) -> dict[tuple[str, str], str]:
    """The fingerprint each instance must have to be up to date (inputs' fingerprints included)."""
    out: dict[tuple[str, str], str] = {}
    for inst in instances:
        ups = [out[(i.stage, i.identity)] for i in inst.inputs]
        out[inst.key] = _hash(inst.identity, source_hash(inst.stage), ups)
    return out


def folder(study: str, inst_or_input: Instance | Input) -> Path:
    stage = inst_or_input.stage if isinstance(inst_or_input, Input) else inst_or_input.stage.name
    return paths.stage_dir(study, stage, inst_or_input.identity)


def read_record(path: Path) -> dict[str, Any] | None:
    """A committed stage's record, or None when it is missing or unreadable (treated as not committed)."""
    try:
        return json.loads((path / RECORD).read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------------------
# The notebook side


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
            inst = chapter_instance(stage, Study(study.name, study.profile, {**study.params, **params}, study.runs))
        self.instance = inst
        self.inputs: dict[tuple[str, str | None], Path] = {}
        upstream = []
        for i in inst.inputs:
            path = folder(study.name, i)
            record = read_record(path)
            if record is None:
                where = f" of run {i.run!r}" if i.run else ""
                raise MissingStageError(f"stage {i.stage!r}{where} has no complete outputs in {path}; run the study "
                                        f"first: python -m helpers.pipeline run --profile {study.profile}")
            self.inputs[(i.stage, i.run)] = path
            upstream.append(record["fingerprint"])
        self.fingerprint = _hash(inst.identity, source_hash(stage), upstream)
        self.final = folder(study.name, inst)
        self.path = self.final.parent / f".{self.final.name}.partial"
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)

    def input(self, stage: str, run: str | None = None) -> Path:
        """The folder of an input stage (of ``run``; default: this stage's own run)."""
        key = (stage, run if run is not None else (self.run.name if self.run else None))
        if key not in self.inputs:
            raise KeyError(f"stage {self.stage.name!r} does not read {stage!r} of run {key[1]!r}; it reads "
                           f"{sorted(self.inputs, key=str)}")
        return self.inputs[key]

    def runs(self, role: str, stages: tuple[str, ...] | None = None) -> list[RunInputs]:
        """The runs of ``role`` this chapter reads, each with the folders of the stages it reads from them."""
        wanted = [up for up, r in self.stage.reads if r == role] if stages is None else list(stages)
        return [RunInputs(run, {up: self.input(up, run.name) for up in wanted}) for run in self.study.role(role)]

    def chapter_folders(self) -> dict[str, Path]:
        """For the scoreboard: every other chapter's committed folder."""
        return {stage: path for (stage, run), path in self.inputs.items() if run is None}

    def commit(self) -> Path:
        record = {"stage": self.stage.name, "run": self.run.name if self.run else None,
                  "identity": self.instance.identity, "fingerprint": self.fingerprint, "params": self.instance.params,
                  "inputs": [i.__dict__ for i in self.instance.inputs]}
        artifacts.write_json(self.path / "env.json", artifacts.environment())
        artifacts.write_json(self.path / RECORD, record)
        artifacts.replace_dir(self.path, self.final)
        print(f"Stage {self.instance.label} committed to {self.final}")
        return self.final


def begin(stage_name: str, namespace: dict[str, Any], show: bool = True) -> StageContext:
    """What a notebook's first code cell calls: validate the injected parameters (the study's name, the run's name
    for run stages, and the stage's own parameters, read from ``namespace``), print them, open the output folder."""
    stage = get(stage_name)
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
