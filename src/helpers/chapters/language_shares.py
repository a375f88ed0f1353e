"""Which languages do the most influential training samples come from? (the paper's central analysis)

For every test sample, its top-k proponents (or opponents) by total TracIn score; the share of each training
language among them, averaged over the test samples of each test language and over the central runs' seeds, with
a t-interval per cell (:func:`helpers.claims.interval`), the language-blind value (the training language's share of
the data) and the cell's difference from its column over the other test languages beside it. The claim of own-language
preference (LS2) is judged on the label-conditioned own-language AUC, which the top-k shares cannot carry.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .. import analysis, claims
from ..flow.stage import Stage
from . import Result

STAGE = Stage("language_shares", "10_language_shares.ipynb", "Language shares", reads=(("tracin", "central"),),
              params=("top_k", "influence_kind", "confidence"),
              modules=("chapters/language_shares", "analysis", "claims"))

#: Values of k shown in the sensitivity table (those up to the training set's size).
K_SWEEP = (5, 10, 20, 50, 100, 200)

#: The runs "rely on other languages" when the cross-lingual share is at least this fraction of what a
#: language-blind ranking gives.
RELIANCE_FRACTION = 0.25


def cells(table: pd.DataFrame, blind: pd.Series, cfg: dict[str, Any]) -> pd.DataFrame:
    """Long (test_language, train_language, share, low, high, language_blind, count, vs_others, vs_low, vs_high) with
    an interval per cell; ``count``: how many top-k samples came from that training language, over every test sample
    and seed. ``vs_others``: the cell minus its column's mean over the *other* test languages, the null a cell is
    read against (a training language can be drawn on by every test language alike: only a cell that stands out of
    its column says something about that pair). It is paired by verse: each test sample against the same verse's
    test samples in the other test languages of its run, with an interval over runs (one run: over verses)."""
    rows = []
    conf = cfg["confidence"]
    for lang in dict.fromkeys(table["test_language"]):
        part = table[table["test_language"] == lang]
        others = table[table["test_language"] != lang]
        for col in analysis.share_columns(table):
            value, low, high = claims.interval(part, col, conf)
            rest = others.groupby(["run", "test_pair_id"])[col].mean().rename("rest")
            paired = part.join(rest, on=["run", "test_pair_id"])
            vs = claims.interval(paired.assign(vs=paired[col] - paired["rest"]), "vs", conf)
            train = col.removeprefix("share_")
            rows.append({"test_language": lang, "train_language": train, "share": value, "low": low, "high": high,
                         "language_blind": float(blind[train]),
                         "count": int(round(part[col].sum() * cfg["top_k"])),
                         "vs_others": vs.value, "vs_low": vs.low, "vs_high": vs.high})
    return pd.DataFrame(rows)


def k_sensitivity(runs: list, kind: str) -> pd.DataFrame:
    """Own-language share and same-label share of the top-k for several k (mean over fine-tuned test samples), next
    to the number of training samples per class: once k reaches it, a top-k that follows the label is the whole
    class, and its language shares are forced to the language-blind value whatever the model relies on."""
    rows = []
    for run in runs:
        scores = analysis.load_scores(run["tracin"])
        per_class = int(scores.train_ids["label"].value_counts().min())
        for k in [k for k in K_SWEEP if k <= len(scores.train_ids)]:
            t = analysis.sample_table(scores, k, kind, run=run.name)
            t = t[t["own"].notna()]
            rows.append({"run": run.name, "k": k, "own": t["own"].mean(), "same_label": t["same_label"].mean(),
                         "training samples per class": per_class})
    return pd.DataFrame(rows).groupby("k", as_index=False).mean(numeric_only=True)


def compute(runs: list, cfg: dict[str, Any]) -> Result:
    """``runs``: the main run's seeds (``RunInputs`` with a ``tracin`` folder)."""
    k, kind = cfg["top_k"], cfg["influence_kind"]
    table = analysis.runs_table(runs, k, kind)
    scores = analysis.load_scores(runs[0]["tracin"])
    blind = analysis.language_blind(scores)
    seen = table[table["own"].notna()].copy()
    seen["cross"] = 1 - seen["own"]
    seen["blind_own"] = seen["test_language"].map(blind)
    blind_cross = float((1 - seen["blind_own"]).mean())
    result = Result(tables={"samples": table, "cells": cells(table, blind, cfg),
                            "k_sensitivity": k_sensitivity(runs, kind)})
    conf = cfg["confidence"]
    result.claims = [
        claims.claim("LS1", STAGE.name, "Models rely on data from multiple languages during fine-tuning: a test "
                     "language's top-k draws substantially on other languages' training data.", claims.METHOD,
                     f"cross-lingual share of the top-{k} {kind} (fine-tuned test languages)",
                     claims.interval(seen, "cross", conf), RELIANCE_FRACTION * blind_cross,
                     f"{RELIANCE_FRACTION:.0%} of the language-blind share ({blind_cross:.0%})", "above",
                     confidence=conf, note="A check that the rankings draw on other languages at all (the abstract's "
                     "statement, weakly): even a ranking that ignored language would pass it, so it is never "
                     "counted as support for the paper."),
        claims.claim("LS2", STAGE.name, "The test language's own training data is preferred: among the training "
                     "samples with the test sample's label, its own language's rank above the other languages'.",
                     claims.SUMMARY, "label-conditioned own-language AUC (the paper's sum over checkpoints; "
                     "fine-tuned test languages)", claims.interval(seen, "own_auc", conf), 0.5,
                     "a language-blind ranking (AUC 0.5)", "above", percent=False, confidence=conf,
                     note=f"The top-{k} share it replaces as the primary statistic is descriptive (the language-shares "
                          f"page's tables): {seen['own'].mean():.1%} own-language against "
                          f"{seen['blind_own'].mean():.1%} for a language-blind ranking, squeezed toward that value "
                          "because the top-k follows the label first."),
    ]
    return result
