"""Claims as data: every analysis states what it tested as rows of a claims table, with an interval and a verdict.

A claim row: ``claim_id``, ``chapter``, the paper's ``statement`` and ``section`` (with where that wording comes
from), the ``statistic`` measured, its ``value`` and ``low``/``high`` interval, the ``baseline`` it is judged
against (the null: what a language-blind ranking, chance or "no change" would give), what the estimate ``rests_on``
(training runs, test samples) and the ``verdict``.

**The unit of replication is the training run.** Each seed draws its own test verses and its own training order,
so a study with several runs of a design gives independent per-run means; the interval is a t-interval over them
(:func:`interval`, ``df = runs - 1``). With one run, the within-run uncertainty is estimated over test samples
clustered by verse (``test_pair_id``: a verse and its translations in every test language count once, since
translations behave alike), a t-interval with ``df = verses - 1``. That interval says nothing about another
training run, so such a claim reads **conditional on one run** whatever its interval shows.

Verdicts (:func:`decide`), at the level ``1 - confidence``:

* ``supports`` / ``contradicts``: the test against the baseline rejects it, on the side the paper's claim predicts
  / on the other side (for a claim judged alone: the interval excludes the baseline). A claim that predicts *no
  change* (``expect="equal"``, e.g. "the other languages stay where they are") is supported by the equivalence test
  (below) and contradicted by a rejected baseline, on either side;
* ``equivalent``: not different from the baseline, and within the claim's declared equivalence ``margin`` of it
  (two one-sided tests; the ``1 - 2 alpha`` interval lies inside baseline +- margin): no effect of the size that
  matters;
* ``underpowered``: neither: the data cannot tell an effect from its absence;
* ``conditional on one run``: the estimate rests on a single training run (its within-run interval is in the note);
* ``not tested``: the study lacks the runs the claim needs, or the claim's precondition fails.

The paper's claims judged here are declared once, in :data:`PRIMARY`, each with its equivalence margin and the
margin's reason; :func:`adjust` applies Holm's step-down adjustment over them (the scoreboard's verdicts). Checks of
the method (:data:`METHOD`) and of related work are judged alone and never count as support for the paper.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

#: Where a claim puts its value relative to the baseline: above, below, or within its equivalence margin (no change).
EXPECT = ("above", "below", "equal")
VERDICTS = ("supports", "contradicts", "equivalent", "underpowered", "conditional on one run", "not tested")
CLAIMS_FILE = "claims.csv"

#: Where the wording of a paper statement comes from. The paper's body could not be checked from this machine
#: (no network); statements that are not in its abstract are the project's summary and are marked so.
ABSTRACT = "abstract (verified)"
SUMMARY = "the paper's body, as summarised in this project's issue (not checked against the PDF here)"
METHOD = "this companion's own check (not a claim of the paper)"
RELATED = ("Wang, Minervini & Ponti (2024), abstract: a different model (BLOOM, pre-training checkpoints) and setting "
           "(zero-shot transfer from English); tested here on this study's encoders")

#: The paper's claims this companion judges (its primary hypotheses; a claim id's part before the first "-" names
#: it): the equivalence margin of each, in the units of its statistic, and why that size. Holm's adjustment runs
#: over these and nothing else.
PRIMARY: dict[str, tuple[float, str]] = {
    "LS2": (0.03, "an own-language AUC within 0.03 of 0.5 orders fewer than 3 in 100 own/other pairs of the same "
                  "label by language beyond chance: too little to call a preference"),
    "DY1": (0.03, "a change of the own-language AUC under 0.03 over fine-tuning is a tenth of what an encoder with "
                  "room (AUC about 0.9 at the start) could lose"),
    "DY2": (0.03, "as DY1, over the epochs after the second"),
    "IM1": (0.02, "two points of excess share: less than half of one sample of the default top-20"),
    "IM2": (0.02, "two points of excess share: less than half of one sample of the default top-20"),
    "TR1": (0.05, "five points of the cross-lingual proponents: less than one of the about 16 of a top-20"),
}


def primary_id(claim_id: str) -> str | None:
    """The :data:`PRIMARY` entry a claim id belongs to (``IM1-4x`` -> ``IM1``), or None."""
    head = str(claim_id).split("-")[0]
    return head if head in PRIMARY else None


@dataclass(frozen=True)
class Estimate:
    """A mean with its interval and what it rests on: ``runs`` training runs (the unit; more than one: a t-interval
    over per-run means, ``df = runs - 1``) or, with one run, ``clusters`` verses (``df = clusters - 1``). Iterates
    as ``(value, low, high)``."""

    value: float
    low: float
    high: float
    runs: int
    se: float = float("nan")
    df: float = float("nan")
    samples: int = 0
    clusters: int = 0

    def __iter__(self) -> Iterator[float]:
        return iter((self.value, self.low, self.high))

    def rests_on(self) -> str:
        if self.runs == 0:
            return "no data"
        if self.runs > 1:
            return f"{self.runs} training runs ({self.samples} test samples in all)"
        return f"1 training run ({self.samples} test samples in {self.clusters} verse clusters)"


NAN = Estimate(float("nan"), float("nan"), float("nan"), 0)


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
    baseline_name: str  # the null, e.g. "language-blind ranking (AUC 0.5)", "label-matched chance", "no change"
    expect: str  # "above", "below" or "equal" (within the margin): where the claim puts the value
    verdict: str
    note: str = ""
    percent: bool = True  # the value is a share (shown as a percentage) or another quantity (shown as a number)
    runs: int = 0  # training runs the estimate rests on
    rests_on: str = ""  # in words: runs and test samples
    se: float = float("nan")
    df: float = float("nan")
    margin: float = 0.0  # equivalence margin (PRIMARY's, or the check's own)
    p: float = float("nan")  # two-sided, against the baseline
    p_equivalent: float = float("nan")  # two one-sided tests against baseline +- margin
    primary: bool = False  # one of the paper's claims in PRIMARY (Holm-adjusted on the scoreboard)
    p_adjusted: float = float("nan")  # Holm over the primary claims (set by adjust)
    p_equivalent_adjusted: float = float("nan")
    confidence: float = 0.95


def _pvalues(value: float, se: float, df: float, baseline: float, margin: float) -> tuple[float, float]:
    """(two-sided p against ``baseline``, p of the two one-sided tests against ``baseline +- margin``)."""
    if not (np.isfinite(value) and np.isfinite(se) and np.isfinite(df)) or df <= 0:
        return float("nan"), float("nan")
    if se == 0:  # every run (or cluster) gave the same value
        p = 0.0 if abs(value - baseline) > 1e-12 else 1.0
        p_eq = 0.0 if margin > 0 and abs(value - baseline) < margin else 1.0
        return p, p_eq
    p = float(2 * stats.t.sf(abs(value - baseline) / se, df))
    if margin <= 0:
        return p, 1.0
    p_eq = max(float(stats.t.sf((value - (baseline - margin)) / se, df)),
               float(stats.t.cdf((value - (baseline + margin)) / se, df)))
    return p, p_eq


def decide(value: float, runs: int, p: float, p_equivalent: float, baseline: float, expect: str,
           alpha: float = 0.05) -> str:
    """The verdict from the (possibly adjusted) p-values: see the module's docstring."""
    if expect not in EXPECT:
        raise ValueError(f"expect={expect!r} is not one of {list(EXPECT)}")
    if runs < 2:
        return "conditional on one run" if runs == 1 and np.isfinite(value) else "underpowered"
    if np.isfinite(p) and p < alpha:
        if expect == "equal":
            return "contradicts"
        above = value > baseline
        return "supports" if above == (expect == "above") else "contradicts"
    if np.isfinite(p_equivalent) and p_equivalent < alpha:
        return "supports" if expect == "equal" else "equivalent"
    return "underpowered"


def _within_run(low: float, high: float, baseline: float) -> str:
    """For a one-run claim: what its within-run interval shows (it does not generalise to another run)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "Within this one run the interval is undefined."
    where = "above" if low > baseline else "below" if high < baseline else "around"
    return (f"Within this one run the interval lies {where} the baseline; another training run could read "
            "otherwise, so this is no replication.")


def claim(claim_id: str, chapter: str, statement: str, source: str, statistic: str,
          estimate: Estimate, baseline: float, baseline_name: str, expect: str,
          margin: float | None = None, note: str = "", percent: bool = True, confidence: float = 0.95,
          rests_on: str | None = None, p: float | None = None) -> Claim:
    """A tested claim. ``estimate`` says what it rests on (:func:`interval`, :func:`difference`, or an
    :class:`Estimate` built by hand); ``margin``: the equivalence margin, :data:`PRIMARY`'s for the paper's claims
    (which may not override it), else 0 (a check without one can read ``underpowered`` but never ``equivalent``).
    ``rests_on`` replaces the estimate's own account of what it rests on (for estimates that are not means over
    test samples). ``p``: a two-sided p-value against the baseline computed otherwise (e.g. an exact permutation
    test), replacing the t-test's in the verdict."""
    if not isinstance(estimate, Estimate):
        raise TypeError(f"claim {claim_id}: the estimate must be an Estimate (it says how many runs it rests on), "
                        f"got {type(estimate).__name__}")
    head = primary_id(claim_id)
    if head is not None and margin is not None:
        raise ValueError(f"claim {claim_id}: the margin of a primary claim is declared once, in claims.PRIMARY")
    margin = PRIMARY[head][0] if head is not None else (margin or 0.0)
    if expect == "equal" and margin <= 0:
        raise ValueError(f"claim {claim_id}: a claim of no change (expect='equal') needs an equivalence margin > 0")
    p_t, p_eq = _pvalues(estimate.value, estimate.se, estimate.df, baseline, margin)
    p = p_t if p is None else float(p)
    verdict = decide(estimate.value, estimate.runs, p, p_eq, baseline, expect, 1 - confidence)
    c = Claim(claim_id, chapter, statement, source, statistic, float(estimate.value), float(estimate.low),
              float(estimate.high), float(baseline), baseline_name, expect, verdict, note, percent,
              runs=estimate.runs, rests_on=rests_on or estimate.rests_on(), se=float(estimate.se),
              df=float(estimate.df), margin=float(margin), p=p, p_equivalent=p_eq, primary=head is not None,
              confidence=confidence)
    if verdict == "conditional on one run":
        c.note = f"{_within_run(c.low, c.high, c.baseline)} {note}".strip()
    return c


def not_tested(claim_id: str, chapter: str, statement: str, source: str, statistic: str, why: str) -> Claim:
    nan = float("nan")
    return Claim(claim_id, chapter, statement, source, statistic, nan, nan, nan, nan, "", "above", "not tested", why,
                 primary=primary_id(claim_id) is not None)


# ----------------------------------------------------------------------------------------------------------------
# Intervals


def _cluster_se(values: np.ndarray, clusters: np.ndarray) -> tuple[float, int]:
    """The cluster-robust standard error of the mean of ``values`` (clusters: e.g. verses), and the cluster count."""
    keys, index = np.unique(clusters, return_inverse=True)
    g = len(keys)
    if g < 2:
        return float("nan"), g
    resid = np.bincount(index, weights=values - values.mean(), minlength=g)
    return float(np.sqrt(g / (g - 1) * np.sum(resid ** 2)) / len(values)), g


def interval(frame: pd.DataFrame, value: str, confidence: float = 0.95, unit: str = "run",
             cluster: str = "test_pair_id", weight: str | None = None) -> Estimate:
    """The mean of ``frame[value]`` with a ``confidence`` t-interval (see the module's docstring): over the per-run
    means when ``frame[unit]`` has several runs, else over test samples clustered by ``frame[cluster]`` (a frame
    without verse ids: every row its own cluster). Rows with a missing value are dropped. ``weight``: a pooled mean
    instead, ``sum(w * x) / sum(w)`` per run (e.g. a share pooled over test samples, each weighted by its number of
    proponents), with a linearised (ratio-estimator) cluster-robust standard error within one run."""
    x = frame[value].to_numpy(dtype=float)
    w = frame[weight].to_numpy(dtype=float) if weight else np.ones(len(x))
    keep = ~np.isnan(x) & (w > 0)
    x, w = x[keep], w[keep]
    if not len(x):
        return NAN
    units = frame[unit].to_numpy()[keep] if unit in frame else np.zeros(len(x))
    _, which = np.unique(units.astype(str), return_inverse=True)
    runs = int(which.max()) + 1
    if runs > 1:
        means = np.bincount(which, weights=w * x) / np.bincount(which, weights=w)
        mean, se, df, clusters = float(means.mean()), float(means.std(ddof=1) / np.sqrt(runs)), runs - 1, 0
    else:
        ids = frame[cluster].to_numpy()[keep].astype(str) if cluster in frame else None
        if ids is None or (ids == "").all():
            ids = np.arange(len(x))
        mean = float(np.sum(w * x) / np.sum(w))
        se, clusters = _cluster_se(w * (x - mean) / w.mean(), ids)
        df = clusters - 1
    return _t_estimate(mean, se, df, confidence, runs, len(x), clusters)


def _t_estimate(value: float, se: float, df: float, confidence: float, runs: int, samples: int,
                clusters: int) -> Estimate:
    """``value`` with its ``confidence`` t-interval (undefined when ``se`` is)."""
    if not (np.isfinite(se) and np.isfinite(df)):
        return Estimate(value, float("nan"), float("nan"), runs, se, float("nan"), samples, clusters)
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Estimate(value, value - half, value + half, runs, se, float(df), samples, clusters)


def difference(a: pd.DataFrame, b: pd.DataFrame, value: str, confidence: float = 0.95, **kwargs) -> Estimate:
    """``mean_a - mean_b`` of two independent arms (e.g. two encoders), each estimated by :func:`interval`, with a
    Welch t-interval (Welch-Satterthwaite degrees of freedom); it rests on the smaller arm's runs. For arms paired by
    seed, build the per-sample differences and use :func:`interval` instead (more power)."""
    ea, eb = interval(a, value, confidence, **kwargs), interval(b, value, confidence, **kwargs)
    if not ea.runs or not eb.runs:
        return NAN
    va, vb = ea.se ** 2, eb.se ** 2
    df = (va + vb) ** 2 / (va ** 2 / ea.df + vb ** 2 / eb.df) if va + vb > 0 else min(ea.df, eb.df)
    return _t_estimate(ea.value - eb.value, float(np.sqrt(va + vb)), df, confidence, min(ea.runs, eb.runs),
                       ea.samples + eb.samples, min(ea.clusters, eb.clusters))


def detectable(estimate: Estimate, power: float = 0.8, confidence: float = 0.95) -> float:
    """The minimum detectable effect of a design whose estimate has ``estimate``'s standard error and degrees of
    freedom: the smallest true difference from the baseline that a two-sided test at ``1 - confidence`` rejects with
    probability ``power`` (``(t_{1-alpha/2} + t_{power}) * se``, the usual approximation). NaN when the standard
    error is."""
    if not (np.isfinite(estimate.se) and np.isfinite(estimate.df)) or estimate.df <= 0:
        return float("nan")
    return float((stats.t.ppf(0.5 + confidence / 2, estimate.df) + stats.t.ppf(power, estimate.df)) * estimate.se)


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count in the family). Five lines of numpy,
    written here rather than adding statsmodels for them."""
    p = np.asarray(p, dtype=float)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def adjust(frame: pd.DataFrame) -> pd.DataFrame:
    """The claims table with Holm's adjustment over the primary claims that were tested on several runs (their
    ``p`` and, separately, ``p_equivalent``) and their verdicts recomputed from the adjusted values."""
    frame = frame.copy()
    family = frame["primary"].astype(bool) & (frame["runs"] >= 2) & frame["p"].notna()
    frame["p_adjusted"] = np.nan
    frame["p_equivalent_adjusted"] = np.nan
    frame.loc[family, "p_adjusted"] = holm(frame.loc[family, "p"])
    frame.loc[family, "p_equivalent_adjusted"] = holm(frame.loc[family, "p_equivalent"])
    for i in frame.index[family]:
        row = frame.loc[i]
        frame.loc[i, "verdict"] = decide(row["value"], int(row["runs"]), row["p_adjusted"],
                                         row["p_equivalent_adjusted"], row["baseline"], row["expect"],
                                         1 - float(row["confidence"]))
    return frame


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
                        dtype={"note": object, "baseline_name": object, "rests_on": object})
    frame = frame.fillna({"note": "", "baseline_name": "", "rests_on": ""})
    for col in ("percent", "primary"):
        frame[col] = frame[col].astype(bool)
    return frame


def _fmt(x: float, percent: bool) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.1%}" if percent else f"{x:.3g}"


def _percent(row: pd.Series) -> bool:
    value = row.get("percent", True)
    return True if value is None or (isinstance(value, float) and np.isnan(value)) else bool(value)


def contrary(row: pd.Series, percent: bool) -> str:
    """What result would have gone against the claim, in words."""
    if row["expect"] == "equal":
        return f"an interval that excludes {_fmt(row['baseline'], percent)} (a change, on either side)"
    other = "below" if row["expect"] == "above" else "above"
    return f"an interval wholly {other} {_fmt(row['baseline'], percent)}"


def sentence(row: pd.Series | Claim, percent: bool | None = None) -> str:
    """One claim as a sentence: the statement, this study's value with its interval, the null, what the estimate
    rests on, what would have contradicted it, the verdict. Values are percentages unless the claim says otherwise
    (``percent``; the argument overrides it)."""
    row = pd.Series(asdict(row)) if isinstance(row, Claim) else row
    percent = _percent(row) if percent is None else percent
    head = f"**{row['claim_id']}** — {row['statement']} *(Source: {row['source']}.)*"
    if row["verdict"] == "not tested":
        return f"{head} *Not tested:* {row['note']}"
    level = f"{float(row.get('confidence', 0.95)):.0%}"
    margin = float(row.get("margin", 0) or 0)
    equivalence = (f" Equivalence margin: ±{_fmt(margin, percent)}" +
                   (f" ({PRIMARY[primary_id(row['claim_id'])][1]})" if primary_id(row["claim_id"]) else "") + "."
                   if margin > 0 else "")
    adjusted = (" (before the multiplicity adjustment: the scoreboard judges the paper's claims together, Holm)"
                if bool(row.get("primary", False)) and not np.isfinite(float(row.get("p_adjusted", np.nan)))
                and int(row.get("runs", 0)) >= 2 else "")
    text = (f"{head} This study: {row['statistic']} = "
            f"**{_fmt(row['value'], percent)}** ({level} interval {_fmt(row['low'], percent)} to "
            f"{_fmt(row['high'], percent)}), against the null {_fmt(row['baseline'], percent)} "
            f"({row['baseline_name']}). Rests on {row.get('rests_on') or 'n/a'}. Against the claim would have been "
            f"{contrary(row, percent)}.{equivalence} Verdict: **{row['verdict']}**{adjusted}.")
    return text + (f" {row['note']}" if isinstance(row.get("note"), str) and row["note"] else "")


def verdict_markdown(frame: pd.DataFrame, percent: bool | None = None) -> str:
    """The chapter's closing paragraph, rendered from its claims table."""
    return "\n\n".join(sentence(row, percent) for _, row in frame.iterrows())


def display_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The claims as the book shows them (values and intervals as percentages, unless a claim says otherwise), with
    the runs each rests on."""
    out = frame[["claim_id", "statistic", "value", "low", "high", "baseline", "baseline_name", "runs",
                 "verdict"]].copy()
    percent = [_percent(row) for _, row in frame.iterrows()]
    for col in ("value", "low", "high", "baseline"):
        out[col] = [_fmt(x, p) for x, p in zip(out[col], percent)]
    out["interval"] = out["low"] + " to " + out["high"]
    out["runs"] = out["runs"].fillna(0).astype(int)
    out = out.rename(columns={"baseline": "null", "baseline_name": "null is"})
    return out[["claim_id", "statistic", "value", "interval", "null", "null is", "runs", "verdict"]].set_index(
        "claim_id")
