"""Tiny local copies of the hub corpora, in the hub's schema, written by the tests themselves (invented text).

``write(name, root)`` writes ``root/<language>/<split>.<ext>`` for every language of corpus ``name`` with the hub's
column names (XNLI: premise, hypothesis, label; PAWS-X: id, sentence1, sentence2, label; MARC: text, label), as a
``corpus_dir`` the loaders read. Parallel corpora get the same items (ids, labels) in every language, with text that
differs by language; the words are made up from small per-language lists, never taken from the real data sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from helpers import corpora

WORDS = {
    "en": "red house small river green field old bridge",
    "de": "rotes Haus kleiner Fluss grünes Feld alte Brücke",
    "fr": "maison rouge petite rivière champ vert vieux pont",
    "es": "casa roja río pequeño campo verde puente viejo",
    "ru": "красный дом малая река зелёное поле старый мост",
    "zh": "红 房子 小 河 绿 田野 旧 桥",
    "ja": "赤い 家 小さな 川 緑の 野原 古い 橋",
    "ko": "빨간 집 작은 강 푸른 들판 오래된 다리",
    "ar": "بيت أحمر نهر صغير حقل أخضر جسر قديم",
    "bg": "червена къща малка река зелено поле стар мост",
}


def text(lang: str, item: int, label: int, part: int) -> str:
    words = WORDS.get(lang, WORDS["en"]).split()
    picked = [words[(item * 3 + part + k) % len(words)] for k in range(3 + item % 3)]
    return " ".join(picked) + f" {label} {item}"


def write(name: str, root: Path, n_train: int = 24, n_test: int = 12, fmt: str = "jsonl",
          languages: tuple[str, ...] | None = None) -> Path:
    """Write a fixture of corpus ``name`` under ``root`` (``fmt``: jsonl, parquet, csv or tsv); returns ``root``."""
    corpus = corpora.get(name)
    n_labels = len(next(iter(corpus.labels.values())).names)
    for lang in languages or corpus.languages:
        for split, n in (("train", n_train), ("validation", n_test), ("test", n_test)):
            rows = []
            for i in range(n):
                item = i if corpus.parallel else i + 1000 * (languages or corpus.languages).index(lang)
                label = i % n_labels
                if name == "xnli":
                    rows.append({"premise": text(lang, item, label, 0), "hypothesis": text(lang, item, label, 1),
                                 "label": label})
                elif name == "pawsx":
                    rows.append({"id": 5000 + i, "sentence1": text(lang, item, label, 0),
                                 "sentence2": text(lang, item, label, 2), "label": label})
                else:
                    rows.append({"text": text(lang, item, label, 0), "label": label})
            folder = root / lang
            folder.mkdir(parents=True, exist_ok=True)
            frame = pd.DataFrame(rows)
            if fmt == "jsonl":
                (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            elif fmt == "parquet":
                frame.to_parquet(folder / f"{split}.parquet", index=False)
            elif fmt == "csv":
                frame.to_csv(folder / f"{split}.csv", index=False)
            elif fmt == "tsv":
                frame.to_csv(folder / f"{split}.tsv", index=False, sep="\t")
            else:
                raise ValueError(f"fmt {fmt!r}")
    return root
