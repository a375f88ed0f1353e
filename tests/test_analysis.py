"""Influence scores to language shares."""

import numpy as np
import pandas as pd
import pytest

from helpers import analysis


def test_top_k_rows_matches_a_full_sort():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 7))
    top = analysis.top_k_rows(scores, 5)
    np.testing.assert_array_equal(top, np.argsort(-scores, axis=0)[:5])
    bottom = analysis.top_k_rows(scores, 5, kind="opponents")
    np.testing.assert_array_equal(bottom, np.argsort(scores, axis=0)[:5])


def test_top_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'k' is 11; allowed: 1..10"):
        analysis.top_k_rows(np.zeros((10, 2)), 11)
    with pytest.raises(ValueError, match="'kind'"):
        analysis.top_k_rows(np.zeros((10, 2)), 1, kind="best")


def test_language_shares_on_a_planted_pattern():
    # 4 'en' and 4 'fr' training samples; the en test sample is helped most by en samples, fr by fr (3 of top 4).
    train = ["en"] * 4 + ["fr"] * 4
    test = ["en", "fr"]
    scores = np.array([[9, 0], [8, 0], [7, 0], [0, 6], [0, 9], [0, 8], [0, 7], [6, 0]], dtype=float)
    shares = analysis.language_shares(scores, train, test, k=4)
    wide = analysis.share_matrix(shares)
    assert wide.loc["en", "en"] == pytest.approx(0.75) and wide.loc["en", "fr"] == pytest.approx(0.25)
    assert wide.loc["fr", "fr"] == pytest.approx(0.75)
    np.testing.assert_allclose(wide.sum(axis=1), 1.0)


def test_cross_lingual_share_and_verdict():
    shares = pd.DataFrame({"test_language": ["en", "en", "fr", "fr"] * 2, "train_language": ["en", "fr"] * 4,
                           "share": [0.9, 0.1, 0.2, 0.8, 0.6, 0.4, 0.4, 0.6],
                           "checkpoint": ["epoch1"] * 4 + ["epoch2"] * 4})
    cross = analysis.cross_lingual_share(shares, ["en", "fr"])
    wide = analysis.cross_lingual_by_checkpoint(cross, ["en", "fr"], ["epoch1", "epoch2"])
    assert wide.loc["mean", "epoch1"] == pytest.approx(0.15)
    assert wide.loc["mean", "epoch2"] == pytest.approx(0.4)
    text = analysis.shares_verdict(wide, 0.5, k=4, kind="proponents")
    assert "**consistent**" in text and "does draw on other languages" in text
    assert "**not** the growth" in analysis.shares_verdict(wide[["epoch2", "epoch1"]], 0.5, 4, "proponents")
