"""Claims as data: every analysis states what it tested as rows of a claims table, with an interval and a verdict.

A claim row: ``claim_id``, ``chapter``, the paper's ``statement`` and ``section`` (with where that wording comes
from), the ``statistic`` measured, its ``value`` and ``low``/``high`` interval, the ``baseline`` it is judged
against (what a language-blind ranking or chance would give) and the ``verdict``:

* ``supports``: the whole interval lies on the side of the baseline the paper's claim predicts;
* ``contradicts``: the whole interval lies on the other side;
* ``inconclusive``: the interval contains the baseline (or the margin around it);
* ``not tested``: the study lacks the runs the claim needs.

Intervals are percentile bootstraps of a mean of per-test-sample values (:func:`interval`): test samples are
resampled with replacement within each test language (the strata), and, when the study has several seeds, the
seeds are resampled too (a two-level bootstrap: seeds, then samples within each drawn seed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

VERDICTS = ("supports", "contradicts", "inconclusive", "not tested")
CLAIMS_FILE = "claims.csv"

#: Where the wording of a paper statement comes from. The paper's body could not be checked from this machine
#: (no network); statements that are not in its abstract are the project's summary and are marked so.
ABSTRACT = "abstract (verified)"
SUMMARY = "the paper's body, as summarised in this project's issue (not checked against the PDF here)"
METHOD = "this companion's own check (not a claim of the paper)"
RELATED = ("Wang, Minervini & Ponti (2024), abstract: a different model (BLOOM, pre-training checkpoints) and setting "
           "(zero-shot transfer from English); tested here on this study's encoders")


@dataclass
class Claim:
    claim_id: str
    chapter: str
    statement: str  # what the paper says (or, for method checks, what the companion checks)
    source: str  # ABSTRACT, SUMMARY, METHOD or RELATED
    statistic: str  # what was measured, in words
    value: float
    low: float
    high: float
    baseline: float
    baseline_name: str  # e.g. "language-blind ranking", "chance", "no change"
    expect: str  # "above" or "below": where the paper's claim puts the value relative to the baseline
    verdict: str
    note: str = ""
    percent: bool = True  # the value is a share (shown as a percentage) or another quantity (shown as a number)


def decide(low: float, high: float, baseline: float, expect: str, margin: float = 0.0) -> str:
    """``supports`` if [low, high] lies beyond ``baseline + margin`` on the ``expect`` side, ``contradicts`` if it
    lies beyond ``baseline - margin`` on the other side, else ``inconclusive``."""
    if expect not in ("above", "below"):
        raise ValueError(f"expect={expect!r} is not 'above' or 'below'")
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    margin = max(margin, 1e-9)  # a value equal to the baseline up to rounding is not beyond it
    above, below = low > baseline + margin, high < baseline - margin
    if expect == "above":
        return "supports" if above else "contradicts" if below else "inconclusive"
    return "supports" if below else "contradicts" if above else "inconclusive"


def claim(claim_id: str, chapter: str, statement: str, source: str, statistic: str,
          estimate: tuple[float, float, float], baseline: float, baseline_name: str, expect: str,
          margin: float = 0.0, note: str = "", percent: bool = True) -> Claim:
    value, low, high = estimate
    return Claim(claim_id, chapter, statement, source, statistic, float(value), float(low), float(high),
                 float(baseline), baseline_name, expect, decide(low, high, baseline, expect, margin), note, percent)


def not_tested(claim_id: str, chapter: str, statement: str, source: str, statistic: str, why: str) -> Claim:
    nan = float("nan")
    return Claim(claim_id, chapter, statement, source, statistic, nan, nan, nan, nan, "", "above", "not tested", why)


# ----------------------------------------------------------------------------------------------------------------
# Intervals


def _resampled_means(values: np.ndarray, strata: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) means of ``values`` resampled with replacement within each stratum (sizes kept)."""
    total = np.zeros(n_boot)
    for s in np.unique(strata):
        v = values[strata == s]
        total += v[rng.integers(0, len(v), size=(n_boot, len(v)))].sum(1)
    return total / len(values)


def interval(frame: pd.DataFrame, value: str, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
             strata: str | None = "test_language", unit: str | None = "run") -> tuple[float, float, float]:
    """(mean, low, high) of ``frame[value]``: the mean over rows (averaged over ``unit`` groups, e.g. seeds) and a
    percentile bootstrap interval resampling ``unit`` groups and, within each, rows within ``strata``.

    Rows with a missing value are dropped. With a single unit, only rows are resampled."""
    reps = _replicates(frame, value, n_boot, seed, strata=strata, unit=unit)
    if reps is None:
        return float("nan"), float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    low, high = np.quantile(reps[1], [alpha, 1 - alpha])
    return reps[0], float(low), float(high)


def difference(a: pd.DataFrame, b: pd.DataFrame, value: str, **kwargs) -> tuple[float, float, float]:
    """(mean_a - mean_b, low, high): two independent bootstraps (same settings), subtracted replicate by replicate."""
    n_boot, confidence = kwargs.pop("n_boot", 1000), kwargs.pop("confidence", 0.95)
    seed = kwargs.pop("seed", 0)
    ra = _replicates(a, value, n_boot, seed, **kwargs)
    rb = _replicates(b, value, n_boot, seed + 1, **kwargs)
    if ra is None or rb is None:
        return float("nan"), float("nan"), float("nan")
    diff = ra[1] - rb[1]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diff, [alpha, 1 - alpha])
    return ra[0] - rb[0], float(low), float(high)


def _replicates(frame: pd.DataFrame, value: str, n_boot: int, seed: int, strata: str | None = "test_language",
                unit: str | None = "run") -> tuple[float, np.ndarray] | None:
    frame = frame.dropna(subset=[value])
    if frame.empty:
        return None
    rng = np.random.default_rng(seed)
    units = [g for _, g in frame.groupby(unit, sort=False)] if unit and unit in frame else [frame]
    per_unit = np.stack([_resampled_means(g[value].to_numpy(dtype=float),
                                          g[strata].to_numpy() if strata and strata in g else np.zeros(len(g)),
                                          n_boot, rng) for g in units])
    if len(units) > 1:
        draws = rng.integers(0, len(units), size=(n_boot, len(units)))
        boot = per_unit[draws, np.arange(n_boot)[:, None]].mean(1)
    else:
        boot = per_unit[0]
    return float(np.mean([g[value].mean() for g in units])), boot


# ----------------------------------------------------------------------------------------------------------------
# Tables and prose


def table(claims: Iterable[Claim]) -> pd.DataFrame:
    rows = [asdict(c) for c in claims]
    frame = pd.DataFrame(rows, columns=list(Claim.__dataclass_fields__))
    bad = set(frame["verdict"]) - set(VERDICTS)
    if bad:
        raise ValueError(f"unknown verdict(s) {sorted(bad)}; allowed: {list(VERDICTS)}")
    return frame


def save(claims: Iterable[Claim], folder: Path) -> pd.DataFrame:
    frame = table(claims)
    frame.to_csv(Path(folder) / CLAIMS_FILE, index=False)
    return frame


def load(folder: Path) -> pd.DataFrame:
    frame = pd.read_csv(Path(folder) / CLAIMS_FILE, keep_default_na=True,
                        dtype={"note": object, "baseline_name": object}).fillna({"note": "", "baseline_name": ""})
    frame["percent"] = frame["percent"].astype(bool) if "percent" in frame else True
    return frame


def _fmt(x: float, percent: bool) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.1%}" if percent else f"{x:.3g}"


def _percent(row: pd.Series) -> bool:
    value = row.get("percent", True)
    return True if value is None or (isinstance(value, float) and np.isnan(value)) else bool(value)


def sentence(row: pd.Series | Claim, percent: bool | None = None) -> str:
    """One claim as a sentence: the statement, this study's value with its interval, the baseline, the verdict.
    Values are percentages unless the claim says otherwise (``percent``; the argument overrides it)."""
    row = pd.Series(asdict(row)) if isinstance(row, Claim) else row
    percent = _percent(row) if percent is None else percent
    head = f"**{row['claim_id']}** — {row['statement']} *(Source: {row['source']}.)*"
    if row["verdict"] == "not tested":
        return f"{head} *Not tested:* {row['note']}"
    text = (f"{head} This study: {row['statistic']} = "
            f"**{_fmt(row['value'], percent)}** ({_fmt(row['low'], percent)} to {_fmt(row['high'], percent)}), "
            f"against {_fmt(row['baseline'], percent)} for {row['baseline_name']}. Verdict: **{row['verdict']}**.")
    return text + (f" {row['note']}" if isinstance(row.get("note"), str) and row["note"] else "")


def verdict_markdown(frame: pd.DataFrame, percent: bool | None = None) -> str:
    """The chapter's closing paragraph, rendered from its claims table."""
    return "\n\n".join(sentence(row, percent) for _, row in frame.iterrows())


def display_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The claims as the book shows them (values and intervals as percentages, unless a claim says otherwise)."""
    out = frame[["claim_id", "statistic", "value", "low", "high", "baseline", "baseline_name", "verdict"]].copy()
    percent = [_percent(row) for _, row in frame.iterrows()]
    for col in ("value", "low", "high", "baseline"):
        out[col] = [_fmt(x, p) for x, p in zip(out[col], percent)]
    out["interval"] = out["low"] + " to " + out["high"]
    return out[["claim_id", "statistic", "value", "interval", "baseline", "baseline_name", "verdict"]].set_index(
        "claim_id")
