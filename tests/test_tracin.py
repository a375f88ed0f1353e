"""Correctness gates of helpers.influence (CPU; the bf16 gate runs only where CUDA is lent).

Every score is checked against an independent reference: a per-example autograd loop over parameters chosen here
from the architecture (not by the engine), and captum's TracInCP. Models are tiny BERT / XLM-R / Gemma-3 built from
configs (Gemma-3: RMSNorms with 1 + weight, scaled word embeddings, query/key norms, sliding and full attention,
last-token pooling).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    Gemma3TextConfig,
    Gemma3TextForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

import helpers.influence.engine as engine_module
from helpers.influence.engine import Plan, TracIn
from helpers.influence.grads import _Examples
from helpers.influence.kernels import _scored_modules
from helpers.influence.memory import _Arena
from helpers.influence.scores import InfluenceScores
from helpers.influence.spec import Checkpoint, select_parameters

SPECS = ["all", "classifier", "last_layers:1", "last_layers:2", "embeddings",
         r"re:(attention\.output\.(dense|LayerNorm)|self_attn\.(o_proj|q_norm))\.weight"]
LEARNING_RATES = (1e-2, 5e-3, 2e-3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded; two OpenMP threads on a shared 2-core machine can be 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------------------------
# Tiny models, checkpoints and samples


def tiny_model(arch: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  num_labels=3) | overrides
    if arch == "bert":
        return BertForSequenceClassification(BertConfig(max_position_embeddings=64, pad_token_id=0, **common))
    if arch == "gemma":
        return Gemma3TextForSequenceClassification(Gemma3TextConfig(
            num_key_value_heads=1, head_dim=16, max_position_embeddings=64, sliding_window=8,
            query_pre_attn_scalar=16, layer_types=["sliding_attention", "full_attention"], pad_token_id=0,
            bos_token_id=2, eos_token_id=1, **common))
    return XLMRobertaForSequenceClassification(XLMRobertaConfig(max_position_embeddings=66, pad_token_id=1,
                                                                bos_token_id=0, eos_token_id=2, **common))


def random_samples(n: int, seed: int, bos: int, pad: int, max_len: int = 30) -> list[dict]:
    """Random samples of lengths 2-30; the first one holds the pad id as a real token (autograd gives the padding
    row of the word embeddings no gradient, and neither may the engine)."""
    rng = np.random.default_rng(seed)
    samples = [{"input_ids": [bos] + rng.integers(3, 200, int(rng.integers(1, max_len))).tolist(),
                "label": int(rng.integers(3)), "language": ["en", "de", "ru"][i % 3], "pair_id": f"s{seed}-{i}"}
               for i in range(n)]
    samples[0]["input_ids"][1:1] = [pad, 7, pad]
    return samples


@pytest.fixture(scope="module", params=["bert", "xlmr", "gemma"])
def perturbed(request, tmp_path_factory) -> dict:
    """Three checkpoints of a tiny model, each a random perturbation of the previous one (dropout left on in the
    config: the engine must switch it off), plus random samples of lengths 2-30."""
    arch = request.param
    model = tiny_model(arch)
    root = tmp_path_factory.mktemp(arch)
    ckpts = []
    for k, lr in enumerate(LEARNING_RATES):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        model.save_pretrained(root / f"checkpoint-epoch{k + 1}")
        ckpts.append(Checkpoint(path=root / f"checkpoint-epoch{k + 1}", learning_rate=lr, name=f"epoch{k + 1}"))
    bos, pad = {"bert": (101, 0), "xlmr": (0, 1), "gemma": (2, 0)}[arch]
    return {"arch": arch, "ckpts": ckpts, "train": random_samples(10, 1, bos, pad),
            "test": random_samples(4, 2, bos, pad)}


def class_samples(n: int, rng: np.random.Generator) -> list[dict]:
    """A learnable task: the label is the token range most of the sample's tokens come from."""
    out = []
    for i in range(n):
        y, length = int(rng.integers(3)), int(rng.integers(4, 13))
        own = rng.random(length) < 0.9
        tokens = np.where(own, rng.integers(10 + 60 * y, 70 + 60 * y, length), rng.integers(10, 190, length))
        out.append({"input_ids": [1] + tokens.tolist(), "label": y, "language": ["en", "de", "ru"][i % 3],
                    "pair_id": f"p{i}"})
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny BERT fine-tuned for 3 epochs (one checkpoint each) on a training set with 10% flipped labels."""
    rng = np.random.default_rng(0)
    train, test = class_samples(240, rng), class_samples(12, rng)
    flipped = np.zeros(len(train), bool)
    flipped[rng.choice(len(train), len(train) // 10, replace=False)] = True
    for i in np.flatnonzero(flipped):
        train[i]["label"] = (train[i]["label"] + 1 + int(rng.integers(2))) % 3
    model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    lr = 3e-3
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    root = tmp_path_factory.mktemp("trained")
    ckpts = []
    for epoch in range(3):
        model.train()
        order = rng.permutation(len(train))
        for b in range(0, len(train), 8):
            batch = [train[i] for i in order[b:b + 8]]
            length = max(len(x["input_ids"]) for x in batch)
            ids = torch.tensor([x["input_ids"] + [0] * (length - len(x["input_ids"])) for x in batch])
            loss = model(input_ids=ids, attention_mask=(ids != 0).long(),
                         labels=torch.tensor([x["label"] for x in batch])).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.save_pretrained(root / f"checkpoint-epoch{epoch + 1}")
        ckpts.append(Checkpoint(root / f"checkpoint-epoch{epoch + 1}", learning_rate=lr, name=f"epoch{epoch + 1}"))
    return {"ckpts": ckpts, "train": train, "test": test, "flipped": flipped}


# ----------------------------------------------------------------------------------------------------------------
# Independent references


def expected_names(model: torch.nn.Module, spec: str) -> list[str]:
    """Which parameters a spec means, written out from the BERT / XLM-R / Gemma-3 layouts (independently of the
    engine). Gemma-3's head is its final RMSNorm and ``score``."""
    names = [n for n, _ in model.named_parameters()]
    base = model.base_model_prefix
    gemma = model.config.model_type.startswith("gemma")
    embeddings, stack = ((f"{base}.embed_tokens.", f"{base}.layers.") if gemma
                         else (f"{base}.embeddings.", f"{base}.encoder.layer."))
    head = [n for n in names if not n.startswith((embeddings, stack))]
    if spec == "all":
        return names
    if spec == "classifier":
        return head
    if spec == "embeddings":
        return [f"{base}.embed_tokens.weight" if gemma else f"{base}.embeddings.word_embeddings.weight"]
    if spec.startswith("last_layers:"):
        n_layers = model.config.num_hidden_layers
        layers = tuple(f"{stack}{k}." for k in range(n_layers - int(spec[12:]), n_layers))
        return [n for n in names if n.startswith(layers)] + head
    return [n for n in names if re.search(spec[3:], n)]


def brute_force(ckpts: list[Checkpoint], spec: str, train: list[dict], test: list[dict],
                cosine: bool = False) -> np.ndarray:
    """lr_c * <g_i, g_j> from one unpadded forward/backward per sample, in float64, per checkpoint."""
    out = []
    for ckpt in ckpts:
        model = AutoModelForSequenceClassification.from_pretrained(ckpt.path).eval()
        named = dict(model.named_parameters())
        params = [named[n] for n in expected_names(model, spec)]

        def grads(samples: list[dict], model=model, params=params) -> torch.Tensor:
            rows = []
            for x in samples:
                logits = model(input_ids=torch.tensor([x["input_ids"]])).logits
                loss = F.cross_entropy(logits, torch.tensor([x["label"]]), reduction="sum")
                rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).double())
            g = torch.stack(rows)
            return g / g.norm(dim=1, keepdim=True) if cosine else g

        out.append(ckpt.learning_rate * (grads(train) @ grads(test).T).numpy())
    return np.stack(out)


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    assert np.abs(ref).max() > 0
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


# ----------------------------------------------------------------------------------------------------------------
# Parameter subsets


def test_select_parameters_matches_the_architecture(perturbed):
    model = AutoModelForSequenceClassification.from_pretrained(perturbed["ckpts"][0].path)
    for spec in SPECS:
        assert list(select_parameters(model, spec)) == [n for n, _ in model.named_parameters()
                                                          if n in set(expected_names(model, spec))], spec
    heads = {"bert": {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"},
             "xlmr": {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                      "classifier.out_proj.bias"},
             "gemma": {"model.norm.weight", "score.weight"}}
    assert set(select_parameters(model, "classifier")) == heads[perturbed["arch"]]


@pytest.mark.parametrize("spec", ["bogus", "last_layers", "last_layers:0", "last_layers:x", "re:(", "", 3])
def test_bad_params_spec_raises_naming_params(perturbed, spec):
    with pytest.raises(ValueError, match=r"params=.*allowed: 'all', 'classifier', 'last_layers:N'"):
        TracIn(perturbed["ckpts"], params=spec)


@pytest.mark.parametrize("spec", ["last_layers:3", "re:no_such_parameter"])
def test_params_spec_invalid_for_this_model_raises(perturbed, spec):
    engine = TracIn(perturbed["ckpts"], params=spec)
    with pytest.raises(ValueError, match="params="):
        engine.scores(perturbed["train"], perturbed["test"], progress=False)


def test_bad_options_raise(perturbed):
    ckpts = perturbed["ckpts"]
    for kwargs, name in [({"similarity": "l2"}, "similarity"), ({"dtype": "fp16"}, "dtype"),
                         ({"dtype": "bf16", "device": "cpu"}, "bf16"), ({"batch_size": 0}, "batch_size"),
                         ({"test_chunk_size": 0}, "test_chunk_size")]:
        with pytest.raises(ValueError, match=name):
            TracIn(ckpts, **kwargs)
    with pytest.raises(ValueError, match="learning_rate"):
        Checkpoint("x", learning_rate=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize("spec", SPECS)
def test_equals_brute_force(perturbed, spec):
    ckpts, train, test = perturbed["ckpts"], perturbed["train"], perturbed["test"]
    ours = TracIn(ckpts, params=spec, batch_size=4, device="cpu").scores(train, test, progress=False)
    ref = brute_force(ckpts, spec, train, test)
    assert ours.per_checkpoint.shape == ref.shape == (3, len(train), len(test))
    for c in range(len(ckpts)):
        assert rel_err(ours.per_checkpoint[c], ref[c]) <= 1e-4, (spec, ckpts[c].name)
    assert rel_err(ours.total, ref.sum(0)) <= 1e-4


@pytest.mark.parametrize("spec", ["all", "last_layers:1"])
def test_cosine_equals_brute_force(perturbed, spec):
    ckpts, train, test = perturbed["ckpts"], perturbed["train"], perturbed["test"]
    ours = TracIn(ckpts, params=spec, similarity="cosine", batch_size=3).scores(train, test, progress=False)
    ref = brute_force(ckpts, spec, train, test, cosine=True)
    for c in range(len(ckpts)):
        assert rel_err(ours.per_checkpoint[c], ref[c]) <= 1e-4
    assert np.abs(ours.per_checkpoint).max() <= max(LEARNING_RATES) * (1 + 1e-5)


@pytest.mark.parametrize("spec", ["all", "last_layers:1", "embeddings"])
def test_self_influence_is_the_diagonal(perturbed, spec):
    ckpts, train = perturbed["ckpts"], perturbed["train"]
    engine = TracIn(ckpts, params=spec, batch_size=4)
    full = engine.scores(train, train, progress=False)
    diagonal = np.stack([np.diag(m) for m in full.per_checkpoint])
    self_inf = engine.self_influence(train, progress=False)
    assert np.asarray(self_inf).shape == (len(ckpts), len(train))
    assert rel_err(self_inf.per_checkpoint, diagonal) <= 1e-4
    assert rel_err(self_inf.total, np.diag(full.total)) <= 1e-4
    assert self_inf.to_frame()["self_influence"].to_numpy() == pytest.approx(self_inf.total)


def test_scores_do_not_depend_on_batch_size_padding_or_chunking(perturbed):
    """batch_size=1 has no padding at all; larger batches pad short samples to lengths up to 30."""
    ckpts, train, test = perturbed["ckpts"], perturbed["train"], perturbed["test"]
    reference = TracIn(ckpts, params="all", batch_size=1).scores(train, test, progress=False).per_checkpoint
    for kwargs in [{"batch_size": 3}, {"batch_size": 64}, {"batch_size": 4, "test_chunk_size": 1}]:
        other = TracIn(ckpts, params="all", **kwargs).scores(train, test, progress=False).per_checkpoint
        assert rel_err(other, reference) <= 1e-5, kwargs
    self_1 = TracIn(ckpts, params="all", batch_size=1).self_influence(train, progress=False).per_checkpoint
    self_64 = TracIn(ckpts, params="all", batch_size=64).self_influence(train, progress=False).per_checkpoint
    assert rel_err(self_64, self_1) <= 1e-5


def test_each_checkpoint_is_loaded_once(perturbed):
    loads: list[str] = []

    def loader(path: str) -> torch.nn.Module:
        loads.append(path)
        return AutoModelForSequenceClassification.from_pretrained(path)

    engine = TracIn(perturbed["ckpts"], params="last_layers:1", test_chunk_size=1, model_loader=loader)
    engine.scores(perturbed["train"], perturbed["test"], progress=False)
    assert loads == [str(c.path) for c in perturbed["ckpts"]]


def test_dataset_input_gives_the_same_scores(perturbed):
    datasets = pytest.importorskip("datasets")
    ckpts, train, test = perturbed["ckpts"], perturbed["train"], perturbed["test"]
    from_lists = TracIn(ckpts, batch_size=4).scores(train, test, progress=False)
    as_dataset = TracIn(ckpts, batch_size=4).scores(datasets.Dataset.from_list(train),
                                                    datasets.Dataset.from_list(test), progress=False)
    np.testing.assert_array_equal(as_dataset.per_checkpoint, from_lists.per_checkpoint)
    pd.testing.assert_frame_equal(as_dataset.train_ids, from_lists.train_ids)


# ----------------------------------------------------------------------------------------------------------------
# Agreement with captum


class Logits(torch.nn.Module):
    """captum calls model(*batch[:-1]) and expects a tensor."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def padded(samples: list[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(x["input_ids"]) for x in samples)
    ids = torch.full((len(samples), length), pad_id)
    for r, x in enumerate(samples):
        ids[r, :len(x["input_ids"])] = torch.tensor(x["input_ids"])
    mask = (torch.arange(length)[None] < torch.tensor([len(x["input_ids"]) for x in samples])[:, None]).long()
    return ids, mask, torch.tensor([x["label"] for x in samples])


def captum_scores(ckpts: list[Checkpoint], layers: list[str], train: list[dict], test: list[dict],
                  sample_wise: bool) -> np.ndarray:
    """captum TracInCP as documented: checkpoints loaded from disk by a checkpoints_load_func returning the lr."""
    tracincp = pytest.importorskip("captum.influence").TracInCP
    from safetensors.torch import load_file
    from torch.utils.data import TensorDataset

    model = Logits(AutoModelForSequenceClassification.from_pretrained(ckpts[0].path)).eval()
    pad_id = model.model.config.pad_token_id
    rates = {str(c.path): c.learning_rate for c in ckpts}

    def load(net: Logits, path: str) -> float:
        net.model.load_state_dict(load_file(Path(path) / "model.safetensors"), strict=False)
        return rates[path]

    tracin = tracincp(model, TensorDataset(*padded(train, pad_id)), checkpoints=list(rates),
                      checkpoints_load_func=load, layers=layers,
                      loss_fn=torch.nn.CrossEntropyLoss(reduction="sum" if sample_wise else "none"),
                      batch_size=4, sample_wise_grads_per_batch=sample_wise)
    return tracin.influence(padded(test, pad_id)).detach().numpy().T


@pytest.mark.filterwarnings("ignore:Input Tensor .* has a dtype of torch.int64:UserWarning")
def test_agrees_with_captum_tracincp(perturbed):
    """Last layer + head (LayerNorms included: captum's per-example loop) and the head alone (Linear only: captum's
    sample-wise gradient trick)."""
    ckpts, train, test = perturbed["ckpts"], perturbed["train"], perturbed["test"]
    arch = perturbed["arch"]
    head = {"bert": ["model.bert.pooler.dense", "model.classifier"],
            "xlmr": ["model.classifier.dense", "model.classifier.out_proj"],
            "gemma": ["model.score"]}[arch]  # captum's sample-wise trick hooks Linear modules only
    last = {"bert": ["model.bert.encoder.layer.1"], "xlmr": ["model.roberta.encoder.layer.1"],
            "gemma": ["model.model.layers.1", "model.model.norm"]}[arch]
    specs = [("last_layers:1", last + head, False)]
    if arch != "gemma":  # Gemma-3's head is its final RMSNorm and score: no Linear-only subset to compare
        specs.append(("classifier", head, True))
    for spec, layers, sample_wise in specs:
        theirs = captum_scores(ckpts, layers, train, test, sample_wise)
        ours = TracIn(ckpts, params=spec, batch_size=4).scores(train, test, progress=False).total
        assert rel_err(ours, theirs) <= 1e-4, spec


# ----------------------------------------------------------------------------------------------------------------
# Behaviour on a learnt task


def test_planted_duplicate_is_the_top_proponent(trained):
    """A training copy of each test sample. Under cosine it is the top proponent of its test sample (cosine 1 is the
    maximum). Under the dot product only samples with a larger gradient can outrank it (Cauchy-Schwarz), so it must
    be the top proponent of every test sample whose gradient is larger than 80% of the training samples', and
    whatever outranks it must have a larger gradient at some checkpoint."""
    ckpts, train, test = trained["ckpts"], trained["train"], trained["test"]
    n = len(train)
    planted = train + [dict(x, pair_id=f"copy-{x['pair_id']}") for x in test]
    copies = n + np.arange(len(test))

    cosine = TracIn(ckpts, similarity="cosine", batch_size=16).scores(planted, test, progress=False)
    top = cosine.top_k(1)
    np.testing.assert_array_equal(top["train_row"].to_numpy(), copies)
    assert top["score"].to_numpy() == pytest.approx(sum(c.learning_rate for c in ckpts), rel=1e-5)
    assert top["train_pair_id"].str.startswith("copy-").all()

    engine = TracIn(ckpts, batch_size=16)
    dot = engine.scores(planted, test, progress=False)
    own = engine.self_influence(planted, progress=False).per_checkpoint  # (checkpoints, n + n_test)
    hard = [j for j in range(len(test)) if (own[:, :n].sum(0) > own[:, copies[j]].sum()).mean() < 0.2]
    assert len(hard) >= 4
    best = dot.total.argmax(0)
    assert (best[hard] == copies[hard]).all()
    for j in range(len(test)):
        above = np.flatnonzero(dot.total[:, j] > dot.total[copies[j], j])
        assert (own[:, above] > own[:, [copies[j]]]).any(0).all()


def test_flipped_labels_have_high_self_influence(trained):
    from sklearn.metrics import roc_auc_score

    self_inf = TracIn(trained["ckpts"], batch_size=32).self_influence(trained["train"], progress=False)
    auc = roc_auc_score(trained["flipped"], self_inf.total)
    print(f"mislabel detection ROC-AUC (last_layers:1, 10% flipped, 3 checkpoints): {auc:.3f}")
    assert auc >= 0.8


# ----------------------------------------------------------------------------------------------------------------
# Results: ids, top-k, persistence, progress


@pytest.fixture(scope="module")
def scores(perturbed) -> InfluenceScores:
    return TracIn(perturbed["ckpts"], batch_size=4).scores(perturbed["train"], perturbed["test"], progress=False)


def test_ids_link_rows_and_columns_to_samples(perturbed, scores):
    assert list(scores.train_ids.columns) == ["label", "language", "pair_id"]
    assert scores.train_ids["pair_id"].tolist() == [x["pair_id"] for x in perturbed["train"]]
    assert scores.test_ids["label"].tolist() == [x["label"] for x in perturbed["test"]]
    assert scores.checkpoints == ["epoch1", "epoch2", "epoch3"]
    assert scores.learning_rates == list(LEARNING_RATES)
    assert scores.per_checkpoint.dtype == np.float32
    custom = pd.DataFrame({"uid": [f"t{i}" for i in range(len(perturbed["test"]))]}, index=range(10, 14))
    again = TracIn(perturbed["ckpts"], params="classifier").scores(perturbed["train"], perturbed["test"],
                                                                  test_ids=custom, progress=False)
    assert again.test_ids["uid"].tolist() == ["t0", "t1", "t2", "t3"]
    assert list(again.test_ids.index) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="train_ids"):
        TracIn(perturbed["ckpts"]).scores(perturbed["train"], perturbed["test"], train_ids=custom, progress=False)


@pytest.mark.parametrize("kind", ["proponents", "opponents"])
@pytest.mark.parametrize("checkpoint", [None, "epoch2"])
def test_top_k(scores, kind, checkpoint):
    matrix = scores.total if checkpoint is None else scores.per_checkpoint[1]
    table = scores.top_k(3, kind=kind, checkpoint=checkpoint)
    assert len(table) == 3 * matrix.shape[1]
    for j, rows in table.groupby("test_row"):
        order = np.argsort(-matrix[:, j] if kind == "proponents" else matrix[:, j], kind="stable")[:3]
        assert rows["rank"].tolist() == [1, 2, 3]
        assert rows["train_row"].tolist() == order.tolist()
        assert rows["score"].to_numpy() == pytest.approx(matrix[order, j])
    assert {"test_language", "test_pair_id", "train_language", "train_pair_id", "train_label"} <= set(table.columns)
    assert (table["train_pair_id"] == scores.train_ids["pair_id"].to_numpy()[table["train_row"]]).all()
    with pytest.raises(ValueError, match="kind"):
        scores.top_k(3, kind="both")
    with pytest.raises(ValueError, match="checkpoint"):
        scores.top_k(3, checkpoint="epoch9")


def test_save_load_round_trip(scores, tmp_path):
    target = tmp_path / "tracin"
    scores.save(target)
    scores.save(target)  # replacing an earlier result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tracin"]
    loaded = InfluenceScores.load(target)
    np.testing.assert_array_equal(loaded.per_checkpoint, scores.per_checkpoint)
    pd.testing.assert_frame_equal(loaded.train_ids, scores.train_ids)
    pd.testing.assert_frame_equal(loaded.test_ids, scores.test_ids)
    assert (loaded.checkpoints, loaded.learning_rates, loaded.similarity, loaded.params) == (
        scores.checkpoints, scores.learning_rates, scores.similarity, scores.params)
    pd.testing.assert_frame_equal(loaded.top_k(2), scores.top_k(2))


def test_progress_bar_reports_on_stderr(perturbed, capsys):
    TracIn(perturbed["ckpts"], params="classifier").scores(perturbed["train"], perturbed["test"])
    err = capsys.readouterr().err
    assert "TracIn scores" in err and "sample" in err


# ----------------------------------------------------------------------------------------------------------------
# GPU gate (runs only where a CUDA device is lent)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("spec", ["all", "last_layers:1"])
def test_bf16_on_gpu_passes_the_accuracy_gates(trained, spec):
    ckpts, train, test = trained["ckpts"], trained["train"], trained["test"]
    cpu = TracIn(ckpts, params=spec, device="cpu").scores(train, test, progress=False)
    fp32 = TracIn(ckpts, params=spec, device="cuda", dtype="fp32").scores(train, test, progress=False)
    assert rel_err(fp32.per_checkpoint, cpu.per_checkpoint) <= 1e-4
    bf16 = TracIn(ckpts, params=spec, device="cuda", dtype="bf16").scores(train, test, progress=False)
    for j in range(len(test)):
        assert spearman(bf16.total[:, j], fp32.total[:, j]) >= 0.99, j
        top_bf16 = set(np.argsort(-bf16.total[:, j])[:10])
        assert len(top_bf16 & set(np.argsort(-fp32.total[:, j])[:10])) >= 9, j


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_memory_does_not_grow_with_training_samples(trained):
    ckpts, train, test = trained["ckpts"], trained["train"], trained["test"]
    peaks = []
    for n in (len(train) // 4, len(train)):
        torch.cuda.reset_peak_memory_stats()
        TracIn(ckpts, params="all", device="cuda", batch_size=16).scores(train[:n], test, progress=False)
        peaks.append(torch.cuda.max_memory_allocated())
    assert peaks[1] <= 1.1 * peaks[0]


# ----------------------------------------------------------------------------------------------------------------
# How the work is split: test chunks, training blocks, factored or dense bank


@pytest.mark.parametrize("plan", [dict(test_chunk=3, train_block=4, dense_bank=False),
                                  dict(test_chunk=4, train_block=3, dense_bank=True),
                                  dict(test_chunk=1, train_block=1, dense_bank=False)])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_every_plan_equals_brute_force(perturbed, monkeypatch, plan, similarity):
    """Several test chunks and training blocks, the bank's Linear weight gradients kept factored (formed again for
    every training block) or formed once: the same scores."""
    ckpts, train, test = perturbed["ckpts"], perturbed["train"], perturbed["test"]
    monkeypatch.setattr(TracIn, "_plan", lambda self, *args: Plan(**plan))
    ours = TracIn(ckpts, params="all", similarity=similarity, batch_size=2).scores(train, test, progress=False)
    ref = brute_force(ckpts, "all", train, test, cosine=similarity == "cosine")
    for c in range(len(ckpts)):
        assert rel_err(ours.per_checkpoint[c], ref[c]) <= 1e-4, (plan, c)


def test_plan_fits_free_memory(perturbed, monkeypatch):
    """Plenty of memory: the whole test set in one bank, formed once, and the largest training block. Little
    memory: a factored bank, several test chunks if need be, smaller training blocks, within half the free memory.
    The plan does not depend on how many training samples there are beyond one block."""
    ckpts, test = perturbed["ckpts"], perturbed["test"]
    model = AutoModelForSequenceClassification.from_pretrained(ckpts[0].path)
    scored = _scored_modules(model, select_parameters(model, "all"))
    engine = TracIn(ckpts, params="all")
    test_ex = _Examples(test * 10, "test")

    def plan(free: int, n_train: int = 600) -> Plan:
        monkeypatch.setattr(engine_module, "_free_memory", lambda device: free)
        return engine._plan(scored, _Examples(perturbed["train"] * (n_train // 10), "train"), test_ex)

    assert plan(1 << 40) == Plan(test_chunk=40, train_block=engine_module._MAX_TRAIN_BLOCK, dense_bank=True)
    assert plan(1 << 40, n_train=50) == Plan(test_chunk=40, train_block=50, dense_bank=True)
    dense_bank = 40 * 4 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    tight = plan(2 * dense_bank)  # the dense bank alone would take the whole budget
    assert not tight.dense_bank and 1 <= tight.train_block <= engine_module._MAX_TRAIN_BLOCK
    tiny = plan(1 << 21)
    assert not tiny.dense_bank and tiny.test_chunk < tight.test_chunk and tiny.train_block < tight.train_block
    assert plan(1 << 21, n_train=6000) == tiny
    assert TracIn(ckpts, params="all", test_chunk_size=7)._plan(
        scored, _Examples(perturbed["train"], "train"), test_ex).test_chunk == 7


def test_memory_does_not_grow_with_training_samples(perturbed, monkeypatch):
    """Per-example gradients live in arenas reused from one training block to the next: 4x the training samples,
    the same memory."""
    ckpts, train, test = perturbed["ckpts"], perturbed["train"], perturbed["test"]
    monkeypatch.setattr(engine_module, "_MAX_TRAIN_BLOCK", 5)
    monkeypatch.setattr(_Arena, "SLAB", 1 << 12)  # small slabs: their total follows what is stored
    slabs: list[int] = []
    take = _Arena.take

    def spy(self, shape, dtype):
        out = take(self, shape, dtype)
        slabs.append(sum(s.numel() for s in self.slabs))
        return out

    monkeypatch.setattr(_Arena, "take", spy)
    peaks = []
    for n in (10, 40):
        slabs.clear()
        TracIn(ckpts, params="all", batch_size=2).scores((train * 4)[:n], test, progress=False)
        peaks.append(max(slabs))
    assert 0 < peaks[1] <= peaks[0]


def test_groups_from_one_full_pass_equal_separate_runs(perturbed, tmp_path):
    """Dot products add over parameters: one params='all' pass gives every group's dot and cosine scores exactly as
    separate runs with that group's spec (and survives save/load)."""
    groups = {"head": "classifier", "last": "last_layers:1", "words": "embeddings", "everything": "all"}
    engine = TracIn(perturbed["ckpts"], params="all", groups=groups, batch_size=3)
    scores = engine.scores(perturbed["train"], perturbed["test"], progress=False)
    scores.save(tmp_path / "s")
    loaded = InfluenceScores.load(tmp_path / "s")
    np.testing.assert_array_equal(loaded.groups["last"]["dot"], scores.groups["last"]["dot"])
    for name, spec in groups.items():
        for similarity in ("dot", "cosine"):
            alone = TracIn(perturbed["ckpts"], params=spec, similarity=similarity, batch_size=5).scores(
                perturbed["train"], perturbed["test"], progress=False)
            got = loaded.group(name, similarity).per_checkpoint
            scale = np.abs(alone.per_checkpoint).max()
            assert np.abs(got - alone.per_checkpoint).max() <= 1e-4 * scale, (name, similarity)
    np.testing.assert_allclose(scores.groups["everything"]["dot"], scores.per_checkpoint, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="outside params"):
        TracIn(perturbed["ckpts"], params="last_layers:1", groups={"w": "embeddings"}).scores(
            perturbed["train"], perturbed["test"], progress=False)
