"""Overlap of selected neuron sets across languages and checkpoints, its chance level, and its correlation with
transfer scores.

Wang, Minervini & Ponti (2024) measure cross-lingual alignment as the overlap rate |C_ℓ1 ∩ C_ℓ2| / k of the k = 50
neurons selected for the same attribute in two languages, and correlate it with zero-shot transfer scores (Pearson r
and Spearman ρ). They print no chance level; this module adds one. Two independent, uniformly random k-subsets of d
neurons share a hypergeometric number of neurons (population d, k "successes", k draws), with mean k²/d, so the chance
overlap *rate* is k/d: 0.13 for k = 50 of d = 384, which is why raw rates are not comparable across model widths.
`stability` is the same measure for one language between two checkpoints, the integrity check of the digest's §10.3 /
A.1 (healthy neighbouring checkpoints share 0.33–0.49 of their neurons; broken snapshots share only chance).
"""

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats


def _neuron_set(name: str, neurons: Sequence[int]) -> set[int]:
    """`neurons` as a set, refusing an empty selection or repeated indices (either means a bug upstream)."""
    chosen = [int(i) for i in neurons]
    if not chosen:
        raise ValueError(f"{name} is empty")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{name} repeats neuron indices")
    return set(chosen)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """Overlap rate |A ∩ B| / |A| of two neuron selections (Wang et al.: |A| = |B| = k, so it is symmetric; with
    unequal sizes it is the fraction of A that B also selected)."""
    set_a = _neuron_set("a", a)
    return len(set_a & _neuron_set("b", b)) / len(set_a)


def chance(d: int, k: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """Chance overlap rate of two independent uniformly random k-subsets of d neurons: (mean, low, high).

    The mean is k/d; (low, high) is the central `confidence` interval of the hypergeometric intersection size
    (`scipy.stats.hypergeom`, population d, k marked, k drawn), divided by k. It is a discrete interval, so it covers
    at least `confidence` of the null mass.
    """
    if not 1 <= k <= d:
        raise ValueError(f"k must be in [1, d={d}], got k={k!r}")
    _check_confidence(confidence)
    low, high = stats.hypergeom(M=d, n=k, N=k).interval(confidence)
    return k / d, float(low) / k, float(high) / k


def pairwise(selections: Mapping[str, Sequence[int]], d: int, confidence: float = 0.95) -> pd.DataFrame:
    """Overlap of every unordered pair of languages' selections (pairs in the mapping's order), with its chance level.

    Columns: language_a, language_b, overlap, chance, chance_low, chance_high, above_chance. `above_chance` is
    overlap > chance_high, a one-sided test at level (1 − confidence) / 2 or less per pair, with no correction for the
    number of pairs (Wang et al.'s code applies Holm–Bonferroni over pairs to permutation p-values; correct for
    multiplicity before reading many pairs' flags together). All selections must have the same size k (Wang et al.:
    k = 50), since the chance level depends on k.
    """
    sizes = {name: len(_neuron_set(f"selections[{name!r}]", neurons)) for name, neurons in selections.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"selections must all have the same size k, got sizes {sizes}")
    for name, neurons in selections.items():
        if not all(0 <= int(i) < d for i in neurons):
            raise ValueError(f"selections[{name!r}] has neuron indices outside [0, d={d})")
    columns = ["language_a", "language_b", "overlap", "chance", "chance_low", "chance_high", "above_chance"]
    if len(selections) < 2:
        return pd.DataFrame(columns=columns)
    mean, low, high = chance(d, next(iter(sizes.values())), confidence)
    rows = [(a, b, overlap(selections[a], selections[b]), mean, low, high)
            for a, b in itertools.combinations(selections, 2)]
    table = pd.DataFrame(rows, columns=columns[:-1])
    table["above_chance"] = table["overlap"] > table["chance_high"]
    return table


def stability(before: Mapping[str, Sequence[int]], after: Mapping[str, Sequence[int]]) -> pd.DataFrame:
    """Same-language overlap between two checkpoints' selections (columns language, overlap; `before`'s order).

    The digest's integrity check (§10.3, A.1): for a healthy pair of neighbouring checkpoints the same language keeps
    a large share of its neurons; a chance-level value flags a snapshot that is off the training path. Both mappings
    must name the same languages, so that a missing probe run is an error rather than a silently shorter table.
    """
    if set(before) != set(after):
        raise ValueError(f"before and after must name the same languages; only in before: "
                         f"{sorted(set(before) - set(after))}, only in after: {sorted(set(after) - set(before))}")
    return pd.DataFrame({"language": list(before),
                         "overlap": [overlap(before[name], after[name]) for name in before]})


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    if len(values) == 0:
        return np.nan, np.nan
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def language_correlation(points: pd.DataFrame, x: str, y: str, languages: Sequence[str] = ("language_a",
                         "language_b"), n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Spearman ρ of ``points[x]`` and ``points[y]``, where each point belongs to one or two languages (the columns
    ``languages``: a language pair, or one language), with an interval from a bootstrap **over languages**: each
    replicate draws the languages with replacement and keeps every point with the product of its languages'
    multiplicities, so points that share a language move together (a bootstrap over the points would treat the 21
    pairs of 7 languages as 21 independent observations). Returns n, languages, spearman, spearman_low,
    spearman_high and se (the replicates' standard deviation); NaN with fewer than 3 points or 3 languages, or a
    constant x or y. Written here: scipy's bootstrap resamples observations, not the clusters they share."""
    _check_confidence(confidence)
    n = len(points)
    names = sorted(set().union(*(set(points[c]) for c in languages)))
    out = {"n": n, "languages": len(names), "spearman": np.nan, "spearman_low": np.nan, "spearman_high": np.nan,
           "se": np.nan}
    xv, yv = points[x].to_numpy(dtype=float), points[y].to_numpy(dtype=float)
    if n < 3 or len(names) < 3 or np.ptp(xv) == 0 or np.ptp(yv) == 0:
        return out
    out["spearman"] = float(stats.spearmanr(xv, yv).statistic)
    index = {name: i for i, name in enumerate(names)}
    member = np.stack([points[c].map(index).to_numpy() for c in languages], axis=1)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names))
        rows = np.repeat(np.arange(n), counts[member].prod(axis=1))
        if len(rows) >= 3 and np.ptp(xv[rows]) > 0 and np.ptp(yv[rows]) > 0:
            reps.append(stats.spearmanr(xv[rows], yv[rows]).statistic)
    reps = np.asarray(reps, dtype=float)
    out["spearman_low"], out["spearman_high"] = _percentile_interval(reps, confidence)
    out["se"] = float(reps.std(ddof=1)) if len(reps) > 1 else np.nan
    return out
