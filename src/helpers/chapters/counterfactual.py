"""Do the influential samples matter? A counterfactual check of TracIn's attributions (the statistics and prose; the
removals and retrainings are the retraining stage's, :mod:`helpers.compute.retrain`).

Every other chapter assumes that TracIn's most influential training samples are the ones the model relies on.
Training-data attribution methods are known to predict poorly what happens when data is removed, so this chapter
tests it on the study's own runs: it removes training samples, fine-tunes again from the same initialisation, seed
and data order (:func:`helpers.compute.retrain.retrain`; with nothing removed that reproduces the original checkpoints
exactly on the same machine and number of threads, which the tests check) and measures, test sample by test
sample, how the loss and the accuracy change against the original run (retrained minus original: paired, so the
test samples' own difficulty cancels).

The removals (*arms*: ``top``, matched ``random`` draws, equal-sized ``own`` / ``other``, ``without`` a language,
random ``half``) are :mod:`helpers.removals`'s. Every other test sample of L chooses them; the chapter measures them
on L's other test samples only, which played no part in choosing.

**The retraining is the unit.** Claims: CF1, top hurts L more than random (the method works here): per retrained
seed, the top removal's mean change of L's held-out loss against the spread of ``counterfactual_random_draws``
matched random removals; with two draws or more the verdict comes from an exact permutation test (within each seed,
is the top removal exchangeable with the random ones?), whose smallest attainable p-value the note states; with one
draw, from a t-test (over seeds; with one seed, over L's held-out test samples). CF2, removing L's top cross-lingual
samples hurts L at least as much as removing as many of its top same-language ones (reliance on other languages,
tested causally); CF3-<Z>, for a zero-shot language Z, removing the fine-tuning language the share analysis ranks
first hurts Z more than removing another one; CF4, the linear datamodeling score (per test sample, the rank
correlation over random halves of its retrained seed between TracIn's predicted and the actual change of its loss),
with the seeds as the unit when several are retrained.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.stats import rankdata

from .. import analysis, claims, data
from ..config import ConfigError
from ..flow.stage import Stage
from ..removals import RANKED, fraction_size, plan_removals
from ..study import load_profile
from . import Result

STAGE = Stage("counterfactual", "18_counterfactual.ipynb", "Do the influential samples matter?",
              reads=(("retrain", "study"), ("tracin", "main")),
              params=("counterfactual_languages", "counterfactual_fractions", "counterfactual_arms",
                      "counterfactual_random_draws", "counterfactual_seeds", "counterfactual_zero_shot",
                      "datamodel_subsets", "confidence"),
              files=("params/counterfactual.yaml",))

#: The profile with the full design (several fractions and seeds, every arm, the zero-shot question, datamodeling).
FULL_PROFILE = "counterfactual"
_KEYS = ["run", "target", "fraction", "arm", "test_row", "test_language"]


# ----------------------------------------------------------------------------------------------------------------
# From outcomes to tables and claims


def held_out_outcomes(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The ranked arms on their target language's held-out test samples (those that did not choose the removals),
    one row per removal (random draws apart) and test sample."""
    return outcomes[outcomes["arm"].isin(RANKED) & (outcomes["test_language"] == outcomes["target"])
                    & ~outcomes["chose"].astype(bool)]


def ranked_outcomes(outcomes: pd.DataFrame) -> pd.DataFrame:
    """:func:`held_out_outcomes` with the random draws averaged per test sample."""
    return (held_out_outcomes(outcomes).groupby(_KEYS, sort=False)[["n_removed", "d_loss", "d_correct", "predicted"]]
            .mean().reset_index())


def top_against_random(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per retrained run, target and fraction: the top removal's mean change of the held-out loss, the random
    draws' mean and standard deviation, the difference and its size in random-draw standard deviations, the top
    removal's rank among all the removals (1: it hurt most) and the draws' count."""
    part = held_out_outcomes(outcomes)
    part = part[part["arm"].isin(("top", "random"))]
    means = part.groupby(["run", "target", "fraction", "arm", "draw"], sort=False)["d_loss"].mean().reset_index()
    rows = []
    for (run, target, fraction), group in means.groupby(["run", "target", "fraction"], sort=False):
        top, random = group[group["arm"] == "top"]["d_loss"], group[group["arm"] == "random"]["d_loss"].to_numpy()
        if top.empty or not len(random):
            continue
        top = float(top.iloc[0])
        sd = float(random.std(ddof=1)) if len(random) > 1 else np.nan
        rows.append({"run": run, "target": target, "fraction": fraction, "top": top, "random": random.mean(),
                     "random_sd": sd, "difference": top - random.mean(), "effect_size": (top - random.mean()) / sd
                     if sd > 0 else np.nan, "rank": int(1 + (random > top).sum()), "draws": len(random),
                     "random_draws": random.tolist()})
    return pd.DataFrame(rows)


def permutation_p(table: pd.DataFrame) -> tuple[float, float]:
    """An exact, stratified permutation test of :func:`top_against_random`'s rows (one per retrained seed): under the
    null, within each seed the top removal is exchangeable with its random draws. The statistic is the sum over
    seeds of (the top removal's change minus the mean of the others'); every assignment of the "top" label within
    each seed is enumerated (beyond 20,000 assignments, 20,000 random ones, the observed one counted in, as a Monte
    Carlo p-value does). Returns the two-sided p-value (twice the smaller tail, at most 1) and the smallest p-value
    the design can reach."""
    groups = [np.array([row.top, *row.random_draws], dtype=float) for row in table.itertuples()]

    def statistic(choice) -> float:
        return float(sum(g[i] - np.delete(g, i).mean() for g, i in zip(groups, choice)))

    observed = statistic([0] * len(groups))
    sizes = [len(g) for g in groups]
    total = int(np.prod(sizes))
    if total <= 20_000:
        values = np.array([statistic(c) for c in itertools.product(*(range(n) for n in sizes))])
    else:
        rng = np.random.default_rng(0)
        values = np.array([observed] + [statistic([rng.integers(n) for n in sizes]) for _ in range(20_000)])
    tol = 1e-12 * max(1.0, abs(observed))
    upper, lower = np.mean(values >= observed - tol), np.mean(values <= observed + tol)
    return float(min(1.0, 2 * min(upper, lower))), float(min(1.0, 2 / min(total, len(values))))


def cf1_estimate(table: pd.DataFrame, frame: pd.DataFrame, confidence: float) -> claims.Estimate:
    """CF1's estimate: the mean over seeds of the top removal's change minus its random draws' mean. Several seeds: a
    t-interval over them; one seed and one target language with several draws: the top removal against the draws'
    spread (a prediction interval, ``se = sd * sqrt(1 + 1/draws)``, ``df = draws - 1``); otherwise (one seed, one
    draw or several target languages): over the held-out test samples (``frame``, paired per sample). The verdict
    with several draws is the permutation test's (:func:`permutation_p`) whichever interval is shown."""
    if len(table) > 1:
        return claims.interval(frame, "value", confidence)
    row = table.iloc[0]
    if row["draws"] > 1:
        se = row["random_sd"] * np.sqrt(1 + 1 / row["draws"])
        half = float(stats.t.ppf(0.5 + confidence / 2, row["draws"] - 1)) * se
        return claims.Estimate(row["difference"], row["difference"] - half, row["difference"] + half, runs=1, se=se,
                               df=row["draws"] - 1, samples=len(frame), clusters=0)
    return claims.interval(frame, "value", confidence)


def paired(ranked: pd.DataFrame, a: str, b: str, fraction: str) -> pd.DataFrame:
    """Per test sample: ``value`` = change of loss under arm ``a`` minus under arm ``b`` (same run, target and
    fraction)."""
    part = ranked[ranked["fraction"] == fraction]
    keys = ["run", "target", "test_row", "test_language"]
    both = part[part["arm"] == a][[*keys, "d_loss"]].merge(part[part["arm"] == b][[*keys, "d_loss"]], on=keys,
                                                          suffixes=("_a", "_b"))
    return both.assign(value=both["d_loss_a"] - both["d_loss_b"])


def arm_summary(ranked: pd.DataFrame, opts: dict[str, Any]) -> pd.DataFrame:
    """Per target, fraction and arm: the mean change of the target's test loss and accuracy, with intervals, and
    TracIn's first-order prediction of the loss change."""
    rows = []
    for (target, fraction, arm), part in ranked.groupby(["target", "fraction", "arm"], sort=False):
        loss, acc = claims.interval(part, "d_loss", **opts), claims.interval(part, "d_correct", **opts)
        rows.append({"target": target, "fraction": fraction, "arm": arm, "removed": int(part["n_removed"].iloc[0]),
                     "d_loss": loss.value, "low": loss.low, "high": loss.high, "d_accuracy": acc.value,
                     "d_accuracy_low": acc.low, "d_accuracy_high": acc.high, "predicted": part["predicted"].mean()})
    return pd.DataFrame(rows)


def zero_shot_table(outcomes: pd.DataFrame, runs: list, n: int, opts: dict[str, Any]) -> tuple[pd.DataFrame,
                                                                                               pd.DataFrame]:
    """For each zero-shot test language Z and fine-tuning language F: the share analysis' prediction (F's mean share
    of Z's per-test-sample top-``n``), TracIn's first-order prediction (the summed scores of F's samples) and the
    actual change of Z's loss without F. Also the per-sample frame behind CF3 (``value``: change without the
    language the shares rank first minus the mean change without the others)."""
    without = outcomes[outcomes["arm"] == "without"]
    if without.empty:
        return pd.DataFrame(), pd.DataFrame()
    retrained = set(without["run"])
    shares = pd.concat([analysis.sample_table(analysis.load_scores(r["tracin"]), n, run=r.name)
                        for r in runs if r.name in retrained], ignore_index=True)
    languages = list(dict.fromkeys(without["target"]))
    rows, frames = [], []
    for z in [lang for lang in dict.fromkeys(without["test_language"]) if lang not in languages]:
        part = without[without["test_language"] == z]
        share = shares[shares["test_language"] == z][[f"share_{f}" for f in languages]].mean()
        for f in languages:
            sub = part[part["target"] == f]
            value, low, high = claims.interval(sub, "d_loss", **opts)
            rows.append({"zero_shot": z, "removed": f, "share": float(share[f"share_{f}"]),
                         "predicted": sub["predicted"].mean(), "d_loss": value, "low": low, "high": high,
                         "d_accuracy": sub["d_correct"].mean()})
        first = share.idxmax().removeprefix("share_")
        wide = part.pivot_table(index=["run", "test_row", "test_language"], columns="target", values="d_loss")
        others = [f for f in languages if f != first]
        frames.append(wide[first].sub(wide[others].mean(axis=1)).rename("value").reset_index()
                      .assign(zero_shot=z, first=first))
    table = pd.DataFrame(rows)
    if len(table):
        for column, rank in (("d_loss", "rank_actual"), ("share", "rank_share"), ("predicted", "rank_predicted")):
            table[rank] = table.groupby("zero_shot")[column].rank(ascending=False, method="min").astype(int)
    return table, (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())


def datamodel_scores(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per test sample of the run with random halves: the Spearman correlation, over the halves, between TracIn's
    predicted and the actual change of its loss (the linear datamodeling score of that sample)."""
    halves = outcomes[outcomes["arm"] == "half"]
    rows = []
    for (run, row, lang), part in halves.groupby(["run", "test_row", "test_language"], sort=False):
        a, b = rankdata(part["predicted"]), rankdata(part["d_loss"])
        a, b = a - a.mean(), b - b.mean()
        denominator = np.sqrt((a ** 2).sum() * (b ** 2).sum())
        rows.append({"run": run, "test_row": row, "test_language": lang, "subsets": len(part),
                     "value": float((a * b).sum() / denominator) if denominator > 0 else np.nan})
    return pd.DataFrame(rows)


def _how_to(what: str) -> str:
    return (f"{what} Run the full design: `python -m helpers.pipeline run --profile {FULL_PROFILE}` "
            f"(params/{FULL_PROFILE}.yaml).")


def compute(runs: list, cfg: dict[str, Any], outcomes: pd.DataFrame, log: pd.DataFrame) -> Result:
    """``runs``: the main run's seeds (``RunInputs`` with ``tracin`` folders); ``outcomes`` and ``log``: what the
    retraining stage (:mod:`helpers.compute.retrain`) measured on the first ``counterfactual_seeds`` of them."""
    opts = dict(confidence=cfg["confidence"])
    chosen = runs[: cfg["counterfactual_seeds"]]
    ranked = ranked_outcomes(outcomes)
    versus = top_against_random(outcomes)
    result = Result(tables={"outcomes": outcomes, "retrainings": log, "arms": arm_summary(ranked, opts),
                            "top_vs_random": versus.drop(columns="random_draws", errors="ignore")})
    seeds = f"{len(chosen)} of the main run's {len(runs)} seeds"

    for fraction in cfg["counterfactual_fractions"]:
        stat = (f"removing the top {fraction} minus {fraction} random samples (matched on language x label): change "
                "of L's held-out test loss")
        statement = ("TracIn's most influential samples matter more than random ones: removing a test language's "
                     "top samples (summed TracIn over half of its test samples) and fine-tuning again raises the "
                     "loss of its other test samples more than removing as many random samples of the same "
                     "languages and labels.")
        frame = paired(ranked, "top", "random", fraction)
        table = versus[versus["fraction"] == fraction] if len(versus) else versus
        if frame.empty or table.empty:
            result.claims.append(claims.not_tested(f"CF1-{fraction}", STAGE.name, statement, claims.METHOD, stat,
                                                   _how_to("Needs the arms 'top' and 'random'.")))
            continue
        draws, n_runs = int(table["draws"].min()), table["run"].nunique()
        p_perm, p_min = permutation_p(table) if draws > 1 else (None, float("nan"))
        how = (f"Verdict from an exact permutation test of the top removal against the {draws} random draws within "
               f"each seed (two-sided p = {p_perm:.3g}; the smallest this design can reach: {p_min:.3g})"
               if p_perm is not None else
               "One random draw per seed: no distribution of random removals to rank the top one in; the t-test "
               + ("over seeds" if n_runs > 1 else "over L's held-out test samples"))
        ranks = ", ".join(f"{r.run} {r.target}: {r.rank} of {r.draws + 1}" for r in table.itertuples())
        shared = (log.loc[(log["arm"] == "random") & (log["fraction"] == fraction), "shared_with_top"].astype(float)
                  if "shared_with_top" in log else pd.Series(dtype=float))
        result.claims.append(claims.claim(
            f"CF1-{fraction}", STAGE.name, statement, claims.METHOD, stat,
            cf1_estimate(table, frame, opts["confidence"]),
            0.0, "no difference", "above", percent=False, **opts, p=p_perm,
            rests_on=(f"{n_runs} retrained seed(s) of the main run, each with 1 top and {draws} random removal(s) "
                      f"per L ({len(table) * (draws + 1)} retrainings), measured on {frame['test_row'].nunique()} "
                      "held-out test samples per seed"),
            note=f"L: {', '.join(dict.fromkeys(frame['target']))}; {seeds}. {how}. Rank of the top removal's harm "
                 f"among the removals (1: it hurt most): {ranks}."
                 + (f" The random removals share {shared.mean():.0%} of their samples with the top one on average "
                    f"(at most {shared.max():.0%}): matched on language x label, a top removal concentrated in few "
                    "cells leaves them little else to draw." if shared.notna().any() else "")))
        statement = ("Models rely on data from multiple languages during fine-tuning, tested causally: removing a "
                     "test language's top cross-lingual samples hurts it at least as much as removing as many of its "
                     "top same-language ones.")
        stat = (f"removing the other languages' top N minus L's own top N (N: {fraction} of L's own samples): change "
                "of L's held-out test loss, per test sample")
        frame = paired(ranked, "other", "own", fraction)
        if frame.empty:
            result.claims.append(claims.not_tested(f"CF2-{fraction}", STAGE.name, statement, claims.ABSTRACT, stat,
                                                   _how_to("Needs the arms 'own' and 'other' and a fine-tuning "
                                                           "language among counterfactual_languages.")))
        else:
            result.claims.append(claims.claim(
                f"CF2-{fraction}", STAGE.name, statement, claims.ABSTRACT, stat,
                claims.interval(frame, "value", **opts),
                0.0, "equal harm", "above", percent=False, **opts,
                note=f"L: {', '.join(dict.fromkeys(frame['target']))}; {seeds}. Underpowered means the two removals "
                     "could not be told apart; contradicts means the own-language samples mattered more."))

    n_share = fraction_size(min(cfg["counterfactual_fractions"], key=lambda f: float(f.rstrip("%"))),
                            len(analysis.load_scores(runs[0]["tracin"]).train_ids))
    zs_table, zs_frame = zero_shot_table(outcomes, chosen, n_share, opts)
    result.tables["zero_shot"] = zs_table
    statement = ("For a zero-shot language, the fine-tuning language whose removal hurts it most is the one the "
                 "share analysis ranks first.")
    if zs_frame.empty:
        why = ("the study has no zero-shot test language" if cfg["counterfactual_zero_shot"] else
               _how_to("Needs counterfactual_zero_shot (one retraining without each fine-tuning language)."))
        result.claims.append(claims.not_tested("CF3", STAGE.name, statement, claims.METHOD,
                                               "change of the zero-shot language's loss", why))
    for z, frame in (zs_frame.groupby("zero_shot", sort=False) if len(zs_frame) else []):
        first = frame["first"].iloc[0]
        rows = zs_table[zs_table["zero_shot"] == z]
        worst = rows.loc[rows["d_loss"].idxmax(), "removed"]
        result.claims.append(claims.claim(
            f"CF3-{z}", STAGE.name, statement, claims.METHOD,
            f"{data.LANGUAGES[z].name}: loss change without {data.LANGUAGES[first].name} (first by its top-{n_share} "
            "shares) minus the mean loss change without each other fine-tuning language",
            claims.interval(frame, "value", **opts), 0.0, "no difference", "above", percent=False, **opts,
            note=f"Removal that hurt most: {data.LANGUAGES[worst].name}; {seeds}."))

    dm = datamodel_scores(outcomes)
    result.tables["datamodel"] = dm
    statement = ("TracIn predicts what removing data does: over random halves of the training set, its predicted "
                 "change of each test sample's loss ranks with the actual change (linear datamodeling score).")
    stat = "Spearman correlation per test sample over random halves, mean over test samples"
    if dm.empty or dm["value"].isna().all():
        result.claims.append(claims.not_tested("CF4", STAGE.name, statement, claims.METHOD, stat,
                                               _how_to("Needs datamodel_subsets >= 3 (random halves, each one "
                                                       "retraining; too costly for the default book).")))
    else:
        result.claims.append(claims.claim("CF4", STAGE.name, statement, claims.METHOD, stat,
                                          claims.interval(dm, "value", **opts), 0.0, "no correlation", "above",
                                          percent=False, **opts,
                                          note=f"{int(dm['subsets'].iloc[0])} random halves of {dm['run'].iloc[0]}."))
    return result


# ----------------------------------------------------------------------------------------------------------------
# Prose and display


def _with_interval(value: float, low: float, high: float, fmt: str) -> str:
    return f"{value:{fmt}} ({low:{fmt}} to {high:{fmt}})"


def arms_display(arms: pd.DataFrame) -> pd.DataFrame:
    """The arms table as the book shows it: one row per target, fraction and arm; changes with their intervals."""
    return pd.DataFrame({
        "test language L": [data.LANGUAGES[t].name for t in arms["target"]], "removed": [
            f"{f} ({n})" for f, n in zip(arms["fraction"], arms["removed"])], "arm": arms["arm"],
        "change of L's loss": [_with_interval(*r, "+.3f") for r in zip(arms["d_loss"], arms["low"], arms["high"])],
        "change of L's accuracy": [_with_interval(*r, "+.0%") for r in zip(
            arms["d_accuracy"], arms["d_accuracy_low"], arms["d_accuracy_high"])],
        "TracIn's predicted change": [f"{x:+.3g}" for x in arms["predicted"]]}).set_index(
        ["test language L", "removed", "arm"])


def zero_shot_display(table: pd.DataFrame) -> pd.DataFrame:
    """The zero-shot table as the book shows it."""
    return pd.DataFrame({
        "zero-shot language": [data.LANGUAGES[z].name for z in table["zero_shot"]],
        "retrained without": [data.LANGUAGES[f].name for f in table["removed"]],
        "its share of the top samples": [f"{x:.0%}" for x in table["share"]],
        "TracIn's predicted change": [f"{x:+.3g}" for x in table["predicted"]],
        "change of the loss": [_with_interval(*r, "+.3f") for r in zip(table["d_loss"], table["low"], table["high"])],
        "change of accuracy": [f"{x:+.0%}" for x in table["d_accuracy"]],
        "rank: actual / shares / TracIn": [f"{a} / {b} / {c}" for a, b, c in zip(
            table["rank_actual"], table["rank_share"], table["rank_predicted"])]}).set_index(
        ["zero-shot language", "retrained without"])


def plain_verdict(result: Result) -> str:
    """One paragraph saying plainly whether the attribution passed the removal test here."""
    table = result.claims_table
    cf1 = table[table["claim_id"].str.startswith("CF1")]
    tested = cf1[cf1["verdict"] != "not tested"]
    if tested.empty:
        return "This study ran no top-versus-random removal, so it does not say whether TracIn's rankings matter."
    # one retraining per arm reads "conditional on one run": its within-run interval still says which way it went
    one = tested["verdict"] == "conditional on one run"
    passed = (tested["verdict"] == "supports") | (one & (tested["low"] > tested["baseline"]))
    failed = (tested["verdict"] == "contradicts") | (one & (tested["high"] < tested["baseline"]))
    outcomes = result.tables["outcomes"]
    random_draws = outcomes.loc[outcomes["arm"] == "random", "draw"].nunique()
    first = (" With one retrained seed (and " + (f"{random_draws} random draws" if random_draws > 1 else
             "one random draw, whose interval covers L's held-out test samples only") + ") it does not say how the "
             "result would move with another seed: a first check, not a settled one."
             if outcomes["run"].nunique() < 2 else "")
    if passed.all():
        text = ("**TracIn passes the removal test here:** removing its top samples for the test language raised that "
                "language's held-out test loss more than removing as many random samples of the same languages and "
                "labels." + first)
    elif failed.any():
        names = ", ".join(f"{r.claim_id} ({r.verdict})" for r, bad in zip(tested.itertuples(), failed) if bad)
        text = ("**The attribution fails the removal test here:** removing TracIn's top samples did not raise the "
                f"test language's loss more than removing as many random samples ({names}). The language shares "
                "of the other chapters describe TracIn's rankings; this run gives no causal evidence that the model "
                "relies on those samples more than on others.")
    else:
        names = ", ".join(f"{r.claim_id} ({r.verdict})" for r in tested.itertuples())
        text = ("**The removal test is undecided here:** the change of the test language's loss after removing "
                f"TracIn's top samples cannot be told from that after removing random ones ({names})." + first)
    cf4 = table[(table["claim_id"] == "CF4") & (table["verdict"] != "not tested")]
    if len(cf4) and cf4["verdict"].iloc[0] != "supports":
        text += (f" Over random halves of the training set, TracIn's predicted loss changes do not rank with the "
                 f"actual ones (CF4, {cf4['verdict'].iloc[0]}).")
    return text


def design_markdown(cfg: dict[str, Any], runs: list, result: Result) -> str:
    """What this study's removal design measures, what it leaves out, and the cost of the full design (estimated
    from this run's measured seconds per retraining, in proportion to the samples kept)."""
    log = result.tables["retrainings"]
    scores = analysis.load_scores(runs[0]["tracin"])
    n_train = len(scores.train_ids)
    names = ", ".join(data.LANGUAGES[lang].name for lang in cfg["counterfactual_languages"]) or "no language"
    chosen = runs[: cfg["counterfactual_seeds"]]
    fractions = ", ".join(f"{f} ({fraction_size(f, n_train)} samples)" for f in cfg["counterfactual_fractions"])
    done = log[log["seconds"] > 0] if len(log) else log
    text = (f"**What this study measures.** {len(done)} retrainings of {', '.join(r.name for r in chosen)} "
            f"({len(chosen)} of the main run's {len(runs)} seeds), each a full fine-tuning of the {n_train}-sample "
            f"training set minus the removed samples. Test language(s) L: {names}; removed: {fractions}; "
            f"arms: {', '.join(cfg['counterfactual_arms'])}"
            + (f"; {cfg['counterfactual_random_draws']} random draw(s) per L and fraction"
               if "random" in cfg["counterfactual_arms"] else "") + ".")
    missing = []
    if len(chosen) < 2:
        missing.append("retraining noise across seeds: with one retrained seed the verdicts are conditional on "
                       "that run")
    if "random" in cfg["counterfactual_arms"] and cfg["counterfactual_random_draws"] < 5:
        missing.append(f"where the top removal ranks among random ones: {cfg['counterfactual_random_draws']} random "
                       "draw(s) per seed (a rank needs at least 5; with one, the interval resamples L's held-out test "
                       "samples only and understates how much another draw could move)")
    if not {"own", "other"} <= set(cfg["counterfactual_arms"]):
        missing.append("own-language against cross-lingual removals (question b, CF2)")
    if not cfg["counterfactual_zero_shot"]:
        missing.append("which fine-tuning language a zero-shot language needs most (question c, CF3)")
    if cfg["datamodel_subsets"] < 3:
        missing.append("the linear datamodeling score over random halves (CF4)")
    if len(cfg["counterfactual_fractions"]) < 2:
        missing.append("how the effect grows with the number removed (one fraction)")
    if missing:
        text += "\n\n**What it does not measure:** " + "; ".join(missing) + "."
    if len(done):
        rate = float((done["seconds"] / (done["n_kept"] * 1.0)).mean())  # seconds per kept training sample
        text += (f"\n\nEach retraining took {done['seconds'].min():.0f}-{done['seconds'].max():.0f} s here "
                 f"({done['seconds'].sum():.0f} s in all, {int(done['threads'].iloc[0])} torch thread(s); the "
                 "Reproducibility page has the machine).")
        try:
            full = {**cfg, **{k: v for k, v in load_profile(FULL_PROFILE)["parameters"].items() if k in cfg}}
        except ConfigError:  # no such profile: no estimate
            full = None
        if full is not None and full != cfg:
            tested = set(scores.test_ids["language"])
            full["counterfactual_languages"] = [lang for lang in full["counterfactual_languages"] if lang in tested]
            per_seed = {r.rows for r in plan_removals(scores, full, chosen[0].run.seed)}
            n_seeds = full["counterfactual_seeds"]
            kept = n_seeds * sum(n_train - len(rows) for rows in per_seed)
            text += (f" The full design (profile `{FULL_PROFILE}`: fractions "
                     f"{', '.join(full['counterfactual_fractions'])}, arms {', '.join(full['counterfactual_arms'])}, "
                     f"{full['counterfactual_random_draws']} random draws, {n_seeds} seeds, "
                     f"{'the zero-shot question, ' if full['counterfactual_zero_shot'] else ''}"
                     f"{full['datamodel_subsets']} random halves per seed) needs {n_seeds * len(per_seed)} "
                     f"retrainings: about {rate * kept / 60:.0f} min at this rate (an estimate, not a measurement), on "
                     "top of the study itself and of its further seeds' fine-tuning and TracIn. " + _how_to(""))
    return text
