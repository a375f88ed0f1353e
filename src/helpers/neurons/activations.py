"""Activations of every layer of an encoder, mean-pooled per sample: what neuron probing and translation retrieval
read.

One forward pass with ``output_hidden_states`` gives the embeddings' output and every layer's; each is averaged
over the sample's tokens (attention mask), as Wang et al. (2024) average a word's sub-words. A "neuron" is one
dimension of a layer's output (the residual stream), as in their probing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .. import models


def token_ids(tokenizer, texts: Sequence[str], max_length: int,
              vocab: models.VocabMap | None = None) -> list[list[int]]:
    """Token ids of ``texts`` for a model whose vocabulary may be trimmed (``vocab``: tokens trimmed away become
    ``<unk>``)."""
    ids = models.tokenize(tokenizer, texts, max_length=max_length)
    return ids if vocab is None else vocab.to_new(ids, unknown="unk")


@torch.no_grad()
def pooled_states(model: torch.nn.Module, ids: Sequence[Sequence[int]], batch_size: int = 64) -> np.ndarray:
    """(layers + 1, samples, hidden) float32: the embeddings' output and each layer's output, mean-pooled over each
    sample's tokens, in the order of ``ids`` (batches of similar length). ``model``: an encoder or a classifier (its
    ``base_model`` is used); eval mode."""
    encoder = getattr(model, "base_model", model)
    was = encoder.training
    encoder.eval()
    out = None
    try:
        for rows in models.length_batches([len(x) for x in ids], batch_size):
            batch, mask = models.pad_batch([ids[i] for i in rows], pad_id=encoder.config.pad_token_id)
            hidden = encoder(input_ids=batch, attention_mask=mask, output_hidden_states=True).hidden_states
            m = mask.unsqueeze(-1).float()
            pooled = torch.stack([(h.float() * m).sum(1) / m.sum(1).clamp(min=1) for h in hidden]).numpy()
            if out is None:
                out = np.zeros((len(hidden), len(ids), pooled.shape[-1]), dtype=np.float32)
            out[:, rows] = pooled
    finally:
        encoder.train(was)
    return out


def layer_at(depth: float, n_layers: int) -> int:
    """The hidden-state index at relative ``depth`` (0: the embeddings' output, 1: the last layer) of an encoder
    with ``n_layers`` layers, rounded to the nearest layer (half-way rounds down)."""
    if not 0 <= depth <= 1:
        raise ValueError(f"depth must lie in [0, 1], got {depth}")
    return int(np.floor(depth * n_layers + 0.5 - 1e-9))


def retrieval_hits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Translation retrieval between two languages, verse by verse: ``a[i]`` and ``b[i]`` are the same verse; for
    each verse, whether its nearest neighbour (cosine) in the other language is its own translation, averaged over
    the two directions (0, 0.5 or 1). The mean is the retrieval accuracy; chance is 1 / len(a)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    sim = a @ b.T
    truth = np.arange(len(a))
    return ((sim.argmax(1) == truth).astype(float) + (sim.argmax(0) == truth)) / 2
