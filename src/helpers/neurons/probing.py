"""Greedy neuron selection with a diagonal Gaussian probe, scored by dev-split normalised mutual information.

Method. Torroba Hennigen, Williams & Cotterell (2020, "Intrinsic Probing through Dimension Selection") and Wang,
Minervini & Ponti (2024) both start from an empty neuron set S and, for k rounds, add the neuron i that maximises the
normalised mutual information (NMI) between the attribute and the probe's prediction from S ∪ {i} on a dev split.
Wang et al. score a log-linear probe trained once with Poisson-sampled input masks (a latent-variable model, Stańczak
et al. 2022); Torroba Hennigen et al. use a Gaussian class-conditional probe. This module is the Gaussian variant with a
*diagonal* covariance, i.e. Gaussian naive Bayes with class priors from the training frequencies:

    log p(y = c | x_S) = log π_c + Σ_{j ∈ S} log N(x_j; μ_cj, σ²_cj) − log Σ_c' (same for c').

Why this probe: it is fitted in closed form (means and variances per class and neuron), so there is no optimiser, no
seed beyond the train/dev split, and the probe restricted to any subset S is exactly the marginal of the full probe, so
nothing needs retraining per subset. Because the log-likelihood is a sum over neurons, the per-neuron, per-class
log-likelihoods of the dev rows are computed once (dev rows × classes × neurons); scoring every candidate S ∪ {i} is
then a single broadcast addition, and a 50-neuron selection from d = 384 on 600 rows takes about 0.3 s on one CPU
core. That table holds dev rows × classes × d float64 values (180 × 6 × 384: 3.3 MB); for many thousands of dev rows
and a wide model, subsample rows first (10,000 × 17 × 1024 would be 1.4 GB).
The price of the diagonal covariance is that correlated neurons are counted as independent evidence (over-confident
posteriors), which the dev-split cross-entropy penalises; the full-covariance probe of Torroba Hennigen et al. would
need a d × d covariance per class, which a few hundred rows cannot estimate.

NMI is in bits, as in Wang et al.: NMI = (H(y) − CE) / H(y), with H(y) from the dev class frequencies and CE the mean
over dev rows of −log₂ p(y | x_S). NMI can be negative when the probe is confidently wrong on dev.

Caveat, shared with every greedy dev-split selection: each round takes the best of ~d candidates on the same dev rows,
so with a small dev split a noise neuron that happens to fit those rows can beat a weakly useful real one. In the
tests (10 planted neurons among 128, 3 classes one standard deviation apart), a 90-row dev split recovers 7-9 of the
10; a 300-row one recovers all 10 in 18 of 20 data seeds. Seeds of the split (`seed`) give a cheap noise floor.
"""

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from . import overlap

_VARIANCE_RIDGE = 1e-6
"""Added to every class-conditional variance, times the mean per-neuron variance of the training split (so the ridge
is scale-free). It keeps a constant neuron, or a class whose few training rows agree on a neuron, from producing an
infinite log-likelihood, while leaving any neuron with real spread untouched (the same idea as scikit-learn's
`GaussianNB(var_smoothing=...)`)."""

_BLOCK_ELEMENTS = 1 << 22
"""Candidate scores are evaluated for blocks of neurons of about this many floats (32 MiB) at a time."""


@dataclass(frozen=True)
class Selection:
    """The outcome of `select_neurons`: neurons in the order greedy selection added them, and the dev-split scores of
    the probe restricted to the first 1, 2, ..., k of them."""

    neurons: tuple[int, ...]
    """Chosen neuron indices, in greedy order."""
    dev_nmi: tuple[float, ...]
    """Normalised mutual information (bits, (H(y) − CE) / H(y)) on the dev split after each addition."""
    dev_accuracy: tuple[float, ...]
    """Dev accuracy after each addition."""
    n_train: int
    n_dev: int


def _validate(activations: np.ndarray, labels: np.ndarray, n_neurons: int,
              dev_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Checks the arguments of `select_neurons`; returns the activations as float64 and the labels as class codes."""
    if activations.ndim != 2:
        raise ValueError(f"activations must be 2-D (rows × neurons), got shape {activations.shape}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if len(labels) != len(activations):
        raise ValueError(f"labels has {len(labels)} entries but activations has {len(activations)} rows")
    if not np.issubdtype(activations.dtype, np.number):
        raise ValueError(f"activations must be numeric, got dtype {activations.dtype}")
    activations = activations.astype(np.float64)
    if not np.isfinite(activations).all():
        raise ValueError("activations contains NaN or infinite values")
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise ValueError("labels contains NaN")
    d = activations.shape[1]
    if isinstance(n_neurons, bool) or not isinstance(n_neurons, (int, np.integer)) or not 1 <= n_neurons <= d:
        raise ValueError(f"n_neurons must be an integer in [1, {d}] (the number of neurons), got {n_neurons!r}")
    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction!r}")
    classes, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"labels must have at least 2 classes, got {len(classes)}")
    if counts.min() < 2:
        rare = [c.item() if hasattr(c, "item") else c for c in classes[counts < 2]]
        raise ValueError(f"labels: every class needs at least 2 rows (one for train, one for dev); "
                         f"classes with 1 row: {rare}")
    return activations, codes


def _split(codes: np.ndarray, dev_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/dev split: each class sends round(dev_fraction × its count) rows to dev, at least one and at
    most all but one, so every class is both fitted and scored. Deterministic given `seed`; indices come back sorted."""
    rng = np.random.default_rng(seed)
    dev = []
    for c in range(codes.max() + 1):
        rows = np.flatnonzero(codes == c)
        n_dev = min(max(round(dev_fraction * len(rows)), 1), len(rows) - 1)
        dev.append(rng.permutation(rows)[:n_dev])
    dev_rows = np.sort(np.concatenate(dev))
    train_rows = np.setdiff1d(np.arange(len(codes)), dev_rows)
    return train_rows, dev_rows


def _log_likelihoods(x_train: np.ndarray, y_train: np.ndarray, x_dev: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-neuron Gaussian log-likelihood of every dev row under every class, shape (dev rows, classes, neurons), with
    class means and (ridged) variances fitted on the training rows by maximum likelihood."""
    onehot = np.eye(n_classes)[y_train]  # (train rows, classes)
    counts = onehot.sum(axis=0)[:, None]
    means = onehot.T @ x_train / counts  # (classes, neurons)
    variances = onehot.T @ (x_train - means[y_train]) ** 2 / counts  # centred first: no cancellation for large means
    ridge = _VARIANCE_RIDGE * x_train.var(axis=0).mean()
    variances = variances + (ridge if ridge > 0 else _VARIANCE_RIDGE)
    diff = x_dev[:, None, :] - means[None]
    return -0.5 * (np.log(2 * np.pi * variances)[None] + diff**2 / variances[None])


def _score_candidates(current: np.ndarray, log_lik: np.ndarray, y_dev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dev cross-entropy (bits) and dev accuracy of the probe on S ∪ {i}, for every neuron i at once.

    `current` (dev rows × classes) holds s_c − s_y for the chosen set S (class scores relative to the true class) and
    `log_lik` (dev rows × classes × neurons) each neuron's contribution on the same scale, so the candidate scores are
    one broadcast addition. Then −log p(y | x) = log Σ_c exp(s_c) = m + log1p(Σ_{c ≠ arg max} exp(s_c − m)) with m the
    largest score: accurate to float precision even when the probe is very confident, so candidates whose CE is tiny are
    still told apart instead of all tying at 0. Neurons are processed in blocks to bound the temporary memory at
    about `_BLOCK_ELEMENTS` floats whatever the dev size.
    """
    n_dev, n_classes, d = log_lik.shape
    block = max(1, _BLOCK_ELEMENTS // (n_dev * n_classes))
    ce, correct = np.empty(d), np.empty(d)
    for start in range(0, d, block):
        scores = current[:, :, None] + log_lik[:, :, start:start + block]
        top_class = scores.argmax(axis=1)[:, None, :]
        top = np.take_along_axis(scores, top_class, axis=1)
        rest = np.exp(scores - top)
        np.put_along_axis(rest, top_class, 0.0, axis=1)
        ce[start:start + block] = (top[:, 0] + np.log1p(rest.sum(axis=1))).mean(axis=0) / np.log(2)
        correct[start:start + block] = (top_class[:, 0] == y_dev[:, None]).mean(axis=0)
    return ce, correct


def select_neurons(activations: np.ndarray, labels: np.ndarray, n_neurons: int = 50, dev_fraction: float = 0.3,
                   seed: int = 0) -> Selection:
    """Greedily select `n_neurons` neurons of `activations` (rows × neurons) that best predict `labels`.

    Rows are split into train and dev, stratified by label, from `seed`. A diagonal Gaussian probe (see the module
    docstring) is fitted on train; each round adds the neuron whose inclusion gives the highest dev NMI (in bits),
    compared as the lowest dev cross-entropy so that a near-perfect probe still ranks candidates, ties going to the
    lower neuron index. Every round adds a neuron, even when none improves NMI, so the selection always has exactly
    `n_neurons` entries, as in Wang et al. (k = 50).
    """
    activations, codes = _validate(np.asarray(activations), np.asarray(labels), n_neurons, dev_fraction)
    n_classes = codes.max() + 1
    train_rows, dev_rows = _split(codes, dev_fraction, seed)
    y_train, y_dev = codes[train_rows], codes[dev_rows]

    log_lik = _log_likelihoods(activations[train_rows], y_train, activations[dev_rows], n_classes)
    # Class scores relative to the true class (s_y = 0): −log p(y | x) = log Σ_c exp(s_c) needs no gather per candidate.
    dev_index = np.arange(len(dev_rows))
    log_lik -= log_lik[dev_index, y_dev][:, None, :]
    class_counts = np.bincount(y_train, minlength=n_classes)
    log_prior = np.log(class_counts / class_counts.sum())
    current = log_prior[None, :] - log_prior[y_dev][:, None]  # (dev rows, classes): s_c − s_y for the chosen set

    dev_freq = np.bincount(y_dev, minlength=n_classes) / len(y_dev)
    dev_freq = dev_freq[dev_freq > 0]
    h_y = -(dev_freq * np.log2(dev_freq)).sum()

    available = np.ones(activations.shape[1], dtype=bool)
    neurons, nmis, accuracies = [], [], []
    for _ in range(n_neurons):
        ce, correct = _score_candidates(current, log_lik, y_dev)
        # Maximising NMI = (H(y) − CE) / H(y) is minimising CE, and CE keeps the precision that H(y) − CE would
        # round away once CE is below ~1e-16 × H(y). argmin returns the first minimum: ties go to the lower index.
        best = int(np.argmin(np.where(available, ce, np.inf)))
        available[best] = False
        current += log_lik[:, :, best]
        neurons.append(best)
        nmis.append(float((h_y - ce[best]) / h_y))
        accuracies.append(float(correct[best]))
    return Selection(tuple(neurons), tuple(nmis), tuple(accuracies), n_train=len(train_rows), n_dev=len(dev_rows))


def permutation_null(states: Mapping[str, np.ndarray], labels: np.ndarray, n_neurons: int, draws: int,
                     seed: int = 0) -> np.ndarray:
    """The overlap two languages' selections have when the label carries nothing: ``draws`` times, each language's
    labels are permuted independently (class sizes kept) and its neurons selected again; per draw, the mean overlap
    rate over every pair of languages. Greedy selection on a small dev split favours some neurons whatever the label
    (e.g. those with a heavy spread), so this null can lie well above the uniform chance k/d of
    :func:`helpers.neurons.overlap.chance`, which assumes every neuron equally likely. Returns one value per draw."""
    if len(states) < 2:
        raise ValueError(f"permutation_null needs two languages or more, got {list(states)}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        chosen = {lang: select_neurons(x, rng.permutation(labels), n_neurons).neurons for lang, x in states.items()}
        out.append(np.mean([overlap.overlap(chosen[a], chosen[b]) for a, b in itertools.combinations(chosen, 2)]))
    return np.asarray(out, dtype=float)


def split_ceiling(states: Mapping[str, np.ndarray], labels: np.ndarray, n_neurons: int, seeds: int,
                  first: Mapping[str, Sequence[int]] | None = None) -> float:
    """The overlap a language's selection has with itself under another train/dev split (split seeds 1..``seeds``
    against seed 0), averaged over languages and seeds: a noise ceiling, the most two languages' selections could
    share if they coded the label in the same neurons, given how much the selection moves with its split.
    ``first``: the seed-0 selections when already made."""
    values = []
    for lang, x in states.items():
        base = first[lang] if first is not None else select_neurons(x, labels, n_neurons, seed=0).neurons
        values += [overlap.overlap(base, select_neurons(x, labels, n_neurons, seed=s).neurons)
                   for s in range(1, seeds + 1)]
    return float(np.mean(values)) if values else float("nan")
