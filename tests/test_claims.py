"""Intervals and verdicts: the bootstrap covers a known value at about its nominal rate; verdicts follow the rule."""

import numpy as np
import pandas as pd
import pytest

from helpers import claims


def test_verdict_rule():
    assert claims.decide(0.3, 0.5, 0.2, "above") == "supports"
    assert claims.decide(0.1, 0.15, 0.2, "above") == "contradicts"
    assert claims.decide(0.1, 0.3, 0.2, "above") == "inconclusive"
    assert claims.decide(-0.3, -0.1, 0.0, "below") == "supports"
    assert claims.decide(0.21, 0.3, 0.2, "above", margin=0.05) == "inconclusive"
    assert claims.decide(float("nan"), 0.3, 0.2, "above") == "inconclusive"
    assert claims.decide(0.2 + 1e-12, 0.2 + 1e-12, 0.2, "above") == "inconclusive"  # equal up to rounding


@pytest.mark.parametrize("units", [1, 4])
def test_bootstrap_interval_covers_a_known_mean_at_about_the_nominal_rate(units):
    rng = np.random.default_rng(0)
    hits, reps = 0, 300
    for i in range(reps):
        # Each unit (seed) shifts its samples by its own random offset: the two-level bootstrap must include that.
        parts = [pd.DataFrame({"value": rng.normal(0.3 + (rng.normal(0, 0.3) if units > 1 else 0), 1, 60),
                               "test_language": np.repeat(["a", "b", "c"], 20), "run": f"s{u}"})
                 for u in range(units)]
        frame = pd.concat(parts, ignore_index=True)
        _, low, high = claims.interval(frame, "value", n_boot=400, seed=i)
        hits += low <= 0.3 <= high
    assert 0.85 <= hits / reps <= 0.99, hits / reps


def test_difference_interval_and_point_values():
    rng = np.random.default_rng(1)
    a = pd.DataFrame({"value": rng.normal(1.0, 0.1, 200), "test_language": "x"})
    b = pd.DataFrame({"value": rng.normal(0.5, 0.1, 200), "test_language": "x"})
    value, low, high = claims.difference(a, b, "value", n_boot=500)
    assert value == pytest.approx(a["value"].mean() - b["value"].mean())
    assert low < 0.5 < high and high - low < 0.1


def test_claims_table_round_trip_and_prose(tmp_path):
    rows = [claims.claim("X1", "chap", "A statement.", claims.METHOD, "a share", (0.4, 0.3, 0.5), 0.2, "chance",
                         "above"),
            claims.not_tested("X2", "chap", "Another.", claims.SUMMARY, "a share", "no such run")]
    frame = claims.save(rows, tmp_path)
    loaded = claims.load(tmp_path)
    assert list(loaded["verdict"]) == ["supports", "not tested"] == list(frame["verdict"])
    text = claims.verdict_markdown(loaded)
    assert "**40.0%** (30.0% to 50.0%)" in text and "against 20.0% for chance" in text and "Not tested" in text
    bad = [claims.Claim("X", "c", "s", "src", "st", 0, 0, 0, 0, "", "above", "maybe")]
    with pytest.raises(ValueError, match="unknown verdict"):
        claims.table(bad)


def test_verdict_rule_for_claims_that_predict_a_fall_and_for_open_intervals():
    assert claims.decide(0.1, 0.3, 0.0, "below") == "contradicts"
    assert claims.decide(-0.1, 0.3, 0.0, "below") == "inconclusive"
    assert claims.decide(0.3, float("nan"), 0.2, "above") == "inconclusive"
    with pytest.raises(ValueError, match="expect='up' is not"):
        claims.decide(0.1, 0.2, 0.0, "up")


def test_interval_resamples_within_strata_and_across_units():
    # Two strata of constant values: resampling within each keeps every mean at 0.5 exactly.
    strata = pd.DataFrame({"value": [0.0] * 50 + [1.0] * 50, "test_language": ["a"] * 50 + ["b"] * 50})
    assert claims.interval(strata, "value", n_boot=200) == (0.5, 0.5, 0.5)
    assert claims.difference(strata, strata.assign(value=0.0), "value", n_boot=200) == (0.5, 0.5, 0.5)
    # Two seeds (units) of constant values 0 and 1: resampling the seeds spans 0 to 1.
    units = pd.DataFrame({"value": [0.0] * 20 + [1.0] * 20, "test_language": "a", "run": ["s0"] * 20 + ["s1"] * 20})
    assert claims.interval(units, "value", n_boot=400) == (0.5, 0.0, 1.0)
    empty = strata.assign(value=float("nan"))
    assert all(np.isnan(claims.interval(empty, "value", n_boot=10)))
    assert all(np.isnan(claims.difference(empty, strata, "value", n_boot=10)))


@pytest.mark.parametrize("confidence", [0.5, 0.9])
def test_interval_width_follows_the_confidence(confidence):
    # A mean of 400 normal values (sd 1): the percentile interval is about mean +- z * sd / sqrt(n).
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"value": rng.normal(0, 1, 400), "test_language": "a"})
    z = {0.5: 0.674, 0.9: 1.645}[confidence]
    for low, high in (claims.interval(frame, "value", n_boot=4000, confidence=confidence)[1:],
                      claims.difference(frame, frame.assign(value=0.0), "value", n_boot=4000,
                                        confidence=confidence)[1:]):
        assert high - low == pytest.approx(2 * z * frame["value"].std() / np.sqrt(400), rel=0.12)


def test_a_claim_that_is_not_a_share_is_shown_as_a_number(tmp_path):
    rows = [claims.claim("N1", "chap", "A loss change.", claims.METHOD, "change of loss", (0.0123, -0.01, 0.03), 0.0,
                         "no change", "above", percent=False),
            claims.claim("P1", "chap", "A share.", claims.METHOD, "a share", (0.4, 0.3, 0.5), 0.2, "chance", "above")]
    claims.save(rows, tmp_path)
    loaded = claims.load(tmp_path)
    assert list(loaded["percent"]) == [False, True]
    text = claims.verdict_markdown(loaded)
    assert "**0.0123** (-0.01 to 0.03), against 0 for no change" in text and "**40.0%**" in text
    shown = claims.display_table(loaded)
    assert shown.loc["N1", "value"] == "0.0123" and shown.loc["P1", "interval"] == "30.0% to 50.0%"
