"""The retraining stage: the counterfactual chapter's removals, each a full fine-tuning again without the chosen
training samples, from the same initialisation, seed and data order (:func:`retrain`; with nothing removed that
reproduces the original checkpoints exactly on the same machine and number of threads, which the tests check).

Which samples each removal takes out is :mod:`helpers.removals` (the design, read by the chapter too).

It writes ``outcomes.csv`` (one row per removal and test sample: loss, correct, their change against the original
run, TracIn's predicted loss change) and ``retrainings.csv`` (one row per removal: its size and seconds). The
statistics and the prose are the chapter's (:mod:`helpers.chapters.counterfactual`): rewording it retrains nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import data
from ..flow.stage import Stage
from ..influence.scores import InfluenceScores
from ..removals import RANKED, Removal, held_out, plan_removals
from . import finetune

STAGE = Stage("retrain", "06_retrain.ipynb", "Retraining without the influential samples",
              reads=(("tracin", "main"), ("finetune", "main")),
              params=("counterfactual_languages", "counterfactual_fractions", "counterfactual_arms",
                      "counterfactual_random_draws", "counterfactual_seeds", "counterfactual_zero_shot",
                      "datamodel_subsets"))
OUTCOME_COLUMNS = ["run", "target", "fraction", "arm", "test_row", "test_language", "chose", "draw", "n_removed",
                   "loss", "correct", "d_loss", "d_correct", "predicted"]


def retrain_run(run, removals: list[Removal]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Retrain ``run`` once per distinct set of removed rows. Returns the outcomes (one row per removal and test
    sample: whether it chose the removal (see :func:`helpers.removals.held_out`), loss, correct, their change against
    the original run, TracIn's predicted loss change) and one row per removal (its size, the share of its samples the
    top removal of its target and fraction also takes, and the seconds its retraining took; 0 when an identical set
    was already retrained)."""
    import torch  # (this module's removal design is read by the chapter, which loads no torch)

    from .. import models
    from ..finetune import sample_outcomes
    ft = finetune.load(run["finetune"])
    scores = InfluenceScores.load(run["tracin"] / "scores")
    if list(scores.test_ids["uid"]) != list(ft.ids("test")["uid"]):
        raise ValueError(f"run {run.name}: the TracIn scores' test samples are not the fine-tuning stage's")
    original = sample_outcomes(models.load_classifier(ft.checkpoints[-1]["path"]), ft.test)
    total = scores.total.astype(np.float64)
    test_language = scores.test_ids["language"].to_numpy()
    tops = {(r.target, r.fraction): set(r.rows) for r in removals if r.arm == "top"}
    done: dict[tuple[int, ...], pd.DataFrame] = {}
    parts, log = [], []
    for i, removal in enumerate(removals, 1):
        seconds = 0.0
        if removal.rows not in done:
            start = time.perf_counter()
            model, _, _ = retrain(run["finetune"], run.params, removal.rows)
            done[removal.rows] = sample_outcomes(model, ft.test)
            seconds = time.perf_counter() - start
            print(f"[{i}/{len(removals)}] {run.name}: retrained {removal.label} ({len(removal.rows)} of "
                  f"{len(ft.train)} samples removed) in {seconds:.0f} s", file=sys.stderr, flush=True)
        outcome = done[removal.rows]
        parts.append(pd.DataFrame({
            "run": run.name, "arm": removal.arm, "target": removal.target, "fraction": removal.fraction,
            "draw": removal.draw, "n_removed": len(removal.rows), "test_row": outcome["row"],
            "test_language": outcome["language"],
            "chose": (test_language == removal.target) & ~held_out(test_language, removal.target)
            if removal.arm in RANKED else False,
            "loss": outcome["loss"], "correct": outcome["correct"],
            "d_loss": outcome["loss"] - original["loss"], "d_correct": outcome["correct"] - original["correct"],
            "predicted": total[list(removal.rows)].sum(0)}))
        removed_language = scores.train_ids["language"].to_numpy()[list(removal.rows)]
        log.append({"run": run.name, "removal": removal.label, "arm": removal.arm, "target": removal.target,
                    "fraction": removal.fraction, "n_removed": len(removal.rows), "n_kept": len(ft.train) -
                    len(removal.rows), "share_own_language": float(np.mean(removed_language == removal.target)),
                    "shared_with_top": len(tops[removal.target, removal.fraction] & set(removal.rows))
                    / len(removal.rows) if (removal.target, removal.fraction) in tops else np.nan,
                    "seconds": round(seconds, 1), "threads": torch.get_num_threads()})
    return pd.concat(parts, ignore_index=True), pd.DataFrame(log)


def compute(runs: list, cfg: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``runs``: the main run's seeds (``RunInputs`` with ``tracin`` and ``finetune`` folders); the first
    ``counterfactual_seeds`` of them are retrained. Returns (outcomes, retrainings)."""
    outcomes, log = [], []
    for run in runs[: cfg["counterfactual_seeds"]]:
        removals = plan_removals(InfluenceScores.load(run["tracin"] / "scores"), cfg, run.run.seed)
        if removals:
            o, g = retrain_run(run, removals)
            outcomes.append(o)
            log.append(g)
    outcomes = pd.concat(outcomes, ignore_index=True) if outcomes else pd.DataFrame(columns=OUTCOME_COLUMNS)
    return outcomes, (pd.concat(log, ignore_index=True) if log else pd.DataFrame())


def save(outcomes: pd.DataFrame, log: pd.DataFrame, folder: Path) -> None:
    outcomes.to_csv(Path(folder) / "outcomes.csv", index=False)
    log.to_csv(Path(folder) / "retrainings.csv", index=False)


def load(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the stage wrote: (outcomes, retrainings)."""
    outcomes = pd.read_csv(Path(folder) / "outcomes.csv", keep_default_na=False)  # "" stays "" (no fraction)
    try:
        log = pd.read_csv(Path(folder) / "retrainings.csv", keep_default_na=False)
    except pd.errors.EmptyDataError:
        log = pd.DataFrame()
    return outcomes, log


# pragma: no mutate start (make mutation leaves out what fine-tunes: a model build per mutant)
def retrain(folder: Path, params: dict[str, Any], remove: Collection[int] = (), out_dir: Path | None = None,
            evaluate: bool = False) -> tuple[Any, pd.DataFrame, list[dict]]:
    """Fine-tune again what the fine-tuning stage in ``folder`` fine-tuned, without the training rows ``remove``.

    Same initialisation (:func:`initial_model`, trimmed to the same vocabulary; the global torch generator, which
    draws the dropout masks, is left in the same state as in :func:`tokenise_splits`), same seed, same tokenised
    samples and the same order of the remaining samples (:func:`epoch_orders`), same hyper-parameters (``params``:
    the run's parameters). Returns (model, history, checkpoints) as :func:`train`; ``out_dir`` saves the checkpoints,
    ``evaluate`` scores the test set after every epoch (neither is needed to measure the final model)."""
    from .. import models
    from ..finetune import initial_model, train

    out = finetune.load(folder)
    num_labels = len(data.LABELS[params["label"]].names)
    model = initial_model(params["model"], num_labels, params["seed"], vocab_size=out.info["full_vocab_size"],
                          model_dir=out.info.get("model_dir") or params.get("model_dir"),
                          reinit_top_layers=out.info.get("reinit_top_layers", 0))
    if params["trim_vocabulary"]:
        models.trim_vocabulary(model, np.load(folder / "vocab_keep_ids.npy"))
    history, checkpoints = train(model, out.train, out.test if evaluate else None, params["epochs"],
                                 params["batch_size"], params["learning_rate"], params["warmup_ratio"], params["seed"],
                                 out_dir, exclude=remove, device=params.get("device", "auto"),
                                 precision=params.get("precision", "auto"))
    return model, history, checkpoints
# pragma: no mutate end
