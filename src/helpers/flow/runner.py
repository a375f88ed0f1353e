"""The runner: executes a study's stage graph with papermill, then builds the book.

Every parameter of every run is validated, and what the values allow with the chosen model, corpus and machine is
checked (:mod:`.feasible`), before any work starts. The study's manifest (``artifacts/<study>/study.json``) is
written, then each planned stage instance (:func:`helpers.flow.graph.plan`) runs unless it is up to date: its
committed folder records the fingerprint expected now (:mod:`.fingerprint`). Stages shared by several runs run
once. ``force`` recomputes everything. Executed notebooks are written under a temporary name and renamed when
complete, recording in their metadata the stage commit they show: a page of another commit (a run stopped between
a stage's commit and the rename of its page), or an empty or unreadable one, makes its stage stale and is never
published. The study's book folder (``artifacts/<study>/book/``, :func:`helpers.paths.book_dir`) receives the
book's sources, the study stages and the first main run's run stages, and is built there. A
failing cell stops the run with a non-zero exit naming the notebook; Ctrl-C keeps every completed stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat
from nbclient.exceptions import DeadKernelError

from .. import artifacts, paths
from ..config import ConfigError
from ..study import MissingStudyError, Study, resolve
from . import feasible
from .fingerprint import expected as expected_fingerprints
from .fingerprint import lineage, uncovered
from .graph import Instance, plan, run_instance
from .stage import all_stages, run_stages
from .store import PAGE_KEY, State, folder, page_problem, read_record, read_runlog, runlog_path, state, study_lock


class StageFailed(RuntimeError):
    pass


class ArtifactsError(RuntimeError):
    """The artifacts folder cannot be written (permissions, a full disk, a path through a file)."""


def states(study: Study, instances: list[Instance]) -> dict[tuple[str, str], State]:
    """Every planned instance's :func:`helpers.flow.store.state`, inputs first: what ``run`` would reuse and why not.
    Reusing a stage also needs the executed notebook the book shows (outputs written otherwise, e.g. by nbval in
    another folder, are never mistaken for these)."""
    expected = expected_fingerprints(instances)
    out: dict[tuple[str, str], State] = {}
    for inst in instances:
        out[inst.key] = state(study.name, inst, expected[inst.key], out,
                              extra=paths.executed_notebook(study.name, inst.stage.name, inst.identity))
    return out


def status(study: Study) -> list[dict[str, Any]]:
    """One row per planned stage instance: stage, runs using it, state (up to date / stale / damaged / missing /
    always runs), why, folder. It decides exactly as :func:`run` does."""
    instances = plan(study)
    found = states(study, instances)
    users: dict[tuple[str, str], list[str]] = {}
    for run in study.runs.values():
        for stage in run_stages():
            inst = run_instance(stage, run, study)
            users.setdefault(inst.key, []).append(run.name)
    return [{"stage": inst.stage.name, "runs": ", ".join(users.get(inst.key, [])) or "(study)",
             "state": found[inst.key].label, "why": found[inst.key].reason,
             "folder": str(folder(study.name, inst).relative_to(paths.artifacts_root()))}
            for inst in instances]


def _tag_parameter_cells(path: Path, stamp: dict[str, Any] | None = None) -> None:
    """In the book, fold the injected parameters (papermill tags that cell 'injected-parameters') and drop the
    notebook's own defaults, which the injected values override: the next cell prints the effective ones. ``stamp``
    (the stage commit the page shows) goes into the notebook's metadata (:data:`helpers.flow.store.PAGE_KEY`)."""
    nb = nbformat.read(path, as_version=4)
    if stamp is not None:
        nb.metadata[PAGE_KEY] = stamp
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        for marker, tag in (("injected-parameters", "hide-input"), ("parameters", "remove-cell")):
            if marker in tags and tag not in tags:
                tags.append(tag)
    nbformat.write(nb, path)


class _ProgressBars:
    """Where a notebook's stderr stream goes while the runner executes it: its progress bars (tqdm lines) reach the
    terminal, one line per bar, redrawn in place; anything else (library warnings) only the executed notebook, which
    keeps every output."""

    def __init__(self) -> None:
        self.bar: str | None = None  # the description of the bar on the current line

    def write(self, text: str) -> None:
        for piece in re.split(r"[\r\n]", text):
            if "%|" not in piece:
                continue
            name = piece.split(":")[0]
            if self.bar is not None and name != self.bar:
                sys.stderr.write("\n")
            sys.stderr.write("\r" + piece)
            self.bar = name

    def flush(self) -> None:
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.bar = None


#: The process ids of the kernels running now (several when stages run at once): Ctrl-C interrupts them all.
_KERNELS: set[int] = set()


def _interrupt_kernels() -> None:
    for pid in list(_KERNELS):
        try:
            os.kill(pid, signal.SIGINT)
        except OSError:
            pass


def _kernel_manager(log: Path, started: list[int], threads: int | None = None) -> type:
    """A kernel manager whose kernel starts in ``notebooks/`` (where the notebooks expect to run) and writes its own
    messages (its start-up warnings, the tracebacks of a kernel stopped by Ctrl-C) to ``log`` instead of the
    terminal. The kernel's process id is appended to ``started`` and to :data:`_KERNELS`. ``threads`` sets the
    kernel's ``OMP_NUM_THREADS`` (:func:`helpers.runtime.set_threads` reads it)."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            kw["cwd"] = str(paths.NOTEBOOKS)
            if threads is not None:
                kw["env"] = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            with open(log, "ab") as handle:  # the kernel keeps its own copy of the descriptor
                kw.setdefault("stdout", handle)
                kw.setdefault("stderr", handle)
                await super().start_kernel(**kw)
            pid = getattr(getattr(self.provisioner, "process", None), "pid", None)
            if pid:
                started.append(pid)
                _KERNELS.add(pid)

    return QuietKernelManager


def execute(study: str, inst: Instance, bars: bool = True, threads: int | None = None) -> Path:
    """Run one stage instance's notebook with papermill; returns the executed notebook. The terminal shows the
    notebook's progress bars (unless ``bars`` is false: several stages running at once); the kernel's own messages go
    to ``artifacts/<study>/executed/<stage>-<id>.kernel.log``. Safe to call from several threads at once: the kernel
    starts in ``notebooks/`` without changing the runner's working directory (papermill's ``cwd`` would).
    ``threads``: the kernel's torch threads (default: every core, or ``OMP_NUM_THREADS``)."""
    import papermill

    source = inst.stage.path
    target = paths.executed_notebook(study, inst.stage.name, inst.identity)
    partial = target.with_name(f".{target.stem}.partial.ipynb")
    kernel_log = target.with_suffix(".kernel.log")
    target.parent.mkdir(parents=True, exist_ok=True)
    kernel_log.unlink(missing_ok=True)
    parameters = {"study": study, **({"run": inst.run.name} if inst.run else {}), **inst.params}
    stderr = _ProgressBars() if bars else None  # several stages at once: their bars would overwrite each other
    started: list[int] = []
    try:
        papermill.execute_notebook(str(source), str(partial), parameters=parameters,
                                   log_output=False, stderr_file=stderr, progress_bar=False,
                                   kernel_name="python3",
                                   kernel_manager_class=_kernel_manager(kernel_log, started, threads))
    except papermill.PapermillExecutionError as err:
        hint = _os_hint(err.ename, err.evalue)
        raise StageFailed(f"stage {inst.label} failed in notebook notebooks/{source.name} "
                          f"(cell {err.exec_count}): {err.ename}: {err.evalue}{hint}\n"
                          f"The executed notebook with the traceback is {partial}") from None
    except DeadKernelError as err:
        raise StageFailed(f"stage {inst.label}: the kernel running notebooks/{source.name} died ({err}); out of "
                          f"memory? The partly executed notebook is {partial}, the kernel's messages are in "
                          f"{kernel_log}") from None
    finally:
        if stderr is not None:
            stderr.close()
        _KERNELS.difference_update(started)
    record = read_record(folder(study, inst)) or {}  # the commit the notebook just made: the page shows it
    _tag_parameter_cells(partial, {"stage": inst.stage.name, "identity": inst.identity,
                                   "commit": record.get("commit")})
    os.replace(partial, target)
    return target


def _os_hint(ename: str, evalue: str) -> str:
    """What to do about a file-system error raised inside a stage."""
    # a file-system error carries an errno ("[Errno 28] No space left on device"); OSErrors of libraries (a hub
    # model that cannot be downloaded) do not, and the hint would mislead
    if ename == "PermissionError" or "[Errno" in evalue or "No space left" in evalue or "Read-only" in evalue:
        return (f"\n(the artifacts folder {paths.artifacts_root()} must be writable and have free space; free "
                "some, fix its permissions, or set HELPERS_ARTIFACTS to another folder)")
    return ""


#: The most stages ``run`` executes at once (``jobs``): each is a kernel of its own, with the model in its memory.
MAX_JOBS = 16


def run(profile: str, overrides: list[str] | None = None, force: bool = False, build: bool = True,
        seeds: list[int] | None = None, name: str | None = None, jobs: int = 1) -> dict:
    """Run every stage of the study (skipping up-to-date ones), publish the book's notebooks, build the book.
    One runner per study at a time (a second one stops with :class:`helpers.flow.store.BusyError`). ``jobs`` stages
    whose inputs are complete run at once, each in its own kernel (worth it where stages are short and a kernel's
    start-up dominates, as in the smoke study; a stage that trains already uses every core); with ``jobs`` 1 they
    run one after the other in the plan's order, and the terminal shows their progress bars."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise ConfigError(f"jobs must be an integer from 1 to {MAX_JOBS} (stages run at once), got {jobs!r}")
    study = resolve(profile, overrides, seeds=seeds, name=name)
    feasible.check(study)
    instances = plan(study)
    expected = expected_fingerprints(instances)
    _check_writable(paths.study_dir(study.name))
    with study_lock(study.name):
        study.save()
        print(f"Study {study.name!r} (profile {profile}): {len(study.runs)} run(s) "
              f"[{', '.join(study.runs)}], {len(instances)} stage(s); outputs in {paths.study_dir(study.name)}"
              + (f"; up to {jobs} stages at once" if jobs > 1 else ""), flush=True)
        runlog = read_runlog(study.name)
        runlog["profile"] = str(profile)
        runlog["stages"] = {k: v for k, v in (runlog.get("stages") or {}).items() if isinstance(v, dict)}
        _Schedule(study, instances, expected, runlog, force, jobs).run()
        publish(study, instances)
    if build:
        build_book(study.name)
    return runlog


class _Schedule:
    """Executes the planned instances that are not up to date, at most ``jobs`` at a time, each as soon as every
    input has been run or found up to date. The first failure stops new starts; the stages already running finish
    (their commits are kept), then it is raised. Ctrl-C interrupts the running kernels."""

    def __init__(self, study: Study, instances: list[Instance], expected: dict, runlog: dict, force: bool,
                 jobs: int) -> None:
        self.study, self.instances, self.expected = study, instances, expected
        self.runlog, self.log, self.force, self.jobs = runlog, runlog["stages"], force, jobs
        self.planned = {inst.key: inst for inst in instances}
        self.number = {inst.key: i for i, inst in enumerate(instances, 1)}
        self.found: dict[tuple[str, str], State] = {}
        #: each kernel's torch threads when stages run at once: the cores shared out (more threads than free cores
        #: slows torch several-fold); the user's OMP_NUM_THREADS, when set, wins
        self.threads = (None if jobs == 1 or os.environ.get("OMP_NUM_THREADS")
                        else max(1, (os.cpu_count() or 1) // jobs))

    def header(self, inst: Instance) -> str:
        return f"[{self.number[inst.key]}/{len(self.instances)}] {inst.label} ({inst.stage.notebook})"

    def notebook(self, inst: Instance) -> Path:
        return paths.executed_notebook(self.study.name, inst.stage.name, inst.identity)

    def state(self, inst: Instance) -> State:
        return state(self.study.name, inst, self.expected[inst.key], self.found, extra=self.notebook(inst))

    def run(self) -> None:
        pending = list(self.instances)  # in the plan's order, inputs first
        running: dict[Future, tuple[Instance, float]] = {}
        failure: BaseException | None = None
        quiet = logging.getLogger("papermill")  # its messages repeat what the runner reports itself
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="stage")
        try:
            while pending or running:
                for inst in list(pending):
                    if failure is not None or len(running) >= self.jobs:
                        break
                    if any((i.stage, i.identity) not in self.found for i in inst.inputs):
                        continue  # an input is still running
                    pending.remove(inst)
                    current = self.state(inst)
                    if not self.force and current.fresh:
                        print(f"{self.header(inst)}: up to date, skipped", flush=True)
                        self.log.setdefault(self.entry(inst), {})["status"] = "reused"
                        self.settle(inst, current)
                        continue
                    why = "" if self.force or current.reason in ("missing", "always runs") else f" ({current.reason})"
                    print(f"{self.header(inst)}: running{why}", flush=True)
                    running[pool.submit(execute, self.study.name, inst, self.jobs == 1, self.threads)] = (
                        inst, time.perf_counter())
                if not running:
                    break  # nothing can start: a failure stopped the schedule
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    inst, start = running.pop(future)
                    try:
                        future.result()
                        self.settle(inst, self.check(inst, time.perf_counter() - start))
                    except Exception as err:  # the first failure is raised once the running stages end
                        failure = failure or err
        except KeyboardInterrupt:
            _interrupt_kernels()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            quiet.setLevel(level)
        if failure is not None:
            raise failure

    def entry(self, inst: Instance) -> str:
        return f"{inst.stage.name}-{inst.identity}"

    def check(self, inst: Instance, seconds: float) -> State:
        """What a stage that just ran left behind: complete, covered by its fingerprint, unchanged while it ran."""
        self.log[self.entry(inst)] = {"status": "ran", "seconds": round(seconds, 1),
                                      "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        current = self.state(inst)
        loaded = (read_record(folder(self.study.name, inst)) or {}).get("loaded", [])
        missed = [] if inst.stage.always_run else uncovered(lineage(inst, self.planned), loaded)
        if missed:
            raise StageFailed(f"stage {inst.label} loaded {missed}, which its fingerprint does not cover "
                              "(helpers.flow.fingerprint.code_modules): declare them in its Stage.modules")
        if current.reason.startswith("stale: its parameters, code"):
            raise StageFailed(f"stage {inst.label}: its notebook or the code it imports changed while it ran; "
                              "run the same command again")
        if not current.fresh and not inst.stage.always_run:
            raise StageFailed(f"stage {inst.label} ran but its outputs are not complete: {current.reason}")
        print(f"{self.header(inst)}: done in {seconds:.0f} s", flush=True)
        return current

    def settle(self, inst: Instance, current: State) -> None:
        self.found[inst.key] = current
        self.log[self.entry(inst)].update(stage=inst.stage.name, run=inst.run.name if inst.run else None)
        artifacts.write_json(runlog_path(self.study.name), self.runlog)


def _check_writable(folder: Path) -> None:
    """Fail before any work, with what to do, when the study's folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as err:
        raise ArtifactsError(f"cannot write to {folder}: {err.strerror or err}. The artifacts folder must be "
                             "writable and have free space: fix its permissions, free some space, or set "
                             "HELPERS_ARTIFACTS to another folder") from None


#: In a study's book folder: when its last successful build started and the SHA-256 of each source it read.
BUILT_RECORD = ".built.json"


def _sources(book: Path) -> dict[str, str]:
    """SHA-256 of every source file of the book folder (its pages and the copied book sources), by relative path."""
    return {f.relative_to(book).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(book.rglob("*")) if f.is_file() and "_build" not in f.relative_to(book).parts
            and f.name != BUILT_RECORD}


def _last_build(book: Path) -> dict[str, Any]:
    """The record of the book's last successful build (``started``, ``sources``); empty when there is none."""
    try:
        return json.loads((book / BUILT_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def place(source: Path, target: Path, published: str, built: dict[str, Any]) -> None:
    """Copy ``source`` to ``target``, to be published as ``published`` (its path in the book folder), for the book's
    next incremental build. Sphinx re-reads a page only when its modification time is newer than its last read, and
    neither a stage's page nor its time tells which version was built last (another profile's run of the same study
    may have been built in between, with older pages than the ones it replaced). So the time comes from ``built``, the
    record of the last build (:func:`_last_build`): a file it read with the same content gets the time that build
    started (not read again); any other gets the current time."""
    shutil.copyfile(source, target)
    if built.get("sources", {}).get(published) == hashlib.sha256(target.read_bytes()).hexdigest():
        os.utime(target, (built["started"], built["started"]))


def publish(study: Study, instances: list[Instance]) -> None:
    """Make the study's book folder (:func:`helpers.paths.book_dir`) hold the book's sources and, in ``book/executed``,
    the chapters' executed notebooks and the run stages of the study's first run (of
    the first run that has it, for a stage that run lacks: pre-training). Every page must be readable and executed
    for its stage's current commit (:func:`helpers.flow.store.page_problem`), or nothing is published: the book never
    shows a page of outputs other than the committed ones, nor an empty page that breaks its build."""
    first = study.first.name
    chosen: dict[str, Instance] = {}
    for inst in instances:
        if inst.run is None or inst.run.name == first:
            chosen[inst.stage.notebook] = inst
        else:
            chosen.setdefault(inst.stage.notebook, inst)
    for notebook, inst in chosen.items():
        record = read_record(folder(study.name, inst))
        if record is None and not inst.stage.always_run:
            wrong = "its stage has no committed outputs"
        else:
            wrong = page_problem(paths.executed_notebook(study.name, inst.stage.name, inst.identity),
                                 (record or {}).get("commit"))
        if wrong:
            raise StageFailed(f"page {notebook} of stage {inst.label} is not published: {wrong}; run the study again "
                              "(it recomputes the stage)")
    book, pages = paths.book_dir(study.name), paths.pages_dir(study.name)
    staging = pages.with_name(f".executed-{os.getpid()}")  # complete before it replaces the published pages
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    built = _last_build(book)
    for notebook, inst in chosen.items():
        place(paths.executed_notebook(study.name, inst.stage.name, inst.identity), staging / notebook,
              (pages / notebook).relative_to(book).as_posix(), built)
    for stage in all_stages().values():  # a stage no run of this study has: a page that says so (the TOC
        if stage.notebook not in chosen:        # lists every stage)
            page = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
                f"# {stage.title}\n\nNo run of study `{study.name}` has this stage (for instance, pre-training runs "
                "only for runs with `model: inhouse-mlm`; see [Re-running](../reproduce)).")])
            nbformat.write(page, staging / stage.notebook)
    for pattern in paths.BOOK_SOURCES:
        for source in paths.REPO_ROOT.glob(pattern):
            target = book / source.relative_to(paths.REPO_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            place(source, target, target.relative_to(book).as_posix(), built)
    if pages.exists():
        shutil.rmtree(pages)
    staging.rename(pages)


def build_book(study: str) -> Path:
    """``jupyter-book build`` of the study's book folder (the book never executes anything: papermill did), with
    Vega shipped inside the book for the interactive charts; returns the front page."""
    from .. import charts

    book = paths.book_dir(study)
    if not paths.pages_dir(study).is_dir():
        raise MissingStudyError(f"study {study!r} has published no pages ({paths.pages_dir(study)} does not exist): "
                                "run it first, e.g. python -m helpers.pipeline run --profile <profile> --study "
                                f"{study}")
    charts.write_bundle(book / "book" / "_static")
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", "-q", str(book)]  # warnings only
    print("Building the book:", " ".join(cmd), flush=True)
    (book / BUILT_RECORD).unlink(missing_ok=True)  # until this build succeeds, no page counts as built
    started = time.time() - 1  # a page read in this build was read after this
    sources = _sources(book)
    done = subprocess.run(cmd, cwd=book, capture_output=True, text=True)
    sys.stderr.write(done.stderr)  # sphinx's warnings; its banner (stdout) is shown only when the build fails
    if done.returncode:
        sys.stdout.write(done.stdout)
        raise subprocess.CalledProcessError(done.returncode, cmd)
    (book / BUILT_RECORD).write_text(json.dumps({"started": started, "sources": sources}))
    index = paths.book_index(study)
    print(f"Book: {index}")
    return index
