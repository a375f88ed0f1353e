"""Each chapter on planted scores whose answer is known (no model needed): the claims must come out right."""

import numpy as np
import pandas as pd
import pytest

from helpers import config
from helpers.chapters import attribution, control, dynamics, imbalance, language_shares, translations, zero_shot
from helpers.stages import RunInputs
from helpers.study import Run
from helpers.tracin import InfluenceScores

LANGS = ["en", "fr", "de"]
CFG = {"top_k": 4, "influence_kind": "proponents", "n_bootstrap": 200, "confidence": 0.95}


def fake_run(tmp_path, name, per_checkpoint, train, test, **params):
    folder = tmp_path / name / "tracin"
    InfluenceScores(np.asarray(per_checkpoint, dtype=np.float32), [f"epoch{i + 1}" for i in range(len(per_checkpoint))],
                    [1.0] * len(per_checkpoint), train, test).save(folder / "scores")
    run_params = {**config.defaults("run"), "fine_tune_languages": LANGS, "seed": 0, **params}
    return RunInputs(Run(name, name.split("-")[0], run_params["seed"], run_params), {"tracin": folder})


def frames(n_per_language=8, n_test=6, parallel=False):
    """Training: n_per_language samples per language (pair ids shared across languages when parallel);
    test: n_test samples per language, each with its own pair id."""
    train = pd.DataFrame([{"uid": f"{lang}{i}", "language": lang, "label": i % 2,
                           "pair_id": f"v{i}" if parallel else f"{lang}-v{i}"}
                          for lang in LANGS for i in range(n_per_language)])
    test = pd.DataFrame([{"uid": f"t{lang}{j}", "language": lang, "label": j % 2, "pair_id": f"t{lang}{j}"}
                         for lang in LANGS for j in range(n_test)])
    return train, test


def own_language_scores(train, test, strength):
    """Scores where each test sample's own-language training samples score ``strength`` higher (plus noise)."""
    rng = np.random.default_rng(0)
    same = train["language"].to_numpy()[:, None] == test["language"].to_numpy()[None, :]
    return rng.normal(0, 1, same.shape) + strength * same


def verdicts(result):
    return dict(zip(result.claims_table["claim_id"], result.claims_table["verdict"]))


def test_language_shares_detects_planted_own_language_preference_and_its_absence(tmp_path):
    train, test = frames()
    strong = fake_run(tmp_path, "main-s0", [own_language_scores(train, test, 10)], train, test)
    result = language_shares.compute([strong], CFG)
    assert verdicts(result)["LS2"] == "supports"
    assert verdicts(result)["LS1"] == "contradicts"  # all proponents are own-language: no cross-lingual reliance
    cells = result.tables["cells"]
    assert cells.query("test_language == train_language")["share"].eq(1.0).all()
    assert cells["language_blind"].eq(1 / 3).all()
    n_test = test.groupby("language").size()  # every top-k sample of a test sample is own-language here
    own = cells.query("test_language == train_language").set_index("test_language")["count"]
    assert own.to_dict() == (n_test * CFG["top_k"]).loc[own.index].to_dict()
    assert cells.query("test_language != train_language")["count"].eq(0).all()
    blind = fake_run(tmp_path, "main-s1", [own_language_scores(train, test, 0)], train, test)
    assert verdicts(language_shares.compute([blind], CFG))["LS1"] == "supports"


def test_dynamics_detects_a_falling_own_language_share(tmp_path):
    train, test = frames()
    checkpoints = [own_language_scores(train, test, s) for s in (10, 3, 0)]
    result = dynamics.compute([fake_run(tmp_path, "main-s0", checkpoints, train, test)], CFG)
    assert verdicts(result) == {"DY1": "supports", "DY2": "supports"}
    one = dynamics.compute([fake_run(tmp_path, "main-s1", checkpoints[:1], train, test)], CFG)
    assert verdicts(one) == {"DY1": "not tested", "DY2": "not tested"}


def test_translations_all_cross_lingual_proponents_are_translations(tmp_path):
    train, test = frames(parallel=True)
    # Test sample j's proponents: its own language's verses v0, v1 and their translations in the other languages.
    values = np.zeros((len(train), len(test)))
    values[train["pair_id"].isin(["v0", "v1"]).to_numpy(), :] = 5.0
    values[(train["pair_id"] == "v0").to_numpy(), :] += 1.0
    run = fake_run(tmp_path, "parallel-s0", [values], train, test, parallel_train=True,
                   test_translations_in_train=True)
    result = translations.compute([run], {**CFG, "top_k": 6})
    samples = result.tables["samples"]
    assert samples["reinforcing"].eq(1.0).all()
    assert samples["chance"].iloc[0] == pytest.approx(2 / 8)
    assert verdicts(result)["TR1"] == "supports"
    assert verdicts(translations.compute([], CFG))["TR1"] == "not tested"


def test_imbalance_detects_a_language_that_gains_influence(tmp_path):
    train, test = frames()
    base = fake_run(tmp_path, "main-s0", [own_language_scores(train, test, 0)], train, test)
    big = pd.concat([train, train[train["language"] == "en"].assign(uid=lambda f: f["uid"] + "b")], ignore_index=True)
    values = own_language_scores(big, test, 0) + 3 * (big["language"].to_numpy() == "en")[:, None]
    skewed = fake_run(tmp_path, "imbalance-s0", [values], big, test, imbalance_language="en", imbalance_factor=2)
    result = imbalance.compute([base], [skewed], CFG)
    assert verdicts(result) == {"IM1-2x": "supports", "IM2-2x": "supports"}
    assert verdicts(imbalance.compute([base], [], CFG))["IM1"] == "not tested"


def test_control_sees_the_permuted_language(tmp_path, monkeypatch):
    train, test = frames()
    values = own_language_scores(train, test, 0)
    ru_like = (train["language"].to_numpy()[:, None] == "de") & (test["language"].to_numpy()[None, :] == "de")
    run = fake_run(tmp_path, "control-s0", [values + 10 * ru_like], train, test, permuted_language="de")
    main = fake_run(tmp_path, "main-s0", [values], train, test)
    history = pd.DataFrame({"epoch": [1] * 3, "language": LANGS, "accuracy": [0.5, 0.5, 0.3], "n": 6})
    (tmp_path / "control-s0" / "finetune").mkdir()
    run.folders["finetune"] = tmp_path / "control-s0" / "finetune"
    monkeypatch.setattr(control.finetune, "load", lambda folder: type("F", (), {"history": history})())
    result = control.compute([run], [main], CFG)
    assert verdicts(result) == {"PC1": "supports"}
    own = result.tables["own_shares"].set_index(["setting", "test_language"])["own"]
    assert own["control", "de"] == 1.0 and own["main", "de"] < 0.8


def test_attribution_compares_groups_from_one_pass(tmp_path):
    train, test = frames()
    own = own_language_scores(train, test, 10)
    shape = (1, len(train), len(test))
    groups = {name: {"spec": name, "dot": values.reshape(shape).astype(np.float32),
                     "train_sq": np.ones((1, len(train)), np.float32), "test_sq": np.ones((1, len(test)), np.float32)}
              for name, values in [("last_layers:1", -own), ("all", own), ("embeddings", own)]}
    folder = tmp_path / "groups"
    InfluenceScores(own.reshape(shape).astype(np.float32), ["epoch1"], [1.0], train, test,
                    groups=groups).save(folder / "scores")
    run = RunInputs(Run("main-s0", "main", 0, {}), {"tracin_groups": folder})
    result = attribution.compute(run, CFG)
    # the reference ranks in reverse: its top-k never meets the full model's (below chance)
    assert verdicts(result) == {"AT1": "supports", "AT2": "supports", "AT3": "contradicts"}
    summary = result.tables["summary"].set_index(["group", "similarity"])
    assert summary.loc[("last_layers:1", "dot"), "spearman_vs_reference"] == pytest.approx(1.0)
    assert summary.loc[("all", "dot"), "spearman_vs_reference"] == pytest.approx(-1.0)
    assert summary.loc[("all", "dot"), "own"] == 1.0


def test_zero_shot_sees_a_language_drawing_on_its_family(tmp_path, monkeypatch):
    train, test = frames()
    test = pd.concat([test, test[test["language"] == "en"].assign(language="pt", uid=lambda f: "pt" + f["uid"])],
                     ignore_index=True)
    values = own_language_scores(train, test, 0)
    romance = (train["language"].to_numpy()[:, None] == "fr") & (test["language"].to_numpy()[None, :] == "pt")
    run = fake_run(tmp_path, "main-s0", [values + 10 * romance], train, test, zero_shot_languages=["pt"])
    run.folders["finetune"] = run.folders["tracin"]
    history = pd.DataFrame({"epoch": [1] * 4, "language": LANGS + ["pt"], "accuracy": 0.5, "n": 6})
    monkeypatch.setattr(zero_shot.finetune, "load", lambda folder: type("F", (), {"history": history})())
    result = zero_shot.compute([run], CFG)
    assert verdicts(result) == {"ZS-pt": "supports"}  # fr is pt's only same-family fine-tuning language here
    related = result.tables["related"].set_index(["test_language", "by"])
    assert related.loc[("pt", "family"), "related"] == "fr" and related.loc[("pt", "family"), "share"] == 1.0
    assert related.loc[("pt", "family"), "language_blind"] == pytest.approx(1 / 3)
