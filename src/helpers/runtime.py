"""The machine a stage runs on: threads, progress-bar pacing, and the allowed devices and precisions.

Declared once here and read by the parameter table (:mod:`helpers.config`), fine-tuning, TracIn and the shard
command line. It imports nothing else of the package and no heavy library at import time (torch only inside
:func:`set_threads`), so every layer may use it.
"""

from __future__ import annotations

import os
import sys

#: Where fine-tuning and TracIn run (``auto``: CUDA when present).
DEVICES = ("auto", "cpu", "cuda")
#: Arithmetic on CUDA (``auto``: bf16 where it passes the accuracy gate against fp32; on a CPU always fp32).
PRECISIONS = ("auto", "fp32", "bf16")


def progress_interval() -> float:
    """Seconds between progress-bar refreshes, shared by every long loop: fast on a terminal, coarse in logs and
    notebooks (where the runner streams them to the terminal)."""
    return 0.5 if sys.stderr.isatty() else 15.0


def set_threads() -> int:
    """Use every core unless ``OMP_NUM_THREADS`` says otherwise (more threads than free cores slows torch down
    several-fold, e.g. beside another job)."""
    import torch

    n = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n
