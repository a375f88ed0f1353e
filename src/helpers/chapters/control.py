"""The positive control: can the method see own-language reliance where it must exist, and how much of it?

In a control run one fine-tuning language's labels follow a different mapping (a cyclic shift of the classes) in all
of its test samples and in a share ``permuted_share`` (the *dose*) of its training samples, so its test samples can
only be learned from those of its own training samples. If TracIn's rankings reflect what the model relies on:

* PC1: at the highest dose, that language's own share of its top-k exceeds the language-blind value;
* PC2: the other languages' own shares stay where they are in the main run of the same seed (an equivalence test,
  per test sample paired across the two runs, margin :data:`OTHERS_MARGIN`). Their own share is that of their top-k
  *among the languages the control left alone* (the permuted language's samples left out of the ranking): the
  shifted samples now contradict the other languages' labels, so a method that sees it pushes them out of the
  others' top-k, which by itself would raise every other language's plain own share;
* the dose-response: the permuted language's own share at each dose, its rise over the main run (dose 0: the main
  run, nothing shifted) and the smallest rise this design detects (:func:`helpers.claims.detectable`, power
  :data:`POWER`), which says how small an own-language reliance the other chapters could have missed.

The default book has one dose (1.0) on one seed; ``params/control.yaml`` adds doses 0.25 and 0.5 and seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .. import analysis, claims, data
from ..compute import finetune
from ..flow.stage import Stage
from . import Result

STAGE = Stage("control", "15_control.ipynb", "Positive control",
              reads=(("tracin", "control"), ("finetune", "control"), ("tracin", "main")),
              params=("top_k", "influence_kind", "confidence"),
              modules=("chapters/control", "analysis", "claims"))

#: PC2's equivalence margin, in own-share units: one sample of the default top-20.
OTHERS_MARGIN = 0.05
#: The power at which the dose table states the smallest detectable rise.
POWER = 0.8


def _samples(runs: list, k: int, kind: str, setting: str, lang: str) -> pd.DataFrame:
    """Per test sample of each run: its shares (:func:`helpers.analysis.sample_table`), setting, seed, dose and
    ``own_rest``, its own share of the top-k among the training samples not in the permuted language ``lang`` (NaN
    for ``lang``'s test samples), and ``permuted``, that language's share of its top-k."""
    parts = []
    for run in runs:
        dose = float(run.params["permuted_share"]) if setting == "control" else 0.0
        scores = analysis.load_scores(run["tracin"])
        table = analysis.sample_table(scores, k, kind, run=run.name)
        left_out = (scores.train_ids["language"] == lang).to_numpy()[:, None]
        values = np.where(left_out, -np.inf if kind == "proponents" else np.inf, analysis.paper_sum(scores))
        rest = analysis.sample_table(scores, k, kind, values, run=run.name)
        own_rest = rest["own"].where(table["test_language"] != lang)
        parts.append(table.assign(setting=setting, seed=run.params["seed"], dose=dose, own_rest=own_rest,
                                  permuted=table[f"share_{lang}"]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def paired_change(control: pd.DataFrame, main: pd.DataFrame) -> pd.DataFrame:
    """Per test sample of each control run: its own share minus the same test sample's in the main run of the same
    seed (a seed draws the same verses in both; ``change_own``), the same for ``own_rest`` and ``permuted``
    (``change_own_rest``, ``change_permuted``), with the control run as the unit. Empty when none pairs."""
    if control.empty or main.empty:
        return pd.DataFrame()
    keys = ["seed", "test_uid"]
    columns = ["own", "own_rest", "permuted"]
    both = control.merge(main[[*keys, *columns]], on=keys, suffixes=("", "_main"), validate="many_to_one")
    return both.assign(**{f"change_{c}": both[c] - both[f"{c}_main"] for c in columns})


def _accuracy(control: list) -> pd.DataFrame:
    """The control runs' last-epoch test accuracy per language and dose (mean over seeds)."""
    parts = []
    for run in control:
        history = finetune.load(run["finetune"]).history
        last = history[history["epoch"] == history["epoch"].max()]
        parts.append(last[["language", "accuracy"]].assign(dose=float(run.params["permuted_share"])))
    return pd.concat(parts).groupby(["dose", "language"], sort=True)["accuracy"].mean().reset_index()


def dose_response(control: pd.DataFrame, main: pd.DataFrame, paired: pd.DataFrame, lang: str,
                  confidence: float) -> pd.DataFrame:
    """One row per dose (0: the main run): the permuted language's own share with its interval, its rise over the
    main run of the same seed (paired per test sample) with its interval, the smallest rise the design detects at
    that dose (:data:`POWER`) and whether the rise was detected (its interval above 0)."""
    rows = []
    arms = [(0.0, main)] if not main.empty else []
    arms += [(dose, control[control["dose"] == dose]) for dose in sorted(set(control["dose"]))]
    for dose, arm in arms:
        own = claims.interval(arm[arm["test_language"] == lang], "own", confidence)
        row = {"dose": dose, "own": own.value, "low": own.low, "high": own.high, "runs": own.runs,
               "rise": float("nan"), "rise_low": float("nan"), "rise_high": float("nan"),
               "detectable": float("nan"), "detected": False}
        if dose > 0 and not paired.empty:
            part = paired[(paired["dose"] == dose) & (paired["test_language"] == lang)]
            rise = claims.interval(part, "change_own", confidence)
            row.update(rise=rise.value, rise_low=rise.low, rise_high=rise.high,
                       detectable=claims.detectable(rise, POWER, confidence), detected=bool(rise.low > 0))
        rows.append(row)
    return pd.DataFrame(rows)


def compute(control: list, main: list, cfg: dict[str, Any]) -> Result:
    k, kind, conf = cfg["top_k"], cfg["influence_kind"], cfg["confidence"]
    statement1 = ("Positive control: when a language's labels can only be learned from its own data, its own share "
                  "of the top-k exceeds the language-blind value.")
    statement2 = ("Positive control: the other fine-tuning languages' own shares stay where they are in the main run "
                  "(the method does not move what the control did not change).")
    stat = f"own-language share of the permuted language's top-{k} {kind}"
    if not control:
        why = "the study has no control run (role 'control': permuted_language set)"
        return Result(claims=[claims.not_tested("PC1", STAGE.name, statement1, claims.METHOD, stat, why),
                              claims.not_tested("PC2", STAGE.name, statement2, claims.METHOD, "", why)])
    languages = sorted({r.params["permuted_language"] for r in control})
    if len(languages) > 1:
        raise ValueError(f"the control runs permute different languages {languages}: the control chapter reads one "
                         "permuted_language per study")
    lang, model = languages[0], control[0].params["model"]
    name = data.LANGUAGES[lang].name
    ctrl = _samples(control, k, kind, "control", lang)
    ref = _samples([r for r in main if r.params["model"] == model], k, kind, "main", lang)
    paired = paired_change(ctrl, ref)
    blind = analysis.language_blind(analysis.load_scores(control[0]["tracin"]))
    top = ctrl["dose"].max()
    at_top = ctrl[ctrl["dose"] == top]
    rows = []
    for (setting, test_language), part in pd.concat([at_top, ref]).groupby(["setting", "test_language"], sort=False):
        if part["own"].notna().any():
            value, low, high = claims.interval(part, "own", conf)
            rows.append({"setting": setting, "test_language": test_language, "own": value, "low": low, "high": high,
                         "language_blind": float(blind[test_language])})
    doses = dose_response(ctrl, ref, paired, lang, conf)
    accuracy = _accuracy(control)
    result = Result(tables={"own_shares": pd.DataFrame(rows), "doses": doses, "accuracy": accuracy})
    top_accuracy = accuracy[(accuracy["dose"] == top) & (accuracy["language"] == lang)]["accuracy"]
    detected = doses.loc[doses["detected"], "dose"]
    at = doses[doses["dose"] == top].iloc[0]
    smallest = f"{detected.min():.0%}" if len(detected) else "none"
    tested = ", ".join(f"{d:.0%}" for d in doses["dose"] if d > 0)
    note = (f"Strength of the control: {top:.0%} of {name}'s {_n_train(control[0], lang)} training samples shifted, "
            f"{control[0].params['epochs']} epochs; its test accuracy in the control run: "
            f"{top_accuracy.mean() if len(top_accuracy) else float('nan'):.0%}. Rise of its own share over the main "
            f"run: {_pct(at['rise'])} (interval {_pct(at['rise_low'])} to {_pct(at['rise_high'])}); this design "
            f"detects a rise of {_pct(at['detectable'], sign=False)} or more with {POWER:.0%} power. Doses tested: "
            f"{tested}; the smallest whose rise was detected: {smallest}.")
    result.claims = [claims.claim(
        "PC1", STAGE.name, statement1, claims.METHOD, f"{name} (labels shifted): {stat}",
        claims.interval(ctrl[(ctrl["dose"] == top) & (ctrl["test_language"] == lang)], "own", conf),
        float(blind[lang]), "a language-blind ranking", "above", confidence=conf, note=note)]
    others = paired[(paired["dose"] == top) & (paired["test_language"] != lang)] if not paired.empty else paired
    if others.empty or others["change_own_rest"].isna().all():
        why = (f"the control runs' test samples are not those of a main run of the same seed and encoder ({model}; "
               f"seeds: main {sorted(set(ref.get('seed', [])))}, control {sorted(set(ctrl['seed']))})")
        result.claims.append(claims.not_tested("PC2", STAGE.name, statement2, claims.METHOD, "", why))
    else:
        result.claims.append(claims.claim(
            "PC2", STAGE.name, statement2, claims.METHOD,
            f"the other languages' own share of their top-{k} {kind} outside {name}: control run ({top:.0%} of "
            f"{name} shifted) minus the main run of the same seed, per test sample",
            claims.interval(others, "change_own_rest", conf), 0.0, "no change", "equal", margin=OTHERS_MARGIN,
            confidence=conf,
            note=(f"Equivalence margin ±{OTHERS_MARGIN:.0%}: one sample of the default top-20. {name}'s share of the "
                  f"other languages' top-{k} moved by {_pct(others['change_permuted'].mean())} "
                  "(its shifted samples now contradict their labels).")))
    return result


def _pct(x: float, sign: bool = True) -> str:
    return "n/a" if pd.isna(x) else f"{x:+.1%}" if sign else f"{x:.1%}"


def _n_train(run, lang: str) -> int:
    return int((analysis.load_scores(run["tracin"]).train_ids["language"] == lang).sum())
