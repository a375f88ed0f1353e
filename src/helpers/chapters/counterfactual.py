"""Do the influential samples matter? A counterfactual check of TracIn's attributions (the statistics and prose; the
removals and retrainings are the retraining stage's, :mod:`helpers.compute.retrain`).

Every other chapter assumes that TracIn's most influential training samples are the ones the model relies on.
Training-data attribution methods are known to predict poorly what happens when data is removed, so this chapter
tests it on the study's own runs: it removes training samples, fine-tunes again from the same initialisation, seed
and data order (:func:`helpers.compute.retrain.retrain`; with nothing removed that reproduces the original checkpoints
exactly on the same machine and number of threads, which the tests check) and measures, test sample by test
sample, how the loss and the accuracy change against the original run (retrained minus original: paired, so the
test samples' own difficulty cancels).

For a test language L and a number N of training samples (``counterfactual_fractions`` of the training set), the
removals (*arms*, ``counterfactual_arms``):

* ``top``: the N training samples with the highest TracIn score summed over L's test samples. To first order TracIn
  predicts that removing a set S raises test sample j's loss by the sum of score(i, j) over i in S, so this is the
  set it predicts to hurt L most;
* ``random``: N random training samples with as many from each language as ``top`` has (matched language mix);
* ``own`` / ``other``: the top N among L's own-language training samples only / among the other languages' only;
* ``without`` (``counterfactual_zero_shot``): all of one fine-tuning language's samples, once per language;
* ``half`` (``datamodel_subsets``, the first retrained run only): random halves of the training set.

Claims: CF1, top hurts L more than random (the method works here); CF2, removing L's top cross-lingual samples hurts
L at least as much as removing its top same-language ones (reliance on other languages, tested causally); CF3-<Z>,
for a zero-shot language Z, removing the fine-tuning language the share analysis ranks first hurts Z more than
removing another one; CF4, the linear datamodeling score (per test sample, the rank correlation over random halves
between TracIn's predicted and the actual change of its loss, averaged).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .. import analysis, claims, data
from ..config import ConfigError
from ..flow.stage import Stage
from ..removals import fraction_size, plan_removals
from ..study import load_profile
from . import Result

STAGE = Stage("counterfactual", "18_counterfactual.ipynb", "Do the influential samples matter?",
              reads=(("retrain", "study"), ("tracin", "main")),
              params=("counterfactual_languages", "counterfactual_fractions", "counterfactual_arms",
                      "counterfactual_random_draws", "counterfactual_seeds", "counterfactual_zero_shot",
                      "datamodel_subsets", "confidence"),
              files=("params/counterfactual.yaml",))

RANKED_ARMS = ("top", "random", "own", "other")
#: The profile with the full design (several fractions and seeds, every arm, the zero-shot question, datamodeling).
FULL_PROFILE = "counterfactual"
_KEYS = ["run", "target", "fraction", "arm", "test_row", "test_language"]


# ----------------------------------------------------------------------------------------------------------------
# From outcomes to tables and claims


def ranked_outcomes(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The ranked arms on their target language's own test samples, random draws averaged per test sample."""
    part = outcomes[outcomes["arm"].isin(RANKED_ARMS) & (outcomes["test_language"] == outcomes["target"])]
    return (part.groupby(_KEYS, sort=False)[["n_removed", "d_loss", "d_correct", "predicted"]].mean()
            .reset_index())


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
    result = Result(tables={"outcomes": outcomes, "retrainings": log, "arms": arm_summary(ranked, opts)})
    seeds = f"{len(chosen)} of the main run's {len(runs)} seeds"

    for fraction in cfg["counterfactual_fractions"]:
        stat = (f"removing the top {fraction} minus {fraction} random samples (same language mix): change of L's "
                "test loss, per test sample")
        statement = ("TracIn's most influential samples matter more than random ones: removing a test language's "
                     "top samples (summed TracIn over its test samples) and fine-tuning again raises its test loss "
                     "more than removing as many random samples of the same languages.")
        frame = paired(ranked, "top", "random", fraction)
        if frame.empty:
            result.claims.append(claims.not_tested(f"CF1-{fraction}", STAGE.name, statement, claims.METHOD, stat,
                                                   _how_to("Needs the arms 'top' and 'random'.")))
        else:
            result.claims.append(claims.claim(
                f"CF1-{fraction}", STAGE.name, statement, claims.METHOD, stat, claims.interval(frame, "value", **opts),
                0.0, "no difference", "above", percent=False, **opts,
                note=f"L: {', '.join(dict.fromkeys(frame['target']))}; {seeds}; "
                     f"{cfg['counterfactual_random_draws']} random draw(s)."))
        statement = ("Models rely on data from multiple languages during fine-tuning, tested causally: removing a "
                     "test language's top cross-lingual samples hurts it at least as much as removing its top "
                     "same-language ones.")
        stat = (f"removing the top {fraction} of other languages' samples minus the top {fraction} of L's own: "
                "change of L's test loss, per test sample")
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
    first = (" With one retraining per arm (one seed, one random draw) the interval covers L's test samples only, not "
             "how the result would move with another seed or draw: a first check, not a settled one."
             if outcomes["run"].nunique() < 2 or random_draws < 2 else "")
    if passed.all():
        text = ("**TracIn passes the removal test here:** removing its top samples for the test language raised that "
                "language's test loss more than removing as many random samples of the same languages." + first)
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


def _retrainings(removals: list) -> int:
    return len({r.rows for r in removals})


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
        missing.append("retraining noise across seeds: the intervals resample L's test samples only, with one "
                       "retraining per arm, so they understate how much a result could move with another seed or "
                       "another random draw")
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
            per_seed = plan_removals(scores, {**full, "datamodel_subsets": 0}, chosen[0].run.seed, first=False)
            halves = plan_removals(scores, {**full, "counterfactual_languages": [], "counterfactual_zero_shot": False},
                                   chosen[0].run.seed, first=True)
            n_seeds = min(full["counterfactual_seeds"], len(runs))
            kept = (n_seeds * sum(n_train - len(r) for r in {r.rows for r in per_seed})
                    + sum(n_train - len(r.rows) for r in halves))
            count = n_seeds * _retrainings(per_seed) + len(halves)
            text += (f" The full design (profile `{FULL_PROFILE}`: fractions "
                     f"{', '.join(full['counterfactual_fractions'])}, arms {', '.join(full['counterfactual_arms'])}, "
                     f"{n_seeds} seeds, {'the zero-shot question, ' if full['counterfactual_zero_shot'] else ''}"
                     f"{full['datamodel_subsets']} random halves) needs {count} retrainings: about "
                     f"{rate * kept / 60:.0f} min at this rate, on top of the study itself. " + _how_to(""))
    return text
