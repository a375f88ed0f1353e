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

import ast
import errno
import fcntl
import hashlib
import importlib
import json
import os
import pkgutil
import shutil
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from . import artifacts, config, paths
from .study import Run, Study, load

RECORD = "stage.json"
STUDY_ROLE = "study"  # the role under which a chapter reads another study-scope stage
SOURCE = Path(__file__).resolve().parent  # the package's source (src/helpers)
#: Modules that run, store and lay out stages but compute no result: not part of any stage's code fingerprint
#: (editing the runner does not recompute fine-tuning). Everything a stage's code imports besides these is.
INFRASTRUCTURE = frozenset({"__init__", "stages", "pipeline", "paths", "artifacts", "study", "config"})


class MissingStageError(RuntimeError):
    """An input stage has no complete, intact committed outputs."""


class BusyError(RuntimeError):
    """Another process holds the lock of this study or stage."""


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str  # file name in notebooks/
    title: str
    params: tuple[str, ...] = ()  # its own parameters (helpers.config names)
    #: (stage, role): run stages of the runs of a role ("same" for run stages), or (chapter, "study"): another
    #: study-scope stage, run before this one (notebook order)
    reads: tuple[tuple[str, str], ...] = ()
    modules: tuple[str, ...] = ()  # helpers modules (paths under src/helpers, no suffix) whose source it depends on
    scope: str = "study"  # "run" or "study"
    reads_chapters: bool = False  # the scoreboard: reads every other chapter's claims
    always_run: bool = False  # cheap summaries that must see the latest timings (not fingerprinted)
    #: run stages only: the runs that have this stage, by their parameters (None: every run). A stage reading it
    #: reads it only in those runs (fine-tuning reads pre-training only when the model is pre-trained here).
    when: Callable[[dict[str, Any]], bool] | None = None
    #: Parameters added after results existed: left out of the identity while at their declared default, so the
    #: stages computed before they existed stay valid (a non-default value is part of the identity as usual).
    optional_params: tuple[str, ...] = ()

    def applies(self, run: Run) -> bool:
        return self.when is None or self.when(run.params)

    @property
    def path(self) -> Path:
        return paths.NOTEBOOKS / self.notebook


RUN_STAGES: tuple[Stage, ...] = (
    Stage("pretrain", "05_pretrain.ipynb", "Pre-training an unaligned encoder", scope="run",
          modules=("models/pretrain",),
          params=("seed", "pretrain_languages", "pretrain_verses_per_language", "pretrain_layers", "pretrain_hidden",
                  "pretrain_steps", "pretrain_batch_size", "pretrain_learning_rate", "pretrain_checkpoints",
                  "pretrain_vocab_size", "pretrain_max_length"),
          when=lambda p: p["model"] == "inhouse-mlm"),
    Stage("data", "01_data.ipynb", "Data", scope="run", modules=("data",),
          params=("seed", "dataset", "fine_tune_languages", "zero_shot_languages", "label", "train_per_language",
                  "test_per_language", "parallel_train", "test_translations_in_train", "imbalance_language",
                  "imbalance_factor", "permuted_language", "permuted_share", "corpus_dir"),
          optional_params=("corpus_dir",)),
    Stage("finetune", "02_finetune.ipynb", "Fine-tuning", scope="run", reads=(("data", "same"), ("pretrain", "same")),
          modules=("finetune", "models/__init__"),
          params=("model", "trim_vocabulary", "max_length", "epochs", "batch_size", "learning_rate", "warmup_ratio",
                  "model_dir", "device", "precision", "reinit_top_layers", "pretrain_checkpoint"),
          optional_params=("model_dir", "device", "precision", "reinit_top_layers", "pretrain_checkpoint")),
    Stage("tracin", "03_tracin.ipynb", "TracIn", scope="run", reads=(("finetune", "same"),),
          modules=("compute/tracin",),
          params=("tracin_params", "tracin_similarity", "tracin_batch_size", "device", "precision", "tracin_processes"),
          optional_params=("precision", "tracin_processes")),
    Stage("tracin_groups", "04_tracin_groups.ipynb", "TracIn by parameter group", scope="run",
          reads=(("finetune", "same"),), modules=("compute/tracin",),
          params=("attribution_groups", "attribution_test_per_language", "tracin_batch_size", "device", "precision",
                  "tracin_processes"),
          optional_params=("precision", "tracin_processes")),
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


def _imports(module: str) -> set[str]:
    """The package modules (named like ``chapters/control``) that ``module``'s source imports at module level
    (imports inside functions, used here to read another stage's outputs or to break cycles, are not followed)."""
    path = SOURCE / f"{module}.py"
    if not path.exists():
        return set()
    package = module.split("/")[:-1]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x, from .x import y, from .. import x
                base = package[: len(package) - node.level + 1]
                within = node.module.split(".") if node.module else []
            elif (node.module or "").split(".")[0] == "helpers":  # from helpers(.x) import y
                base, within = [], node.module.split(".")[1:]
            else:
                continue
            found.add("/".join(base + within))
            found.update("/".join(base + within + [alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update("/".join(a.name.split(".")[1:]) for a in node.names if a.name.startswith("helpers."))
    packages = {f"{m}/__init__" for m in found if m and (SOURCE / m / "__init__.py").exists()}
    return {m for m in found | packages if m and (SOURCE / f"{m}.py").exists()}


@lru_cache(maxsize=None)
def code_modules(roots: tuple[str, ...]) -> tuple[str, ...]:
    """``roots`` and every package module they import, transitively, except :data:`INFRASTRUCTURE`."""
    seen: set[str] = set()
    todo = [m for m in roots if m not in INFRASTRUCTURE]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(m for m in _imports(module) if m not in INFRASTRUCTURE and m not in seen)
    return tuple(sorted(seen))


def _package_version() -> str | None:
    try:
        return metadata.version("helpers")
    except metadata.PackageNotFoundError:
        return None


def source_hash(stage: Stage) -> str:
    """The stage's code: its notebook, the package's version, and the source of every package module its declared
    modules import, transitively (:func:`code_modules`). A change of any of them makes the stage stale."""
    files = [stage.path] + [SOURCE / f"{m}.py" for m in code_modules(stage.modules)]
    return _hash(_package_version(), *[f.read_bytes() if f.exists() else str(f).encode() for f in files])


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
    inputs = [Input("same", up, run.name, run_instance(get(up), run, study).identity) for up, _ in stage.reads
              if get(up).applies(run)]
    params = {k: run.params[k] for k in stage.params}
    named = {k: v for k, v in params.items()
             if not (k in stage.optional_params and v == config.PARAMETERS[k].default)}
    identity = _hash(stage.name, named, [i.identity for i in inputs])[:16]
    return Instance(stage, run, params, inputs, identity)


def chapter_inputs(stage: Stage, study: Study) -> list[Input]:
    inputs = []
    for up, role in stage.reads:
        if role == STUDY_ROLE:  # another study-scope stage, which computes what this chapter reads
            inputs.append(Input(role, up, None, chapter_instance(get(up), study).identity))
        else:
            inputs += [Input(role, up, run.name, run_instance(get(up), run, study).identity)
                       for run in study.role(role) if get(up).applies(run)]
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
        for i in inst.inputs:
            add_run_stage(i.stage, run)
        ordered.setdefault(inst.key, inst)

    chapter_list = sorted(chapters(), key=lambda c: (c.reads_chapters or c.always_run, c.always_run, c.notebook))
    needed = {(up, run.name) for c in chapter_list for up, role in c.reads if role != STUDY_ROLE
              for run in study.role(role) if get(up).applies(run)}
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
        record = json.loads((path / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# ----------------------------------------------------------------------------------------------------------------
# What a stage wrote: sizes and checksums, verified on reuse


def manifest(path: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``path`` except the record itself: ``{relative path: {size, sha256}}``."""
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.name != RECORD)
    return {f.relative_to(path).as_posix(): {"size": f.stat().st_size, "sha256": artifacts.sha256(f)} for f in files}


def damage(path: Path, record: dict[str, Any]) -> str | None:
    """What is wrong with a committed folder's files, or None when every file it recorded is there, of the recorded
    size and checksum (sizes first: a truncated file is found without reading the others)."""
    files = record.get("files")
    if not isinstance(files, dict):
        return "its record lists no files (written by an older version of this package)"
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != meta.get("size"):
            return f"{name} has {f.stat().st_size} bytes, {meta.get('size')} were written"
    for name, meta in files.items():
        if artifacts.sha256(path / name) != meta.get("sha256"):
            return f"{name} differs from what was written (checksum)"
    return None


@dataclass(frozen=True)
class State:
    """Whether a planned stage instance can be reused, and why not."""

    fresh: bool
    reason: str  # "up to date", "missing", "stale: ...", "damaged: ...", "always runs"
    commit: str | None = None  # the commit id of its outputs (when fresh)

    @property
    def label(self) -> str:
        return self.reason.split(":")[0]


def state(study: str, inst: Instance, expected: str, upstream: dict[tuple[str, str], State],
          extra: Path | None = None) -> State:
    """Can ``inst``'s committed outputs be reused? Only when its record holds the fingerprint expected now, every
    file it wrote is intact, every input is itself reusable and is the very commit it read (an input recomputed
    since makes it stale), and ``extra`` (e.g. the executed notebook the book shows), if given, exists. The
    runner and ``status`` both decide with this function, inputs first (``upstream``: the inputs' states)."""
    if inst.stage.always_run:
        return State(False, "always runs")
    path = folder(study, inst)
    record = read_record(path)
    if record is None:
        return State(False, "missing")
    if record.get("fingerprint") != expected:
        return State(False, "stale: its parameters, code or notebook changed")
    read = {(i.get("stage"), i.get("identity")): i.get("commit") for i in record.get("inputs", [])
            if isinstance(i, dict)}
    for i in inst.inputs:
        up = upstream.get((i.stage, i.identity))
        if up is None or not up.fresh:
            return State(False, f"stale: its input {i.stage}{f'[{i.run}]' if i.run else ''} is not up to date")
        if read.get((i.stage, i.identity)) != up.commit:
            return State(False, f"stale: its input {i.stage}{f'[{i.run}]' if i.run else ''} was recomputed since")
    broken = damage(path, record)
    if broken:
        return State(False, f"damaged: {broken} (in {path})")
    if extra is not None and not extra.exists():
        return State(False, f"stale: {extra.name} is missing")
    return State(True, "up to date", record.get("commit"))


# ----------------------------------------------------------------------------------------------------------------
# Locks: one writer per study (the runner) and per stage instance (a notebook)


@contextmanager
def lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) or raise :class:`BusyError` naming the process that
    holds it. The operating system releases it when the process ends, however it ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 1000, 0).decode(errors="replace").strip() or "another process"
            raise BusyError(f"{what} is in use by {holder}; wait for it to finish (or stop it) and run again") \
                from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"process {os.getpid()} ({' '.join(_command())[:200]}), since "
                       f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _command() -> list[str]:
    import sys

    return [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]


def study_lock(study: str) -> Any:
    return lock(paths.study_dir(study) / ".lock", f"study {study!r}")


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
            inst = chapter_instance(stage, Study(study.name, study.profile, {**study.params, **params}, study.runs))
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
        self.fingerprint = _hash(inst.identity, source_hash(stage), upstream)
        self.final = folder(study.name, inst)
        lock_path = self.final.parent / f".{self.final.name}.lock"
        if lock_path in _HELD:  # the same stage begun again in this process (a notebook cell run twice)
            _HELD.pop(lock_path).__exit__(None, None, None)
        self._lock = _HELD[lock_path] = lock(lock_path, f"stage {inst.label} of study {study.name!r}")
        self._lock.__enter__()  # held until commit, or until this process ends
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
        """For the scoreboard: every other chapter's committed folder."""
        return {stage: path for (stage, run), path in self.inputs.items() if run is None}

    def commit(self) -> Path:
        """Record what the stage wrote (every file's size and checksum) and its provenance, then publish the folder
        in one rename. Each commit gets a new id: stages that read an earlier commit of it are stale."""
        artifacts.write_json(self.path / "env.json", artifacts.environment())
        files = manifest(self.path)
        record = {"stage": self.stage.name, "run": self.run.name if self.run else None,
                  "identity": self.instance.identity, "fingerprint": self.fingerprint, "params": self.instance.params,
                  "inputs": self.read, "files": files,
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

    from .study import resolve

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
