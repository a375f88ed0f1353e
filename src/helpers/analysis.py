"""From influence scores to per-test-sample tables (the top-k itself is :func:`helpers.influence.scores.top_rows`).

For each test sample, the ``k`` training samples with the highest (proponents) or lowest (opponents) score; from
them, the share written in each training language, the share in the test sample's own language, and the share with
the test sample's label. Every chapter builds its statistics from these per-sample rows, so that intervals can
resample test samples (:mod:`helpers.claims`). A **language-blind** ranking, one that ignores the language a
training sample is written in, gives each training language its share of the training data.

Because 80-99% of a top-k shares the test sample's label, shares of the top-k are squeezed toward their blind values
whatever the model does. The **label-conditioned own-language AUC** (``own_auc``) asks the question inside the label:
among the training samples with the test sample's label, the probability that an own-language one scores above an
other-language one (ties count half; the Mann-Whitney U statistic over ``n_own * n_other``). 0.5 is language-blind,
1 puts every own-language sample first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .influence.scores import InfluenceScores, checkpoint_epoch, top_rows


def load_scores(folder: Path) -> InfluenceScores:
    """The scores a TracIn stage committed (``<stage folder>/scores``)."""
    return InfluenceScores.load(Path(folder) / "scores")


def paper_sum(scores: InfluenceScores) -> np.ndarray:
    """The paper's TracIn score: the sum over the checkpoints saved at the end of an epoch (one per epoch, as the
    paper's), leaving out a step-0 checkpoint and those inside an epoch, which the dynamics chapter reads one by one.
    On runs with one checkpoint per epoch and none at step 0 (e5's), this is the sum over every checkpoint. On an
    LM-pretrained encoder the scores shrink by orders of magnitude during fine-tuning, so even this sum leans on the
    first epoch's checkpoint (the dynamics chapter shows each checkpoint's share)."""
    epochs = [checkpoint_epoch(n) if n == "step0" or n.startswith("epoch") else 1.0 for n in scores.checkpoints]
    whole = [i for i, e in enumerate(epochs) if e >= 1 and e == int(e)] or list(range(len(epochs)))
    return scores.per_checkpoint[whole].sum(0, dtype=np.float64).astype(np.float32)


def matrix(scores: InfluenceScores, checkpoint: str | None = None, cumulative: bool = False) -> np.ndarray:
    """Scores of one checkpoint, the sum over every checkpoint up to and including it (``cumulative``), or the
    paper's sum (None: :func:`paper_sum`)."""
    if checkpoint is None:
        return paper_sum(scores)
    c = scores.checkpoints.index(checkpoint) if checkpoint in scores.checkpoints else None
    if c is None:
        raise ValueError(f"checkpoint={checkpoint!r} is not one of {scores.checkpoints}")
    if cumulative:
        return scores.per_checkpoint[: c + 1].sum(0, dtype=np.float64)
    return scores.per_checkpoint[c]


def own_language_auc(values: np.ndarray, train_language: np.ndarray, train_label: np.ndarray,
                     test_language: np.ndarray, test_label: np.ndarray) -> np.ndarray:
    """Per test sample (a column of ``values``, scores higher = more influential): among the training rows with its
    label, the AUC of own-language rows against other-language rows (Mann-Whitney U / (n_own * n_other), ties
    half). NaN where the label has no own-language or no other-language training row."""
    out = np.full(values.shape[1], np.nan)
    for j in range(values.shape[1]):
        rows = train_label == test_label[j]
        own = train_language[rows] == test_language[j]
        n_own, n_other = int(own.sum()), int((~own).sum())
        if n_own and n_other:
            ranks = rankdata(values[rows, j])
            out[j] = (ranks[own].sum() - n_own * (n_own + 1) / 2) / (n_own * n_other)
    return out


def train_languages(scores: InfluenceScores) -> list[str]:
    return list(dict.fromkeys(scores.train_ids["language"]))


def language_blind(scores: InfluenceScores) -> pd.Series:
    """Each training language's share of the training set: its expected share of any language-blind top-k."""
    return scores.train_ids["language"].value_counts(normalize=True).reindex(train_languages(scores))


def sample_table(scores: InfluenceScores, k: int, kind: str = "proponents", values: np.ndarray | None = None,
                 run: str = "") -> pd.DataFrame:
    """One row per test sample: ``run, test_row, test_uid, test_language, test_label, test_pair_id``, then
    ``share_<lang>`` for each training language (fractions of its top-``k``), ``own`` (the share in its own
    language; NaN for a language not in training), ``same_label`` (the share with its label) and ``own_auc``
    (:func:`own_language_auc`; NaN for a language not in training). For opponents the AUC ranks the most negative
    scores first, as the top-k does.

    ``values`` replaces the paper's sum (:func:`paper_sum`; e.g. one checkpoint's scores, see :func:`matrix`)."""
    values = paper_sum(scores) if values is None else values
    top = top_rows(values, k, kind)
    langs = train_languages(scores)
    train_lang = scores.train_ids["language"].to_numpy()[top]  # (k, n_test)
    test = scores.test_ids
    out = pd.DataFrame({"run": run, "test_row": np.arange(len(test)), "test_uid": test.get("uid", test.index),
                        "test_language": test["language"].to_numpy(), "test_label": test["label"].to_numpy(),
                        "test_pair_id": test.get("pair_id", pd.Series([""] * len(test))).to_numpy()})
    for lang in langs:
        out[f"share_{lang}"] = (train_lang == lang).mean(0)
    own = (train_lang == out["test_language"].to_numpy()[None, :]).mean(0)
    out["own"] = np.where(out["test_language"].isin(langs), own, np.nan)
    train_label = scores.train_ids["label"].to_numpy()[top]
    out["same_label"] = (train_label == out["test_label"].to_numpy()[None, :]).mean(0)
    ranked = values if kind == "proponents" else -np.asarray(values)
    out["own_auc"] = own_language_auc(ranked, scores.train_ids["language"].to_numpy(),
                                      scores.train_ids["label"].to_numpy(), out["test_language"].to_numpy(),
                                      out["test_label"].to_numpy())
    return out


def share_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("share_")]


def runs_table(runs: list, k: int, kind: str, checkpoint: str | None = None, cumulative: bool = False,
               stage: str = "tracin") -> pd.DataFrame:
    """:func:`sample_table` of several runs (``helpers.flow.context.RunInputs``), stacked with their run name."""
    parts = []
    for run in runs:
        scores = load_scores(run[stage])
        ckpt = scores.checkpoints[-1] if checkpoint == "last" else scores.checkpoints[0] if checkpoint == "first" \
            else checkpoint
        values = None if ckpt is None else matrix(scores, ckpt, cumulative)
        parts.append(sample_table(scores, k, kind, values, run=run.name))
    return pd.concat(parts, ignore_index=True)
