"""The positive control: can the method see own-language reliance where it must exist?

In the control run one fine-tuning language's labels follow a different mapping (a cyclic shift of the classes), in
training and test, so its test samples can only be learned from its own training data. If TracIn's rankings reflect
what the model relies on, that language's own share of its top-k must clearly exceed the language-blind value,
while the other languages stay where they are in the main run.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .. import analysis, claims, data
from ..compute import finetune
from ..flow.stage import Stage
from . import Result

STAGE = Stage("control", "15_control.ipynb", "Positive control",
              reads=(("tracin", "control"), ("finetune", "control"), ("tracin", "main")),
              params=("top_k", "influence_kind", "confidence"),
              modules=("chapters/control", "analysis", "claims"))


def _n_train(run, lang: str) -> int:
    return int((analysis.load_scores(run["tracin"]).train_ids["language"] == lang).sum())


def compute(control: list, main: list, cfg: dict[str, Any]) -> Result:
    k, kind = cfg["top_k"], cfg["influence_kind"]
    opts = dict(confidence=cfg["confidence"])
    statement = ("Positive control: when a language's labels can only be learned from its own data, its own share "
                 "of the top-k exceeds the language-blind value.")
    stat = f"own-language share of the permuted language's top-{k} {kind}"
    if not control:
        return Result(claims=[claims.not_tested("PC1", STAGE.name, statement, claims.METHOD, stat,
                                                "the study has no control run (role 'control': "
                                                "permuted_language set)")])
    lang = control[0].params["permuted_language"]
    control_table = analysis.runs_table(control, k, kind).assign(setting="control")
    main_table = analysis.runs_table(main, k, kind).assign(setting="main")
    both = pd.concat([control_table, main_table], ignore_index=True)
    both = both[both["own"].notna()]
    blind = analysis.language_blind(analysis.load_scores(control[0]["tracin"]))
    rows = []
    for (setting, test_language), part in both.groupby(["setting", "test_language"], sort=False):
        value, low, high = claims.interval(part, "own", **opts)
        rows.append({"setting": setting, "test_language": test_language, "own": value, "low": low, "high": high,
                     "language_blind": float(blind[test_language])})
    history = pd.concat([finetune.load(r["finetune"]).history.assign(run=r.name) for r in control])
    last = history[history["epoch"] == history["epoch"].max()].groupby("language", sort=False)["accuracy"].mean()
    target = control_table[control_table["test_language"] == lang]
    result = Result(tables={"own_shares": pd.DataFrame(rows),
                            "accuracy": last.rename("accuracy").reset_index()})
    result.claims = [claims.claim(
        "PC1", STAGE.name, statement, claims.METHOD, f"{data.LANGUAGES[lang].name} (labels shifted): {stat}",
        claims.interval(target, "own", **opts), float(blind[lang]), "a language-blind ranking", "above", **opts,
        note=(f"Strength of the control: {control[0].params['permuted_share']:.0%} of "
              f"{data.LANGUAGES[lang].name}'s {_n_train(control[0], lang)} training samples shifted, "
              f"{control[0].params['epochs']} epochs; its test accuracy in the control run: "
              f"{last.get(lang, float('nan')):.0%}."))]
    return result
