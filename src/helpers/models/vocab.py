"""Vocabulary trimming: keep only the word-embedding rows a run's texts use.

96M of e5-small's 118M parameters (192M of XLM-R base's 278M) are the word-embedding matrix of a 250k vocabulary, of
which one run uses a few ten thousand rows. :func:`trim_vocabulary` and :class:`VocabMap` keep only those rows:
outputs are unchanged and training is much faster on a CPU.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .tokens import SPECIAL_IDS, UNK_ID

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VocabMap:
    """A map between a full vocabulary and a trimmed one: new id ``i`` is old id ``keep_ids[i]``.

    Build it from the token ids a run's texts use with :meth:`from_ids` (the special tokens 0-3 are
    always kept and, being the smallest ids, keep their ids), trim the model with :func:`trim_vocabulary`
    and feed it ``to_new(ids)``. Save it next to a trimmed checkpoint (:meth:`save`) so that its ids can
    be read back with the original tokenizer (:meth:`to_old`).
    """

    keep_ids: np.ndarray  # int64 [n_new], strictly increasing or in any order, unique
    old_vocab_size: int

    def __post_init__(self) -> None:
        keep = np.asarray(self.keep_ids, dtype=np.int64)
        if keep.ndim != 1 or keep.size == 0:
            raise ValueError("keep_ids must be a non-empty 1-D sequence of token ids")
        if keep.min() < 0 or keep.max() >= self.old_vocab_size:
            raise ValueError(f"keep_ids must lie in [0, {self.old_vocab_size})")
        if np.unique(keep).size != keep.size:
            raise ValueError("keep_ids contains duplicates")
        keep.setflags(write=False)
        lut = np.full(self.old_vocab_size, -1, dtype=np.int64)
        lut[keep] = np.arange(keep.size)
        lut.setflags(write=False)
        object.__setattr__(self, "keep_ids", keep)
        object.__setattr__(self, "_lut", lut)

    @classmethod
    def from_ids(cls, token_ids: Iterable[int] | Iterable[Iterable[int]] | np.ndarray,
                 old_vocab_size: int | None = None, specials: Iterable[int] = SPECIAL_IDS) -> VocabMap:
        """Keep every id in ``token_ids`` (flat ids, an array, or lists of token-id lists) plus ``specials``
        (default 0-3; pass ``tokenizer.all_special_ids`` to keep ``<mask>`` too), in increasing order of old
        id. ``old_vocab_size`` defaults to the largest kept id + 1 (ids beyond it count as trimmed away)."""
        used: set[int] = set(int(i) for i in specials)
        if isinstance(token_ids, np.ndarray):
            used.update(np.unique(token_ids).tolist())
        else:
            for item in token_ids:
                if isinstance(item, (int, np.integer)):
                    used.add(int(item))
                else:
                    used.update(np.unique(np.asarray(list(item), dtype=np.int64)).tolist())
        keep = np.array(sorted(used), dtype=np.int64)
        return cls(keep, int(old_vocab_size) if old_vocab_size is not None else int(keep[-1]) + 1)

    @property
    def size(self) -> int:
        """Number of ids in the trimmed vocabulary."""
        return int(self.keep_ids.size)

    def new_id(self, old_id: int) -> int:
        """The new id of one old id (``KeyError`` if it was trimmed away)."""
        new = int(self._lut[int(old_id)])
        if new < 0:
            raise KeyError(f"token id {old_id} is not in the trimmed vocabulary")
        return new

    def to_new(self, old_ids, unknown: str = "error"):
        """Map old ids to new ids: a numpy array or torch tensor of any shape, or a list of id lists.

        ``unknown="error"`` raises on an id that was trimmed away; ``unknown="unk"`` maps it to ``<unk>``.
        """
        if unknown not in ("error", "unk"):
            raise ValueError("unknown must be 'error' or 'unk'")
        if isinstance(old_ids, list) and (not old_ids or not isinstance(old_ids[0], (int, np.integer))):
            return [self.to_new(np.asarray(seq, dtype=np.int64), unknown).tolist() for seq in old_ids]
        is_torch = type(old_ids).__module__.startswith("torch")
        arr = old_ids.cpu().numpy() if is_torch else np.asarray(old_ids, dtype=np.int64)
        in_range = (arr >= 0) & (arr < self.old_vocab_size)
        new = np.where(in_range, self._lut[np.where(in_range, arr, 0)], -1)
        if (new < 0).any():
            missing = np.unique(arr[new < 0])
            if unknown == "error":
                raise KeyError(f"{missing.size} token ids are not in the trimmed vocabulary, e.g. "
                               f"{missing[:5].tolist()}")
            new = np.where(new < 0, self.new_id(UNK_ID), new)
        if is_torch:
            import torch

            return torch.as_tensor(new, device=old_ids.device)
        return new

    def to_old(self, new_ids):
        """Map new ids back to the full vocabulary (same input kinds as :meth:`to_new`)."""
        if isinstance(new_ids, list) and (not new_ids or not isinstance(new_ids[0], (int, np.integer))):
            return [self.keep_ids[np.asarray(seq, dtype=np.int64)].tolist() for seq in new_ids]
        if type(new_ids).__module__.startswith("torch"):
            import torch

            return torch.as_tensor(self.keep_ids[new_ids.cpu().numpy()], device=new_ids.device)
        return self.keep_ids[np.asarray(new_ids, dtype=np.int64)]

    def save(self, path: Path | str) -> None:
        """Write the map as JSON (``old_vocab_size`` and ``keep_ids``)."""
        data = {"old_vocab_size": self.old_vocab_size, "keep_ids": self.keep_ids.tolist()}
        Path(path).write_text(json.dumps(data) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> VocabMap:
        """Read a map written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        return cls(np.asarray(data["keep_ids"], dtype=np.int64), int(data["old_vocab_size"]))


def trim_vocabulary(model, keep_ids: Sequence[int] | np.ndarray | VocabMap):
    """Keep only the word-embedding rows ``keep_ids`` (new id ``i`` = old id ``keep_ids[i]``), in place.

    Updates ``config.vocab_size`` and remaps ``config.pad_token_id`` (which must be kept; the embedding's
    ``padding_idx`` follows it; for RoBERTa/XLM-R it must keep its id) and the bos/eos ids. Feed the trimmed model
    ids mapped with :meth:`VocabMap.to_new`: its outputs equal the full model's on the original ids. Models with an
    output    (language-model) embedding are not supported. Returns ``model``.
    """
    import torch

    if isinstance(keep_ids, VocabMap):
        keep_ids = keep_ids.keep_ids
    keep = np.array(keep_ids, dtype=np.int64)  # a writable copy (torch refuses read-only arrays)
    old = model.get_input_embeddings()
    n_old = old.weight.shape[0]
    if keep.ndim != 1 or keep.size == 0:
        raise ValueError("keep_ids must be a non-empty 1-D sequence of token ids")
    if keep.min() < 0 or keep.max() >= n_old:
        raise ValueError(f"keep_ids must lie in [0, {n_old})")
    if np.unique(keep).size != keep.size:
        raise ValueError("keep_ids contains duplicates")
    if model.get_output_embeddings() is not None:
        raise NotImplementedError("trim_vocabulary does not handle models with an output embedding (LM heads)")
    pad = model.config.pad_token_id
    position = {int(old_id): i for i, old_id in enumerate(keep.tolist())}
    if pad is None or int(pad) not in position:
        raise ValueError(f"the pad token id {pad} must be among keep_ids")
    new_pad = position[int(pad)]
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    if getattr(embeddings, "padding_idx", None) is not None and new_pad != int(pad):
        # RoBERTa/XLM-R number positions from pad_id + 1: the pad id is also an offset and must not move.
        raise ValueError(f"{type(model).__name__} derives position ids from the pad id, so pad ({pad}) must keep "
                         f"its id: put it at index {pad} of keep_ids (VocabMap.from_ids does)")
    # The rows are cut in place, so the module keeps its class and what its forward adds (Gemma-3 multiplies its
    # embeddings by sqrt(hidden) in a subclass of nn.Embedding).
    # The previous implementation built a fresh nn.Embedding, whose initialisation draws from the global torch
    # generator; the same draw is made here so that dropout (which draws next) and so every checkpoint stay
    # bit-identical to runs made before.
    torch.nn.init.normal_(torch.empty(keep.size, old.weight.shape[1], dtype=old.weight.dtype,
                                      device=old.weight.device))
    rows = old.weight.detach()[torch.from_numpy(keep).to(old.weight.device)].clone()
    old.weight = torch.nn.Parameter(rows, requires_grad=old.weight.requires_grad)
    old.num_embeddings = int(keep.size)
    old.padding_idx = new_pad if old.padding_idx is not None else None
    model.config.vocab_size = int(keep.size)
    model.config.pad_token_id = new_pad
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(model.config, attr, None)
        if value is not None:
            setattr(model.config, attr, position.get(int(value)))
    logger.info("Trimmed the vocabulary from %d to %d rows", n_old, keep.size)
    return model
