"""TracIn: how much each training sample influenced each test prediction, checkpoint by checkpoint.

Definition (Pruthi et al. 2020, TracInCP)::

    score_c(i, j) = lr_c * sim(g_c(i), g_c(j))          g_c(x) = d loss(x; theta_c) / d theta_S
    score(i, j)   = sum_c score_c(i, j)

for training sample ``i``, test sample ``j``, saved checkpoint ``c`` (with the learning rate ``lr_c`` in force when it
was saved) and a parameter subset ``S``. ``loss`` is the cross-entropy of one sample (a sum-reduced loss, so a
per-example gradient does not depend on the batch it was computed in). ``sim`` is the dot product or the cosine
(each per-example gradient normalised over the whole subset ``S``, per checkpoint). :class:`InfluenceScores` keeps the
matrix of every checkpoint (the book analyses each epoch) next to their sum, with id tables linking every row and
column back to its sample (language, pair id, label, ...).

Parameter subsets (``params``):

* ``"all"``: every parameter. The word embeddings are handled sparsely: a sample's gradient on them has at most one
  row per token, and two samples interact only through the vocabulary rows they share.
* ``"last_layers:N"``: the last ``N`` encoder layers and the classification head.
* ``"classifier"``: the head alone, i.e. every parameter outside the embedding block and the encoder layers (BERT:
  the pooler and ``classifier``; XLM-R: ``classifier.dense`` and ``classifier.out_proj``).
* ``"embeddings"``: the word embeddings alone ("TracIn-WE", Yeh et al. 2022).
* ``"re:<regex>"``: the parameters whose name matches the regular expression (``re.search``).

Encoder layers are found generically, as the ``ModuleList`` named ``encoder.layer`` (BERT, XLM-R, ...) or ``layers``.
:func:`select_parameters` shows what a spec selects on a given model.

**Default for the book: ``"last_layers:1"``** (:data:`DEFAULT_PARAMS`), the last encoder layer and the head.

* Cost: only that layer is back-propagated and compared. For multilingual-e5-small (the embedded model) that is
  1.9M of 118M parameters (33M with a 30k-token trimmed vocabulary); for XLM-R base 7.7M of 278M. The whole model
  (``"all"``: 21M dense parameters per sample for e5-small, plus the sparse word embeddings) is affordable on CPU
  too: on the default run (1,000 training x 175 test samples, 3 checkpoints) it took 2.3x the time of the
  fine-tuning that produced the checkpoints, both on one thread, with a peak of 7.6 GiB (``benchmarks/tracin.py
  --mode full``, README); the largest cost is the products of per-example gradients, ``2 n_test P`` operations per
  training sample and checkpoint (7.4 GFLOP here), then back-propagation and forming the gradients.
* Bias: word-embedding TracIn (``"embeddings"``) can only connect samples that share subword tokens, so across
  scripts (e.g. Russian and English) it sees little more than ``<s>``, ``</s>`` and punctuation: it structurally
  under-states exactly the cross-lingual influence the book studies. The last layer sees every sample through the
  same representation space, whatever its script. The head alone (``"classifier"``) is the cheapest option but
  suffers from the cancellation effect described by Yeh et al. (its gradient is rank one per sample).

How it is computed (lessons from captum, kronfluence, TRAK, dattri, bergson and LESS; see the design notes):

* Each checkpoint is loaded once and put in ``eval()`` mode (no dropout). For each chunk of test samples, the
  per-example test gradients are computed once and kept as a *bank*; the training set is then streamed through it in
  *blocks* of up to ``_MAX_TRAIN_BLOCK`` (256) samples, so memory depends on the block and the test chunk, never on
  the number of training samples. Both are sized from free memory (:meth:`TracIn._plan`; ``test_chunk_size`` fixes
  the chunk); each extra test chunk costs one more pass over the training set. The default run's full-model bank
  (175 test samples) fits in one chunk.
* Per-example gradients come from module hooks, not from ``B`` backward passes: one forward pass records each scored
  module's input ``x`` and ``torch.autograd.grad`` returns the gradient ``delta`` of the summed loss with respect to
  its output (no weight gradient is ever formed by autograd; layers below the subset run without a graph). For a
  Linear layer the per-example weight gradient is ``sum_t delta_t x_t^T``, for a LayerNorm ``sum_t delta_t * xhat_t``,
  for an embedding the rows ``sum_{t: id_t = v} delta_t``.
* Linear weight gradients are kept *factored*: the ``x_t`` and ``delta_t`` of every token, ``T (d_in + d_out)``
  numbers instead of ``d_in d_out`` (for e5-small about 0.3 MB per token against 86 MB per sample dense, so the
  default run's full-model test bank takes about 2 GB instead of 15 GB). Scoring forms the per-example gradients of
  a training block and of the bank one tile of a weight's rows at a time (one batched matmul per batch, into reused
  buffers) and multiplies the two tiles (one GEMM, ``block x bank``, per tile); the bank is formed once and kept when
  that fits in memory (``"last_layers:1"``), else formed again for every block, which costs
  ``n_test T' / (block T)`` of the training side's forming (about 0.7 for the default run). A block of hundreds of
  samples keeps the GEMM compute-bound: a batch of 32 against a bank streamed from memory ran at a third of the speed.
  The alternative "ghost" contraction ``sum_{t,s} (x_t . x'_s)(delta_t . delta'_s)`` costs ``2 T T' (d_in + d_out)``
  per pair instead of ``2 d_in d_out`` (+ forming, shared by all test samples), which only pays for sequences
  shorter than ``d_in d_out / (d_in + d_out)`` tokens against *one* test sample (about 4-6x more work at the default
  run's 37 tokens); self-influence (one pair per sample) uses it whenever it is cheaper.
* Memory is reused: the factors, bank and blocks live in arenas (:class:`_Arena`) refilled from one block, chunk and
  checkpoint to the next, and tiles in kept buffers, because on CPU touching memory fresh from the OS costs more
  than the arithmetic done on it (measured here, in a virtual machine: from 0.3 to about 4 s per GB).
* Word embeddings are never densified: each sample's gradient is coalesced into (token id, row) pairs, the test bank
  is sorted by token id, and every (training row, test row) pair with the same id adds ``row . row'`` to its score.
* Padding: batches are padded to their longest sample (samples are grouped by length to waste little) and the
  attention mask is built from the lengths; padded positions are masked out of every per-example gradient, and
  embedding rows of the padding id get no gradient, as in autograd. Scores do not depend on batch size or padding.
* Precision: fp32 everywhere by default. On CUDA, ``dtype="bf16"`` runs the model under bf16 autocast and keeps the
  bank and per-example gradients in bf16, with every product accumulated and returned in fp32
  (``torch.mm(..., out_dtype=torch.float32)``); it is gated against fp32 by the tests marked ``gpu`` (Spearman >= 0.99
  per test column, top-10 overlap >= 9/10). TF32 matmuls, if enabled globally, weaken the fp32 guarantee.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .runtime import progress_interval
from .artifacts import replace_dir
from .models import pad_batch

#: The parameter subset the book uses unless a profile says otherwise (see the module docstring for why).
DEFAULT_PARAMS = "last_layers:1"
SIMILARITIES = ("dot", "cosine")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
KINDS = ("proponents", "opponents")
PARAMS_FORMS = "'all', 'classifier', 'last_layers:N' (N >= 1), 'embeddings' or 're:<regex>'"

#: Elements of the (pairs x hidden) product computed at once when scoring shared word-embedding rows.
_PAIR_ELEMENTS = 1 << 24
#: Training batches read, sorted by length and split at once (bounds memory while keeping padding low).
_SORT_WINDOW = 32


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints and parameter subsets


@dataclass(frozen=True)
class Checkpoint:
    """A saved model (a ``save_pretrained`` directory) and the learning rate in force when it was saved."""

    path: str | Path
    learning_rate: float
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"Checkpoint learning_rate must be > 0, got {self.learning_rate!r}")
        if self.name is None:
            object.__setattr__(self, "name", Path(self.path).name)


def _params_error(spec: object, why: str = "") -> ValueError:
    return ValueError(f"params={spec!r} is not a parameter subset{': ' + why if why else ''}; "
                      f"allowed: {PARAMS_FORMS}")


def _check_params_form(params: object) -> None:
    """Model-independent validation of a ``params`` spec (the model-dependent part is in select_parameters)."""
    if not isinstance(params, str) or not re.fullmatch(r"all|classifier|embeddings|last_layers:\d+|re:.+", params):
        raise _params_error(params)
    if params.startswith("last_layers:") and int(params.split(":")[1]) < 1:
        raise _params_error(params, "N must be >= 1")
    if params.startswith("re:"):
        try:
            re.compile(params[3:])
        except re.error as err:
            raise _params_error(params, f"bad regular expression ({err})") from err


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of encoder layers: the ``ModuleList`` named ``*encoder.layer`` (or ``*layers``)."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    for pattern in (r"(^|.*\.)encoder\.layers?", r"(^|.*\.)layers?"):
        found = [(name, m) for name, m in lists if re.fullmatch(pattern, name)]
        if len(found) == 1:
            return found[0]
    raise ValueError(f"cannot find the encoder layers of {type(model).__name__}: expected one ModuleList named "
                     f"'encoder.layer' or 'layers', found {[name for name, _ in lists]}")


def _embeddings_prefix(model: nn.Module, layers_prefix: str) -> str:
    """Name prefix of the embedding block: the module holding the word embeddings (``bert.embeddings.``), or the
    word embeddings alone when their parent also holds the encoder layers (``model.embed_tokens.``)."""
    word = model.get_input_embeddings()
    name = next(name for name, m in model.named_modules() if m is word)
    parent = name.rpartition(".")[0]
    return (parent if parent and not layers_prefix.startswith(parent + ".") else name) + "."


def select_parameters(model: nn.Module, params: str = DEFAULT_PARAMS) -> dict[str, nn.Parameter]:
    """The parameters a ``params`` spec selects, by name, in the model's order (see the module docstring).

    Raises ``ValueError`` naming ``params`` for an unknown or empty spec.
    """
    _check_params_form(params)
    named = dict(model.named_parameters())
    if params == "all":
        names = list(named)
    elif params == "embeddings":
        word = model.get_input_embeddings()
        names = [f"{name}.weight" for name, m in model.named_modules() if m is word]
    elif params == "classifier" or re.fullmatch(r"last_layers:\d+", params):
        prefix, layers = encoder_layers(model)
        outside = (prefix + ".", _embeddings_prefix(model, prefix))
        head = {name for name in named if not name.startswith(outside)}
        stems: tuple[str, ...] = ()
        if params != "classifier":
            n = int(params.split(":")[1])
            if n > len(layers):
                raise _params_error(params, f"the model has {len(layers)} encoder layers")
            stems = tuple(f"{prefix}.{k}." for k in range(len(layers) - n, len(layers)))
        names = [name for name in named if name in head or name.startswith(stems)]
    else:  # "re:<regex>"
        names = [name for name in named if re.search(params[3:], name)]
    if not names:
        raise _params_error(params, "it selects no parameter of this model")
    return {name: named[name] for name in names}


# ----------------------------------------------------------------------------------------------------------------
# Examples and batches


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


# ----------------------------------------------------------------------------------------------------------------
# Per-example gradients of the scored modules


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` accumulated and returned in fp32 (bf16 inputs use cuBLAS's fp32-output GEMM)."""
    if a.dtype == torch.bfloat16:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b)


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched ``a @ b``, accumulated and returned in fp32."""
    if a.dtype == torch.bfloat16:
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a, b)


def _sq_norms(block: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each row of a (B, D) block, accumulated in fp32 without an fp32 copy of the block."""
    return _bmm(block[:, None, :], block[:, :, None]).view(-1)


def _tokens(x: torch.Tensor, delta: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Module input and output gradient as (B, T, d), the gradient zeroed at padded positions."""
    b = valid.shape[0]
    x, delta = x.reshape(b, -1, x.shape[-1]), delta.reshape(b, -1, delta.shape[-1])
    if delta.shape[1] == valid.shape[1]:
        delta = delta * valid[:, :, None].to(delta.dtype)
    return x, delta


@dataclass
class _Rows:
    """Coalesced embedding-gradient rows, sorted by (token, sample): ``values[r]`` is the gradient of row
    ``token[r]`` of the embedding matrix for sample ``sample[r]``."""

    sample: torch.Tensor
    token: torch.Tensor
    values: torch.Tensor  # (N, d) fp32


def _coalesce(ids: torch.Tensor, delta: torch.Tensor, valid: torch.Tensor, padding_idx: int | None) -> _Rows:
    keep = valid if padding_idx is None else valid & (ids != padding_idx)
    b, t = keep.nonzero(as_tuple=True)
    n = ids.shape[0]
    key = ids[b, t] * n + b
    unique, inverse = torch.unique(key, return_inverse=True)
    values = torch.zeros(len(unique), delta.shape[-1], dtype=torch.float32, device=delta.device)
    values.index_add_(0, inverse, delta[b, t].float())
    return _Rows(sample=unique % n, token=unique // n, values=values)


class _Workspace:
    """Reusable output buffers for per-example gradient tiles, one flat buffer per role (training tile, bank tile,
    ...). A tile is tens to hundreds of MB; on CPU, allocating it afresh for every module and block costs more than the
    matmul that fills it (the allocator maps new pages), so each role's buffer is kept (grown when needed). A tile is
    consumed (copied or multiplied) before its role's buffer is taken again."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, role: str) -> torch.Tensor:
        key = (role, dtype, device)
        numel = math.prod(shape)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            self._buffers.pop(key, None)
            buffer = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel].view(shape)


class _Arena:
    """Tensors bump-allocated in a few large slabs that are kept and refilled (:meth:`reset`) from one run of samples
    to the next (training blocks, test chunks, checkpoints). The per-example gradients of a training block are GBs;
    allocated afresh for every block, they would be handed back to the OS and faulted in again each time, which on
    CPU (worst in a virtual machine: seconds per GB) costs more than the products computed from them."""

    SLAB = 1 << 27  # bytes
    ALIGN = 64

    def __init__(self, device: torch.device):
        self.device = device
        self.slabs: list[torch.Tensor] = []
        self.reset()

    def reset(self) -> None:
        self._slab, self._used = 0, 0

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * (torch.finfo(dtype).bits // 8)
        while self._slab < len(self.slabs) and self._used + nbytes > self.slabs[self._slab].numel():
            self._slab, self._used = self._slab + 1, 0
        if self._slab == len(self.slabs):
            self.slabs.append(torch.empty(max(self.SLAB, nbytes), dtype=torch.uint8, device=self.device))
        out = self.slabs[self._slab][self._used:self._used + nbytes].view(dtype).view(shape)
        self._used += -(-nbytes // self.ALIGN) * self.ALIGN
        return out


class _Scored:
    """A module some of whose parameters are scored, and how to get its per-example gradient."""

    sparse = False
    #: Whether the weight's per-example gradient is kept in factored form (a Linear weight: see ``factors``).
    factored = False

    def __init__(self, name: str, module: nn.Module, weight: bool, bias: bool):
        self.name, self.module, self.weight, self.bias = name, module, weight, bias

    def sizes(self) -> list[int]:
        """Sizes of the dense parameter blocks (one per scored parameter: weight, then bias)."""
        sizes = []
        if self.weight:
            sizes.append(self.module.weight.numel())
        if self.bias:
            sizes.append(self.module.bias.numel())
        return sizes

    def block_sizes(self) -> list[int]:
        """Sizes of the blocks :meth:`blocks` returns (every scored parameter but a factored weight)."""
        return self.sizes()[1:] if self.factored else self.sizes()

    def blocks(self, x: torch.Tensor, delta: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype,
               workspace: _Workspace) -> list[torch.Tensor]:
        """Per-example gradients, one (B, size) block per scored parameter (but a factored weight), in ``dtype``."""
        raise NotImplementedError

    def sq_norms(self, x: torch.Tensor, delta: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype,
                 workspace: _Workspace) -> torch.Tensor:
        """Squared norm of each sample's gradient on the scored parameters (fp32, (B,))."""
        return sum(_sq_norms(block) for block in self.blocks(x, delta, valid, dtype, workspace))


def _weight_tile(parts: list[tuple[torch.Tensor, torch.Tensor]], r0: int, r1: int, out: torch.Tensor) -> torch.Tensor:
    """Rows ``r0:r1`` of every sample's Linear weight gradient ``sum_t delta_t x_t^T``, from its factors (``x``
    (B, T, d_in) and ``delta`` (B, T, d_out) per batch, samples in order), flattened into ``out`` (n, (r1-r0) d_in)."""
    a = 0
    for x, delta in parts:
        b = a + x.shape[0]
        torch.bmm(delta[:, :, r0:r1].transpose(1, 2), x, out=out[a:b].view(b - a, r1 - r0, x.shape[-1]))
        a = b
    return out


def _weight_sq_norms(x: torch.Tensor, delta: torch.Tensor, workspace: _Workspace) -> torch.Tensor:
    """Squared norm of each sample's weight gradient from its factors (x (B, T, d_in), delta (B, T, d_out)): the
    ghost norm ``sum_{t,s} (x_t.x_s)(delta_t.delta_s)`` when it is cheaper than forming the gradient."""
    t, d_in, d_out = x.shape[1], x.shape[-1], delta.shape[-1]
    if t * (d_in + d_out) < d_in * d_out:
        return (_bmm(x, x.transpose(1, 2)) * _bmm(delta, delta.transpose(1, 2))).sum((1, 2))
    out = workspace.take((x.shape[0], d_out * d_in), x.dtype, x.device, "weight")
    return _sq_norms(_weight_tile([(x, delta)], 0, d_out, out))


class _Linear(_Scored):
    """A Linear layer. Its weight's per-example gradient ``sum_t delta_t x_t^T`` has rank at most the sample's length,
    so it is kept as its factors (``x``, ``delta``: ``T (d_in + d_out)`` numbers instead of ``d_in d_out``) and formed
    only when multiplied, a tile of rows at a time (:func:`_weight_tile`)."""

    @property
    def factored(self) -> bool:  # type: ignore[override]
        return self.weight

    def factors(self, x: torch.Tensor, delta: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype,
                arena: _Arena, copies: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (B, T, d_in), delta (B, T, d_out)) copied into the arena in ``dtype``, delta zeroed at padded
        positions. ``copies`` maps inputs already copied in this batch (the query, key and value layers share
        theirs) to their copy."""
        b = valid.shape[0]
        x, delta = x.reshape(b, -1, x.shape[-1]), delta.reshape(b, -1, delta.shape[-1])
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()))
        if key not in copies:
            copies[key] = arena.take(tuple(x.shape), dtype).copy_(x)
        out = arena.take(tuple(delta.shape), dtype)
        if delta.shape[1] == valid.shape[1]:
            torch.mul(delta, valid[:, :, None], out=out)
        else:
            out.copy_(delta)
        return copies[key], out

    def blocks(self, x, delta, valid, dtype, workspace):
        """The bias block only (the weight is factored)."""
        if not self.bias:
            return []
        return [_tokens(x, delta, valid)[1].float().sum(1).to(dtype)]

    def sq_norms(self, x, delta, valid, dtype, workspace):
        x, delta = _tokens(x, delta, valid)
        total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        if self.weight:
            total += _weight_sq_norms(x.to(dtype), delta.to(dtype), workspace)
        if self.bias:
            total += delta.float().sum(1).pow(2).sum(1)
        return total


class _LayerNorm(_Scored):
    def blocks(self, x, delta, valid, dtype, workspace):
        x, delta = _tokens(x, delta, valid)
        delta = delta.float()
        out = []
        if self.weight:
            xhat = F.layer_norm(x.float(), self.module.normalized_shape, eps=self.module.eps)
            out.append((delta * xhat).sum(1).to(dtype))
        if self.bias:
            out.append(delta.sum(1).to(dtype))
        return out


class _Embedding(_Scored):
    """A small embedding table (positions, token types): per-example gradients are materialised densely."""

    def rows(self, ids: torch.Tensor, delta: torch.Tensor, valid: torch.Tensor) -> _Rows:
        if ids.shape != valid.shape:
            raise RuntimeError(f"{self.name}: expected token ids shaped like the batch {tuple(valid.shape)}, "
                               f"got {tuple(ids.shape)}")
        return _coalesce(ids, delta, valid, self.module.padding_idx)

    def blocks(self, x, delta, valid, dtype, workspace):
        rows = self.rows(x, delta, valid)
        dense = workspace.take((valid.shape[0], *self.module.weight.shape), dtype, delta.device, "embedding").zero_()
        dense[rows.sample, rows.token] = rows.values.to(dtype)
        return [dense.flatten(1)]

    def sq_norms(self, x, delta, valid, dtype, workspace):
        rows = self.rows(x, delta, valid)
        out = torch.zeros(valid.shape[0], dtype=torch.float32, device=delta.device)
        return out.index_add_(0, rows.sample, rows.values.pow(2).sum(1))


class _WordEmbedding(_Embedding):
    """The word embeddings: per-example gradients stay sparse (one row per distinct token of the sample)."""

    sparse = True

    def sizes(self):
        return []


def _scored_modules(model: nn.Module, selected: dict[str, nn.Parameter]) -> list[_Scored]:
    """Group the selected parameters by module, in model order; refuse modules whose gradient we cannot split."""
    word = model.get_input_embeddings()
    kinds: list[tuple[type[nn.Module], type[_Scored]]] = [(nn.Linear, _Linear), (nn.LayerNorm, _LayerNorm),
                                                         (nn.Embedding, _Embedding)]
    owners = {id(p): [] for p in selected.values()}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in owners:
                owners[id(p)].append((mname, module, pname))
    scored: dict[str, _Scored] = {}
    for name, p in selected.items():
        if len(owners[id(p)]) != 1:
            raise NotImplementedError(f"parameter {name} is shared by several modules; TracIn cannot split it")
        mname, module, pname = owners[id(p)][0]
        if mname not in scored:
            kind = next((k for base, k in kinds if isinstance(module, base)), None)
            if kind is None:
                raise NotImplementedError(f"no per-example gradient for {type(module).__name__} module {mname!r} "
                                          f"(supported: Linear, LayerNorm, Embedding); choose another params spec")
            if module is word:
                kind = _WordEmbedding
            scored[mname] = kind(mname, module, weight=False, bias=False)
        if pname not in ("weight", "bias"):
            raise NotImplementedError(f"unexpected parameter {name} in {type(module).__name__} {mname!r}")
        setattr(scored[mname], pname, True)
    return list(scored.values())


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


# ----------------------------------------------------------------------------------------------------------------
# Test bank and scoring


#: Elements of one sample's Linear weight gradient formed at once when scoring (a tile of the weight's rows).
_TILE_ELEMENTS = 1 << 18
#: Most training samples scored against the test bank at once (a *training block*; see TracIn._plan).
_MAX_TRAIN_BLOCK = 256


def _tile_rows(d_out: int, d_in: int) -> int:
    """Rows per tile of a (d_out, d_in) weight gradient: even tiles of at most ``_TILE_ELEMENTS`` elements."""
    tiles = math.ceil(d_out * d_in / _TILE_ELEMENTS)
    return math.ceil(d_out / tiles)


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


def _addmm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out += a @ b.T``, accumulated in fp32."""
    if a.dtype == torch.bfloat16:
        out += _mm(a, b.T)
    else:
        out.addmm_(a, b.T)


def _sparse_scores(train: _Rows, bank: _Rows, out: torch.Tensor) -> None:
    """``out[i, j] += sum over shared tokens v of row_i[v] . row_j[v]`` (bank rows sorted by token)."""
    lo = torch.searchsorted(bank.token, train.token, side="left")
    counts = torch.searchsorted(bank.token, train.token, side="right") - lo
    total = int(counts.sum())
    if total == 0:
        return
    tr = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts, output_size=total)
    starts = torch.cumsum(counts, 0) - counts
    te = lo[tr] + torch.arange(total, device=counts.device) - starts[tr]
    flat, n = out.view(-1), out.shape[1]
    step = max(1, _PAIR_ELEMENTS // train.values.shape[1])
    for s in range(0, total, step):
        a, b = tr[s:s + step], te[s:s + step]
        dots = (train.values[a] * bank.values[b]).sum(1)
        flat.index_add_(0, train.sample[a] * n + bank.sample[b], dots)


# ----------------------------------------------------------------------------------------------------------------
# Results


def top_rows(values: np.ndarray, k: int, kind: str = "proponents") -> np.ndarray:
    """(k, n_test) training rows of the ``k`` highest (proponents) or lowest (opponents) scores of each column of a
    (n_train, n_test) matrix, strongest first; ties broken by the lower training row. The one definition of "the
    top-k" that :meth:`InfluenceScores.top_k` and every analysis use."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    if not 1 <= k <= values.shape[0]:
        raise ValueError(f"k={k} must be in 1..{values.shape[0]} (the number of training samples)")
    signed = -values if kind == "proponents" else values
    return np.argsort(signed, axis=0, kind="stable")[:k]


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


def _write_atomically(directory: Path, write: Callable[[Path], None]) -> Path:
    """Write into a temporary sibling directory, then rename it into place (replacing any earlier result)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


@dataclass
class InfluenceScores:
    """TracIn scores of every (training, test) pair, per checkpoint, with the ids of rows and columns.

    ``per_checkpoint[c, i, j]`` is checkpoint ``c``'s score (learning rate included) of training row ``i`` on test
    column ``j``; ``train_ids``/``test_ids`` have one row per sample, aligned with rows/columns.
    """

    per_checkpoint: np.ndarray
    checkpoints: list[str]
    learning_rates: list[float]
    train_ids: pd.DataFrame
    test_ids: pd.DataFrame
    similarity: str = "dot"
    params: str = DEFAULT_PARAMS
    #: From ``TracIn(groups=...)``: per group, its ``spec``, ``dot`` scores (like ``per_checkpoint``) and the squared
    #: gradient norms ``train_sq`` (n_checkpoints, n_train) and ``test_sq`` (n_checkpoints, n_test).
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)

    def group(self, name: str, similarity: str = "dot") -> InfluenceScores:
        """One group's scores as a plain :class:`InfluenceScores` (``cosine``: each checkpoint's dot products divided
        by the two gradient norms, as ``TracIn(params=spec, similarity="cosine")`` computes them)."""
        if name not in self.groups:
            raise ValueError(f"group {name!r} is not one of {list(self.groups)}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity={similarity!r} is not one of {SIMILARITIES}")
        g = self.groups[name]
        values = g["dot"]
        if similarity == "cosine":
            tiny = np.finfo(np.float32).tiny
            norms = (np.sqrt(np.maximum(g["train_sq"], tiny))[:, :, None]
                     * np.sqrt(np.maximum(g["test_sq"], tiny))[:, None, :])
            values = (values / norms).astype(np.float32)
        return InfluenceScores(values, list(self.checkpoints), list(self.learning_rates), self.train_ids,
                               self.test_ids, similarity=similarity, params=g["spec"])

    def __post_init__(self) -> None:
        c, n_train, n_test = self.per_checkpoint.shape
        if (len(self.checkpoints), len(self.learning_rates), len(self.train_ids), len(self.test_ids)) != (
                c, c, n_train, n_test):
            raise ValueError(f"scores of shape {self.per_checkpoint.shape} do not match {len(self.checkpoints)} "
                             f"checkpoints, {len(self.train_ids)} training ids and {len(self.test_ids)} test ids")

    @property
    def total(self) -> np.ndarray:
        """(n_train, n_test) sum over checkpoints."""
        return self.per_checkpoint.sum(0, dtype=np.float64).astype(np.float32)

    def matrix(self, checkpoint: str | None = None) -> np.ndarray:
        """The scores of one checkpoint (by name), or the total when ``checkpoint`` is None."""
        if checkpoint is None:
            return self.total
        if checkpoint not in self.checkpoints:
            raise ValueError(f"checkpoint={checkpoint!r} is not one of {self.checkpoints}")
        return self.per_checkpoint[self.checkpoints.index(checkpoint)]

    def top_k(self, k: int, kind: str = "proponents", checkpoint: str | None = None) -> pd.DataFrame:
        """The ``k`` most positive (proponents) or most negative (opponents) training samples of every test sample.

        A long table: ``test_row, rank (1 = strongest), train_row, score``, then the test id columns prefixed
        ``test_`` and the training id columns prefixed ``train_``. Ties are broken by training row.
        """
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {KINDS}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        scores = self.matrix(checkpoint)
        k = min(int(k), scores.shape[0])
        cols = np.arange(scores.shape[1])
        train_rows = top_rows(scores, k, kind)
        table = pd.DataFrame({
            "test_row": np.repeat(cols, k),
            "rank": np.tile(np.arange(1, k + 1), len(cols)),
            "train_row": train_rows.T.reshape(-1),
        })
        table["score"] = scores[table["train_row"].to_numpy(), table["test_row"].to_numpy()]
        test = self.test_ids.add_prefix("test_").iloc[table["test_row"]].reset_index(drop=True)
        train = self.train_ids.add_prefix("train_").iloc[table["train_row"]].reset_index(drop=True)
        return pd.concat([table, test, train], axis=1)

    def save(self, directory: str | Path) -> Path:
        """Write ``scores.npy``, ``train_ids.parquet``, ``test_ids.parquet`` and ``meta.json`` (atomically)."""
        meta = {"groups": {g: v["spec"] for g, v in self.groups.items()}, "checkpoints": list(self.checkpoints), "learning_rates": [float(x) for x in self.learning_rates],
                "similarity": self.similarity, "params": self.params, "shape": list(self.per_checkpoint.shape)}

        def write(tmp: Path) -> None:
            np.save(tmp / "scores.npy", np.ascontiguousarray(self.per_checkpoint, dtype=np.float32))
            self.train_ids.to_parquet(tmp / "train_ids.parquet", index=False)
            self.test_ids.to_parquet(tmp / "test_ids.parquet", index=False)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            if self.groups:
                np.savez(tmp / "groups.npz", **{f"{g}/{key}": v[key] for g, v in self.groups.items()
                                                for key in ("dot", "train_sq", "test_sq")})

        return _write_atomically(Path(directory), write)

    @classmethod
    def load(cls, directory: str | Path) -> InfluenceScores:
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        return cls(per_checkpoint=np.load(directory / "scores.npy"), checkpoints=meta["checkpoints"],
                   learning_rates=meta["learning_rates"], train_ids=pd.read_parquet(directory / "train_ids.parquet"),
                   test_ids=pd.read_parquet(directory / "test_ids.parquet"), similarity=meta["similarity"],
                   params=meta["params"], groups=cls._load_groups(directory, meta.get("groups", {})))

    @staticmethod
    def _load_groups(directory: Path, specs: dict[str, str]) -> dict[str, dict[str, Any]]:
        if not specs:
            return {}
        with np.load(directory / "groups.npz") as arrays:
            return {g: {"spec": spec, **{key: arrays[f"{g}/{key}"] for key in ("dot", "train_sq", "test_sq")}}
                    for g, spec in specs.items()}


@dataclass
class SelfInfluence:
    """Self-influence ``sum_c lr_c ||g_c(i)||^2`` of every training sample (``np.asarray`` gives per_checkpoint)."""

    per_checkpoint: np.ndarray  # (n_checkpoints, n_train)
    checkpoints: list[str]
    learning_rates: list[float]
    train_ids: pd.DataFrame

    @property
    def total(self) -> np.ndarray:
        return self.per_checkpoint.sum(0, dtype=np.float64).astype(np.float32)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self.per_checkpoint if dtype is None else self.per_checkpoint.astype(dtype)

    def to_frame(self) -> pd.DataFrame:
        """The training ids with a ``self_influence`` column (total) and one column per checkpoint."""
        frame = self.train_ids.copy()
        frame["self_influence"] = self.total
        for name, values in zip(self.checkpoints, self.per_checkpoint):
            frame[f"self_influence_{name}"] = values
        return frame


# ----------------------------------------------------------------------------------------------------------------
# The engine


def _free_memory(device: torch.device) -> int:
    """Bytes of memory free on ``device`` (CPU: available system memory)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


@dataclass(frozen=True)
class Plan:
    """How :meth:`TracIn.scores` walks the data: test samples per bank (each chunk is one more pass over the training
    set), training samples scored against the bank at once, and whether the bank's Linear weight gradients are
    formed once and kept (``dense_bank``) or kept factored and formed again for every training block.

    A training row's scores depend only on its block (the rows ``[b * train_block, (b + 1) * train_block)``) and the
    bank, never on the other blocks: runs that share a plan give bit-identical rows however the blocks are split
    among processes (:mod:`helpers.tracin_shard`)."""

    test_chunk: int
    train_block: int
    dense_bank: bool



def shard_blocks(n_train: int, train_block: int, rank: int, world: int) -> list[range]:
    """The training blocks process ``rank`` of ``world`` scores: blocks ``rank, rank + world, ...`` (interleaved, so
    that every process gets a similar mix of the length-sorted data)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    starts = range(0, n_train, train_block)
    return [range(a, min(a + train_block, n_train)) for b, a in enumerate(starts) if b % world == rank]


def _default_loader(path: str) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path)


class TracIn:
    """TracIn over saved checkpoints (see the module docstring).

    Args:
        checkpoints: the checkpoints, each with its learning rate, in training order.
        params: parameter subset spec: ``"all"``, ``"classifier"``, ``"last_layers:N"``, ``"embeddings"`` or
            ``"re:<regex>"``; default :data:`DEFAULT_PARAMS`.
        similarity: ``"dot"`` or ``"cosine"``.
        device: ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``), or None for CUDA when available.
        dtype: ``"fp32"``, or ``"bf16"`` on CUDA (bf16 products, fp32 accumulation).
        batch_size: samples per forward/backward pass (results do not depend on it).
        test_chunk_size: test samples per bank; None sizes it from free memory.
        model_loader: callable path -> model; default ``AutoModelForSequenceClassification.from_pretrained``.
        groups: optional ``{name: params spec}``, each a union of whole modules within ``params`` (e.g. with
            ``params="all"``: ``{"head": "classifier", "last": "last_layers:1", "words": "embeddings"}``). Dot
            products are additive over parameters, so one pass also yields every group's dot scores and squared
            gradient norms (``InfluenceScores.groups``; :meth:`InfluenceScores.group` gives a group's dot or cosine
            scores), exactly as separate runs with ``params=<spec>`` would.
    """

    def __init__(self, checkpoints: Sequence[Checkpoint], params: str = DEFAULT_PARAMS, similarity: str = "dot",
                 device: str | torch.device | None = None, dtype: str = "fp32", batch_size: int = 32,
                 test_chunk_size: int | None = None, model_loader: Callable[[str], nn.Module] | None = None,
                 groups: dict[str, str] | None = None):
        self.checkpoints = list(checkpoints)
        if not self.checkpoints or not all(isinstance(c, Checkpoint) for c in self.checkpoints):
            raise ValueError("checkpoints must be a non-empty list of Checkpoint")
        names = [c.name for c in self.checkpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"checkpoint names must be unique, got {names}")
        _check_params_form(params)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity={similarity!r} is not one of {SIMILARITIES}")
        self.device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {tuple(DTYPES)}")
        if dtype == "bf16" and self.device.type != "cuda":
            raise ValueError("dtype='bf16' needs device='cuda'; use dtype='fp32' on CPU")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if test_chunk_size is not None and (not isinstance(test_chunk_size, int) or test_chunk_size < 1):
            raise ValueError(f"test_chunk_size must be None or a positive integer, got {test_chunk_size!r}")
        self.params, self.similarity, self.dtype = params, similarity, dtype
        self.batch_size, self.test_chunk_size = batch_size, test_chunk_size
        self.model_loader = model_loader or _default_loader
        self.groups = dict(groups or {})
        for spec in self.groups.values():
            _check_params_form(spec)

    # -- loading -----------------------------------------------------------------------------------------------

    def _load(self, checkpoint: Checkpoint) -> tuple[nn.Module, list[_Scored], int]:
        model = self.model_loader(str(checkpoint.path))
        model.eval()
        model.to(device=self.device, dtype=torch.float32)
        selected = select_parameters(model, self.params)
        for name, p in model.named_parameters():
            p.requires_grad_(name in selected)
        pad_id = model.config.pad_token_id
        return model, _scored_modules(model, selected), 0 if pad_id is None else int(pad_id)

    @property
    def _storage(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def _signatures(self, model: nn.Module, scored: list[_Scored]) -> list[frozenset]:
        """For each scored module, the set of groups it belongs to (a group must hold whole modules)."""
        names = {id(p): n for n, p in model.named_parameters()}
        chosen = {g: set(select_parameters(model, spec)) for g, spec in self.groups.items()}
        scored_names: set[str] = set()
        signatures = []
        for sc in scored:
            mine = {names[id(getattr(sc.module, a))] for a in ("weight", "bias") if getattr(sc, a)}
            scored_names |= mine
            partial = [g for g, sel in chosen.items() if mine & sel and not mine <= sel]
            if partial:
                raise ValueError(f"group {partial[0]!r} ({self.groups[partial[0]]}) holds only part of module "
                                 f"{sc.name!r}; groups must hold whole modules")
            signatures.append(frozenset(g for g, sel in chosen.items() if mine <= sel))
        for g, sel in chosen.items():
            if sel - scored_names:
                raise ValueError(f"group {g!r} ({self.groups[g]}) selects parameters outside params={self.params!r}, "
                                 f"e.g. {sorted(sel - scored_names)[0]}")
        return signatures

    def _plan(self, scored: list[_Scored], train: _Examples, test: _Examples) -> Plan:
        """Test chunk, training block and bank form, from half the free memory (:class:`Plan`)."""
        elem = torch.finfo(self._storage).bits // 8
        factored = [s for s in scored if s.factored]
        per_token = sum(s.module.weight.shape[0] + s.module.weight.shape[1] for s in factored) * elem
        per_token += sum(s.module.weight.shape[1] * 4 + 16 for s in scored if s.sparse)  # word-embedding rows
        blocks = sum(sum(s.block_sizes()) for s in scored) * elem + 8
        weights = sum(s.module.weight.numel() for s in factored) * elem
        tile = max((s.module.weight.shape[1] * _tile_rows(*s.module.weight.shape) for s in factored),
                   default=0) * elem

        def tokens(examples: _Examples) -> float:  # per sample, with some room for padding in a sorted batch
            return 1.25 * examples.mean_length() + 1

        train_sample = tokens(train) * per_token + blocks + tile
        bank_factored = tokens(test) * per_token + blocks + tile
        bank_dense = bank_factored - tile + weights  # formed from the factors, then kept
        budget = _free_memory(self.device) // 2
        chunk = test.n if self.test_chunk_size is None else min(self.test_chunk_size, test.n)
        block = min(train.n, _MAX_TRAIN_BLOCK)
        if chunk * bank_dense + block * train_sample <= budget:
            return Plan(test_chunk=chunk, train_block=block, dense_bank=True)
        if self.test_chunk_size is None:
            chunk = int(max(1, min(chunk, budget // 2 // bank_factored)))
        block = int(max(1, min(block, (budget - chunk * bank_factored) // train_sample)))
        return Plan(test_chunk=chunk, train_block=block, dense_bank=False)

    def _probe(self, model: nn.Module, scored: list[_Scored], workspace: _Workspace | None = None) -> _Probe:
        probe = _Probe(model, scored, autocast=torch.bfloat16 if self.dtype == "bf16" else None)
        if workspace is not None:  # kept from one checkpoint to the next
            probe.workspace = workspace
        return probe

    def _collect(self, probe: _Probe, examples: _Examples, rows: range, pad_id: int, bar: tqdm,
                 arena: _Arena, signatures: list[frozenset] | None = None) -> _Grads:
        """Per-example gradients of ``examples[rows]`` (Linear weights factored), in batches of ``batch_size``, stored
        in ``arena`` (reset first). With ``signatures`` (groups), also each group signature's squared norms."""
        arena.reset()
        n, cosine = len(rows), self.similarity == "cosine"
        # In module order (not a set's, which follows string hashing and so differs from one process to the next):
        # a group's norms sum these in this order, and must come out the same in every process and every run.
        group_sq = {sig: torch.zeros(n, dtype=torch.float32, device=self.device)
                    for sig in dict.fromkeys(signatures or [])}
        need_norms = cosine or bool(signatures)
        order: list[np.ndarray] = []
        weights: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        dense: dict[int, list[torch.Tensor]] = {}
        sparse: list[_Rows] = []
        sq = torch.zeros(n, dtype=torch.float32, device=self.device) if cosine else None
        a = 0
        for batch in _batches(examples, rows, self.batch_size, pad_id, self.device):
            b, valid, copies = a + len(batch), batch.valid, {}
            order.append(batch.rows)
            for i, (s, x, delta) in enumerate(probe.run(batch)):
                norms = torch.zeros(len(batch), dtype=torch.float32, device=self.device)
                if s.sparse:
                    r = s.rows(x, delta, valid)
                    sparse.append(_Rows(r.sample + a, r.token, r.values))
                    if need_norms:
                        norms.index_add_(0, r.sample, r.values.pow(2).sum(1))
                else:
                    if s.factored:
                        xf, df = s.factors(x, delta, valid, self._storage, arena, copies)
                        weights.setdefault(i, []).append((xf, df))
                        if need_norms:
                            norms += _weight_sq_norms(xf, df, probe.workspace)
                    stores = dense.setdefault(i, [])
                    for k, block in enumerate(s.blocks(x, delta, valid, self._storage, probe.workspace)):
                        if k == len(stores):
                            stores.append(arena.take((n, block.shape[1]), self._storage))
                        stores[k][a:b] = block
                        if need_norms:
                            norms += _sq_norms(block)
                if cosine:
                    sq[a:b] += norms
                if signatures:
                    group_sq[signatures[i]][a:b] += norms
            bar.update(len(batch))
            a = b
        rows_ = None
        if sparse:
            sample = torch.cat([r.sample for r in sparse])
            token = torch.cat([r.token for r in sparse])
            key = torch.argsort(token * n + sample)  # sorted by token (what _sparse_scores needs of the bank)
            rows_ = _Rows(sample[key], token[key], torch.cat([r.values for r in sparse])[key])
        return _Grads(rows=np.concatenate(order), weights=weights, dense=dense, sparse=rows_, sq_norms=sq,
                      group_sq=group_sq)

    def _score(self, scored: list[_Scored], train: _Grads, bank: _Grads, workspace: _Workspace,
               signatures: list[frozenset] | None = None) -> tuple[torch.Tensor, dict[frozenset, torch.Tensor]]:
        """(train.n, bank.n) scores (dot or cosine, without the learning rate), in the two runs' orders; with
        ``signatures``, also the dot products of each group signature's modules (they sum to the dot product)."""
        parts: dict[frozenset, torch.Tensor] = {}

        def target(i: int) -> torch.Tensor:
            key = signatures[i] if signatures else frozenset()
            if key not in parts:
                parts[key] = torch.zeros(train.n, bank.n, dtype=torch.float32, device=self.device)
            return parts[key]

        sparse_module = None
        for i, s in enumerate(scored):
            if s.sparse:
                sparse_module = i
            if s.factored:
                d_out, d_in = s.module.weight.shape
                step = _tile_rows(d_out, d_in)
                for r0 in range(0, d_out, step):
                    r1 = min(d_out, r0 + step)
                    _addmm(target(i), train.weight_tile(i, r0, r1, workspace, "train"),
                           bank.weight_tile(i, r0, r1, workspace, "bank"))
            for block, store in zip(train.dense.get(i, ()), bank.dense.get(i, ())):
                _addmm(target(i), block, store)
        if train.sparse is not None and bank.sparse is not None:
            _sparse_scores(train.sparse, bank.sparse, target(sparse_module))
        out = sum(parts.values()) if len(parts) != 1 else next(iter(parts.values())).clone()
        if self.similarity == "cosine":
            tiny = torch.finfo(torch.float32).tiny
            out /= train.sq_norms.sqrt().clamp_min(tiny)[:, None]
            out /= bank.sq_norms.sqrt().clamp_min(tiny)[None, :]
        return out, (parts if signatures else {})

    def _bar(self, total: int, progress: bool, what: str) -> tqdm:
        return tqdm(total=total, desc=f"TracIn {what}", unit="sample", disable=not progress,
                    mininterval=progress_interval(), smoothing=0.05)

    # -- public API --------------------------------------------------------------------------------------------

    def plan(self, train_examples: Sequence[Any], test_examples: Sequence[Any]) -> Plan:
        """The :class:`Plan` :meth:`scores` would follow here (from the first checkpoint and the free memory)."""
        train, test = _Examples(train_examples, "train_examples"), _Examples(test_examples, "test_examples")
        model, scored, _ = self._load(self.checkpoints[0])
        try:
            return self._plan(scored, train, test)
        finally:
            del model, scored

    def scores(self, train_examples: Sequence[Any], test_examples: Sequence[Any],
               train_ids: pd.DataFrame | None = None, test_ids: pd.DataFrame | None = None,
               progress: bool = True, plan: Plan | None = None,
               shard: tuple[int, int] | None = None) -> InfluenceScores:
        """Scores of every training sample on every test sample, per checkpoint.

        Examples are pre-tokenised: mappings (or a ``datasets.Dataset``) with ``input_ids`` (unpadded, starting with
        the bos/cls id) and ``label``; other columns are ignored here and become the id tables when ``train_ids`` /
        ``test_ids`` are None. ``plan``: follow this :class:`Plan` instead of sizing one from free memory.
        ``shard=(rank, world)``: score only the training blocks of :func:`shard_blocks` (needs ``plan``, the same in
        every process); the other rows stay 0 (:mod:`helpers.tracin_shard` writes and merges the shards).
        """
        if shard is not None and plan is None:
            raise ValueError("shard=(rank, world) needs the plan every process shares (TracIn.plan on one of them)")
        train, test = _Examples(train_examples, "train_examples"), _Examples(test_examples, "test_examples")
        train_table, test_table = (_ids(train_examples, train_ids, "train_ids"),
                                   _ids(test_examples, test_ids, "test_ids"))
        n_ckpt = len(self.checkpoints)
        out = np.zeros((n_ckpt, train.n, test.n), dtype=np.float32)
        group_dot = {g: np.zeros_like(out) for g in self.groups}
        group_sq = {g: (np.zeros((n_ckpt, train.n), np.float32), np.zeros((n_ckpt, test.n), np.float32))
                    for g in self.groups}
        bar = None
        blocks: list[range] | None = None
        workspace = _Workspace()
        arenas = {k: _Arena(self.device) for k in ("bank", "dense bank", "train")}
        for c, checkpoint in enumerate(self.checkpoints):
            model, scored, pad_id = self._load(checkpoint)
            signatures = self._signatures(model, scored) if self.groups else None
            if blocks is None:  # planned once, on the first checkpoint, so every checkpoint does the same passes
                if plan is None:
                    plan = self._plan(scored, train, test)
                blocks = shard_blocks(train.n, plan.train_block, *(shard or (0, 1)))
                n_chunks = math.ceil(test.n / plan.test_chunk)
                n_rows = sum(len(b) for b in blocks)
                bar = self._bar(len(self.checkpoints) * (test.n + n_chunks * n_rows), progress, "scores")
            bar.set_postfix_str(f"{checkpoint.name}, {n_chunks} test chunk(s)", refresh=False)
            with self._probe(model, scored, workspace) as probe:
                for start in range(0, test.n, plan.test_chunk):
                    bank = self._collect(probe, test, range(start, min(start + plan.test_chunk, test.n)), pad_id, bar,
                                         arenas["bank"], signatures)
                    for g in self.groups:
                        group_sq[g][1][c, bank.rows] = sum(v for k, v in bank.group_sq.items() if g in k).cpu()
                    if plan.dense_bank:
                        arenas["dense bank"].reset()
                        bank.densify(arenas["dense bank"])
                    for rows in blocks:
                        block = self._collect(probe, train, rows, pad_id, bar, arenas["train"], signatures)
                        scores, parts = self._score(scored, block, bank, workspace, signatures)
                        cells = np.ix_(block.rows, bank.rows)
                        out[c][cells] = (scores * checkpoint.learning_rate).cpu().numpy()
                        for g in self.groups:
                            group_dot[g][c][cells] = (sum(v for k, v in parts.items() if g in k)
                                                      * checkpoint.learning_rate).cpu().numpy()
                            if start == 0:
                                group_sq[g][0][c, block.rows] = sum(
                                    v for k, v in block.group_sq.items() if g in k).cpu()
                        del block, scores, parts
                    del bank
            del model, probe
        del arenas, workspace
        bar.close()
        return InfluenceScores(per_checkpoint=out, checkpoints=[c.name for c in self.checkpoints],
                               learning_rates=[c.learning_rate for c in self.checkpoints], train_ids=train_table,
                               test_ids=test_table, similarity=self.similarity, params=self.params,
                               groups={g: {"spec": spec, "dot": group_dot[g], "train_sq": group_sq[g][0],
                                           "test_sq": group_sq[g][1]} for g, spec in self.groups.items()})

    def self_influence(self, train_examples: Sequence[Any], train_ids: pd.DataFrame | None = None,
                       progress: bool = True) -> SelfInfluence:
        """Self-influence ``lr_c ||g_c(i)||^2`` of every training sample, per checkpoint.

        Always the dot product (under cosine similarity every self-score would be ``lr_c``); it equals the diagonal
        of ``TracIn(..., similarity="dot").scores(train, train)``. Linear layers use the ghost norm
        ``sum_{t,s} (x_t.x_s)(delta_t.delta_s)`` when it is cheaper than forming the gradient.
        """
        train = _Examples(train_examples, "train_examples")
        table = _ids(train_examples, train_ids, "train_ids")
        out = np.zeros((len(self.checkpoints), train.n), dtype=np.float32)
        bar = self._bar(len(self.checkpoints) * train.n, progress, "self-influence")
        for c, checkpoint in enumerate(self.checkpoints):
            model, scored, pad_id = self._load(checkpoint)
            bar.set_postfix_str(checkpoint.name, refresh=False)
            with self._probe(model, scored) as probe:
                for batch in _batches(train, range(train.n), self.batch_size, pad_id, self.device):
                    sq = torch.zeros(len(batch), dtype=torch.float32, device=self.device)
                    for s, x, delta in probe.run(batch):
                        sq += s.sq_norms(x, delta, batch.valid, self._storage, probe.workspace)
                    out[c, batch.rows] = (sq * checkpoint.learning_rate).cpu().numpy()
                    bar.update(len(batch))
            del model, probe
        bar.close()
        return SelfInfluence(per_checkpoint=out, checkpoints=[c.name for c in self.checkpoints],
                             learning_rates=[c.learning_rate for c in self.checkpoints], train_ids=table)


# ----------------------------------------------------------------------------------------------------------------
# Precision: bf16 only where it passes the accuracy gates against fp32

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
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"parameter 'precision' is {precision!r}; allowed: ['auto', 'fp32', 'bf16']")
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
