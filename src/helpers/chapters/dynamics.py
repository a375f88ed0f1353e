"""How does the reliance on other languages change through fine-tuning?

For every checkpoint (step 0, before any update, then as many per epoch as the runs saved), the own-language share
of each test sample's top-k and the label-conditioned own-language AUC (:func:`helpers.analysis.own_language_auc`),
under two views: the checkpoint's own TracIn term (what the model relied on at that point of training) and the
cumulative TracIn up to it (the paper's sum, truncated). Score magnitudes fall by orders of magnitude from step 0 to
the end on an LM-pretrained encoder, so the cumulative view is dominated by the earliest checkpoints: the claims use
each checkpoint's own term. The paper's claims are judged on the ``central`` runs (its kind of encoder); the headroom
check runs on every encoder of the study (role ``axis``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .. import analysis, claims
from ..compute import finetune
from ..flow.stage import Stage
from . import Result

STAGE = Stage("dynamics", "11_dynamics.ipynb", "Dynamics",
              reads=(("tracin", "central"), ("finetune", "axis"), ("tracin", "axis")),
              params=("top_k", "influence_kind", "confidence"),
              modules=("chapters/dynamics", "analysis", "claims", "compute/finetune"))
#: The statistics of :func:`per_checkpoint` per test sample, each averaged in the per-checkpoint tables.
STATISTICS = ("own", "same_label", "own_auc")


def per_checkpoint(runs: list, k: int, kind: str, views: tuple[str, ...] = ("own checkpoint", "cumulative")
                   ) -> pd.DataFrame:
    """One row per (run, test sample, checkpoint, view) of the fine-tuned test languages: ``own`` share of the
    top-k, ``same_label`` share, ``own_auc``, the checkpoint's ``epoch`` (epochs done), the run's ``model`` and the
    ``scale`` of the scores in that view (mean absolute score over all training x test pairs)."""
    parts = []
    for run in runs:
        scores = analysis.load_scores(run["tracin"])
        for i, name in enumerate(scores.checkpoints):
            for view in views:
                values = analysis.matrix(scores, name, view == "cumulative")
                table = analysis.sample_table(scores, k, kind, values, run.name)
                table = table[table["own"].notna()]
                parts.append(table[["run", "test_row", "test_language", "test_pair_id", *STATISTICS]].assign(
                    checkpoint=name, step=i + 1, epoch=analysis.checkpoint_epoch(name), view=view,
                    model=run.run.params["model"], scale=float(np.abs(values).mean())))
    return pd.concat(parts, ignore_index=True)


def change(frame: pd.DataFrame, view: str, start: int, end: int, value: str = "own") -> pd.DataFrame:
    """Per test sample: ``value`` at checkpoint ``end`` minus at ``start`` (1-based steps), in ``view``."""
    wide = frame[frame["view"] == view].pivot_table(index=["run", "test_row", "test_language", "test_pair_id"],
                                                    columns="step", values=value).reset_index()
    return wide.assign(delta=wide[end] - wide[start])


def encoders_table(runs: list, k: int, kind: str) -> pd.DataFrame:
    """Per encoder and checkpoint (each checkpoint's own scores), averaged over test samples, then over the runs
    (seeds) of that encoder: mean test accuracy over the fine-tuning languages, own-language share of the top-k,
    same-label share, label-conditioned own-language AUC, the scores' size (``score_scale``: mean absolute score);
    ``runs``: how many training runs each row rests on."""
    frame = per_checkpoint(runs, k, kind, views=("own checkpoint",))
    by_run = frame.groupby(["model", "run", "checkpoint", "epoch"], sort=False)[[*STATISTICS, "scale"]].mean()
    accuracy = [pd.DataFrame(columns=["epoch", "accuracy", "run"])]
    for run in (r for r in runs if "finetune" in r.folders):
        out = finetune.load(run["finetune"])
        tuned = run.run.params["fine_tune_languages"]
        history = out.history[out.history["language"].isin(tuned)]
        accuracy.append(history.groupby("epoch")["accuracy"].mean().rename("accuracy").reset_index()
                        .assign(run=run.name))
    by_run = by_run.reset_index().merge(pd.concat(accuracy), on=["run", "epoch"], how="left")
    table = by_run.groupby(["model", "checkpoint", "epoch"], sort=False).agg(
        accuracy=("accuracy", "mean"), own=("own", "mean"), same_label=("same_label", "mean"),
        own_auc=("own_auc", "mean"), score_scale=("scale", "mean"), runs=("run", "nunique")).reset_index()
    return table.sort_values(["model", "epoch"], kind="stable").reset_index(drop=True)


def _step_at(frame: pd.DataFrame, epoch: float) -> int | None:
    """The step of the first checkpoint with at least ``epoch`` epochs done (None if there is none)."""
    steps = frame.drop_duplicates("step").sort_values("step")
    later = steps[steps["epoch"] >= epoch]
    return None if later.empty else int(later["step"].iloc[0])


def compute(central: list, axis: list, cfg: dict[str, Any]) -> Result:
    """``central``: the runs the paper's claims are judged on; ``axis``: every encoder's main-design runs.

    DY1 and DY2 are judged on the label-conditioned own-language AUC of each checkpoint's own TracIn term: per
    training run, the mean change over its test samples from the first checkpoint after the start epoch (step 0
    for DY1) to the last; the runs are the unit (:func:`helpers.claims.interval`). They need headroom: at the
    central encoder's first checkpoint its ranking must prefer own-language samples (HR's interval above 0.5);
    without that the dynamics are not testable on it."""
    k, kind, conf = cfg["top_k"], cfg["influence_kind"], cfg["confidence"]
    frame = per_checkpoint(central, k, kind)
    rows = []
    for (view, step, name, epoch), part in frame.groupby(["view", "step", "checkpoint", "epoch"], sort=False):
        value, low, high = claims.interval(part, "own", conf)
        auc = claims.interval(part, "own_auc", conf)
        rows.append({"view": view, "step": step, "checkpoint": name, "epoch": epoch, "own": value, "low": low,
                     "high": high, "same_label": part["same_label"].mean(), "own_auc": auc.value,
                     "own_auc_low": auc.low, "own_auc_high": auc.high})
    summary = pd.DataFrame(rows)
    encoders = encoders_table(axis, k, kind)
    result = Result(tables={"per_checkpoint": summary, "encoders": encoders})
    models = ", ".join(dict.fromkeys(r.run.params["model"] for r in central))
    room = headroom(axis, k, kind, conf)
    result.claims.extend(room.values())
    central_model = central[0].run.params["model"]
    gate = room.get(central_model)
    last = int(frame["step"].max())
    checks = [  # (id, statement, source, start epoch)
        ("DY1", "Reliance on other languages' data increases as fine-tuning progresses (the test language's own "
         "training samples lose their lead in its ranking).", claims.ABSTRACT, 0.0),
        ("DY2", "Languages rely less on their own data after epoch 2.", claims.SUMMARY, 2.0)]
    for claim_id, statement, source, start_epoch in checks:
        start = _step_at(frame, start_epoch)
        where = "the first checkpoint" if start_epoch == 0 else f"the checkpoint after epoch {start_epoch:g}"
        stat = (f"change of the label-conditioned own-language AUC from {where} to the last, per training run "
                f"(each checkpoint's own TracIn term; {models})")
        if start is None or start >= last:
            why = (f"needs a checkpoint after epoch {start_epoch:g} and a later one" if start_epoch else
                   "needs two checkpoints or more")
            result.claims.append(claims.not_tested(claim_id, STAGE.name, statement, source, stat, why))
        elif gate is None or not gate.low > 0.5:
            low = "undefined" if gate is None or not np.isfinite(gate.low) else f"{gate.low:.3g}"
            result.claims.append(claims.not_tested(
                claim_id, STAGE.name, statement, source, stat,
                f"not testable here: at its first checkpoint the central encoder ({central_model}) shows no "
                f"own-language preference to lose (HR-{central_model}: interval's lower end {low}, not above "
                "0.5), so a fall could not show."))
        else:
            delta = change(frame, "own checkpoint", start, last, value="own_auc")
            result.claims.append(claims.claim(claim_id, STAGE.name, statement, source, stat,
                                              claims.interval(delta, "delta", conf), 0.0, "no change", "below",
                                              percent=False, confidence=conf))
    return result


def headroom(axis: list, k: int, kind: str, confidence: float) -> dict[str, claims.Claim]:
    """HR-<model>, per encoder: at its first checkpoint, does its ranking prefer own-language training samples among
    those with the test sample's label (AUC above 0.5)? Without that preference there is nothing for fine-tuning
    to wear down, and the paper's dynamics cannot show on that encoder (a check of the method, and DY1's gate)."""
    out = {}
    frame = per_checkpoint(axis, k, kind, views=("own checkpoint",))
    for model, part in frame.groupby("model", sort=False):
        first = part[part["step"] == 1]
        name = first["checkpoint"].iloc[0]
        stat = f"label-conditioned own-language AUC at the first checkpoint ({name}), {model}"
        estimate = claims.interval(first.dropna(subset=["own_auc"]), "own_auc", confidence)
        out[model] = claims.claim(f"HR-{model}", STAGE.name, "The encoder's ranking has room for the paper's "
                                  "dynamics: at the start of fine-tuning it prefers own-language training samples "
                                  "among those with the test sample's label.", claims.METHOD, stat, estimate, 0.5,
                                  "a language-blind ranking (AUC 0.5)", "above", percent=False,
                                  confidence=confidence)
    return out
