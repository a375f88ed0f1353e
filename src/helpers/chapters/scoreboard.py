"""The claims scoreboard: every claim of every chapter, with this study's value, interval and verdict, in three
sections: the paper's claims (:data:`helpers.claims.PRIMARY`, Holm-adjusted together: :func:`helpers.claims.adjust`),
the related work's, and the checks of the method, which never count as support for the paper.

Also the study's runs, with each run's accuracy, so a reader sees at a glance what the verdicts rest on.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import claims, data
from ..compute import finetune
from ..flow.stage import Stage, get

STAGE = Stage("scoreboard", "90_scoreboard.ipynb", "Claims scoreboard", reads=(("finetune", "all"),),
              params=("confidence",), reads_chapters=True)


#: The scoreboard's sections, in order (:func:`section` puts each claim in one).
SECTIONS = ("The paper's claims", "Related work", "Checks of the method")


def section(row: pd.Series) -> str:
    if bool(row["primary"]):
        return SECTIONS[0]
    return SECTIONS[1] if row["source"] == claims.RELATED else SECTIONS[2]


def board(ft1: claims.Claim, chapter_folders: dict[str, Path]) -> pd.DataFrame:
    """The learning check and every chapter's claims, Holm-adjusted over the paper's claims, each with its section
    (:data:`SECTIONS`), sorted by section (chapter order within)."""
    table = pd.concat([claims.table([ft1]).assign(page="02_finetune"), gather(chapter_folders)], ignore_index=True)
    table = claims.adjust(table)
    table["section"] = [section(row) for _, row in table.iterrows()]
    order = {name: i for i, name in enumerate(SECTIONS)}
    return table.sort_values("section", key=lambda col: col.map(order), kind="stable").reset_index(drop=True)


def gather(chapter_folders: dict[str, Path]) -> pd.DataFrame:
    """Every chapter's claims table, in chapter order, with a link to the chapter's page."""
    parts = []
    for stage, folder in chapter_folders.items():
        frame = claims.load(folder)
        if not frame.empty:
            parts.append(frame.assign(page=f"{Path(get(stage).notebook).stem}"))
    if not parts:
        return claims.table([])
    return pd.concat(parts, ignore_index=True)


def runs_table(runs: list) -> pd.DataFrame:
    """One row per run: what it varies, its mean test accuracy over fine-tuning and zero-shot languages."""
    rows = []
    for run in runs:
        out = finetune.load(run["finetune"])
        last = out.history[out.history["epoch"] == out.history["epoch"].max()]
        seen = last["language"].isin(run.params["fine_tune_languages"])
        rows.append({"run": run.name, "variant": run.run.variant, "seed": run.run.seed,
                     "accuracy (fine-tuned languages)": last.loc[seen, "accuracy"].mean(),
                     "accuracy (zero-shot languages)": last.loc[~seen, "accuracy"].mean()})
    return pd.DataFrame(rows).set_index("run")


def learning_claim(runs: list, confidence: float) -> claims.Claim:
    """FT1: the main run learns the task: test accuracy over the fine-tuning languages at the last epoch, against
    twice chance. Per-sample outcomes are rebuilt from each language's accuracy and size (a mean of 0/1 outcomes
    depends only on their counts); several seeds: a t-interval over the per-seed accuracies, one: over test samples
    (without verse ids: each its own cluster)."""
    rows = []
    for run in runs:
        history = finetune.load(run["finetune"]).history
        last = history[(history["epoch"] == history["epoch"].max())
                       & history["language"].isin(run.params["fine_tune_languages"])]
        for lang, acc, n in zip(last["language"], last["accuracy"], last["n"]):
            correct = int(round(acc * n))
            rows += [{"run": run.name, "test_language": lang, "correct": float(i < correct)} for i in range(int(n))]
    n_labels = len(data.LABELS[runs[0].params["label"]].names)
    chance = 1 / n_labels
    frame = pd.DataFrame(rows)
    return claims.claim("FT1", STAGE.name, "The fine-tuned model learns the task (the analyses need a model that "
                        "learned something).", claims.METHOD, "test accuracy over the fine-tuning languages, last "
                        "epoch, main run", claims.interval(frame, "correct", confidence),
                        finetune.learning_threshold(n_labels), f"twice chance ({chance:.0%} x 2)", "above",
                        confidence=confidence)
