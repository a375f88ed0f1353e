"""The alignment axis: in-house pre-training, re-initialised layers, retrieval, and the stages around them.

(The neuron probing and overlap statistics are tested on planted activations in ``test_neurons.py``; the chapters run
end to end on the smoke study through nbval.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from helpers import config, data, finetune, models, study
from helpers.config import ConfigError
from helpers.flow import feasible, graph
from helpers.models import pretrain
from helpers.neurons import activations

TINY = dict(pretrain_languages=["en", "fr", "ru"], pretrain_verses_per_language=150, seed=0, pretrain_layers=2,
            pretrain_hidden=64, pretrain_steps=45, pretrain_batch_size=8, pretrain_learning_rate=2e-3,
            pretrain_checkpoints=3, pretrain_vocab_size=1000, pretrain_max_length=32)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    return pretrain.run(dict(TINY), out)


def test_pretraining_runs_in_seconds_and_its_held_out_loss_falls(pretrained):
    losses = [c["mlm_loss"] for c in pretrained.checkpoints]
    assert [c["step"] for c in pretrained.checkpoints] == [0, 15, 30, 45]
    assert losses[-1] < losses[0] - 0.15, losses
    assert pretrained.info["seconds"] < 120
    # one language per batch, the languages in turn
    assert list(pretrained.history["language"][:6]) == ["en", "fr", "ru"] * 2
    summary = pretrain.loss_summary(pretrained, TINY["pretrain_vocab_size"])
    assert f"{losses[0]:.2f} at step 0, {losses[-1]:.2f} at step 45" in summary
    assert "fell in 3 of 3 languages" in summary


def test_a_pretraining_checkpoint_loads_as_a_classifier_with_its_tokenizer(pretrained):
    model = models.load_classifier(pretrained.path(-1), num_labels=3)
    tokenizer = models.load_tokenizer(pretrained.path(-1))
    ids = models.tokenize(tokenizer, ["In the beginning"], max_length=32)
    assert model(input_ids=torch.tensor(ids)).logits.shape == (1, 3)
    encoder = model.base_model.encoder.layer[0].attention.self.query.weight
    fresh = models.load_classifier(pretrained.path(0), num_labels=3).base_model.encoder.layer[0].attention.self.query
    assert not torch.equal(encoder, fresh.weight)  # the last checkpoint is not step 0


def test_the_pretraining_corpus_has_no_parallel_verse_and_no_held_out_one():
    keys = pretrain.corpus_keys(["en", "fr", "de", "ru"], 400, seed=3)
    ids = {lang: set(map(tuple, k[["book", "chapter", "verse"]].to_numpy())) for lang, k in keys.items()}
    for a in ids:
        assert len(ids[a]) == 400
        for b in ids:
            assert a == b or not ids[a] & ids[b], (a, b)
        assert not pretrain.held_out(keys[a]).any()
    pool = data.verse_keys()
    share = pretrain.held_out(pool).mean()
    assert 0.03 < share < 0.07  # about 1/20 of the canon is held out
    with pytest.raises(data.SizeError, match="pretrain_verses_per_language"):
        pretrain.corpus_keys(["en", "fr"], 20_000, seed=0)


def test_reinit_top_layers_replaces_exactly_the_top_layers_of_a_loaded_checkpoint(tmp_path):
    models.smoke_model(100, num_labels=2, seed=1, layers=3).save_pretrained(tmp_path / "ckpt")
    before = models.load_classifier(tmp_path / "ckpt")  # loaded weights: transformers' own initialiser skips them
    state = {k: v.clone() for k, v in before.state_dict().items()}
    torch.manual_seed(5)
    finetune.reinit_top(before, 2)
    changed = {k.split(".")[3] for k, v in before.state_dict().items()
               if k.startswith("bert.encoder.layer.") and not torch.equal(v, state[k])}
    assert changed == {"1", "2"}
    assert all(torch.equal(v, state[k]) for k, v in before.state_dict().items() if not k.startswith("bert.encoder"))
    top = before.bert.encoder.layer[2]
    assert abs(float(top.attention.self.query.weight.detach().std()) - before.config.initializer_range) < 0.01
    assert torch.equal(top.output.LayerNorm.weight, torch.ones_like(top.output.LayerNorm.weight))
    with pytest.raises(ValueError, match="reinit_top_layers.*0..3"):
        finetune.reinit_top(before, 4)


@pytest.mark.slow
def test_translation_retrieval_is_far_above_chance_on_e5_and_at_chance_on_a_random_model(e5_path):
    keys = data.verse_keys()
    verses = keys[pretrain.held_out(keys)].iloc[::7].head(60)
    texts = {lang: data.read_verses(lang, verses) for lang in ("en", "ru")}
    tokenizer = models.load_tokenizer(e5_path)
    ids = {lang: activations.token_ids(tokenizer, t, 64) for lang, t in texts.items()}
    e5 = models.load_classifier(e5_path, num_labels=2)
    random = models.smoke_model(len(tokenizer), num_labels=2, seed=0, hidden=128, layers=2)
    chance = 1 / len(verses)
    for model, low, high in ((e5, 0.8, 1.0), (random, 0.0, 4 * chance)):
        states = {lang: activations.pooled_states(model, x) for lang, x in ids.items()}
        accuracy = activations.retrieval_hits(states["en"][-1], states["ru"][-1]).mean()
        assert low <= accuracy <= high, (type(model).__name__, accuracy)


def test_pooled_states_in_length_batches_keep_the_rows_order():
    lengths = [9, 3, 12, 3, 7, 5, 12]
    batches = models.length_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [[lengths[i] for i in b] for b in batches] == [[3, 3, 5], [7, 9, 12], [12]]
    rng = np.random.default_rng(0)
    ids = [[0, *rng.integers(4, 200, n - 2).tolist(), 2] for n in lengths]
    model = models.smoke_model(200, num_labels=2, seed=0, hidden=32, layers=2)
    batched = activations.pooled_states(model, ids, batch_size=3)
    alone = np.concatenate([activations.pooled_states(model, [x]) for x in ids], axis=1)
    assert batched.shape == (3, len(ids), 32)
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_retrieval_hits_and_layer_depths():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 16))
    assert activations.retrieval_hits(a, a + 0.01 * rng.normal(size=a.shape)).mean() == 1.0
    assert activations.retrieval_hits(a, a[::-1]).mean() < 0.2
    assert [activations.layer_at(d, 12) for d in (0, 0.5, 1)] == [0, 6, 12]
    assert [activations.layer_at(d, 4) for d in (0.5, 0.6)] == [2, 2]
    with pytest.raises(ValueError):
        activations.layer_at(1.5, 4)


def test_pretraining_parameters_are_checked_against_each_other():
    base = config.defaults("run")
    with pytest.raises(ConfigError, match="pretrain_checkpoint.*inhouse-mlm"):
        config.check({**base, "pretrain_checkpoint": 1})
    with pytest.raises(ConfigError, match="max_length <= pretrain_max_length"):
        config.check({**base, "model": "inhouse-mlm", "max_length": 128})
    with pytest.raises(ConfigError, match="pretrain_languages"):
        config.check({**base, "model": "inhouse-mlm", "zero_shot_languages": ["vi"]})
    with pytest.raises(ConfigError, match="-1..3"):
        config.check({**base, "model": "inhouse-mlm", "pretrain_checkpoint": 4})
    with pytest.raises(ConfigError, match="multiple of 64"):
        config.check({**base, "pretrain_hidden": 100})
    assert config.check({**base, "model": "inhouse-mlm", "pretrain_checkpoint": 2})["pretrain_checkpoint"] == 2


def _study(tmp_path, monkeypatch, extra: str = ""):
    monkeypatch.setenv("HELPERS_ARTIFACTS", str(tmp_path / "artifacts"))
    profile = tmp_path / "axis.yaml"
    profile.write_text("parameters: {model: tiny-random, train_per_language: 12, test_per_language: 6, top_k: 5, "
                       "attribution_test_per_language: 3, attribution_groups: [last_layers:1, classifier]}\n"
                       "runs:\n  main: {}\n  reinit: {reinit_top_layers: 1}\n"
                       "  mlm: {model: inhouse-mlm, max_length: 64}\n" + extra)
    return profile


def test_only_runs_of_the_inhouse_encoder_have_a_pretraining_stage(tmp_path, monkeypatch):
    s = study.resolve(_study(tmp_path, monkeypatch))
    plan = graph.plan(s)
    labels = {i.label for i in plan}
    assert "pretrain[mlm-s0]" in labels and "pretrain[main-s0]" not in labels and "pretrain[reinit-s0]" not in labels
    by_label = {i.label: i for i in plan}
    assert [i.stage for i in by_label["finetune[mlm-s0]"].inputs] == ["data", "pretrain"]
    assert [i.stage for i in by_label["finetune[main-s0]"].inputs] == ["data"]
    assert plan.index(by_label["pretrain[mlm-s0]"]) < plan.index(by_label["finetune[mlm-s0]"])
    alignment = by_label["alignment"]
    assert ("probe", None) in {(i.stage, i.run) for i in alignment.inputs}
    assert plan.index(by_label["probe"]) < plan.index(by_label["probing"]) < plan.index(alignment)


def test_top_k_reruns_the_alignment_chapter_but_not_probing_and_pretraining_leaves_e5_runs_alone(tmp_path,
                                                                                                  monkeypatch):
    profile = _study(tmp_path, monkeypatch)
    before = {i.label: i.identity for i in graph.plan(study.resolve(profile))}
    after = {i.label: i.identity for i in graph.plan(study.resolve(profile, ["top_k=7"]))}
    assert before["probing"] == after["probing"] and before["alignment"] != after["alignment"]
    steps = {i.label: i.identity for i in graph.plan(study.resolve(profile, ["pretrain_steps=9"]))}
    changed = {k for k in before if before[k] != steps[k]}
    assert {"pretrain[mlm-s0]", "finetune[mlm-s0]", "probing", "alignment"} <= changed
    assert not {"finetune[main-s0]", "finetune[reinit-s0]", "tracin[main-s0]"} & changed


def test_check_feasible_refuses_more_reinitialised_layers_than_the_model_has(tmp_path, monkeypatch):
    profile = _study(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="reinit_top_layers.*2 encoder layers"):
        feasible.check_runs(study.resolve(profile, ["reinit.reinit_top_layers=3"]).runs)
    with pytest.raises(ConfigError, match="pre-training text"):
        feasible.check_runs(study.resolve(profile, ["mlm.pretrain_verses_per_language=9000"]).runs)


def test_the_held_out_pool_is_fixed_and_labelled_verses_are_balanced():
    keys = data.verse_keys()
    first, second = pretrain.held_out(keys), pretrain.held_out(keys.copy())
    assert (first == second).all()
    task = data.LABELS["genre"]
    labelled = keys[first].assign(label=keys[first]["book"].map(task.books)).dropna(subset=["label"])
    counts = labelled["label"].value_counts()
    assert counts.min() >= 40  # enough per label for a balanced probing set of a few hundred verses
    assert isinstance(labelled, pd.DataFrame)


def test_only_the_first_seed_of_each_variant_is_probed():
    """With five seeds of the in-house encoder, each pre-trained on its own, probing every seed's pre-training put
    five unlabelled rows per checkpoint in the tables (and crossed their losses); added seeds must change nothing."""
    from types import SimpleNamespace

    from helpers.compute import probe

    runs = [SimpleNamespace(name=f"{v}-s{s}", run=SimpleNamespace(variant=v))
            for v in ("main", "mlm", "gemma") for s in (0, 1, 2)]
    runs = runs[1:] + runs[:1]  # the first in the list is the first probed, whatever its seed
    assert [r.name for r in probe.probed_runs(runs)] == ["main-s1", "mlm-s0", "gemma-s0"]
    assert probe.probed_runs(runs[:3]) == [runs[0], runs[2]]


def _planted_states(rng, shared: bool, n: int = 240, d: int = 32, layers: int = 3):
    """Per language (layers + 1, n, d) states: the label is carried by neurons 0-3 in every language when
    ``shared``, else by neurons 0-3 in 'en' and 8-11 in 'fr'; the same verse has the same noise in both languages
    (translations) only at the last layer."""
    labels = np.arange(n) % 3
    base = rng.normal(size=(layers + 1, n, d))
    states = {}
    for lang, start in (("en", 0), ("fr", 0 if shared else 8)):
        x = rng.normal(size=(layers + 1, n, d))
        x[-1] = base[-1] + 0.05 * rng.normal(size=(n, d))
        x[:, :, start:start + 4] += 3.0 * labels[None, :, None]
        states[lang] = x
    return states, labels


def test_measure_finds_planted_shared_neurons_and_retrieval_where_translations_agree():
    from helpers.compute import probe

    rng = np.random.default_rng(0)
    cfg = {"probe_depth": 1.0, "probe_neurons": 4, "n_bootstrap": 200, "confidence": 0.95}
    point = probe.Point("x", "pre-trained", "start", 0, "main-s0")
    shared, labels = _planted_states(rng, shared=True)
    summary, layers, pairs = probe.measure(point, shared, labels, cfg)
    assert summary["overlap"] == 1.0 and pairs[0]["above_chance"]
    assert summary["retrieval"] > 0.9 and summary["retrieval_low"] <= summary["retrieval"] <= summary["retrieval_high"]
    assert [r["layer"] for r in layers] == [0, 1, 2, 3]
    assert max(r["retrieval"] for r in layers[:-1]) < 0.2  # no translation signal below the last layer
    apart, labels = _planted_states(rng, shared=False)
    summary, _, pairs = probe.measure(point, apart, labels, cfg)
    assert summary["overlap"] == 0.0 and not pairs[0]["above_chance"]


def test_the_degradation_claim_reads_the_pretraining_trajectory():
    from helpers.chapters import probing

    def trajectory(values):
        return pd.DataFrame({"encoder": probing.PRETRAINING, "run": None, "order": range(len(values)),
                             "checkpoint": [f"step-{i}" for i in range(len(values))], "retrieval": values,
                             "retrieval_low": [v - 0.02 for v in values], "retrieval_high": [v + 0.02 for v in values]})

    dropped = probing.degradation_claim(trajectory([0.1, 0.5, 0.2, 0.6]))
    assert dropped.verdict == "conditional on one run" and dropped.low > 0  # one pre-training run
    assert abs(dropped.value - 0.3) < 1e-9 and "step-1 to step-2, the largest of 2" in dropped.statistic
    # The interval: the two half-widths (0.02 each) combined, widened for the 2 candidate drops (alpha / 2).
    half = np.hypot(0.02, 0.02) * stats.norm.ppf(1 - 0.05 / 4) / stats.norm.ppf(1 - 0.05 / 2)
    assert dropped.high - dropped.value == pytest.approx(half) and half > np.hypot(0.02, 0.02)
    steady = probing.degradation_claim(trajectory([0.1, 0.2, 0.3, 0.4]))
    assert steady.high < 0 and steady.value < 0
    # The fall from step 0 (random weights retrieve through shared sub-words) is never the drop judged.
    from_start = probing.degradation_claim(trajectory([0.9, 0.2, 0.25, 0.3]))
    assert from_start.value < 0 and "step-0" not in from_start.statistic
    assert probing.degradation_claim(trajectory([0.1, 0.2])).verdict == "not tested"
    assert probing.degradation_claim(trajectory([0.9, 0.2])).verdict == "not tested"


def test_attribution_groups_are_checked_only_where_they_are_scored(tmp_path, monkeypatch):
    profile = _study(tmp_path, monkeypatch)
    feasible.check(study.resolve(profile, ["mlm.attribution_groups=[last_layers:9]"]))  # mlm has no tracin_groups
    with pytest.raises(ConfigError, match="attribution_groups.*last_layers:9"):
        feasible.check(study.resolve(profile, ["main.attribution_groups=[last_layers:9]"]))
