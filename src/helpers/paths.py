"""Where things live: the repository, the artifacts of a run, the model cache, the executed notebooks.

Every path is absolute and derived from the repository root, so notebooks work the same whether papermill runs
them from the repository root or nbval runs them from ``notebooks/``. Stage outputs are addressed by an identity
derived from their parameters and inputs (see :mod:`helpers.stages`), so identical stages shared by several runs of
a study are stored, and computed, once. ``HELPERS_ARTIFACTS`` moves the artifacts
(and the model cache inside it) elsewhere, e.g. to a scratch disk.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO_ROOT / "notebooks"
PARAMS = REPO_ROOT / "params"
EXECUTED = REPO_ROOT / "book" / "executed"


def artifacts_root() -> Path:
    """Root of all build products (gitignored)."""
    return Path(os.environ.get("HELPERS_ARTIFACTS", REPO_ROOT / "artifacts")).resolve()


def study_dir(study: str) -> Path:
    """``artifacts/<study>/``: the manifest, the stage outputs and the executed notebooks of one study. The name is
    checked to stay inside the artifacts root (``..`` or a path is refused)."""
    root = artifacts_root()
    folder = (root / study).resolve()
    if folder.parent != root or study in (".", "..") or not study:
        raise ValueError(f"study name {study!r} must be a plain folder name inside {root}")
    return folder


def stage_dir(study: str, stage: str, identity: str) -> Path:
    """``artifacts/<study>/stages/<stage>-<identity>/``: the committed outputs of one stage instance."""
    return study_dir(study) / "stages" / f"{stage}-{identity}"


def executed_notebook(study: str, stage: str, identity: str) -> Path:
    """Where the runner keeps the executed notebook of one stage instance."""
    return study_dir(study) / "executed" / f"{stage}-{identity}.ipynb"


def cache_dir() -> Path:
    """Shared cache for converted models (independent of runs)."""
    return Path(os.environ.get("HELPERS_CACHE", artifacts_root() / "cache")).resolve()
