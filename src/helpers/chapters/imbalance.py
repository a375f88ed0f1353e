"""Data imbalance: does an over-represented language gain influence, and does it rely more on its own data?

Each imbalance run gives one fine-tuning language ``imbalance_factor`` times the data of the others; it is compared
with the main run of the same seed (balanced). For every test language: the over-represented language's share of
the top-k in both runs, next to its share of the training data (what a language-blind ranking would give), over the
total TracIn and per checkpoint.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .. import analysis, claims, data
from ..flow.stage import Stage
from . import Result

STAGE = Stage("imbalance", "14_imbalance.ipynb", "Data imbalance", reads=(("tracin", "main"), ("tracin", "imbalance")),
              params=("top_k", "influence_kind", "confidence"),
              modules=("chapters/imbalance", "analysis", "claims"))


def _tables(run, k: int, kind: str, language: str, setting: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per test sample: the share of ``language`` in the top-k (total scores), and per checkpoint."""
    scores = analysis.load_scores(run["tracin"])
    data_share = float(analysis.language_blind(scores)[language])
    total = analysis.sample_table(scores, k, kind, run=run.name).assign(setting=setting, data_share=data_share)
    total["share"] = total[f"share_{language}"]
    parts = []
    for i, name in enumerate(scores.checkpoints):
        t = analysis.sample_table(scores, k, kind, analysis.matrix(scores, name), run.name)
        parts.append(t.assign(setting=setting, checkpoint=name, step=i + 1, share=t[f"share_{language}"]))
    return total, pd.concat(parts, ignore_index=True)


def compute(main: list, imbalanced: list, cfg: dict[str, Any]) -> Result:
    k, kind = cfg["top_k"], cfg["influence_kind"]
    statement1 = "An over-represented language gains influence: its share of other languages' top-k grows."
    statement2 = "A language relies more on its own data when it is over-represented."
    if not imbalanced:
        why = "the study has no imbalance run (role 'imbalance': imbalance_language set)"
        return Result(claims=[claims.not_tested("IM1", STAGE.name, statement1, claims.SUMMARY, "", why),
                              claims.not_tested("IM2", STAGE.name, statement2, claims.SUMMARY, "", why)])
    by_seed = {r.params["seed"]: r for r in main}
    totals, steps, result = [], [], Result()
    for run in imbalanced:
        lang, factor = run.params["imbalance_language"], run.params["imbalance_factor"]
        base = by_seed.get(run.params["seed"], main[0])
        for r, setting in ((base, "balanced"), (run, f"{factor}x")):
            t, s = _tables(r, k, kind, lang, setting)
            totals.append(t.assign(language=lang, factor=factor, seed=run.params["seed"]))
            steps.append(s.assign(language=lang, factor=factor))
    totals, steps = pd.concat(totals, ignore_index=True), pd.concat(steps, ignore_index=True)
    summary = (totals.groupby(["factor", "setting", "test_language"], sort=False)
               .agg(share=("share", "mean"), data_share=("data_share", "first")).reset_index())
    per_checkpoint = (steps.groupby(["factor", "setting", "step", "checkpoint"], sort=False)["share"].mean()
                      .reset_index())
    result.tables = {"samples": totals, "summary": summary, "per_checkpoint": per_checkpoint}
    conf = cfg["confidence"]
    totals = totals.assign(excess=totals["share"] - totals["data_share"])
    for factor in sorted(set(totals["factor"])):
        part = totals[totals["factor"] == factor]
        lang = part["language"].iloc[0]
        name = data.LANGUAGES[lang].name
        balanced = part[part["setting"] == "balanced"]
        skewed = part[part["setting"] != "balanced"]
        paired = paired_change(skewed, balanced)
        if paired.empty:
            why = (f"the imbalanced run's test samples are not those of a balanced main run of the same seed "
                   f"(seeds: main {sorted(by_seed)}, imbalanced {sorted(set(skewed['seed']))})")
            result.claims += [claims.not_tested(f"IM{i}-{factor}x", STAGE.name, s_, claims.SUMMARY, "", why)
                              for i, s_ in ((1, statement1), (2, statement2))]
            continue
        shares = (f"Its share of the training data went from {balanced['data_share'].iloc[0]:.0%} to "
                  f"{skewed['data_share'].iloc[0]:.0%}: a language-blind ranking's share of its top-k moves by as "
                  "much, so the claims are judged on the share beyond the data share (the excess).")
        result.claims += [
            claims.claim(f"IM1-{factor}x", STAGE.name, statement1, claims.SUMMARY,
                         f"{name} at {factor}x the data: change of its excess share (top-{k} share minus data "
                         "share) in the other test languages' top-k, imbalanced minus balanced run of the same seed",
                         claims.interval(paired[paired["test_language"] != lang], "change", conf), 0.0,
                         "no change beyond the data share", "above", confidence=conf, note=shares),
            claims.claim(f"IM2-{factor}x", STAGE.name, statement2, claims.SUMMARY,
                         f"{name} at {factor}x the data: change of its excess own-language share of its own top-{k}",
                         claims.interval(paired[paired["test_language"] == lang], "change", conf), 0.0,
                         "no change beyond the data share", "above", confidence=conf, note=shares),
        ]
    return result


def paired_change(skewed: pd.DataFrame, balanced: pd.DataFrame) -> pd.DataFrame:
    """Per test sample of the imbalanced run: its excess share minus the same test sample's in the balanced run of
    the same seed (a seed draws the same test verses in both), with the imbalanced run as the unit."""
    keys = ["seed", "test_uid"]
    both = skewed.merge(balanced[[*keys, "excess"]], on=keys, suffixes=("", "_balanced"), validate="one_to_one")
    return both.assign(change=both["excess"] - both["excess_balanced"])
