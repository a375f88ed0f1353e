"""Per-module kernels: the per-example gradient of each kind of scored module (Linear, LayerNorm, Embedding, the
word embeddings) from its input and output gradient, and the products of two runs of gradients (weight tiles,
shared word-embedding rows), all accumulated in fp32."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .memory import _Arena, _Workspace

#: The dtypes per-example gradients are stored in (the ``dtype`` of :class:`~.engine.TracIn`): the concrete
#: values of :data:`helpers.runtime.PRECISIONS` (``auto`` is resolved by :func:`~.precision.choose_dtype`).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: Elements of the (pairs x hidden) product computed at once when scoring shared word-embedding rows.
_PAIR_ELEMENTS = 1 << 24
#: Elements of one sample's Linear weight gradient formed at once when scoring (a tile of the weight's rows).
_TILE_ELEMENTS = 1 << 18


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


class _RMSNorm(_Scored):
    """An RMSNorm (Gemma-3's ``x / rms(x) * (1 + weight)``, Llama's ``... * weight``): either way the weight's
    gradient is the output gradient times the normalised input, summed over positions. Gemma-3 also normalises each
    attention head's queries and keys (``q_norm``, ``k_norm``): their inputs are (batch, tokens, heads, head_dim),
    every head's positions are summed alike."""

    def blocks(self, x, delta, valid, dtype, workspace):
        x, delta = _tokens(x, delta, valid)
        eps = getattr(self.module, "eps", getattr(self.module, "variance_epsilon", None))
        xf = x.float()
        xhat = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return [(delta.float() * xhat).sum(1).to(dtype)]


def _is_rms_norm(module: nn.Module) -> bool:
    """transformers' RMSNorms (one class per model family, no common base): a ``weight`` of the normalised size, an
    epsilon, no bias."""
    return (type(module).__name__.endswith("RMSNorm") and getattr(module, "bias", None) is None
            and (hasattr(module, "eps") or hasattr(module, "variance_epsilon")))


class _Embedding(_Scored):
    """A small embedding table (positions, token types): per-example gradients are materialised densely."""

    def rows(self, ids: torch.Tensor, delta: torch.Tensor, valid: torch.Tensor) -> _Rows:
        if ids.shape != valid.shape:
            raise RuntimeError(f"{self.name}: expected token ids shaped like the batch {tuple(valid.shape)}, "
                               f"got {tuple(ids.shape)}")
        rows = _coalesce(ids, delta, valid, self.module.padding_idx)
        scale = getattr(self.module, "embed_scale", None)  # Gemma: the lookup is multiplied by sqrt(hidden)
        if scale is not None:
            rows.values.mul_(float(scale))
        return rows

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
            if kind is None and _is_rms_norm(module):
                kind = _RMSNorm
            if kind is None:
                raise NotImplementedError(f"no per-example gradient for {type(module).__name__} module {mname!r} "
                                          f"(supported: Linear, LayerNorm, RMSNorm, Embedding); "
                                          "choose another params spec")
            if module is word:
                kind = _WordEmbedding
            scored[mname] = kind(mname, module, weight=False, bias=False)
        if pname not in ("weight", "bias"):
            raise NotImplementedError(f"unexpected parameter {name} in {type(module).__name__} {mname!r}")
        setattr(scored[mname], pname, True)
    return list(scored.values())



# ----------------------------------------------------------------------------------------------------------------
# Products of two runs of per-example gradients


def _tile_rows(d_out: int, d_in: int) -> int:
    """Rows per tile of a (d_out, d_in) weight gradient: even tiles of at most ``_TILE_ELEMENTS`` elements."""
    tiles = math.ceil(d_out * d_in / _TILE_ELEMENTS)
    return math.ceil(d_out / tiles)



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

