"""From influence scores to the paper's tables.

Section "Which languages do the most influential samples come from?" (Choenni et al. 2023, sections 4-5): for each
test sample, take the ``k`` training samples with the highest (proponents) or lowest (opponents) TracIn score, count
the languages they are written in, and average these shares over the test samples of each test language.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .tracin import InfluenceScores


def language_shares(scores: InfluenceScores, k: int, kind: str = "proponents",
                    checkpoint: str | None = None) -> pd.DataFrame:
    """Long table (test_language, train_language, share): the mean share, over the test samples of each test
    language, of its top-``k`` training samples written in each training language. Shares sum to 1 per test
    language. ``checkpoint`` picks one checkpoint's scores; None uses the TracIn total."""
    top = scores.top_k(k, kind=kind, checkpoint=checkpoint)
    train_order = list(dict.fromkeys(scores.train_ids["language"]))
    test_order = list(dict.fromkeys(scores.test_ids["language"]))
    # per test sample: the fraction of its top-k in each training language
    per_sample = pd.crosstab(top["test_row"], top["train_language"], normalize="index")
    per_sample = per_sample.reindex(columns=train_order, fill_value=0.0)
    per_sample["test_language"] = scores.test_ids["language"].to_numpy()[per_sample.index]
    means = per_sample.groupby("test_language").mean().reindex(test_order)
    means.columns.name = None
    return means.reset_index().melt(id_vars="test_language", var_name="train_language", value_name="share")


def shares_per_checkpoint(scores: InfluenceScores, k: int, kind: str = "proponents") -> pd.DataFrame:
    """:func:`language_shares` for each checkpoint's own scores, stacked with a ``checkpoint`` column."""
    return pd.concat([language_shares(scores, k, kind, checkpoint=name).assign(checkpoint=name)
                      for name in scores.checkpoints], ignore_index=True)


def share_matrix(shares: pd.DataFrame) -> pd.DataFrame:
    """Wide view of a long share table: rows test language, columns training language."""
    wide = shares.pivot(index="test_language", columns="train_language", values="share")
    return wide.reindex(index=shares["test_language"].unique(), columns=shares["train_language"].unique())


def cross_lingual_share(shares: pd.DataFrame, fine_tune_languages: list[str]) -> pd.DataFrame:
    """For each test language that was also fine-tuned on: the share of its top-k from *other* languages, next to
    what a language-blind ranking would give (the other languages' share of the training set, uniform here)."""
    rows = []
    group_cols = ["checkpoint"] if "checkpoint" in shares else []
    for keys, part in (shares.groupby(group_cols, sort=False) if group_cols else [((), shares)]):
        for lang in fine_tune_languages:
            own = part[(part["test_language"] == lang) & (part["train_language"] == lang)]["share"].sum()
            row = {"test_language": lang, "own_share": own, "cross_lingual_share": 1 - own,
                   "language_blind_cross_share": 1 - 1 / len(fine_tune_languages)}
            if group_cols:
                row["checkpoint"] = keys[0] if isinstance(keys, tuple) else keys
            rows.append(row)
    return pd.DataFrame(rows)


def cross_lingual_by_checkpoint(cross: pd.DataFrame, fine_tune_languages: list[str],
                                checkpoints: list[str]) -> pd.DataFrame:
    """Wide view of :func:`cross_lingual_share`: rows test language (+ mean), columns checkpoint."""
    wide = cross.pivot(index="test_language", columns="checkpoint", values="cross_lingual_share")
    wide = wide.reindex(index=fine_tune_languages, columns=checkpoints)
    wide.loc["mean"] = wide.mean()
    return wide


#: Changes of the mean cross-lingual share smaller than this (in share units) are reported as no clear change.
TREND_TOLERANCE = 0.02

#: A run "relies on other languages" when their share of the top-k is at least this fraction of the share a
#: language-blind ranking would give them.
RELIANCE_FRACTION = 0.25


def shares_verdict(wide: pd.DataFrame, language_blind: float, k: int, kind: str) -> str:
    """The claims scoreboard line for this chapter, from :func:`cross_lingual_by_checkpoint`'s table."""
    checkpoints = list(wide.columns)
    if language_blind == 0:
        return ("With a single fine-tuning language there is no other language to draw on: cross-lingual sharing "
                "within fine-tuning cannot be judged (the zero-shot rows still show where test languages draw from).")
    first, final = wide.loc["mean"].iloc[0], wide.loc["mean"].iloc[-1]
    relies = final >= RELIANCE_FRACTION * language_blind
    blind = abs(final - language_blind) <= TREND_TOLERANCE
    text = (f"At the last checkpoint, {final:.0%} of the top-{k} {kind} of a fine-tuning language come from other "
            f"languages on average (a language-blind ranking would give {language_blind:.0%}): the model "
            + ("**does draw on other languages' data**" if relies else "draws **mostly on same-language data**")
            + f" (criterion: at least {RELIANCE_FRACTION:.0%} of the language-blind share)"
            + (", and its ranking is **indistinguishable from a language-blind one**: the test language's own data "
               "gets no preference. " if blind else ". "))
    if len(checkpoints) < 2:
        return text + "With a single checkpoint, the trend over fine-tuning cannot be judged."
    change = final - first
    if change > TREND_TOLERANCE:
        trend = "**consistent** with the paper's finding that this reliance grows."
    elif change < -TREND_TOLERANCE:
        trend = "it shrank: **not** the growth the paper reports."
    else:
        trend = (f"**no clear change** (less than {TREND_TOLERANCE * 100:.0f} points either way), so this run "
                 "neither confirms nor contradicts the growth the paper reports.")
    return text + (f"Over fine-tuning, the cross-lingual share went from {first:.1%} ({checkpoints[0]}) to "
                   f"{final:.1%} ({checkpoints[-1]}): " + trend)


@dataclass
class ShareReport:
    """Everything the language-shares chapter shows, computed from one run's scores."""

    last: pd.DataFrame  # language_shares at the last checkpoint (long)
    per_checkpoint: pd.DataFrame  # the same for every checkpoint, with a checkpoint column
    cross: pd.DataFrame  # cross_lingual_share per checkpoint (long)
    cross_wide: pd.DataFrame  # rows fine-tuning test language + mean, columns checkpoint
    language_blind: float  # the cross-lingual share a language-blind ranking would give
    verdict: str

    def save(self, folder: Path) -> None:
        self.last.to_csv(folder / "shares_last_checkpoint.csv", index=False)
        self.per_checkpoint.to_csv(folder / "shares_per_checkpoint.csv", index=False)
        self.cross.to_csv(folder / "cross_lingual_share.csv", index=False)


def share_report(scores: InfluenceScores, k: int, kind: str, fine_tune_languages: list[str]) -> ShareReport:
    """The chapter's tables and verdict for the top-``k`` ``kind`` of every test sample."""
    per_ckpt = shares_per_checkpoint(scores, k, kind)
    last = per_ckpt[per_ckpt["checkpoint"] == scores.checkpoints[-1]].drop(columns="checkpoint")
    cross = cross_lingual_share(per_ckpt, fine_tune_languages)
    wide = cross_lingual_by_checkpoint(cross, fine_tune_languages, scores.checkpoints)
    blind = 1 - 1 / len(fine_tune_languages)
    return ShareReport(last.reset_index(drop=True), per_ckpt, cross, wide, blind,
                       shares_verdict(wide, blind, k, kind))
