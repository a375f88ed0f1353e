"""How does the reliance on other languages change through fine-tuning?

For every checkpoint, the own-language share of each test sample's top-k under two views: the checkpoint's own
TracIn contribution (what the model relied on at that point of training) and the cumulative TracIn up to it (the
paper's sum, truncated). Changes are measured per test sample (paired) and bootstrapped.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .. import analysis, claims
from ..flow.stage import Stage
from . import Result

STAGE = Stage("dynamics", "11_dynamics.ipynb", "Dynamics", reads=(("tracin", "main"),),
              params=("top_k", "influence_kind", "n_bootstrap", "confidence"),
              modules=("chapters/dynamics", "analysis", "claims"))


def per_checkpoint(runs: list, k: int, kind: str) -> pd.DataFrame:
    """One row per (run, test sample, checkpoint, view) of the fine-tuned test languages: ``own`` share."""
    parts = []
    for run in runs:
        scores = analysis.load_scores(run["tracin"])
        for i, name in enumerate(scores.checkpoints):
            for view, cumulative in (("own checkpoint", False), ("cumulative", True)):
                table = analysis.sample_table(scores, k, kind, analysis.matrix(scores, name, cumulative), run.name)
                table = table[table["own"].notna()]
                parts.append(table[["run", "test_row", "test_language", "own"]].assign(
                    checkpoint=name, step=i + 1, view=view))
    return pd.concat(parts, ignore_index=True)


def change(frame: pd.DataFrame, view: str, start: int, end: int) -> pd.DataFrame:
    """Per test sample: own share at checkpoint ``end`` minus at ``start`` (1-based), in ``view``."""
    wide = frame[frame["view"] == view].pivot_table(index=["run", "test_row", "test_language"], columns="step",
                                                    values="own").reset_index()
    return wide.assign(delta=wide[end] - wide[start])


def compute(runs: list, cfg: dict[str, Any]) -> Result:
    k, kind = cfg["top_k"], cfg["influence_kind"]
    opts = dict(n_boot=cfg["n_bootstrap"], confidence=cfg["confidence"])
    frame = per_checkpoint(runs, k, kind)
    steps = sorted(frame["step"].unique())
    rows = []
    for (view, step, name), part in frame.groupby(["view", "step", "checkpoint"], sort=False):
        value, low, high = claims.interval(part, "own", **opts)
        rows.append({"view": view, "step": step, "checkpoint": name, "own": value, "low": low, "high": high})
    summary = pd.DataFrame(rows)
    result = Result(tables={"per_checkpoint": summary})
    checks = [  # (id, statement, source, statistic, checkpoints needed, start checkpoint)
        ("DY1", "Reliance on other languages' data increases as fine-tuning progresses (the own-language share of "
         "the top-k falls).", claims.ABSTRACT, "first", 2, steps[0]),
        ("DY2", "Languages rely less on their own data after epoch 2.", claims.SUMMARY, "2", 3, 2)]
    for claim_id, statement, source, start_name, needed, start in checks:
        stat = (f"change of the own-language share of the top-{k}, checkpoint {start_name} to the last (each "
                "checkpoint's own scores)")
        if len(steps) < needed:
            result.claims.append(claims.not_tested(claim_id, STAGE.name, statement, source, stat,
                                                   f"needs at least {needed} checkpoints"))
        else:
            delta = change(frame, "own checkpoint", start, steps[-1])
            result.claims.append(claims.claim(claim_id, STAGE.name, statement, source, stat,
                                              claims.interval(delta, "delta", **opts), 0.0, "no change", "below"))
    return result
