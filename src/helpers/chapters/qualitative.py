"""Qualitative examples: a few test samples with their strongest proponents and opponents, text included.

Texts are read from the run's data stage (which read them from the installed data package); nothing is stored in
the repository. Shown at the first and the last checkpoint, from the study's first main run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .. import analysis, data
from ..flow.stage import Stage
from . import Result

STAGE = Stage("qualitative", "17_qualitative.ipynb", "Examples", reads=(("tracin", "first"), ("data", "first")),
              params=("examples_per_language", "influence_kind"), modules=("chapters/qualitative", "analysis"))

SHOWN = 3  # proponents and opponents per example and checkpoint


def compute(run, cfg: dict[str, Any]) -> Result:
    scores = analysis.load_scores(run["tracin"])
    train, test = data.load_splits(run["data"])
    texts = pd.concat([train, test]).set_index("uid")["text"]
    rng = np.random.default_rng(0)
    rows = []
    for lang, part in scores.test_ids.groupby("language", sort=False):
        chosen = rng.choice(part.index.to_numpy(), size=min(cfg["examples_per_language"], len(part)), replace=False)
        for j in sorted(chosen):
            for name in (scores.checkpoints[0], scores.checkpoints[-1]):
                values = analysis.matrix(scores, name)
                for kind in ("proponents", "opponents"):
                    for rank, i in enumerate(analysis.top_rows(values, SHOWN, kind)[:, j], 1):
                        t = scores.train_ids.iloc[i]
                        rows.append({"test_uid": scores.test_ids["uid"].iloc[j], "test_language": lang,
                                     "test_label": scores.test_ids["label_name"].iloc[j],
                                     "test_text": texts[scores.test_ids["uid"].iloc[j]], "checkpoint": name,
                                     "kind": kind, "rank": rank, "score": float(values[i, j]),
                                     "train_language": t["language"], "train_label": t["label_name"],
                                     "same_verse": t["pair_id"] == scores.test_ids["pair_id"].iloc[j],
                                     "train_text": texts[t["uid"]]})
    return Result(tables={"examples": pd.DataFrame(rows)})
