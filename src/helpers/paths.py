"""Where things live: the repository, the artifacts of a run, the model cache, the executed notebooks.

Every path is absolute and derived from the repository root, so notebooks work the same whether papermill runs
them from the repository root or nbval runs them from ``notebooks/``. ``HELPERS_ARTIFACTS`` moves the artifacts
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


def run_dir(run_name: str) -> Path:
    """``artifacts/<run_name>/``: every stage of one run writes below it."""
    return artifacts_root() / run_name


def stage_dir(run_name: str, stage: str) -> Path:
    """``artifacts/<run_name>/<stage>/``: the committed outputs of one stage."""
    return run_dir(run_name) / stage


def cache_dir() -> Path:
    """Shared cache for converted models (independent of runs)."""
    return Path(os.environ.get("HELPERS_CACHE", artifacts_root() / "cache")).resolve()
