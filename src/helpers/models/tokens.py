"""The special-token layout every model here shares, tokenising and padding.

Special-token layout assumed everywhere (XLM-R's, and the smoke tokenizer's): ``<s>``=0, ``<pad>``=1,
``</s>``=2, ``<unk>``=3.
"""

from __future__ import annotations

from collections.abc import Sequence

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_IDS: tuple[int, ...] = (BOS_ID, PAD_ID, EOS_ID, UNK_ID)
SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>")


def tokenize(tokenizer, texts: Sequence[str], max_length: int,
             pairs: Sequence[str] | None = None) -> list[list[int]]:
    """Token ids (with ``<s>``/``</s>``) of every text, truncated to ``max_length``, not padded.

    ``pairs``: a second text per sample (XNLI's hypothesis, PAWS-X's second sentence), encoded as the tokenizer's
    sentence pair (XLM-R: ``<s> A </s></s> B </s>``), truncating the longer of the two first."""
    if isinstance(texts, str):
        raise TypeError("tokenize() takes a sequence of texts, not a single string")
    if pairs is None:
        enc = tokenizer(list(texts), truncation=True, max_length=int(max_length), padding=False)
    else:
        if isinstance(pairs, str) or len(pairs) != len(texts):
            raise ValueError(f"pairs must hold one text per sample: {len(texts)} texts, got {len(pairs)}")
        enc = tokenizer(list(texts), list(pairs), truncation="longest_first", max_length=int(max_length),
                        padding=False)
    return [list(ids) for ids in enc["input_ids"]]


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of similar length, for forward passes whose results do not depend on the order: rows
    sorted by length (stable), cut into batches of ``batch_size``. Padded to their longest row, such batches hold
    about a third fewer tokens than batches in corpus order on the verses here."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start: start + batch_size] for start in range(0, len(order), batch_size)]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = PAD_ID):
    """Right-pad token-id lists into ``(input_ids, attention_mask)`` long tensors."""
    import torch

    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask
