"""Influence scores to per-test-sample tables: top-k, language shares, own share, label agreement."""

import numpy as np
import pandas as pd
import pytest

from helpers import analysis
from helpers.flow.context import RunInputs
from helpers.influence.scores import InfluenceScores
from helpers.study import Run


def make_scores(per_checkpoint, train_languages, test_languages, train_labels=None, test_labels=None):
    per_checkpoint = np.asarray(per_checkpoint, dtype=np.float32)
    n_train, n_test = per_checkpoint.shape[1:]
    train = pd.DataFrame({"uid": [f"tr{i}" for i in range(n_train)], "language": train_languages,
                          "label": train_labels if train_labels is not None else [0] * n_train,
                          "pair_id": [f"p{i % 4}" for i in range(n_train)]})
    test = pd.DataFrame({"uid": [f"te{j}" for j in range(n_test)], "language": test_languages,
                         "label": test_labels if test_labels is not None else [0] * n_test,
                         "pair_id": [f"q{j}" for j in range(n_test)]})
    return InfluenceScores(per_checkpoint, [f"epoch{i + 1}" for i in range(len(per_checkpoint))],
                           [1.0] * len(per_checkpoint), train, test)


# 4 'en' and 4 'fr' training samples; the en test sample is helped most by en samples, the fr one by fr samples.
TRAIN = ["en"] * 4 + ["fr"] * 4
PLANTED = np.array([[9, 0], [8, 0], [7, 0], [0, 6], [0, 9], [0, 8], [0, 7], [6, 0]], dtype=float)


def test_sample_table_on_a_planted_pattern():
    table = analysis.sample_table(make_scores([PLANTED], TRAIN, ["en", "fr"]), k=4)
    assert table.loc[0, "share_en"] == pytest.approx(0.75) and table.loc[0, "share_fr"] == pytest.approx(0.25)
    assert table.loc[1, "own"] == pytest.approx(0.75)
    np.testing.assert_allclose(table[["share_en", "share_fr"]].sum(axis=1), 1.0)


def test_zero_shot_rows_have_no_own_share_and_absent_languages_get_zero_not_nan():
    scores = make_scores([PLANTED], TRAIN, ["en", "ko"])
    table = analysis.sample_table(scores, k=3)
    assert np.isnan(table.loc[1, "own"])
    assert table.loc[0, "share_fr"] == 0.0  # en's top-3 are all en: fr gets 0, not NaN


def test_top_k_breaks_ties_by_row_and_handles_opponents_in_both_views():
    values = np.zeros((200, 1))
    values[150, 0] = 1.0
    assert analysis.top_rows(values, 3)[:, 0].tolist() == [150, 0, 1]
    assert analysis.top_rows(-values, 3, "opponents")[:, 0].tolist() == [150, 0, 1]
    with pytest.raises(ValueError, match="k=201"):
        analysis.top_rows(values, 201)
    scores = make_scores([values], ["en"] * 200, ["en"])  # the engine's table uses the same definition
    assert scores.top_k(3)["train_row"].tolist() == [150, 0, 1]


def test_same_label_share_and_language_blind_baseline():
    labels = [0, 1, 0, 1, 0, 1, 0, 1]
    table = analysis.sample_table(make_scores([PLANTED], TRAIN, ["en", "fr"], labels, [0, 1]), k=4)
    assert table.loc[0, "same_label"] == pytest.approx(0.5)  # rows 0,1,2,7 -> labels 0,1,0,1
    uneven = analysis.sample_table(make_scores([PLANTED], TRAIN, ["en", "fr"], [0, 0, 0, 1, 1, 1, 1, 1], [0, 1]), k=4)
    assert uneven["same_label"].tolist() == pytest.approx([0.75, 1.0])  # rows 0,1,2,7 and 3,4,5,6
    blind = analysis.language_blind(make_scores([PLANTED], ["en"] * 6 + ["fr"] * 2, ["en", "fr"]))
    assert blind["en"] == pytest.approx(0.75) and blind["fr"] == pytest.approx(0.25)


def test_matrix_per_checkpoint_and_cumulative():
    scores = make_scores([PLANTED, -PLANTED, 2 * PLANTED], TRAIN, ["en", "fr"])
    np.testing.assert_allclose(analysis.matrix(scores, "epoch2"), -PLANTED)
    np.testing.assert_allclose(analysis.matrix(scores, "epoch2", cumulative=True), 0.0)
    np.testing.assert_allclose(analysis.matrix(scores, "epoch3", cumulative=True), 2 * PLANTED)
    np.testing.assert_allclose(analysis.matrix(scores), 2 * PLANTED)


def test_runs_table_reads_the_checkpoint_it_names(tmp_path):
    # One en test sample; 4 en and 4 fr training samples. Checkpoint 1 favours two of each language, checkpoint 2
    # strongly favours en, checkpoint 3 weakly favours fr: the top-4's en share is 0.5, 1, 0 per checkpoint and 1 in
    # the total, so each choice of checkpoint gives its own answer.
    en, fr = np.array([1.0] * 4 + [0.0] * 4), np.array([0.0] * 4 + [1.0] * 4)
    mixed = np.array([2, 2, 0, 0, 2, 2, 0, 0], dtype=float)
    per_checkpoint = [mixed[:, None], 10 * en[:, None], fr[:, None]]
    scores = make_scores(per_checkpoint, TRAIN, ["en"])
    scores.save(tmp_path / "tracin" / "scores")
    run = RunInputs(Run("main-s0", "main", 0, {}), {"tracin": tmp_path / "tracin"})
    share = {checkpoint: analysis.runs_table([run], 4, "proponents", checkpoint)["share_en"].item()
             for checkpoint in (None, "first", "last", "epoch2")}
    assert share == {None: 1.0, "first": 0.5, "last": 0.0, "epoch2": 1.0}
    cumulative = analysis.runs_table([run], 4, "proponents", "first", cumulative=True)
    assert cumulative["share_en"].item() == 0.5 and cumulative["run"].item() == "main-s0"
    with pytest.raises(ValueError, match="'epoch9' is not one of"):
        analysis.runs_table([run], 4, "proponents", "epoch9")


def test_own_language_auc_equals_sklearn_within_the_label():
    """Against scikit-learn's ROC AUC on the same-label training rows (ties included), per test sample; NaN where the
    label has no own-language training row (a zero-shot language)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    n_train, n_test = 60, 8
    train_language = rng.choice(["en", "de", "ru"], n_train)
    train_label = rng.integers(0, 3, n_train)
    values = np.round(rng.normal(size=(n_train, n_test)), 1)  # rounded: ties occur
    test_language = np.array(["en", "de", "ru", "en", "de", "ru", "en", "ko"])
    test_label = rng.integers(0, 3, n_test)
    got = analysis.own_language_auc(values, train_language, train_label, test_language, test_label)
    for j in range(n_test - 1):
        rows = train_label == test_label[j]
        want = roc_auc_score(train_language[rows] == test_language[j], values[rows, j])
        assert got[j] == pytest.approx(want, abs=1e-12)
    assert np.isnan(got[-1])
    blind = analysis.own_language_auc(np.ones((n_train, n_test)), train_language, train_label, test_language,
                                      test_label)
    assert np.allclose(blind[:-1], 0.5)


def test_checkpoint_epoch_reads_the_names_fine_tuning_writes():
    assert [analysis.checkpoint_epoch(n) for n in ("step0", "epoch0.5", "epoch1", "epoch12")] == [0, 0.5, 1, 12]
    with pytest.raises(ValueError, match="neither"):
        analysis.checkpoint_epoch("final")


def test_the_papers_sum_is_over_whole_epoch_checkpoints_only():
    """Step 0 and the checkpoints inside an epoch stay out of the paper's score (they are read one by one); with one
    checkpoint per epoch and none at step 0 it is the sum over every checkpoint."""
    per = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    ids = pd.DataFrame({"language": ["en", "de"], "label": [0, 1]})
    test = pd.DataFrame({"language": ["en", "de", "ru"], "label": [0, 1, 0]})
    fine = InfluenceScores(per, ["step0", "epoch0.5", "epoch1", "epoch1.5", "epoch2"], [1.0] * 5, ids, test)
    np.testing.assert_array_equal(analysis.paper_sum(fine), per[2] + per[4])
    np.testing.assert_array_equal(analysis.matrix(fine), per[2] + per[4])
    np.testing.assert_array_equal(analysis.matrix(fine, "epoch0.5", cumulative=True), per[0] + per[1])
    plain = InfluenceScores(per[:3], ["epoch1", "epoch2", "epoch3"], [1.0] * 3, ids, test)
    np.testing.assert_array_equal(analysis.paper_sum(plain), plain.total)
