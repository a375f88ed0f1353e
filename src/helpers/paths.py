"""Where things live: the repository, the artifacts of a run, the model cache, the executed notebooks, each study's
book.

Every path is absolute and derived from the repository root, so notebooks work the same whether papermill runs
them from the repository root or nbval runs them from ``notebooks/``. Stage outputs are addressed by an identity
derived from their parameters and inputs (see :mod:`helpers.flow.graph`), so identical stages shared by several runs of
a study are stored, and computed, once. ``HELPERS_ARTIFACTS`` moves the artifacts
(and the model cache inside it) elsewhere, e.g. to a scratch disk.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Environment variables that move a folder; a relative value is made absolute, once, against the directory of the
#: process that first imports this module (the runner, or pytest), so that the notebooks, which run from
#: ``notebooks/`` and inherit the environment, read the same folder as the runner checked.
FOLDER_VARIABLES = ("HELPERS_ARTIFACTS", "HELPERS_CACHE")
for _variable in FOLDER_VARIABLES:
    if os.environ.get(_variable):
        os.environ[_variable] = str(Path(os.environ[_variable]).expanduser().resolve())

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO_ROOT / "notebooks"
PARAMS = REPO_ROOT / "params"
#: The book's sources in the checkout, copied into each study's book folder (:func:`book_dir`) when it publishes.
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book/*.md")


def artifacts_root() -> Path:
    """Root of all build products (gitignored)."""
    return Path(os.environ.get("HELPERS_ARTIFACTS", REPO_ROOT / "artifacts")).resolve()


STUDY_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"


def study_dir(study: str) -> Path:
    """``artifacts/<study>/``: the manifest, the stage outputs and the executed notebooks of one study. The name must
    be a plain folder name (letters, digits, ``_``, ``.``, ``-``; at most 100 characters; not starting with a dot),
    so that it can never resolve outside the artifacts root."""
    root = artifacts_root()
    if not isinstance(study, str) or not re.fullmatch(STUDY_NAME, study):
        shown = repr(study) if len(str(study)) <= 60 else f"{str(study)[:40]!r}... ({len(study)} characters)"
        raise ValueError(f"study name {shown} must be a plain folder name inside {root}: 1-100 letters, digits, "
                         "'_', '.' or '-', not starting with '.' or '-'")
    folder = root / study
    if folder.resolve().parent != root:  # e.g. a symbolic link pointing elsewhere
        raise ValueError(f"study folder {folder} resolves outside {root}")
    return folder


def stage_dir(study: str, stage: str, identity: str) -> Path:
    """``artifacts/<study>/stages/<stage>-<identity>/``: the committed outputs of one stage instance."""
    return study_dir(study) / "stages" / f"{stage}-{identity}"


def executed_notebook(study: str, stage: str, identity: str) -> Path:
    """Where the runner keeps the executed notebook of one stage instance."""
    return study_dir(study) / "executed" / f"{stage}-{identity}.ipynb"


def book_dir(study: str) -> Path:
    """``artifacts/<study>/book/``: the study's own book, a Jupyter Book source folder laid out like the checkout
    (:data:`BOOK_SOURCES`, the executed pages in ``book/executed/``), built into ``_build/html/`` inside it. Each
    study publishes here, so two studies (or ``make test``) never replace each other's pages or book."""
    return study_dir(study) / "book"


def pages_dir(study: str) -> Path:
    """Where the runner publishes the study's executed pages: ``artifacts/<study>/book/book/executed/``."""
    return book_dir(study) / "book" / "executed"


def book_index(study: str) -> Path:
    """The built book's front page: ``artifacts/<study>/book/_build/html/index.html``."""
    return book_dir(study) / "_build" / "html" / "index.html"


def cache_dir() -> Path:
    """Shared cache for converted models (independent of runs)."""
    return Path(os.environ.get("HELPERS_CACHE", artifacts_root() / "cache")).resolve()
