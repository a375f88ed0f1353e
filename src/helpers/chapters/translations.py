"""Reinforcing or complementary? Are the cross-lingual proponents translations of the test language's own?

In a run with parallel training (every fine-tuning language trains on the same verses), for each test sample of a
fine-tuning language none of whose translations is trained on (as in the paper): the fraction of its cross-lingual
proponents (top-k by the paper's TracIn sum, other languages) that are translations (same verse) of one of its
own-language proponents, pooled over test samples (the reinforcing cross-lingual proponents over all of them, as
the paper's Table 4 counts). A fraction above chance means other languages *reinforce* what the test language's
own data teaches; the rest *complements* it. Chance: the probability that a random training sample of that other
language *with the test sample's label* is such a translation (the top-k follows the label): the expectation under a
permutation of the verse ids within language x label. TR1 is judged on the pooled reinforcing share minus that
chance. The run also plants the translations of the other test verses (``planted_share``) in the other languages'
training data: on those test samples, how often the test sample's own translation ranks in its top-k (TR2, a check).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import hypergeom

from .. import analysis, claims
from ..flow.stage import Stage
from . import Result

STAGE = Stage("translations", "12_translations.ipynb", "Reinforcing or complementary", reads=(("tracin", "parallel"),),
              params=("top_k", "influence_kind", "confidence"),
              modules=("chapters/translations", "analysis", "claims"))


def sample_rows(scores, k: int, kind: str, run: str) -> pd.DataFrame:
    """Per test sample of a fine-tuning language: how many translations of it are trained on (``translations``:
    0 for the samples TR1 is measured on), the reinforcing fraction, its label-matched chance and their difference
    (``excess``), and whether a translation of the test sample itself is in the top-k (with its chance).

    Reinforcing: among the cross-lingual proponents, the share that translate one of the test sample's own-language
    proponents. The test verse's own translations (planted in the other languages' training data for TR2) are left
    out of it: they can never translate an own-language proponent, since the test language's copy of that verse is
    the test sample. Undefined (NaN) without an own-language proponent or a cross-lingual one. Chance: for each
    cross-lingual proponent, the share of its language's training samples *with the test sample's label* that
    translate an own-language proponent (the top-k follows the label, so a chance over every sample would be far
    too low)."""
    top = analysis.top_rows(analysis.paper_sum(scores), k, kind)
    train, test = scores.train_ids, scores.test_ids
    t_lang, t_pair, t_label = (train["language"].to_numpy(), train["pair_id"].to_numpy(),
                               train["label"].to_numpy())
    n_train = len(train)
    rows = []
    for j, (lang, pair, label) in enumerate(zip(test["language"], test["pair_id"], test["label"])):
        if lang not in set(t_lang):
            continue
        rows_j = top[:, j]
        own_pairs = set(t_pair[rows_j][t_lang[rows_j] == lang])
        cross = [r for r in rows_j if t_lang[r] != lang and t_pair[r] != pair]
        if own_pairs and cross:
            reinforcing = float(np.mean([t_pair[r] in own_pairs for r in cross]))
            chance = float(np.mean([np.isin(t_pair[(t_lang == t_lang[r]) & (t_label == label)], list(own_pairs))
                                    .mean() for r in cross]))
        else:
            reinforcing = chance = np.nan
        translations = int(np.sum(t_pair == pair))  # training samples that are translations of this test sample
        in_top = float(np.any(t_pair[rows_j] == pair)) if translations else np.nan
        top_chance = float(1 - hypergeom(n_train, translations, k).pmf(0)) if translations else np.nan
        rows.append({"run": run, "test_row": j, "test_language": lang, "test_pair_id": pair,
                     "translations": translations, "n_own": int(np.sum(t_lang[rows_j] == lang)), "n_cross": len(cross),
                     "reinforcing": reinforcing, "chance": chance, "excess": reinforcing - chance,
                     "translation_in_top": in_top, "translation_chance": top_chance})
    return pd.DataFrame(rows)


def compute(runs: list, cfg: dict[str, Any]) -> Result:
    k, kind = cfg["top_k"], cfg["influence_kind"]
    statement = ("Training samples from other languages can reinforce the knowledge acquired from the test "
                 "language's own data: cross-lingual proponents are translations of the test language's own "
                 "proponents more often than chance (the paper reports over half for XNLI, far less for PAWS-X).")
    stat = f"share of cross-lingual top-{k} {kind} that translate an own-language one"
    statement2 = ("A test sample draws on its own translation: when translations of a test verse are in training, "
                  "one ranks in its top-k more often than chance.")
    stat2 = f"share of test samples with a translation of themselves in their top-{k}"
    if not runs:
        why = "the study has no run with parallel_train and test_translations_in_train (role 'parallel')"
        return Result(claims=[claims.not_tested("TR1", STAGE.name, statement, claims.SUMMARY, stat, why),
                              claims.not_tested("TR2", STAGE.name, statement2, claims.METHOD, stat2, why)])
    table = pd.concat([sample_rows(analysis.load_scores(r["tracin"]), k, kind, r.name) for r in runs],
                      ignore_index=True)
    columns = ["n_own", "n_cross", "reinforcing", "chance", "translation_in_top", "translation_chance"]
    per_language = (table.assign(planted=table["translations"] > 0)
                    .groupby(["planted", "test_language"], sort=False)[columns].mean().reset_index()
                    .sort_values("planted", kind="stable", ignore_index=True))  # TR1's samples first
    unplanted, planted = table[table["translations"] == 0], table[table["translations"] > 0]
    result = Result(tables={"samples": table, "per_language": per_language})
    conf = cfg["confidence"]
    if len(unplanted):
        defined = unplanted["excess"].notna()
        pooled = unplanted[defined]
        chance = float(np.average(pooled["chance"], weights=pooled["n_cross"])) if len(pooled) else np.nan
        reinforcing = float(np.average(pooled["reinforcing"], weights=pooled["n_cross"])) if len(pooled) else np.nan
        tr1 = claims.claim(
            "TR1", STAGE.name, statement, claims.SUMMARY, stat + " minus its label-matched chance, pooled",
            claims.interval(unplanted, "excess", conf, weight="n_cross"), 0.0,
            f"label-matched chance (pooled {chance:.1%}: a random same-label sample of the same languages, the "
            "expectation under a permutation of verse ids within language x label)", "above", confidence=conf,
            note=f"Measured on the {len(unplanted)} test samples none of whose translations is trained on (as in the "
                 f"paper); defined for {int(defined.sum())} of them (the others have no own-language or no "
                 f"cross-lingual proponent), pooled over their {int(pooled['n_cross'].sum())} cross-lingual "
                 f"proponents. Pooled reinforcing share {reinforcing:.1%}.")
    else:
        tr1 = claims.not_tested("TR1", STAGE.name, statement, claims.SUMMARY, stat,
                                "every test sample of the parallel run has translations planted in training "
                                "(planted_share 1): TR1 needs test samples none of whose translations is trained on")
    if len(planted):
        tr2 = claims.claim("TR2", STAGE.name, statement2, claims.METHOD, stat2,
                           claims.interval(planted, "translation_in_top", conf),
                           float(planted["translation_chance"].mean()), "chance (k random training samples)", "above",
                           confidence=conf, note=f"On the {len(planted)} test samples whose translations are planted "
                                                 "in the other languages' training data.")
    else:
        tr2 = claims.not_tested("TR2", STAGE.name, statement2, claims.METHOD, stat2,
                                "no test sample of the parallel run has translations planted (planted_share 0)")
    result.claims = [tr1, tr2]
    return result
