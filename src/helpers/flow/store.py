"""Committed stage folders: their records, what they wrote, whether they can be reused, and the locks.

A stage commits by writing ``stage.json`` (its identity, fingerprint, parameters, the commits of the inputs it read,
the size and SHA-256 of every file it wrote, and the package modules it loaded) and renaming its folder into place in
one step (:meth:`helpers.flow.context.StageContext.commit`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import artifacts, paths
from .graph import Input, Instance

RECORD = "stage.json"
#: The key of an executed notebook's metadata that names the stage commit it was executed for (the runner writes it,
#: :func:`page_problem` reads it): a page shown in the book is the page of the outputs it describes.
PAGE_KEY = "helpers"


class MissingStageError(RuntimeError):
    """An input stage has no complete, intact committed outputs."""


class BusyError(RuntimeError):
    """Another process holds the lock of this study or stage."""


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


def page_problem(page: Path, commit: str | None) -> str | None:
    """What keeps an executed notebook from being shown as the page of stage commit ``commit``, or None: missing,
    empty or unreadable (not a notebook with cells: the book build would fail on it), or executed for another commit
    of its stage (a run stopped between the stage's commit and the runner's rename of its page leaves the previous
    page in place). ``commit`` None (a stage that records none): any readable page."""
    try:
        nb = json.loads(page.read_text())
    except FileNotFoundError:
        return f"{page.name} is missing"
    except (OSError, ValueError):
        return f"{page.name} is empty or not a notebook"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or not nb["cells"]:
        return f"{page.name} is empty or not a notebook"
    if commit is None:
        return None
    meta = nb.get("metadata")
    stamp = meta.get(PAGE_KEY) if isinstance(meta, dict) else None
    made_for = stamp.get("commit") if isinstance(stamp, dict) else None
    if made_for != commit:
        return (f"{page.name} was executed for {f'commit {made_for}' if made_for else 'no recorded commit'} of its "
                f"stage, not for its outputs' commit {commit}")
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
    since makes it stale), and ``extra`` (the executed notebook the book shows), if given, is a readable page
    executed for this very commit (:func:`page_problem`). The runner and ``status`` both decide with this function,
    inputs first (``upstream``: the inputs' states)."""
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
    wrong = page_problem(extra, record.get("commit")) if extra is not None else None
    if wrong:
        return State(False, f"stale: {wrong}")
    return State(True, "up to date", record.get("commit"))


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
    return [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]


def study_lock(study: str) -> Any:
    return lock(paths.study_dir(study) / ".lock", f"study {study!r}")


# ----------------------------------------------------------------------------------------------------------------
# The run log: what the runner executed, with its timings (the reproducibility page shows it)


def runlog_path(study: str) -> Path:
    return paths.study_dir(study) / "runlog.json"


def read_runlog(study: str) -> dict[str, Any]:
    """Timings and status of every stage instance the runner executed for this study (damaged: empty)."""
    try:
        log = artifacts.read_json(runlog_path(study))
    except (OSError, ValueError):
        return {}
    return log if isinstance(log, dict) else {}
