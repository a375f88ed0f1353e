"""Zero-shot test languages: which fine-tuning languages do they draw on, and how well do they do?

Test languages never seen in fine-tuning still get TracIn scores against every training sample. Their language
shares, next to the fine-tuned languages' and their accuracy, and whether they draw more on fine-tuning languages of
their own family or script than a language-blind ranking (language metadata: ``helpers.data.LANGUAGES``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .. import analysis, claims, data
from ..compute import finetune
from ..flow.stage import Stage
from . import Result

STAGE = Stage("zero_shot", "13_zero_shot.ipynb", "Zero-shot languages",
              reads=(("tracin", "central"), ("finetune", "central")),
              params=("top_k", "influence_kind", "confidence"),
              modules=("chapters/zero_shot", "analysis", "claims"))


def related(lang: str, train_languages: list[str], by: str) -> list[str]:
    """The fine-tuning languages sharing ``lang``'s family (``by='family'``) or script (``by='script'``)."""
    return [t for t in train_languages if getattr(data.LANGUAGES[t], by) == getattr(data.LANGUAGES[lang], by)]


def compute(runs: list, cfg: dict[str, Any]) -> Result:
    k, kind = cfg["top_k"], cfg["influence_kind"]
    opts = dict(confidence=cfg["confidence"])
    table = analysis.runs_table(runs, k, kind)
    scores = analysis.load_scores(runs[0]["tracin"])
    blind = analysis.language_blind(scores)
    train_languages = list(blind.index)
    zero_shot = [lang for lang in dict.fromkeys(table["test_language"]) if lang not in train_languages]
    accuracy = pd.concat([finetune.load(r["finetune"]).history.assign(run=r.name) for r in runs])
    last = accuracy[accuracy["epoch"] == accuracy["epoch"].max()].groupby("language", sort=False)["accuracy"].mean()
    rows, claim_rows = [], []
    statement = ("A zero-shot test language draws more on the fine-tuning languages of its own family than a "
                 "language-blind ranking would.")
    for lang in zero_shot:
        part = table[table["test_language"] == lang].copy()
        for by in ("family", "script"):
            rel = related(lang, train_languages, by)
            part[f"share_same_{by}"] = part[[f"share_{t}" for t in rel]].sum(axis=1) if rel else float("nan")
            value, low, high = claims.interval(part, f"share_same_{by}", **opts)
            rows.append({"test_language": lang, "by": by, "related": ", ".join(rel) or "none", "share": value,
                         "low": low, "high": high, "language_blind": float(blind[rel].sum()) if rel else float("nan"),
                         "accuracy": float(last.get(lang, float("nan")))})
        rel = related(lang, train_languages, "family")
        stat = f"{data.LANGUAGES[lang].name}: share of its top-{k} from {', '.join(rel) or 'no'} same-family language"
        if rel:
            claim_rows.append(claims.claim(f"ZS-{lang}", STAGE.name, statement, claims.METHOD, stat,
                                           claims.interval(part, "share_same_family", **opts), float(blind[rel].sum()),
                                           "a language-blind ranking", "above", **opts))
        else:
            claim_rows.append(claims.not_tested(f"ZS-{lang}", STAGE.name, statement, claims.METHOD, stat,
                                                f"no fine-tuning language shares the family of "
                                                f"{data.LANGUAGES[lang].name} ({data.LANGUAGES[lang].family})"))
    accuracy_table = pd.DataFrame({"language": list(last.index), "accuracy": list(last.values)})
    accuracy_table["seen in fine-tuning"] = accuracy_table["language"].isin(train_languages)
    if not zero_shot:
        claim_rows.append(claims.not_tested("ZS", STAGE.name, statement, claims.METHOD, "share from same-family "
                                            "languages", "the study has no zero-shot test language"))
    return Result(tables={"samples": table, "related": pd.DataFrame(rows), "accuracy": accuracy_table},
                  claims=claim_rows)
