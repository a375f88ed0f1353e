"""Tiny local copies of the hub corpora, in the hub's schema, written by the tests themselves (invented text).

``write(name, root)`` writes ``root/<language>/<split>.<ext>`` for every language of corpus ``name`` with the hub's
column names (XNLI: premise, hypothesis, label; PAWS-X: id, sentence1, sentence2, label; MARC: text, label), as a
``corpus_dir`` the loaders read. Parallel corpora get the same items (ids, labels) in every language, with text that
differs by language (and by split: no training item has a test item's text); the words are made up from small
per-language lists, never taken from the real data sets.

``layout`` imitates the ways a copy is saved: ``file`` (``<split>.<fmt>``), ``hub`` (a hub download's
``<split>-00000-of-00001.<fmt>``), ``shards`` (``<split>/*.parquet``, two shards), ``save_to_disk``.
``quirks=True`` imitates what the real files hold (:data:`QUIRKS`), still leaving every label of every split usable.
"""

from __future__ import annotations

import csv
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

#: What ``quirks=True`` writes, as the real copies have it (the counts are the fixture's, not the corpora's):
QUIRKS = {
    "xnli": "one training row labelled -1 (no gold label) per language",
    "pawsx": "NS placeholders: in every language but English, one test row with sentence2 NS and one training row "
             "NS/NS (with its label); the last test id's label flipped in German (gold labels differ across "
             "languages); a sentence opening with a quote",
    "marc": "a training review identical (up to case and spaces) to a test review in every language",
}


def text(lang: str, item: int, label: int, part: int) -> str:
    words = WORDS.get(lang, WORDS["en"]).split()
    picked = [words[(item * 3 + part + k) % len(words)] for k in range(3 + item % 3)]
    return " ".join(picked) + f" {label} {item}"


def rows_of(name: str, lang: str, split: str, n: int, languages: tuple[str, ...], quirks: bool) -> list[dict]:
    corpus = corpora.get(name)
    n_labels = len(next(iter(corpus.labels.values())).names)
    rows = []
    for i in range(n):
        item = (i if corpus.parallel else i + 1000 * languages.index(lang)) + (500 if split == "train" else 0)
        label = i % n_labels
        if name == "xnli":
            rows.append({"premise": text(lang, item, label, 0), "hypothesis": text(lang, item, label, 1),
                         "label": label})
        elif name == "pawsx":
            rows.append({"id": 5000 + i, "sentence1": text(lang, item, label, 0),
                         "sentence2": text(lang, item, label, 2), "label": label})
        else:
            rows.append({"text": text(lang, item, label, 0), "label": label})
    if quirks and name == "xnli" and split == "train":
        rows.append({"premise": text(lang, 500 + n, 0, 0), "hypothesis": text(lang, 500 + n, 0, 1), "label": -1})
    if quirks and name == "pawsx":
        if lang != "en" and split == "test":
            rows[1]["sentence2"] = "NS"
        if lang != "en" and split == "train":
            rows[2].update(sentence1="NS", sentence2="NS")
        if lang == "de" and split == "test":
            rows[-1]["label"] = 1 - rows[-1]["label"]
        rows[0]["sentence1"] = '"' + rows[0]["sentence1"] + '" he said'
    if quirks and name == "marc" and split == "train":
        rows[-1]["text"] = "  " + text(lang, 1000 * languages.index(lang), 0, 0).upper() + " "  # test row 0's
    return rows


def write(name: str, root: Path, n_train: int = 24, n_test: int = 12, fmt: str = "jsonl",
          languages: tuple[str, ...] | None = None, layout: str = "file", quirks: bool = False) -> Path:
    """Write a fixture of corpus ``name`` under ``root`` (``fmt``: jsonl, json, parquet, csv or tsv; ``layout``: file,
    hub, shards, save_to_disk); returns ``root``."""
    corpus = corpora.get(name)
    languages = tuple(languages or corpus.languages)
    for lang in languages:
        for split, n in (("train", n_train), ("validation", n_test), ("test", n_test)):
            rows = rows_of(name, lang, split, n, languages, quirks)
            folder = root / lang
            folder.mkdir(parents=True, exist_ok=True)
            frame = pd.DataFrame(rows)
            if layout == "save_to_disk":
                import datasets

                datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(folder / split))
                continue
            if layout == "shards":
                (folder / split).mkdir()
                half = len(frame) // 2
                frame.iloc[:half].to_parquet(folder / split / "part-0.parquet", index=False)
                frame.iloc[half:].to_parquet(folder / split / "part-1.parquet", index=False)
                continue
            path = folder / (f"{split}.{fmt}" if layout == "file" else f"{split}-00000-of-00001.{fmt}")
            if fmt in ("jsonl", "json"):
                path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            elif fmt == "parquet":
                frame.to_parquet(path, index=False)
            elif fmt == "csv":
                frame.to_csv(path, index=False)
            elif fmt == "tsv":  # unquoted, as PAWS-X's own files
                frame.to_csv(path, index=False, sep="\t", quoting=csv.QUOTE_NONE)
            else:
                raise ValueError(f"fmt {fmt!r}")
    return root
