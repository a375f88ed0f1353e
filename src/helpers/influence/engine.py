"""The TracIn engine: :class:`TracIn` walks checkpoints, test chunks and training blocks (:class:`Plan`).

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
* Memory is reused: the factors, bank and blocks live in arenas (:class:`~.memory._Arena`) refilled from one block,
  chunk and checkpoint to the next, and tiles in kept buffers, because on CPU touching memory fresh from the OS costs
  more than the arithmetic done on it (measured here, in a virtual machine: from 0.3 to about 4 s per GB).
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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from ..runtime import progress_interval
from . import subsets
from .grads import _batches, _Examples, _Grads, _ids, _Probe
from .kernels import (
    DTYPES,
    _addmm,
    _Rows,
    _Scored,
    _scored_modules,
    _sparse_scores,
    _sq_norms,
    _tile_rows,
    _weight_sq_norms,
)
from .memory import _Arena, _Workspace
from .scores import SIMILARITIES, InfluenceScores, SelfInfluence
from .spec import Checkpoint, select_parameters
from .subsets import DEFAULT_PARAMS

#: Most training samples scored against the test bank at once (a *training block*; see TracIn._plan).
_MAX_TRAIN_BLOCK = 256


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
    among processes (:mod:`.shard`)."""

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
    """TracIn over saved checkpoints (see the module docstring and :mod:`helpers.influence`).

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
        subsets.check(params)
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
            subsets.check(spec)

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
        every process); the other rows stay 0 (:mod:`.shard` writes and merges the shards).
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

