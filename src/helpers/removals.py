"""The counterfactual test's design: which training samples each removal takes out (no torch: the retraining
stage, :mod:`helpers.compute.retrain`, carries the removals out; the chapter, :mod:`helpers.chapters.counterfactual`,
states the design and its cost).

L's test samples are split in two (:func:`held_out`): every other one, in test-set order, *chooses* the removals
(their summed TracIn scores); the others, which played no part in choosing, are where the chapter measures what the
removals did. For a test language L and a fraction f (``counterfactual_fractions``), the removals (*arms*,
``counterfactual_arms``):

* ``top``: the N = f x (training set) training samples with the highest TracIn score summed over L's choosing test
  samples. To first order TracIn predicts that removing a set S raises test sample j's loss by the sum of
  score(i, j) over i in S, so this is the set it predicts to hurt L most;
* ``random`` (``counterfactual_random_draws`` of them): N random training samples with as many of each language and
  label as ``top`` has (matched on language x label: removing one class cannot pass for sample-level influence);
* ``own`` / ``other``: the top f x (L's own training samples) among L's own samples / as many among the other
  languages' samples: two removals of the same size, so the comparison is not a whole language against a few of
  the others;
* ``without`` (``counterfactual_zero_shot``): all of one fine-tuning language's samples, once per language;
* ``half`` (``datamodel_subsets`` per retrained run): random halves of the training set.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from .influence.scores import top_rows

#: The arms chosen from a test language's TracIn ranking (the others: ``without`` a language, random ``half``).
RANKED = ("top", "random", "own", "other")


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


def held_out(test_language: np.ndarray, language: str) -> np.ndarray:
    """Boolean mask over the test rows: ``language``'s rows that do not choose the removals (every other one of its
    rows in test-set order, starting from the second), where the chapter measures them. Its other rows choose."""
    rows = np.flatnonzero(np.asarray(test_language) == language)
    mask = np.zeros(len(test_language), dtype=bool)
    mask[rows[1::2]] = True
    return mask


def summed_scores(scores, language: str) -> np.ndarray:
    """(n_train,) each training sample's TracIn score summed over ``language``'s choosing test samples (those not
    :func:`held_out`): the first-order prediction of how much removing it would raise their total loss."""
    test_language = scores.test_ids["language"].to_numpy()
    columns = (test_language == language) & ~held_out(test_language, language)
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


def matched_random(train_language: np.ndarray, train_label: np.ndarray, rows: tuple[int, ...],
                   rng: np.random.Generator) -> tuple[int, ...]:
    """As many random training rows as ``rows`` has, with the same number of each (language, label) (matched mix)."""
    cells = list(zip(train_language.tolist(), train_label.tolist()))
    mix = Counter(cells[i] for i in rows)
    drawn = [rng.choice([i for i, c in enumerate(cells) if c == cell], size=count, replace=False)
             for cell, count in sorted(mix.items())]
    return tuple(sorted(np.concatenate(drawn).tolist()))


def plan_removals(scores, cfg: dict[str, Any], seed: int) -> list[Removal]:
    """Every removal of one run: for each target language and fraction, the arms; then one removal per fine-tuning
    language (zero-shot question); then the random halves (datamodeling)."""
    train_language = scores.train_ids["language"].to_numpy()
    train_label = scores.train_ids["label"].to_numpy()
    n_train = len(train_language)
    languages = list(dict.fromkeys(train_language))
    out: list[Removal] = []
    for target in cfg["counterfactual_languages"]:
        summed = summed_scores(scores, target)
        own = train_language == target
        for fraction in cfg["counterfactual_fractions"]:
            top = _top(summed, fraction_size(fraction, n_train))
            n_pair = fraction_size(fraction, int(own.sum())) if own.any() else 0
            for arm in cfg["counterfactual_arms"]:
                if arm == "top":
                    out.append(Removal("top", target, fraction, 0, top))
                elif arm == "random":
                    out += [Removal("random", target, fraction, draw,
                                    matched_random(train_language, train_label, top,
                                                   _rng(seed, target, fraction, draw)))
                            for draw in range(cfg["counterfactual_random_draws"])]
                elif arm == "own" and n_pair:  # a zero-shot language has no training data of its own
                    out.append(Removal("own", target, fraction, 0, _top(summed, n_pair, own)))
                elif arm == "other" and n_pair:
                    out.append(Removal("other", target, fraction, 0, _top(summed, n_pair, ~own)))
    if cfg["counterfactual_zero_shot"]:
        out += [Removal("without", lang, "", 0, tuple(np.flatnonzero(train_language == lang).tolist()))
                for lang in languages]
    for m in range(cfg["datamodel_subsets"]):
        rows = _rng(seed, "half", m).choice(n_train, n_train // 2, replace=False)
        out.append(Removal("half", "", "", m, tuple(sorted(rows.tolist()))))
    return out
