"""Neurons shared between languages (Wang, Minervini & Ponti 2024), and translation retrieval, along the alignment
axis: the chapter's claim and tables, from the probing stage's measurements (:mod:`helpers.compute.probe`, which
says what is measured and how)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .. import claims
from ..compute import probe
from ..compute.probe import PRETRAINING
from ..flow.stage import STUDY_ROLE, Stage
from . import Result

STAGE = Stage("probing", "19_probing.ipynb", "Neurons shared between languages", reads=(("probe", STUDY_ROLE),),
              params=("probe_neurons",))
DEGRADATION = ("Alignment does not grow steadily during pre-training: it degrades in some phases (a drop between "
               "successive checkpoints).")


def compute(folder: Path) -> Result:
    """The probing stage's tables (``folder``) and the chapter's claim (W2)."""
    tables = probe.load(folder)
    if tables["points"].empty:
        return Result(tables=tables, claims=[claims.not_tested(
            "W2", STAGE.name, DEGRADATION, claims.RELATED, "translation retrieval over pre-training",
            "the alignment axis needs the Bible corpus's parallel verses (the probing stage measured nothing)")])
    return Result(tables=tables, claims=[degradation_claim(tables["points"])])


def degradation_claim(points: pd.DataFrame, confidence: float = 0.95) -> claims.Claim:
    """Wang et al.'s second finding, on the in-house pre-training trajectory: the largest drop of retrieval between
    successive checkpoints after step 0 (a drop from step 0 is not a degradation of learned alignment: random weights
    retrieve translations through the sub-words they share). Its interval combines the two checkpoints' retrieval
    interval half-widths (as if independent: conservative, since the same verses are retrieved at both), widened
    for the number of candidate drops (Bonferroni: the largest of m drops is judged at level alpha / m, the
    half-widths scaled by the ratio of the normal quantiles, so picking the largest is not a free win). One
    pre-training run: conditional on one run."""
    statement = DEGRADATION
    trajectory = points[(points["encoder"] == PRETRAINING) & points["run"].isna()].sort_values("order")
    statistic = ("largest drop of translation retrieval between successive in-house pre-training checkpoints after "
                 "step 0")
    learned = trajectory[trajectory["order"] > 0]
    if len(learned) < 2:
        return claims.not_tested("W2", STAGE.name, statement, claims.RELATED, statistic,
                                 "the study has fewer than two in-house pre-training checkpoints after step 0 (a drop "
                                 "from step 0 is no degradation of learned alignment)")
    drops = -np.diff(learned["retrieval"].to_numpy())
    m = len(drops)
    i = int(np.argmax(drops))
    before, after = learned.iloc[i], learned.iloc[i + 1]
    alpha = 1 - confidence
    widen = stats.norm.ppf(1 - alpha / (2 * m)) / stats.norm.ppf(1 - alpha / 2)
    half = widen * np.hypot(before["retrieval_high"] - before["retrieval"], after["retrieval"] - after["retrieval_low"])
    return claims.claim("W2", STAGE.name, statement, claims.RELATED,
                        f"{statistic} ({before['checkpoint']} to {after['checkpoint']}, the largest of {m})",
                        claims.Estimate(float(drops[i]), float(drops[i] - half), float(drops[i] + half), runs=1,
                                        samples=len(learned)), 0.0, "no drop", "above", confidence=confidence,
                        rests_on=f"one pre-training run ({len(learned)} checkpoints after step 0; the interval "
                                 f"Bonferroni-widened for {m} candidate drops)",
                        note="Tested on the in-house encoder's few pre-training checkpoints, not on BLOOM's. Wang et "
                             "al.'s drops coincide with collapses of English accuracy too, so the trajectory table "
                             "gives each checkpoint's held-out MLM loss beside its retrieval.")


def layer_summary(layers: pd.DataFrame) -> pd.DataFrame:
    """The per-layer rows of each encoder before fine-tuning (its start, or the pre-training checkpoints) and at its
    last fine-tuning checkpoint, named by state."""
    fine = layers["phase"] == "fine-tuned"
    last = layers["run"].map(layers[fine].groupby("run")["order"].max())
    out = layers[~fine | (layers["order"] == last)].copy()
    out["state"] = out["encoder"] + ": " + out["checkpoint"]
    return out


def points_display(points: pd.DataFrame) -> pd.DataFrame:
    """The trajectory table: retrieval with its interval, overlap next to uniform chance (k/d), the permuted-label
    null (its mean and upper end) and the split-seed ceiling when measured, probe quality, MLM loss."""
    out = pd.DataFrame({
        "layer": points["layer"],
        "retrieval (interval)": [f"{r:.1%} ({lo:.1%} to {hi:.1%})" for r, lo, hi in
                                 zip(points["retrieval"], points["retrieval_low"], points["retrieval_high"])],
        "overlap (chance k/d)": [f"{o:.1%} ({c:.1%})" for o, c in zip(points["overlap"], points["chance"])],
        "probe NMI": points["probe_nmi"].round(2)})
    if "overlap_null" in points and points["overlap_null"].notna().any():
        out.insert(3, "permuted-label null (upper)", [f"{m:.1%} ({h:.1%})" for m, h in
                                                      zip(points["overlap_null"], points["overlap_null_high"])])
        out.insert(4, "split ceiling", [f"{c:.1%}" for c in points["ceiling"]])
    if "mlm_loss" in points:
        out["MLM loss"] = points["mlm_loss"].round(2)
    out.index = pd.MultiIndex.from_frame(points[["encoder", "checkpoint"]])
    return out.fillna("")
