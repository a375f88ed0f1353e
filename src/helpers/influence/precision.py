"""Precision: bf16 only where it passes the accuracy gates against fp32 (:func:`precision_gate`,
:func:`choose_dtype`); the allowed values are :data:`helpers.runtime.PRECISIONS`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..runtime import PRECISIONS
from .engine import TracIn
from .spec import Checkpoint

#: The gates bf16 scores must pass against fp32 (per test column): Spearman correlation, and how many of the fp32
#: top-10 proponents bf16 also ranks in its top 10.
GATE_SPEARMAN, GATE_TOP10 = 0.99, 9


def precision_gate(fp32: np.ndarray, bf16: np.ndarray, top: int = 10) -> dict[str, Any]:
    """Compare two (n_train, n_test) score matrices column by column: the smallest Spearman correlation and the
    smallest top-``top`` overlap; ``passed`` when they meet :data:`GATE_SPEARMAN` and :data:`GATE_TOP10`."""
    from scipy.stats import spearmanr

    if fp32.shape != bf16.shape:
        raise ValueError(f"score matrices of shapes {fp32.shape} and {bf16.shape}")
    top = min(top, fp32.shape[0])
    rhos, overlaps = [], []
    for j in range(fp32.shape[1]):
        rho = spearmanr(fp32[:, j], bf16[:, j]).statistic
        rhos.append(float(rho) if np.isfinite(rho) else 0.0)
        overlaps.append(len(set(np.argsort(-fp32[:, j])[:top]) & set(np.argsort(-bf16[:, j])[:top])))
    need = GATE_TOP10 * top / 10
    out = {"spearman_min": min(rhos), "top_overlap_min": min(overlaps), "top": top}
    out["passed"] = out["spearman_min"] >= GATE_SPEARMAN and out["top_overlap_min"] >= need
    return out


def choose_dtype(precision: str, checkpoints: Sequence[Checkpoint], train_examples: Sequence[Any],
                 test_examples: Sequence[Any], device: str | torch.device | None = None, sample: tuple[int, int] = (
                     256, 16), **engine: Any) -> tuple[str, dict[str, Any]]:
    """The dtype TracIn runs in for the ``precision`` parameter: ``fp32`` on a CPU and for ``fp32``; ``bf16`` for
    ``bf16`` on CUDA; ``auto`` on CUDA scores a sample (the first checkpoint, the first ``sample`` training and test
    samples) in both and takes bf16 only if it passes :func:`precision_gate`, else fp32. Returns (dtype, the gate's
    figures or {}); ``engine``: the other :class:`TracIn` arguments (params, similarity, batch_size, groups)."""
    if precision not in PRECISIONS:
        raise ValueError(f"parameter 'precision' is {precision!r}; allowed: {list(PRECISIONS)}")
    where = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if where.type != "cuda" or precision == "fp32":
        return "fp32", {}
    if precision == "bf16":
        return "bf16", {}
    engine = {k: v for k, v in engine.items() if k != "groups"}
    n_train, n_test = min(sample[0], len(train_examples)), min(sample[1], len(test_examples))
    take = (lambda ex, n: ex.select(range(n))) if hasattr(train_examples, "select") else (lambda ex, n: list(ex)[:n])
    tr, te = take(train_examples, n_train), take(test_examples, n_test)
    runs = {d: TracIn(list(checkpoints)[:1], device=where, dtype=d, **engine).scores(tr, te, progress=False).total
            for d in ("fp32", "bf16")}
    gate = precision_gate(runs["fp32"], runs["bf16"])
    gate.update(sample=[n_train, n_test])
    return ("bf16" if gate["passed"] else "fp32"), gate
