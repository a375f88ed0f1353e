"""Each chapter on planted scores whose answer is known (no model needed): the claims must come out right."""

import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from helpers import claims as claims_mod
from helpers import config, data, study
from helpers.chapters import (
    attribution,
    control,
    dynamics,
    imbalance,
    language_shares,
    qualitative,
    reproducibility,
    scoreboard,
    translations,
    zero_shot,
)
from helpers.flow.context import RunInputs
from helpers.influence.scores import InfluenceScores
from helpers.study import Run

LANGS = ["en", "fr", "de"]
CFG = {"top_k": 4, "influence_kind": "proponents", "n_bootstrap": 200, "confidence": 0.95}


def fake_run(tmp_path, name, per_checkpoint, train, test, names=None, **params):
    folder = tmp_path / name / "tracin"
    names = names or [f"epoch{i + 1}" for i in range(len(per_checkpoint))]
    InfluenceScores(np.asarray(per_checkpoint, dtype=np.float32), names,
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


def own_language_scores(train, test, strength, seed=0):
    """Scores where each test sample's own-language training samples score ``strength`` higher (plus noise)."""
    rng = np.random.default_rng(seed)
    same = train["language"].to_numpy()[:, None] == test["language"].to_numpy()[None, :]
    return rng.normal(0, 1, same.shape) + strength * same


def seeded(tmp_path, variant, make, train, test, seeds=3, **params):
    """``seeds`` runs ``<variant>-s<seed>`` of planted scores: ``make(seed)`` gives each run's checkpoints."""
    return [fake_run(tmp_path, f"{variant}-s{seed}", make(seed), train, test, seed=seed, **params)
            for seed in range(seeds)]


def verdicts(result):
    return dict(zip(result.claims_table["claim_id"], result.claims_table["verdict"]))


def test_language_shares_detects_planted_own_language_preference_and_its_absence(tmp_path):
    train, test = frames()
    strong = seeded(tmp_path, "main", lambda seed: [own_language_scores(train, test, 10, seed)], train, test)
    result = language_shares.compute(strong, CFG)
    assert verdicts(result)["LS2"] == "supports"  # own-language AUC 1 in every run
    assert verdicts(result)["LS1"] == "contradicts"  # all proponents are own-language: no cross-lingual reliance
    assert result.claims_table.set_index("claim_id").loc["LS2", "runs"] == 3
    cells = result.tables["cells"]
    assert cells.query("test_language == train_language")["share"].eq(1.0).all()
    assert cells["language_blind"].eq(1 / 3).all()
    n_test = 3 * test.groupby("language").size()  # every top-k sample of a test sample is own-language here
    own = cells.query("test_language == train_language").set_index("test_language")["count"]
    assert own.to_dict() == (n_test * CFG["top_k"]).loc[own.index].to_dict()
    assert cells.query("test_language != train_language")["count"].eq(0).all()
    blind = seeded(tmp_path, "blind", lambda seed: [own_language_scores(train, test, 0, seed + 10)], train, test)
    got = verdicts(language_shares.compute(blind, CFG))
    assert got["LS1"] == "supports" and got["LS2"] in ("equivalent", "underpowered")  # never supports when blind
    assert verdicts(language_shares.compute(strong[:1], CFG))["LS2"] == "conditional on one run"
    (tmp_path / "out").mkdir()
    result.save(tmp_path / "out")  # what the notebook commits: every table as CSV, and the claims
    for name, table in result.tables.items():
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / f"{name}.csv"), table, check_dtype=False)
    assert claims_mod.load(tmp_path / "out")["verdict"].tolist() == result.claims_table["verdict"].tolist()


def test_each_cell_is_read_against_its_column_over_the_other_test_languages(tmp_path):
    """On a parallel test set (the same verses in every test language): a boost of German training data for German
    test samples makes the German-German cell stand out of its column (the other test languages' German share, on
    the same verses); the German column's other cells lie below it. Without verse ids shared across languages there
    is nothing to pair: n/a, not a number."""
    train, test = frames()
    parallel = test.assign(pair_id=[f"t{j}" for j in range(len(test) // 3)] * 3)
    de = (train["language"].to_numpy()[:, None] == "de") & (parallel["language"].to_numpy()[None, :] == "de")
    runs = seeded(tmp_path, "main", lambda seed: [own_language_scores(train, parallel, 0, seed) + 5 * de], train,
                  parallel)
    cells = language_shares.compute(runs, CFG).tables["cells"].set_index(["test_language", "train_language"])
    assert cells.loc[("de", "de"), "share"] == 1.0 and cells.loc[("de", "de"), "vs_low"] > 0.3
    assert cells.loc[("en", "de"), "vs_high"] < 0 and cells.loc[("fr", "de"), "vs_high"] < 0
    unpaired = seeded(tmp_path, "own", lambda seed: [own_language_scores(train, test, 0, seed)], train, test)
    assert language_shares.compute(unpaired, CFG).tables["cells"]["vs_others"].isna().all()


def test_dynamics_detects_a_falling_own_language_auc_with_runs_as_the_unit(tmp_path):
    train, test = frames()
    runs = seeded(tmp_path, "main", lambda seed: [own_language_scores(train, test, s, seed) for s in (10, 3, 0)],
                  train, test)
    result = dynamics.compute(runs, runs, CFG)
    assert verdicts(result) == {"HR-multilingual-e5-small": "supports", "DY1": "supports", "DY2": "supports"}
    encoders = result.tables["encoders"]
    assert encoders["own_auc"].iloc[0] == pytest.approx(1.0) and encoders["runs"].eq(3).all()
    assert encoders["own_auc"].is_monotonic_decreasing and encoders["accuracy"].isna().all()  # no fine-tuning here
    assert verdicts(dynamics.compute(runs[:1], runs[:1], CFG))["DY1"] == "conditional on one run"
    one = fake_run(tmp_path, "main-s9", [own_language_scores(train, test, 10)], train, test)
    assert verdicts(dynamics.compute([one], [one], CFG))["DY1"] == "not tested"


def test_dynamics_is_gated_by_headroom_and_judged_per_run(tmp_path):
    """DY1 runs from the first checkpoint (step 0 here) to the last; DY2 needs a checkpoint after epoch 2 and a
    later one. HR is judged per encoder: a language-blind encoder has no headroom (its AUC interval holds 0.5), and
    when the central encoder has none, DY1 is not testable, whatever its checkpoints do."""
    train, test = frames()
    names = ["step0", "epoch0.5", "epoch1", "epoch1.5", "epoch2"]
    falls = seeded(tmp_path, "lm", lambda seed: [own_language_scores(train, test, s, seed) for s in (10, 8, 5, 2, 0)],
                   train, test, names=names, model="gemma-3-270m")
    flat = seeded(tmp_path, "flat", lambda seed: [own_language_scores(train, test, 5, seed + s) for s in range(5)],
                  train, test, names=names, model="gemma-3-270m")
    blind = seeded(tmp_path, "main", lambda seed: [own_language_scores(train, test, 0, seed + 20 + s)
                                                   for s in range(3)], train, test)
    result = dynamics.compute(falls, falls + blind, CFG)
    got = verdicts(result)
    assert got["DY1"] == "supports" and got["DY2"] == "not tested"
    assert got["HR-gemma-3-270m"] == "supports" and got["HR-multilingual-e5-small"] in ("equivalent", "underpowered")
    assert list(result.tables["per_checkpoint"].query("view == 'own checkpoint'")["epoch"]) == [0, 0.5, 1, 1.5, 2]
    assert verdicts(dynamics.compute(flat, flat, CFG))["DY1"] in ("equivalent", "underpowered")
    gated = result.claims_table.set_index("claim_id")
    ungated = dynamics.compute(blind, blind, CFG).claims_table.set_index("claim_id")
    assert ungated.loc["DY1", "verdict"] == "not tested" and "not testable here" in ungated.loc["DY1", "note"]
    assert gated.loc["DY1", "runs"] == 3 and gated.loc["DY1", "value"] < -0.4


def test_translations_all_cross_lingual_proponents_are_translations(tmp_path):
    train, test = frames(parallel=True)
    # Test sample j's proponents: its own language's verses v0, v1 and their translations in the other languages.
    values = np.zeros((len(train), len(test)))
    values[train["pair_id"].isin(["v0", "v1"]).to_numpy(), :] = 5.0
    values[(train["pair_id"] == "v0").to_numpy(), :] += 1.0
    runs = seeded(tmp_path, "parallel", lambda seed: [values], train, test, parallel_train=True,
                  test_translations_in_train=True)
    result = translations.compute(runs, {**CFG, "top_k": 6})
    samples = result.tables["samples"]
    assert samples["reinforcing"].eq(1.0).all()
    # label-matched chance: of another language's 4 training samples with the test label, 1 translates v0 or v1
    assert samples["chance"].eq(1 / 4).all() and samples["excess"].eq(3 / 4).all()
    assert verdicts(result)["TR1"] == "supports"
    assert verdicts(translations.compute(runs[:1], {**CFG, "top_k": 6}))["TR1"] == "conditional on one run"
    assert verdicts(translations.compute([], CFG))["TR1"] == "not tested"


def test_translations_leaves_out_the_planted_test_translations_and_needs_an_own_proponent(tmp_path):
    """The test verse's own translations (planted for TR2) can never reinforce: they are left out of TR1. A test
    sample without an own-language proponent has no reinforcing share (undefined, not 0)."""
    train, test = frames(parallel=True)
    test = test.assign(pair_id=[f"v{j}" for j in range(len(test) // 3)] * 3)  # test verse j = training verse vj
    values = np.zeros((len(train), len(test)))
    planted = train["pair_id"].to_numpy()[:, None] == test["pair_id"].to_numpy()[None, :]
    other = train["language"].to_numpy()[:, None] != test["language"].to_numpy()[None, :]
    values += 9.0 * (planted & other)  # its translations first: 2 of them
    values[(train["pair_id"] == "v7").to_numpy(), :] += 5.0  # then verse 7 in every language
    run = fake_run(tmp_path, "parallel-s0", [values], train, test, parallel_train=True,
                   test_translations_in_train=True)
    samples = translations.compute([run], {**CFG, "top_k": 5}).tables["samples"]
    assert samples["reinforcing"].eq(1.0).all()  # only v7's translations count: they translate the own v7
    assert samples["n_cross"].eq(2).all()  # v7 in the two other languages; the planted translations left out
    alone = np.where(other & ~planted, 5.0, 0.0) + 9.0 * (planted & other)  # no own-language proponent
    lonely = fake_run(tmp_path, "parallel-s1", [alone], train, test, parallel_train=True,
                      test_translations_in_train=True)
    assert translations.compute([lonely], {**CFG, "top_k": 5}).tables["samples"]["reinforcing"].isna().all()


def test_translations_measures_tr1_without_planted_translations_and_tr2_with_them(tmp_path):
    """A half-planted parallel run: TR1 on the test samples none of whose translations is trained on, pooled over
    their cross-lingual proponents; TR2 on the others. Unplanted samples reinforce fully; the planted ones' own
    translations rank first (TR2) and their other proponents never reinforce, which must not reach TR1."""
    train, test = frames(parallel=True)
    planted_rows = (np.arange(len(test)) % 6) < 3
    test = test.assign(pair_id=np.where(planted_rows, [f"v{2 + j % 6}" for j in range(len(test))], test["pair_id"]))
    same_pair = train["pair_id"].to_numpy()[:, None] == test["pair_id"].to_numpy()[None, :]
    other = train["language"].to_numpy()[:, None] != test["language"].to_numpy()[None, :]
    own = ~other
    values = np.zeros((len(train), len(test)))
    v01 = train["pair_id"].isin(["v0", "v1"]).to_numpy()[:, None]
    values += np.where(~planted_rows[None, :], 5.0 * v01, 0.0)  # unplanted: v0, v1 in every language
    values += np.where(planted_rows[None, :], 9.0 * (same_pair & other) + 5.0 * (own & (train["pair_id"] == "v7")
                       .to_numpy()[:, None]) + 4.0 * (other & (train["pair_id"] == "v6").to_numpy()[:, None]), 0.0)
    runs = seeded(tmp_path, "parallel", lambda seed: [values], train, test, parallel_train=True,
                  test_translations_in_train=True)
    result = translations.compute(runs, {**CFG, "top_k": 6})
    samples = result.tables["samples"]
    unplanted = samples[samples["translations"] == 0]
    assert len(unplanted) == 3 * 3 * 3 and unplanted["reinforcing"].eq(1.0).all()
    assert samples.loc[samples["translations"] > 0, "reinforcing"].eq(0.0).all()  # v6 never translates own v7
    row = result.claims_table.set_index("claim_id").loc["TR1"]
    expected = np.average(unplanted["excess"], weights=unplanted["n_cross"])
    assert row["value"] == pytest.approx(expected) and row["value"] > 0.5 and row["verdict"] == "supports"
    assert "27 test samples in all" in row["rests_on"]
    tr2 = result.claims_table.set_index("claim_id").loc["TR2"]
    assert tr2["value"] == 1.0 and "27 test samples in all" in tr2["rests_on"]
    everything = seeded(tmp_path, "all", lambda seed: [values], train, test.assign(pair_id=[f"v{j % 8}" for j in
                        range(len(test))]), parallel_train=True, test_translations_in_train=True)
    got = verdicts(translations.compute(everything, {**CFG, "top_k": 6}))
    assert got["TR1"] == "not tested" and got["TR2"] != "not tested"


def test_imbalance_is_judged_beyond_the_data_share_paired_by_seed(tmp_path):
    """A language given twice the data gains influence beyond its data share: supported. A language-blind ranking
    of the same imbalanced data raises the language's share of the top-k just as much as its data share (1/3 to
    1/2): judged against "no change" that read as support; beyond the data share it must not."""
    train, test = frames()
    big = pd.concat([train, train[train["language"] == "en"].assign(uid=lambda f: f["uid"] + "b")], ignore_index=True)
    en = (big["language"].to_numpy() == "en")[:, None]
    base = seeded(tmp_path, "main", lambda seed: [own_language_scores(train, test, 0, seed)], train, test)
    skewed = seeded(tmp_path, "imbalance", lambda seed: [own_language_scores(big, test, 0, seed + 5) + 3 * en], big,
                    test, imbalance_language="en", imbalance_factor=2)
    result = imbalance.compute(base, skewed, CFG)
    assert verdicts(result) == {"IM1-2x": "supports", "IM2-2x": "supports"}
    blind = seeded(tmp_path, "blind", lambda seed: [own_language_scores(big, test, 0, seed + 5)], big, test,
                   imbalance_language="en", imbalance_factor=2)
    table = imbalance.compute(base, blind, CFG).claims_table.set_index("claim_id")
    assert set(table["verdict"]) <= {"equivalent", "underpowered", "contradicts"}, table["verdict"]
    shares = imbalance.compute(base, blind, CFG).tables["summary"]
    assert shares.query("setting == '2x'")["share"].mean() > shares.query("setting == 'balanced'")["share"].mean()
    assert verdicts(imbalance.compute(base[:1], skewed[:1], CFG))["IM1-2x"] == "conditional on one run"
    assert verdicts(imbalance.compute(base, [], CFG))["IM1"] == "not tested"


def control_runs(tmp_path, monkeypatch, train, test, boost, dose=1.0, seeds=1, others=0.0, noise_seed=0, push=0.0):
    """Control runs (``control<dose>-s<seed>``) over the main runs' planted scores (``main-s<seed>``, no own-language
    preference): German test samples' German training samples score ``boost`` higher, the other test languages' own
    samples ``others`` higher (0: their scores are the main run's, unchanged), and German samples ``push`` lower for
    the other test languages (the shifted samples contradicting their labels)."""
    lang = test["language"].to_numpy()[None, :]
    de = (train["language"].to_numpy()[:, None] == "de") & (lang == "de")
    own = (train["language"].to_numpy()[:, None] == lang) & (lang != "de")
    pushed = (train["language"].to_numpy()[:, None] == "de") & (lang != "de")
    history = pd.DataFrame({"epoch": [1] * 3, "language": LANGS, "accuracy": [0.5, 0.5, 0.3], "n": 6})
    monkeypatch.setattr(control.finetune, "load", lambda folder: type("F", (), {"history": history})())
    main, runs = [], []
    for seed in range(seeds):
        values = own_language_scores(train, test, 0, seed + noise_seed)
        main.append(fake_run(tmp_path, f"main-s{seed}", [values], train, test, seed=seed))
        noise = np.random.default_rng(seed + 100).normal(0, 0.5, values.shape) if others else 0
        scores = values + boost * de + others * own - push * pushed + noise
        run = fake_run(tmp_path, f"control{dose:g}-s{seed}", [scores], train, test, seed=seed,
                       permuted_language="de", permuted_share=dose)
        run.folders["finetune"] = tmp_path / run.name / "finetune"
        runs.append(run)
    return runs, main


def test_control_sees_the_permuted_language(tmp_path, monkeypatch):
    train, test = frames()
    runs, main = control_runs(tmp_path, monkeypatch, train, test, boost=10)
    result = control.compute(runs, main, CFG)
    assert verdicts(result) == {"PC1": "conditional on one run", "PC2": "conditional on one run"}  # one run each
    assert "interval lies above the baseline" in result.claims_table["note"].iloc[0]
    own = result.tables["own_shares"].set_index(["setting", "test_language"])["own"]
    assert own["control", "de"] == 1.0 and own["main", "de"] < 0.8
    assert result.claims_table.set_index("claim_id").loc["PC2", "value"] == 0.0  # the others' top-k did not move
    assert verdicts(control.compute([], main, CFG)) == {"PC1": "not tested", "PC2": "not tested"}


def test_control_tests_that_the_other_languages_stay_with_seeds_as_the_unit(tmp_path, monkeypatch):
    """With three seeds: a control that leaves the other languages' scores as they were supports PC2 (equivalent
    within its margin); one that also pushes their own-language samples up contradicts it."""
    train, test = frames()
    runs, main = control_runs(tmp_path / "same", monkeypatch, train, test, boost=10, seeds=3)
    table = control.compute(runs, main, CFG).claims_table.set_index("claim_id")
    assert table.loc["PC1", "verdict"] == "supports" and table.loc["PC1", "runs"] == 3
    assert table.loc["PC2", "verdict"] == "supports" and table.loc["PC2", "expect"] == "equal"
    runs, main = control_runs(tmp_path / "moved", monkeypatch, train, test, boost=10, seeds=3, others=3)
    table = control.compute(runs, main, CFG).claims_table.set_index("claim_id")
    assert table.loc["PC2", "verdict"] == "contradicts" and table.loc["PC2", "value"] > 0.2
    # German pushed out of the others' top-k: their plain own share rises, their own share outside German does not
    runs, main = control_runs(tmp_path / "pushed", monkeypatch, train, test, boost=10, seeds=3, push=10)
    result = control.compute(runs, main, CFG)
    table = result.claims_table.set_index("claim_id")
    assert table.loc["PC2", "verdict"] == "supports" and "moved by -" in table.loc["PC2", "note"]
    own = result.tables["own_shares"].set_index(["setting", "test_language"])["own"]
    assert own["control", "en"] > own["main", "en"] + 0.1


def test_control_dose_response_finds_the_smallest_detectable_rise(tmp_path, monkeypatch):
    """Doses whose planted own-language boost grows with the dose: the own share rises with it, the smallest dose is
    not detected, the larger ones are, and each states the rise it could detect."""
    train, test = frames(n_per_language=12, n_test=10)
    runs, main = [], None
    for dose, boost in ((0.25, 0.0), (0.5, 1.5), (1.0, 10)):
        arm, main = control_runs(tmp_path / str(dose), monkeypatch, train, test, boost=boost, dose=dose, seeds=3)
        runs += arm
    doses = control.compute(runs, main, CFG).tables["doses"].set_index("dose")
    assert list(doses.index) == [0.0, 0.25, 0.5, 1.0] and doses["runs"].eq(3).all()
    assert doses["own"].is_monotonic_increasing and doses.loc[1.0, "own"] == 1.0
    assert doses.loc[0.25, "rise"] == 0.0 and not doses.loc[0.25, "detected"]  # no boost: nothing to detect
    assert doses.loc[0.5, "detected"] and doses.loc[1.0, "detected"]
    assert np.isnan(doses.loc[0.0, "detectable"]) and (doses.loc[[0.25, 0.5], "detectable"] >= 0).all()
    mixed = [r for r in runs if r.params["permuted_share"] < 1] + [
        fake_run(tmp_path, "other-s0", [own_language_scores(train, test, 0)], train, test, permuted_language="fr")]
    with pytest.raises(ValueError, match="permute different languages"):
        control.compute(mixed, main, CFG)


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
    # the reference ranks in reverse: its top-k never meets the full model's (below chance); one run each
    assert set(verdicts(result).values()) == {"conditional on one run"}
    table = result.claims_table.set_index("claim_id")
    assert table.loc["AT3", "high"] < table.loc["AT3", "baseline"] < table.loc["AT1", "low"]
    assert table.loc["AT3", "baseline"] == pytest.approx(4 / 12)  # label-matched chance: k / 12 same-label samples
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
    assert verdicts(result) == {"ZS-pt": "conditional on one run"}  # fr: pt's only same-family language here
    assert result.claims_table["low"].iloc[0] > result.claims_table["baseline"].iloc[0]
    related = result.tables["related"].set_index(["test_language", "by"])
    assert related.loc[("pt", "family"), "related"] == "fr" and related.loc[("pt", "family"), "share"] == 1.0
    assert related.loc[("pt", "family"), "language_blind"] == pytest.approx(1 / 3)


def test_scoreboard_gathers_claims_in_the_order_given_and_judges_learning_against_twice_chance(tmp_path, monkeypatch):
    for stage, ids in (("dynamics", ["DY1"]), ("language_shares", ["LS1", "LS2"]), ("zero_shot", [])):
        (tmp_path / stage).mkdir()
        claims_mod.save([claims_mod.claim(i, stage, "s", claims_mod.METHOD, "x",
                                          claims_mod.Estimate(0.5, 0.4, 0.6, runs=3, se=0.02, df=2), 0.2, "b", "above")
                         for i in ids], tmp_path / stage)
    gathered = scoreboard.gather({s: tmp_path / s for s in ("language_shares", "dynamics", "zero_shot")})
    assert list(gathered["claim_id"]) == ["LS1", "LS2", "DY1"]
    assert list(gathered["page"]) == ["10_language_shares", "10_language_shares", "11_dynamics"]
    assert scoreboard.gather({"zero_shot": tmp_path / "zero_shot"}).empty

    # Two seeds: 4 of 6 and 2 of 6 right in each fine-tuning language at the last epoch (epoch 0 is ignored).
    histories = {}
    runs = []
    for seed, right in ((0, 4), (1, 2)):
        name = f"main-s{seed}"
        histories[name] = pd.DataFrame({"epoch": [0] * 4 + [2] * 4, "language": ["en", "fr", "de", "ko"] * 2,
                                        "accuracy": [1.0] * 4 + [right / 6] * 3 + [1 / 6], "n": 6})
        params = {**config.defaults("run"), "fine_tune_languages": LANGS, "zero_shot_languages": ["ko"], "seed": seed}
        runs.append(RunInputs(Run(name, "main", seed, params), {"finetune": tmp_path / name}))
    monkeypatch.setattr(scoreboard.finetune, "load",
                        lambda folder: type("F", (), {"history": histories[Path(folder).name]})())
    table = scoreboard.runs_table(runs)
    assert table["accuracy (fine-tuned languages)"].tolist() == pytest.approx([4 / 6, 2 / 6])
    assert table["accuracy (zero-shot languages)"].tolist() == pytest.approx([1 / 6, 1 / 6])
    claim = scoreboard.learning_claim(runs, confidence=0.95)
    assert claim.value == pytest.approx(0.5) and claim.baseline == pytest.approx(2 / 6)
    assert claim.low <= 2 / 6 <= claim.high and claim.verdict == "underpowered"  # one seed above, one below
    one = scoreboard.learning_claim(runs[:1], confidence=0.95)  # 4/6 of 18 samples: above, within one run
    assert one.verdict == "conditional on one run" and one.low > one.baseline


def test_qualitative_shows_the_strongest_proponents_and_opponents_at_the_first_and_last_checkpoint(tmp_path):
    train, test = frames(n_per_language=4, n_test=1)
    train = train.assign(label_name="x", text=[f"train text {i}" for i in range(len(train))])
    test = test.assign(label_name="x", text=[f"test text {j}" for j in range(len(test))])
    # Checkpoint 1 ranks training rows in order 0, 1, 2, ...; checkpoint 2 in reverse.
    first = np.tile(-np.arange(len(train), dtype=float)[:, None], (1, len(test)))
    run = fake_run(tmp_path, "main-s0", [first, -first], train, test)
    (tmp_path / "data").mkdir()
    data.save_splits(train, test, tmp_path / "data")
    run.folders["data"] = tmp_path / "data"
    examples = qualitative.compute(run, {"examples_per_language": 1, "influence_kind": "proponents"}).tables["examples"]
    assert len(examples) == len(LANGS) * 2 * 2 * qualitative.SHOWN  # language x checkpoint x kind x rank
    n = len(train)
    for (checkpoint, kind), part in examples.groupby(["checkpoint", "kind"]):
        expected = {("epoch1", "proponents"): [0, 1, 2], ("epoch1", "opponents"): [n - 1, n - 2, n - 3],
                    ("epoch2", "proponents"): [n - 1, n - 2, n - 3], ("epoch2", "opponents"): [0, 1, 2]}
        texts = [f"train text {i}" for i in expected[checkpoint, kind]]
        assert part.groupby("test_uid")["train_text"].apply(list).map(texts.__eq__).all(), (checkpoint, kind)
        assert part["rank"].tolist() == [1, 2, 3] * len(LANGS)
    assert (examples["test_text"] == examples["test_uid"].map(dict(zip(test["uid"], test["text"])))).all()
    assert not examples["same_verse"].any()


@pytest.mark.parametrize("seeds", [None, [1]])
def test_reproducibility_rerun_command_rebuilds_the_same_study(seeds):
    s = study.resolve("smoke", ["top_k=7", "epochs=2", "fine_tune_languages=[en,fr,de,es,ru]",
                                "tracin_params=re:classifier"], seeds=seeds, name="mine")
    words = shlex.split(reproducibility.rerun_command(s))
    assert words[:4] == ["python", "-m", "helpers.pipeline", "run"] and words[-1] == "--force"
    option = {words[i]: words[i + 1] for i in range(4, len(words) - 1) if words[i].startswith("--")}
    overrides = [words[i + 1] for i in range(len(words) - 1) if words[i] == "-p"]
    assert sorted(overrides) == ["epochs=2", "top_k=7", "tracin_params=re:classifier"]  # only what differs
    again = study.resolve(option["--profile"], overrides, seeds=[int(x) for x in option["--seeds"].split(",")],
                          name=option["--study"])
    assert again.name == "mine" and again.params == s.params
    assert {n: r.params for n, r in again.runs.items()} == {n: r.params for n, r in s.runs.items()}


def test_reproducibility_parameter_table_shows_where_runs_differ():
    s = study.resolve("smoke")
    table = reproducibility.parameter_table(s)
    assert list(table.index) == list(config.PARAMETERS)
    assert table.loc["top_k", "value"] == "5" and table.loc["top_k", "scope"] == "study"
    assert table.loc["imbalance_factor", "in imbalance4-s0"] == "4"
    assert table.loc["seed", "in main-s1"] == "1" and table.loc["seed", "in imbalance4-s0"] == ""
    assert table.loc["epochs", [c for c in table.columns if c.startswith("in ")]].eq("").all()


def _axis_runs(tmp_path, monkeypatch, train, test, encoders, accuracy, **params):
    """Fake fine-tuned runs of several encoders: ``encoders`` maps a variant to (encoder name, seeds, scores(seed));
    ``accuracy(run name, language)`` gives the last epoch's accuracy."""
    from types import SimpleNamespace

    from helpers.chapters import alignment

    runs = []
    for variant, (_, seeds, make) in encoders.items():
        for seed in range(seeds):
            run = fake_run(tmp_path, f"{variant}-s{seed}", [make(seed)], train, test, seed=seed, **params)
            run.folders["finetune"] = tmp_path / run.name / "finetune"
            runs.append(run)
    languages = list(test["language"].unique())
    monkeypatch.setattr(alignment.finetune, "load", lambda folder: SimpleNamespace(history=pd.DataFrame(
        {"epoch": 3, "language": languages,
         "accuracy": [accuracy(Path(folder).parent.name, lang) for lang in languages]})))
    return runs


def _probing(tmp_path, starts, pairs):
    probing = tmp_path / "probing"
    probing.mkdir(exist_ok=True)
    pd.DataFrame(starts).to_csv(probing / "starts.csv", index=False)
    pd.DataFrame(pairs).to_csv(probing / "pairs.csv", index=False)
    return probing


def test_alignment_compares_encoders_only_when_each_learned_the_task_on_three_seeds(tmp_path, monkeypatch):
    from helpers.chapters import alignment

    train, test = frames()
    encoders = {"main": ("e5", 3, lambda seed: own_language_scores(train, test, 0, seed)),
                "mlm": ("in-house", 3, lambda seed: own_language_scores(train, test, 10, seed))}
    accuracy = {"main": 0.7, "mlm": 0.4}
    runs = _axis_runs(tmp_path, monkeypatch, train, test, encoders,
                      lambda run, lang: accuracy[run.split("-")[0]] + 0.01 * int(run[-1]))
    starts = [{"variant": "main", "run": "main-s0", "encoder": "e5", "retrieval": 0.9, "overlap": 0.5},
              {"variant": "mlm", "run": "mlm-s0", "encoder": "in-house", "retrieval": 0.05, "overlap": 0.1}]
    pairs = [{"encoder": encoder, "phase": "fine-tuned", "checkpoint": "epoch1", "order": 1, "run": f"{v}-s0",
              "language_a": a, "language_b": b, "overlap": 0.3} for v, (encoder, _, _) in encoders.items()
             for a, b in [("en", "fr"), ("en", "de"), ("fr", "de")]]
    probing = _probing(tmp_path, starts, pairs)
    claim = alignment.compute(probing, runs, CFG).claims_table.set_index("claim_id").loc["AL1"]
    assert claim["verdict"] == "supports" and claim["runs"] == 3 and claim["value"] > 0.3
    # One seed each: not tested, whatever the difference (the run is the unit).
    one = alignment.compute(probing, [r for r in runs if r.run.seed == 0], CFG).claims_table.set_index("claim_id")
    assert one.loc["AL1", "verdict"] == "not tested" and "at least 3 seeds" in one.loc["AL1", "note"]
    assert "e5: 1 seed" in one.loc["AL1", "note"]
    # The unaligned encoder near chance (6 genres: 17%): its rankings say nothing about alignment.
    accuracy["mlm"] = 0.1
    unlearned = alignment.compute(probing, runs, CFG).claims_table.set_index("claim_id").loc["AL1"]
    assert unlearned["verdict"] == "not tested" and "this study has 1 such encoder" in unlearned["note"]
    # An encoder measuring as aligned as e5 (layers above the probed one re-initialised) listed after it: the most
    # aligned end stays the main run's encoder.
    accuracy["mlm"] = 0.4
    accuracy["reinit"] = 0.7
    tied = _axis_runs(tmp_path, monkeypatch, train, test,
                      {**encoders, "reinit": ("e5, top 1 re-initialised", 3,
                                              lambda seed: own_language_scores(train, test, 10, seed))},
                      lambda run, lang: accuracy[run.split("-")[0]] + 0.01 * int(run[-1]))
    _probing(tmp_path, starts + [{**starts[0], "variant": "reinit", "run": "reinit-s0",
                                  "encoder": "e5, top 1 re-initialised"}], pairs)
    claim = alignment.compute(probing, tied, CFG).claims_table.set_index("claim_id").loc["AL1"]
    assert claim["statistic"].endswith("minus e5 (90%)") and claim["value"] > 0.3, claim["statistic"]
    (probing / "pairs.csv").write_text("")  # the probing chapter measured nothing (not the Bible corpus)
    assert set(verdicts(alignment.compute(probing, runs, CFG)).values()) == {"not tested"}


def test_alignment_correlations_are_within_one_encoder_over_unordered_pairs_and_zero_shot_languages(
        tmp_path, monkeypatch):
    """Planted: within each encoder, language pairs that overlap more share more data: each encoder's claim
    supports it. Then the overlaps shuffled within each encoder: no link within either, while the encoder with more
    overlap still shares more overall (a weaker own-language pull), so a correlation pooled over encoders leans
    positive: the claims, within one encoder each, must not read "supports". W1 uses only the zero-shot languages:
    with four whose accuracy follows their overlap it is tested; with two it is not."""
    from helpers.chapters import alignment

    ft, zs = ["en", "fr", "de", "es", "ru"], ["ko", "pt", "it", "ar"]
    rng = np.random.default_rng(7)
    pairs_all = [(a, b) for i, a in enumerate(ft + zs) for b in (ft + zs)[i + 1:]]
    base = dict(zip(pairs_all, rng.permutation(len(pairs_all)) / len(pairs_all)))

    def o(a, b):
        return base[(a, b)] if (a, b) in base else base[(b, a)]

    train = pd.DataFrame([{"uid": f"{lang}{i}", "language": lang, "label": i % 2, "pair_id": f"{lang}-v{i}"}
                          for lang in ft for i in range(8)])
    test = pd.DataFrame([{"uid": f"t{lang}{j}", "language": lang, "label": j % 2, "pair_id": f"t{lang}{j}"}
                         for lang in ft + zs for j in range(4)])
    tl, te = train["language"].to_numpy(), test["language"].to_numpy()
    strength = np.array([[0.0 if a == b else 2.0 * o(a, b) for a in te] for b in tl])

    def scores(own):
        return lambda seed: (strength + own * (tl[:, None] == te[None, :])
                             + np.random.default_rng(seed).normal(0, 0.3, strength.shape))

    encoders = {"main": ("e5", 3, scores(4.0)), "gemma": ("gemma", 3, scores(0.0))}
    offset = {"e5": 0.0, "gemma": 0.6}
    zero_acc = {lang: 0.2 + 0.5 * np.mean([o(lang, b) for b in ft]) for lang in zs}
    runs = _axis_runs(tmp_path, monkeypatch, train, test, encoders,
                      lambda run, lang: zero_acc.get(lang, 0.8), fine_tune_languages=ft, zero_shot_languages=zs)
    starts = [{"variant": v, "run": f"{v}-s0", "encoder": e, "retrieval": r, "overlap": 0.3}
              for (v, (e, _, _)), r in zip(encoders.items(), (0.9, 0.4))]
    pairs = [{"encoder": e, "phase": "fine-tuned", "checkpoint": "epoch1", "order": 1, "run": f"{v}-s{seed}",
              "language_a": a, "language_b": b, "overlap": offset[e] + 0.3 * o(a, b)}
             for v, (e, seeds, _) in encoders.items() for seed in range(seeds) for a, b in pairs_all]
    result = alignment.compute(_probing(tmp_path, starts, pairs), runs, {**CFG, "top_k": 20})
    points = result.tables["pair_points"]
    # unordered pairs with at least one fine-tuning language, once per encoder, averaged over its 3 runs
    assert len(points) == 2 * (10 + 5 * 4) and points["runs"].eq(3).all()
    table = result.claims_table.set_index("claim_id")
    for encoder in ("e5", "gemma"):
        row = table.loc[f"AL2-{encoder}"]
        assert row["value"] > 0.6 and row["verdict"] == "supports" and row["runs"] == 3, row
        assert "30 points of 9 languages" in row["rests_on"] and "bootstrap over languages" in row["rests_on"]
        w1 = table.loc[f"W1-{encoder}"]
        assert w1["value"] == pytest.approx(1.0) and w1["verdict"] != "not tested", w1
    # No planted link: the overlaps shuffled within each encoder: never "supports".
    shuffled = pd.DataFrame(pairs).assign(overlap=lambda f: f.groupby("encoder")["overlap"].transform(
        lambda x: rng.permutation(x.to_numpy())))
    (tmp_path / "probing" / "pairs.csv").write_text(shuffled.to_csv(index=False))
    flat = alignment.compute(tmp_path / "probing", runs, {**CFG, "top_k": 16})
    pooled = flat.tables["pair_points"]
    assert stats.spearmanr(pooled["overlap"], pooled["share"]).statistic > 0.15  # pooling: a link across encoders
    flat = flat.claims_table.set_index("claim_id")
    assert flat.loc["AL2-e5", "verdict"] != "supports" and flat.loc["AL2-gemma", "verdict"] != "supports"
    assert abs(flat.loc["AL2-e5", "value"]) < 0.4 and abs(flat.loc["AL2-gemma", "value"]) < 0.4
    # Two zero-shot languages: W1 is not tested (a correlation needs at least 3).
    few = alignment.compute(_probing(tmp_path, starts, [p for p in pairs if {p["language_a"], p["language_b"]}
                                                        <= set(ft + zs[:2])]),
                            runs, {**CFG, "top_k": 16}).claims_table.set_index("claim_id")
    assert few.loc["W1-e5", "verdict"] == "not tested" and "at least 3" in few.loc["W1-e5", "note"]


def test_the_learning_claim_follows_the_study_s_confidence_and_resamples(tmp_path, monkeypatch):
    """FT1 is computed by the scoreboard with the study's ``confidence`` (it used the default)."""
    from helpers.chapters import scoreboard

    history = pd.DataFrame({"epoch": 3, "language": ["en", "fr"], "accuracy": [0.5, 0.7], "n": 20})
    params = {**config.defaults("run"), "fine_tune_languages": ["en", "fr"], "zero_shot_languages": ["ko"]}
    runs = [RunInputs(Run("main-s0", "main", 0, params), {"finetune": tmp_path})]
    monkeypatch.setattr(scoreboard.finetune, "load", lambda folder: type("F", (), {"history": history})())
    narrow = scoreboard.learning_claim(runs, confidence=0.5)
    wide = scoreboard.learning_claim(runs, confidence=0.99)
    assert wide.high - wide.low > 1.5 * (narrow.high - narrow.low)
    assert "confidence" in scoreboard.STAGE.params  # so -p confidence=... reruns it
