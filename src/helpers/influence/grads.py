"""Examples, batches and per-example gradients: random access to pre-tokenised samples (:class:`_Examples`), padded
batches grouped by length (:func:`_batches`), the hooks that give every scored module's input and output gradient in
one forward and backward pass (:class:`_Probe`), and a run of samples' gradients (:class:`_Grads`: a test bank or a
training block)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..models import pad_batch
from .kernels import _Embedding, _Rows, _Scored, _weight_tile
from .memory import _Arena, _Workspace

#: Training batches read, sorted by length and split at once (bounds memory while keeping padding low).
_SORT_WINDOW = 32


class _Examples:
    """Random access to pre-tokenised examples (a sequence of mappings or a ``datasets.Dataset``)."""

    def __init__(self, examples: Sequence[Any], what: str):
        if len(examples) == 0:
            raise ValueError(f"{what} is empty")
        first = examples[0]
        if "input_ids" not in first or "label" not in first:
            raise ValueError(f"every sample of {what} needs 'input_ids' and 'label', got keys {sorted(first)}")
        self.columnar = hasattr(examples, "select_columns")  # a datasets.Dataset: read columns, not rows
        self.data = examples.select_columns(["input_ids", "label"]) if self.columnar else examples
        self.n = len(examples)

    def read(self, rows: list[int]) -> tuple[list[list[int]], list[int]]:
        if self.columnar:
            cols = self.data[rows]
            return cols["input_ids"], cols["label"]
        items = [self.data[r] for r in rows]
        return [it["input_ids"] for it in items], [it["label"] for it in items]

    def max_length(self, rows: range) -> int:
        return max(len(ids) for ids in self.read(list(rows))[0])

    def mean_length(self, at_most: int = 4096) -> float:
        """Mean number of tokens per sample (over at most ``at_most`` evenly spaced samples)."""
        rows = np.unique(np.linspace(0, self.n - 1, min(self.n, at_most)).round().astype(int)).tolist()
        return float(np.mean([len(ids) for ids in self.read(rows)[0]]))


@dataclass
class _Batch:
    rows: np.ndarray            # positions of the samples in their example sequence
    input_ids: torch.Tensor     # (B, T), padded with the pad id
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def valid(self) -> torch.Tensor:
        """(B, T) bool: the non-padded positions."""
        return self.attention_mask.bool()


def _batches(examples: _Examples, rows: range, batch_size: int, pad_id: int,
             device: torch.device) -> Iterator[_Batch]:
    """Batches over ``rows``; within windows of a few batches, samples are grouped by length to limit padding."""
    span = batch_size * _SORT_WINDOW
    for start in range(rows.start, rows.stop, span):
        window = list(range(start, min(start + span, rows.stop)))
        ids, labels = examples.read(window)
        order = sorted(range(len(window)), key=lambda k: len(ids[k]))
        for b in range(0, len(order), batch_size):
            sel = order[b:b + batch_size]
            if min(len(ids[k]) for k in sel) == 0:
                raise ValueError("a sample has empty input_ids")
            padded, mask = pad_batch([ids[k] for k in sel], pad_id=pad_id)
            yield _Batch(rows=np.array([window[k] for k in sel]), input_ids=padded.to(device),
                         attention_mask=mask.to(device),
                         labels=torch.tensor([labels[k] for k in sel], dtype=torch.long, device=device))



def _default_ids(examples: Sequence[Any]) -> pd.DataFrame:
    """One row per sample with its scalar columns (language, pair id, label, ...); list columns are left out."""
    first = examples[0]
    cols = [k for k, v in first.items() if not isinstance(v, (list, tuple, np.ndarray, torch.Tensor))]
    if hasattr(examples, "select_columns"):
        return examples.select_columns(cols).to_pandas()
    return pd.DataFrame([{c: ex[c] for c in cols} for ex in examples], columns=cols)


def _ids(examples: Sequence[Any], ids: pd.DataFrame | None, what: str) -> pd.DataFrame:
    if ids is None:
        return _default_ids(examples)
    if len(ids) != len(examples):
        raise ValueError(f"{what} has {len(ids)} rows for {len(examples)} samples")
    return ids.reset_index(drop=True)



# ----------------------------------------------------------------------------------------------------------------
# Per-example gradients of the scored modules


class _Probe:
    """Hooks on the scored modules of a loaded checkpoint. :meth:`run` does one forward pass and one
    ``autograd.grad`` over a batch and returns, for every scored module, its input and the gradient of the summed
    loss with respect to its output."""

    def __init__(self, model: nn.Module, scored: list[_Scored], autocast: torch.dtype | None):
        self.model, self.scored, self.autocast = model, scored, autocast
        self._seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._batch_size = 0
        self.workspace = _Workspace()
        self._handles: list[Any] = []

    def __enter__(self) -> _Probe:
        for i, s in enumerate(self.scored):
            if isinstance(s, _Embedding) and not s.sparse:
                # Position ids arrive as one (1, T) row broadcast over the batch, so the gradient of its output would
                # be summed over samples; expanding the ids to (B, T) keeps it per sample (the output is unchanged).
                self._handles.append(s.module.register_forward_pre_hook(self._expand))
            self._handles.append(s.module.register_forward_hook(self._keeper(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _expand(self, module: nn.Module, args: tuple) -> tuple | None:
        ids = args[0]
        if ids.shape[0] == self._batch_size:
            return None
        return (ids.expand(self._batch_size, *ids.shape[1:]), *args[1:])

    def _keeper(self, i: int) -> Callable:
        def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if i in self._seen:
                raise RuntimeError(f"module {self.scored[i].name} ran twice in one forward pass; "
                                   "TracIn cannot split its gradient")
            self._seen[i] = (args[0], output)
        return keep

    def run(self, batch: _Batch) -> list[tuple[_Scored, torch.Tensor, torch.Tensor]]:
        self._seen, self._batch_size = {}, len(batch)
        device_type = batch.input_ids.device.type
        autocast = (torch.autocast(device_type, dtype=self.autocast) if self.autocast is not None
                    else contextlib.nullcontext())
        with torch.enable_grad():
            with autocast:
                logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            loss = F.cross_entropy(logits.float(), batch.labels, reduction="sum")
            missing = [s.name for i, s in enumerate(self.scored) if i not in self._seen]
            if missing:
                raise RuntimeError(f"scored modules not run by the forward pass: {missing}")
            outputs = [self._seen[i][1] for i in range(len(self.scored))]
            deltas = torch.autograd.grad(loss, outputs, allow_unused=True, materialize_grads=True)
        seen, self._seen = self._seen, {}
        return [(s, seen[i][0].detach(), d) for i, (s, d) in enumerate(zip(self.scored, deltas))]



@dataclass
class _Grads:
    """Per-example gradients of a run of samples (a test chunk: the *bank*; or a training block), in the order they
    were computed: position ``k`` is sample ``rows[k]``.

    ``weights[i]``: the Linear weight of scored module ``i``, either factored (its ``(x, delta)`` per batch, see
    :func:`_weight_tile`) or dense (n, d_out, d_in); ``dense[i]``: the module's other blocks, (n, size) each;
    ``sparse``: the word-embedding rows (``sample`` = position); ``sq_norms``: squared gradient norms (cosine only).
    """

    rows: np.ndarray
    weights: dict[int, list[tuple[torch.Tensor, torch.Tensor]] | torch.Tensor]
    dense: dict[int, list[torch.Tensor]]
    sparse: _Rows | None
    sq_norms: torch.Tensor | None
    group_sq: dict[frozenset, torch.Tensor] = field(default_factory=dict)  # per group signature (groups only)

    @property
    def n(self) -> int:
        return len(self.rows)

    def weight_tile(self, i: int, r0: int, r1: int, workspace: _Workspace, role: str) -> torch.Tensor:
        """Rows ``r0:r1`` of module ``i``'s weight gradients, (n, (r1 - r0) d_in): a view of the dense bank, or formed
        from the factors into the workspace buffer of ``role``."""
        w = self.weights[i]
        if isinstance(w, torch.Tensor):
            return w[:, r0:r1].flatten(1)  # a view: each sample's rows r0:r1 are contiguous
        x = w[0][0]
        out = workspace.take((self.n, (r1 - r0) * x.shape[-1]), x.dtype, x.device, role)
        return _weight_tile(w, r0, r1, out)

    def densify(self, arena: _Arena) -> None:
        """Form every factored weight gradient once, in ``arena`` (a bank multiplied by many training blocks)."""
        for i, parts in self.weights.items():
            if isinstance(parts, torch.Tensor):
                continue
            x, delta = parts[0]
            dense = arena.take((self.n, delta.shape[-1], x.shape[-1]), x.dtype)
            _weight_tile(parts, 0, delta.shape[-1], dense.view(self.n, -1))
            self.weights[i] = dense

