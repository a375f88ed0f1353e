"""Influence scores to language shares."""

import numpy as np
import pandas as pd
import pytest

from helpers import analysis
from helpers.tracin import InfluenceScores


def make_scores(per_checkpoint, train_languages, test_languages):
    per_checkpoint = np.asarray(per_checkpoint, dtype=np.float32)
    return InfluenceScores(per_checkpoint, [f"epoch{i + 1}" for i in range(len(per_checkpoint))],
                           [1.0] * len(per_checkpoint), pd.DataFrame({"language": train_languages}),
                           pd.DataFrame({"language": test_languages}))


# 4 'en' and 4 'fr' training samples; the en test sample is helped most by en samples, the fr one by fr samples.
TRAIN = ["en"] * 4 + ["fr"] * 4
PLANTED = np.array([[9, 0], [8, 0], [7, 0], [0, 6], [0, 9], [0, 8], [0, 7], [6, 0]], dtype=float)


def test_language_shares_on_a_planted_pattern():
    shares = analysis.language_shares(make_scores([PLANTED], TRAIN, ["en", "fr"]), k=4)
    wide = analysis.share_matrix(shares)
    assert wide.loc["en", "en"] == pytest.approx(0.75) and wide.loc["en", "fr"] == pytest.approx(0.25)
    assert wide.loc["fr", "fr"] == pytest.approx(0.75) and wide.loc["fr", "en"] == pytest.approx(0.25)
    np.testing.assert_allclose(wide.sum(axis=1), 1.0)


def test_opponents_and_averaging_over_test_samples_of_a_language():
    # two en test samples: the first has only fr opponents, the second only en ones -> 50/50 on average
    scores = np.array([[0, -9], [0, -8], [0, -7], [0, -6], [-9, 0], [-8, 0], [-7, 0], [-6, 0]], dtype=float)
    wide = analysis.share_matrix(analysis.language_shares(make_scores([scores], TRAIN, ["en", "en"]), 4,
                                                          kind="opponents"))
    assert wide.loc["en", "en"] == pytest.approx(0.5) and wide.loc["en", "fr"] == pytest.approx(0.5)


def test_shares_per_checkpoint_use_each_checkpoints_own_scores():
    flipped = PLANTED[::-1]  # at the second checkpoint the pattern reverses
    per = analysis.shares_per_checkpoint(make_scores([PLANTED, flipped], TRAIN, ["en", "fr"]), k=3)
    first = per[(per.checkpoint == "epoch1") & (per.test_language == "en") & (per.train_language == "en")]
    second = per[(per.checkpoint == "epoch2") & (per.test_language == "en") & (per.train_language == "en")]
    assert first["share"].item() == pytest.approx(1.0) and second["share"].item() == pytest.approx(0.0)


def test_cross_lingual_share_and_verdict():
    shares = pd.DataFrame({"test_language": ["en", "en", "fr", "fr"] * 2, "train_language": ["en", "fr"] * 4,
                           "share": [0.9, 0.1, 0.2, 0.8, 0.6, 0.4, 0.4, 0.6],
                           "checkpoint": ["epoch1"] * 4 + ["epoch2"] * 4})
    cross = analysis.cross_lingual_share(shares, ["en", "fr"])
    wide = analysis.cross_lingual_by_checkpoint(cross, ["en", "fr"], ["epoch1", "epoch2"])
    assert wide.loc["mean", "epoch1"] == pytest.approx(0.15)
    assert wide.loc["mean", "epoch2"] == pytest.approx(0.4)
    text = analysis.shares_verdict(wide, 0.5, k=4, kind="proponents")
    assert "**consistent**" in text and "does draw on other languages" in text and "language-blind one" not in text
    assert "indistinguishable from a language-blind one" in analysis.shares_verdict(wide, 0.41, 4, "proponents")
    assert "**not** the growth" in analysis.shares_verdict(wide[["epoch2", "epoch1"]], 0.5, 4, "proponents")
    flat = wide.copy()
    flat["epoch2"] = flat["epoch1"] + 0.01
    assert "**no clear change**" in analysis.shares_verdict(flat, 0.5, 4, "proponents")


def test_verdict_with_a_single_fine_tuning_language_says_it_cannot_be_judged():
    wide = pd.DataFrame({"epoch1": [0.0, 0.0]}, index=["en", "mean"])
    assert "cannot be judged" in analysis.shares_verdict(wide, 0.0, 4, "proponents")


def test_share_report_bundles_the_chapter(tmp_path):
    report = analysis.share_report(make_scores([PLANTED, PLANTED[::-1]], TRAIN, ["en", "fr"]), 3, "proponents",
                                   ["en", "fr"])
    assert report.language_blind == pytest.approx(0.5)
    assert set(report.last["train_language"]) == {"en", "fr"} and "checkpoint" not in report.last
    # epoch2 reverses the pattern: all of en's top-3 come from fr
    assert report.cross_wide.loc["en", "epoch2"] == pytest.approx(1.0)
    assert report.cross_wide.loc["en", "epoch1"] == pytest.approx(0.0)
    assert "**consistent**" in report.verdict
    report.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"shares_last_checkpoint.csv", "shares_per_checkpoint.csv",
                                                     "cross_lingual_share.csv"}
