"""The attribution question, decided by evidence: does the answer depend on which gradients TracIn compares?

One full-model TracIn pass over the study's first run (``tracin_groups`` stage) yields the scores of several parameter
subsets (the whole model, the last encoder layers, the classification head, the word embeddings), each with the dot
product and the cosine. For each: the own-language share of the top-k (with its interval), the share of the top-k
that has the test sample's label, and how well its ranking agrees with the reference subset's (the first of
``attribution_groups``, the book's default): Spearman correlation per test sample and the overlap of the top-k.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .. import analysis, claims
from ..flow.stage import Stage
from . import Result

STAGE = Stage("attribution", "16_attribution.ipynb", "Which gradients?", reads=(("tracin_groups", "first"),),
              params=("top_k", "influence_kind", "confidence"),
              modules=("chapters/attribution", "analysis", "claims"))


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each test column of two (n_train, n_test) score matrices."""
    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    return (ra * rb).sum(0) / np.sqrt((ra ** 2).sum(0) * (rb ** 2).sum(0))


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int, kind: str) -> np.ndarray:
    """Per test column: the fraction of ``a``'s top-k that is also in ``b``'s top-k."""
    ta, tb = analysis.top_rows(a, k, kind), analysis.top_rows(b, k, kind)
    return np.array([len(set(ta[:, j]) & set(tb[:, j])) / k for j in range(a.shape[1])])


def compute(run, cfg: dict[str, Any]) -> Result:
    k, kind = cfg["top_k"], cfg["influence_kind"]
    opts = dict(confidence=cfg["confidence"])
    scores = analysis.load_scores(run["tracin_groups"])
    names = list(scores.groups)
    reference = scores.group(names[0], "dot")
    blind = analysis.language_blind(scores)
    n_train = len(scores.train_ids)
    rows, samples = [], []
    for name in names:
        for similarity in ("dot", "cosine"):
            sub = scores.group(name, similarity)
            table = analysis.sample_table(sub, k, kind, run=run.name)
            table["spearman"] = spearman_columns(sub.total, reference.total)
            table["overlap"] = top_k_overlap(sub.total, reference.total, k, kind)
            table = table.assign(group=name, similarity=similarity)
            samples.append(table)
            seen = table[table["own"].notna()]
            own = claims.interval(seen, "own", **opts)
            rows.append({"group": name, "similarity": similarity, "own": own.value, "low": own.low, "high": own.high,
                         "language_blind": float(seen["test_language"].map(blind).mean()),
                         "same_label": table["same_label"].mean(), "spearman_vs_reference": table["spearman"].mean(),
                         "top_k_overlap_vs_reference": table["overlap"].mean()})
    summary = pd.DataFrame(rows)
    samples = pd.concat(samples, ignore_index=True)
    result = Result(tables={"summary": summary, "samples": samples})

    def seen(group: str, similarity: str = "dot") -> pd.DataFrame:
        part = samples[(samples["group"] == group) & (samples["similarity"] == similarity)]
        return part[part["own"].notna()]

    blind_own = float(summary["language_blind"].iloc[0])
    for claim_id, group, statement in [
            ("AT1", "all", "Exact full-model TracIn (every parameter, dot product) prefers the test language's own "
                           "training data over a language-blind ranking."),
            ("AT2", "embeddings", "Word-embedding TracIn prefers the test language's own training data (it can only "
                                  "connect samples that share tokens).")]:
        stat = f"own-language share of the top-{k} under '{group}'"
        if group not in names:
            result.claims.append(claims.not_tested(claim_id, STAGE.name, statement, claims.METHOD, stat,
                                                   f"'{group}' is not in attribution_groups"))
        else:
            result.claims.append(claims.claim(claim_id, STAGE.name, statement, claims.METHOD, stat,
                                              claims.interval(seen(group), "own", **opts), blind_own,
                                              "a language-blind ranking", "above", **opts))
    statement = (f"The book's reference subset ({names[0]}) ranks training samples like exact full-model TracIn: "
                 "their top-k overlap more than chance.")
    stat = f"share of the full-model top-{k} also in the '{names[0]}' top-{k}"
    if "all" in names and names[0] != "all":
        part = samples[(samples["group"] == "all") & (samples["similarity"] == "dot")]
        per_label = scores.train_ids["label"].value_counts()
        chance = float(np.minimum(1.0, k / part["test_label"].map(per_label)).mean())
        result.claims.append(claims.claim("AT3", STAGE.name, statement, claims.METHOD, stat,
                                          claims.interval(part, "overlap", **opts), chance,
                                          f"label-matched chance (k / training samples of the test sample's label; "
                                          f"k / all {n_train} would be {k / n_train:.1%})", "above", **opts))
    else:
        result.claims.append(claims.not_tested("AT3", STAGE.name, statement, claims.METHOD, stat,
                                               "needs 'all' among attribution_groups, after the reference"))
    return result
