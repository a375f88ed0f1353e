"""Companion code for Choenni, Garrette & Shutova (EMNLP 2023).

Every computation of the book lives in this package; the notebooks only call it and show results.
"""

import os
import warnings

__version__ = "0.1.0"


def _quiet_libraries() -> None:
    """Library progress bars and load reports (weights loaded, dataset shards saved) would otherwise flood the
    notebooks and the runner's log; our own progress bars stay."""
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto in a kernel without ipywidgets
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


_quiet_libraries()
