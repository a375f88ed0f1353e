"""The retraining stage: the counterfactual chapter's removals, each a full fine-tuning again without the chosen
training samples, from the same initialisation, seed and data order (:func:`retrain`; with nothing removed that
reproduces the original checkpoints exactly on the same machine and number of threads, which the tests check).

For a test language L and a number N of training samples (``counterfactual_fractions`` of the training set), the
removals (*arms*, ``counterfactual_arms``):

* ``top``: the N training samples with the highest TracIn score summed over L's test samples. To first order TracIn
  predicts that removing a set S raises test sample j's loss by the sum of score(i, j) over i in S, so this is the
  set it predicts to hurt L most;
* ``random``: N random training samples with as many from each language as ``top`` has (matched language mix);
* ``own`` / ``other``: the top N among L's own-language training samples only / among the other languages' only;
* ``without`` (``counterfactual_zero_shot``): all of one fine-tuning language's samples, once per language;
* ``half`` (``datamodel_subsets``, the first retrained run only): random halves of the training set.

It writes ``outcomes.csv`` (one row per removal and test sample: loss, correct, their change against the original
run, TracIn's predicted loss change) and ``retrainings.csv`` (one row per removal: its size and seconds). The
statistics and the prose are the chapter's (:mod:`helpers.chapters.counterfactual`): rewording it retrains nothing.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import analysis, data
from ..flow.stage import Stage
from ..influence.scores import top_rows
from . import finetune

STAGE = Stage("retrain", "06_retrain.ipynb", "Retraining without the influential samples",
              reads=(("tracin", "main"), ("finetune", "main")),
              params=("counterfactual_languages", "counterfactual_fractions", "counterfactual_arms",
                      "counterfactual_random_draws", "counterfactual_seeds", "counterfactual_zero_shot",
                      "datamodel_subsets"))
OUTCOME_COLUMNS = ["run", "target", "fraction", "arm", "test_row", "test_language", "draw", "n_removed", "loss",
                   "correct", "d_loss", "d_correct", "predicted"]


@dataclass(frozen=True)
class Removal:
    """One retraining: the training rows it leaves out and why."""

    arm: str  # top | random | own | other | without | half
    target: str  # the test language whose TracIn ranking chose the rows; for 'without', the removed language
    fraction: str  # '20%'; '' for 'without' and 'half'
    draw: int  # random draws and halves are numbered from 0
    rows: tuple[int, ...]

    @property
    def label(self) -> str:
        if self.arm == "without":
            return f"without {self.target}"
        if self.arm == "half":
            return f"half {self.draw}"
        draw = f" #{self.draw}" if self.arm == "random" else ""
        return f"{self.arm}{draw} {self.fraction} for {self.target}"


def fraction_size(fraction: str, n_train: int) -> int:
    """Training samples a fraction such as '20%' removes (at least one)."""
    return max(1, round(float(fraction.rstrip("%")) / 100 * n_train))


def summed_scores(scores, language: str) -> np.ndarray:
    """(n_train,) each training sample's TracIn score summed over ``language``'s test samples: the first-order
    prediction of how much removing it would raise the total test loss of that language."""
    columns = (scores.test_ids["language"] == language).to_numpy()
    if not columns.any():
        raise ValueError(f"no test samples in language {language!r}")
    return scores.total[:, columns].sum(1, dtype=np.float64)


def _top(values: np.ndarray, n: int, allowed: np.ndarray | None = None) -> tuple[int, ...]:
    """The ``n`` rows with the highest ``values`` (among ``allowed``), via the book's one top-k (ties: lower row)."""
    if allowed is not None:
        if allowed.sum() < n:
            raise ValueError(f"only {int(allowed.sum())} training samples to choose {n} from")
        values = np.where(allowed, values, -np.inf)
    return tuple(sorted(top_rows(values[:, None], n)[:, 0].tolist()))


def _rng(*parts: Any) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, parts)).encode()))


def matched_random(train_language: np.ndarray, rows: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
    """As many random training rows as ``rows`` has, with the same number from each language (matched mix)."""
    mix = Counter(train_language[list(rows)])
    drawn = [rng.choice(np.flatnonzero(train_language == lang), size=count, replace=False)
             for lang, count in mix.items()]
    return tuple(sorted(np.concatenate(drawn).tolist()))


def plan_removals(scores, cfg: dict[str, Any], seed: int, first: bool) -> list[Removal]:
    """Every removal of one run: for each target language and fraction, the arms; then one removal per fine-tuning
    language (zero-shot question); then, on the ``first`` run, the random halves (datamodeling)."""
    train_language = scores.train_ids["language"].to_numpy()
    n_train = len(train_language)
    languages = list(dict.fromkeys(train_language))
    out: list[Removal] = []
    for target in cfg["counterfactual_languages"]:
        summed = summed_scores(scores, target)
        for fraction in cfg["counterfactual_fractions"]:
            n = fraction_size(fraction, n_train)
            top = _top(summed, n)
            for arm in cfg["counterfactual_arms"]:
                if arm == "top":
                    out.append(Removal("top", target, fraction, 0, top))
                elif arm == "random":
                    out += [Removal("random", target, fraction, draw,
                                    matched_random(train_language, top, _rng(seed, target, fraction, draw)))
                            for draw in range(cfg["counterfactual_random_draws"])]
                elif arm == "own" and target in languages:  # a zero-shot language has no training data of its own
                    out.append(Removal("own", target, fraction, 0, _top(summed, n, train_language == target)))
                elif arm == "other":
                    out.append(Removal("other", target, fraction, 0, _top(summed, n, train_language != target)))
    if cfg["counterfactual_zero_shot"]:
        out += [Removal("without", lang, "", 0, tuple(np.flatnonzero(train_language == lang).tolist()))
                for lang in languages]
    if first:
        for m in range(cfg["datamodel_subsets"]):
            rows = _rng(seed, "half", m).choice(n_train, n_train // 2, replace=False)
            out.append(Removal("half", "", "", m, tuple(sorted(rows.tolist()))))
    return out


def retrain_run(run, removals: list[Removal]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Retrain ``run`` once per distinct set of removed rows. Returns the outcomes (one row per removal and test
    sample: loss, correct, their change against the original run, TracIn's predicted loss change) and one row per
    removal (its size and the seconds its retraining took; 0 when an identical set was already retrained)."""
    import torch  # (this module's removal design is read by the chapter, which loads no torch)

    from .. import models
    from ..finetune import sample_outcomes
    ft = finetune.load(run["finetune"])
    scores = analysis.load_scores(run["tracin"])
    if list(scores.test_ids["uid"]) != list(ft.ids("test")["uid"]):
        raise ValueError(f"run {run.name}: the TracIn scores' test samples are not the fine-tuning stage's")
    original = sample_outcomes(models.load_classifier(ft.checkpoints[-1]["path"]), ft.test)
    total = scores.total.astype(np.float64)
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
            "test_language": outcome["language"], "loss": outcome["loss"], "correct": outcome["correct"],
            "d_loss": outcome["loss"] - original["loss"], "d_correct": outcome["correct"] - original["correct"],
            "predicted": total[list(removal.rows)].sum(0)}))
        removed_language = scores.train_ids["language"].to_numpy()[list(removal.rows)]
        log.append({"run": run.name, "removal": removal.label, "arm": removal.arm, "target": removal.target,
                    "fraction": removal.fraction, "n_removed": len(removal.rows), "n_kept": len(ft.train) -
                    len(removal.rows), "share_own_language": float(np.mean(removed_language == removal.target)),
                    "seconds": round(seconds, 1), "threads": torch.get_num_threads()})
    return pd.concat(parts, ignore_index=True), pd.DataFrame(log)


def compute(runs: list, cfg: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``runs``: the main run's seeds (``RunInputs`` with ``tracin`` and ``finetune`` folders); the first
    ``counterfactual_seeds`` of them are retrained. Returns (outcomes, retrainings)."""
    outcomes, log = [], []
    for i, run in enumerate(runs[: cfg["counterfactual_seeds"]]):
        removals = plan_removals(analysis.load_scores(run["tracin"]), cfg, run.run.seed, first=i == 0)
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
