"""One small interface for every corpus, and the loader and sampler shared by the hub corpora.

A corpus (:class:`Corpus`) says which languages it has, which classification tasks (``label`` parameter values,
:class:`Label`), whether its items are parallel across languages and by which id, whether a sample is a sentence pair,
and loads one split of one language as a frame with ``pair_id`` (the id that links translations, or a per-language
id), ``label`` (an int), ``text`` and, for sentence pairs, ``text_pair``. :meth:`Corpus.sample_keys` draws which
items each language trains and tests on (the run's ``data`` stage parameters) and :meth:`Corpus.build_splits` returns
the two frames every later stage reads (columns :data:`COLUMNS`, plus ``text_pair`` for sentence pairs).

The hub corpora (XNLI, PAWS-X, MARC: :class:`HubCorpus`) load through ``datasets`` by their hub id, or, when the
``corpus_dir`` parameter names a directory, from local files in the same schema (the hub's column names), one folder
per language: ``<corpus_dir>/<language>/<split>.jsonl`` (or .json, .parquet, .csv, .tsv), a hub download's
``<split>-00000-of-00001.parquet``, ``<split>/*.parquet`` or a ``save_to_disk`` folder (:mod:`.local`), with
``<split>`` one of ``train``, ``validation``, ``test``.

Everything a run reads is checked before any work (the runner samples the splits first,
:func:`helpers.flow.feasible.check`), each error naming the file, the column and the values:

* labels must be whole class numbers ``0..n-1`` (the corpus's :attr:`HubCorpus.label_hint` says which is which);
  text, nulls, fractions and numbers out of range are refused, not dropped (XNLI's ``-1``, no gold label, is left out
  and counted);
* every text column must be there and non-empty (PAWS-X: rows whose sentence is its ``NS`` placeholder or empty are
  left out and counted, per language);
* a parallel corpus's test split must be aligned across the test languages (same number of rows, same ids; for XNLI
  the same label for the same item), and so must its training split across the fine-tuning languages when
  ``parallel_train`` asks for the same items in every language. PAWS-X's gold labels differ across languages for a
  few ids: those ids are left out of the parallel test set (and of parallel training) and counted per language
  (:meth:`HubCorpus.report`);
* ``pair_id`` is namespaced by split (``test-17``), so a training item and a test item never share it, and a training
  row whose text (normalised by :func:`text_key`: NFKC, case-folded, punctuation dropped, whitespace collapsed)
  equals a chosen test item's in the same language is never drawn.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import regex

from . import local
from .errors import CorpusFormatError, CorpusUnavailableError, SizeError

#: The parameter that names a local copy of a hub corpus.
CORPUS_DIR_PARAM = "corpus_dir"
#: The columns of the frames the data stage writes (sentence-pair corpora add ``text_pair``).
COLUMNS = ["uid", "split", "language", "pair_id", "book", "label", "label_name", "permuted", "text"]
SPLITS = ("train", "validation", "test")

__all__ = ["COLUMNS", "CORPUS_DIR_PARAM", "SPLITS", "Corpus", "CorpusFormatError", "CorpusUnavailableError",
           "HubCorpus", "Label", "Loaded", "SizeError", "balanced", "given_dir", "permute", "train_sizes"]


@dataclass(frozen=True)
class Label:
    """A classification task of a corpus: its class names (class ``i`` is ``names[i]``)."""

    names: tuple[str, ...]
    help: str


def given_dir(corpus_dir: str | Path | None) -> Path | None:
    return None if corpus_dir in (None, "", "none") else Path(corpus_dir).expanduser()


def balanced(pool: pd.DataFrame, n: int, n_labels: int, rng: np.random.Generator, where: str = "") -> pd.DataFrame:
    """``n`` rows of ``pool`` with the labels as even as possible (the first ``n % n_labels`` labels get one more).
    ``where`` (e.g. "language 'de', train split") names the pool in the shortage message."""
    parts = []
    for cls in range(n_labels):
        want = n // n_labels + (1 if cls < n % n_labels else 0)
        rows = pool[pool["label"] == cls]
        if len(rows) < want:
            raise SizeError(f"label class {cls} has {len(rows)} samples left{f' in {where}' if where else ''}, "
                            f"{want} needed; lower train_per_language, test_per_language or imbalance_factor")
        parts.append(rows.iloc[rng.choice(len(rows), size=want, replace=False)])
    return pd.concat(parts)
def train_sizes(cfg: Mapping[str, Any]) -> dict[str, int]:
    """Training samples per fine-tuning language (the imbalance language gets ``imbalance_factor`` times more)."""
    return {lang: cfg["train_per_language"] * (cfg.get("imbalance_factor", 1)
                                               if lang == cfg.get("imbalance_language", "none") else 1)
            for lang in cfg["fine_tune_languages"]}


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


class Corpus:
    """The interface (see the module docstring). Subclasses set the attributes and implement the three methods."""

    name: str
    title: str
    languages: tuple[str, ...]
    labels: dict[str, Label]
    parallel: bool  # the same items exist in every language (translations)
    parallel_by: str  # what links translations (or identifies an item), in words
    pairs: bool = False  # a sample is a sentence pair (text, text_pair)
    single_pool: bool = False  # training and test items are drawn from one pool (no train/test split of its own)

    def load_split(self, language: str, split: str, corpus_dir: str | None = None) -> pd.DataFrame:
        raise NotImplementedError

    def sample_keys(self, cfg: Mapping[str, Any]) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame],
                                                          np.random.Generator]:
        raise NotImplementedError

    def build_splits(self, cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
        raise NotImplementedError

    def report(self, cfg: Mapping[str, Any]) -> pd.DataFrame:
        """Per language and split read: where from, rows read, rows left out and why (empty: nothing to say)."""
        return pd.DataFrame()




@lru_cache(maxsize=64)
def _read_hub(hub_id: str, config: str, split: str) -> pd.DataFrame:
    import datasets

    return datasets.load_dataset(hub_id, config, split=split).to_pandas()


@lru_cache(maxsize=64)
def _read_local(corpus: HubCorpus, language: str, split: str, source: local.Source, stamp: tuple) -> Loaded:
    """A local split, read and checked once per process while its files are unchanged (``stamp``: their sizes and
    modification times): the runner's check, the data stage's sampling and its report read it alike."""
    return _checked(corpus, language, split, source.shown, source.where, local.read(source))


def _stamp(source: local.Source) -> tuple:
    out = []
    for path in source.files:
        try:
            info = os.stat(path)
            out.append((str(path), info.st_size, info.st_mtime_ns))
        except OSError:
            out.append((str(path), -1, -1))
    return tuple(out)


_PUNCTUATION = regex.compile(r"\p{P}+")


def text_key(text: str, text_pair: str | None = None) -> str:
    """A sample's text, normalised (NFKC, case-folded, punctuation dropped, whitespace collapsed): two samples with
    the same key are the same item, or near-duplicates of each other ("And the LORD spake unto Moses, saying," and
    "and the Lord spake unto Moses saying")."""
    def norm(part: str) -> str:
        return " ".join(_PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", part).casefold()).split())
    return norm(text) if text_pair is None else f"{norm(text)}\t{norm(text_pair)}"


def _class_numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Each value as an int, and a mask of the values that are not whole numbers: nulls, text other than digits,
    fractions, booleans."""
    out = np.zeros(len(values), dtype=np.int64)
    bad = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values.tolist()):
        if isinstance(v, (bool, np.bool_)) or v is None:
            bad[i] = True
        elif isinstance(v, (int, np.integer)):
            out[i] = int(v)
        elif isinstance(v, (float, np.floating)):
            if np.isfinite(v) and float(v).is_integer():
                out[i] = int(v)
            else:
                bad[i] = True
        elif isinstance(v, str) and v.strip().lstrip("+-").isdigit() and v.strip().lstrip("+-").isascii():
            out[i] = int(v.strip())
        else:
            bad[i] = True
    return out, bad


def _text(value: Any) -> str:
    """A text cell, whitespace collapsed; a null is empty."""
    if isinstance(value, str):
        return " ".join(value.split())
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return ""
    return " ".join(str(value).split())


def _shown(values: list, wheres: list[str], n: int = 3) -> str:
    """The first ``n`` values with their places: ``'neutral' (line 2), null (line 5)``."""
    def show(v: Any) -> str:
        return "null" if v is None or (isinstance(v, float) and np.isnan(v)) else repr(v)

    return ", ".join(f"{show(v)} ({w})" for v, w in list(zip(values, wheres))[:n])


@dataclass(frozen=True)
class Loaded:
    """One split of one language, read and checked: ``frame`` (the usable rows: ``pair_id``, ``label``, ``text``,
    ``text_pair``), every row's ``ids`` and ``labels`` as read (for the alignment check), where it came from and how
    many rows were left out, by reason."""

    frame: pd.DataFrame
    ids: pd.Series
    labels: np.ndarray
    source: str
    rows: int
    left_out: dict[str, int]
    where: Any  # row (0-based) -> its place in words ("line 3")

    @cached_property
    def keys(self) -> np.ndarray:
        """Each usable row's :func:`text_key` (computed once: the same split is sampled several times)."""
        pairs = self.frame["text_pair"] if "text_pair" in self.frame else [None] * len(self.frame)
        return np.array([text_key(t, p) for t, p in zip(self.frame["text"], pairs)], dtype=object)


@dataclass(frozen=True, eq=False)
class HubCorpus(Corpus):
    """A corpus on the Hugging Face hub, one configuration per language, in the hub's schema (see the module
    docstring); ``id_column`` None: items are identified by their row (XNLI's translations are aligned by row)."""

    name: str
    title: str
    hub_id: str
    languages: tuple[str, ...]
    labels: dict[str, Label]
    text_column: str
    label_column: str
    parallel: bool
    parallel_by: str
    #: The label encoding in words ("0 entailment, 1 neutral, 2 contradiction"), for messages and the docs.
    label_hint: str = ""
    text_pair_column: str | None = None
    id_column: str | None = None
    #: The hub's configuration of each language, when it is not the language code.
    configs: dict[str, str] = field(default_factory=dict)
    #: A label value that marks a row without gold label: left out and counted (XNLI: -1).
    no_gold_label: int | None = None
    #: Text that stands for a missing translation (PAWS-X: NS): a row with it, or with an empty text, is left out and
    #: counted; without it an empty text is refused.
    untranslated: tuple[str, ...] = ()
    #: For a parallel corpus: an item has the same gold label in every language (XNLI), so a difference means the
    #: files are not aligned and is refused; False (PAWS-X): differences are real, counted and left out of the
    #: parallel test set.
    labels_agree: bool = True
    #: Columns of another schema of the same corpus -> how to map them (said when a needed column is missing).
    column_hints: dict[str, str] = field(default_factory=dict)

    @property
    def pairs(self) -> bool:  # type: ignore[override]
        return self.text_pair_column is not None

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.id_column, self.text_column, self.text_pair_column, self.label_column) if c]

    @property
    def n_labels(self) -> int:
        return len(next(iter(self.labels.values())).names)

    # -- loading ------------------------------------------------------------------------------------------------

    def _local_source(self, root: Path, language: str, split: str) -> local.Source:
        if not root.is_dir():
            raise CorpusUnavailableError(
                f"parameter {CORPUS_DIR_PARAM!r} is {str(root)!r}, which is not a directory; expected a local copy of "
                f"{self.hub_id} laid out as <{CORPUS_DIR_PARAM}>/<language>/<split>.jsonl (or .json, .parquet, .csv, "
                f".tsv, <split>-NNNNN-of-NNNNN.parquet, <split>/*.parquet or a save_to_disk folder) with the "
                f"columns {self.columns}")
        source = local.find(root / language, split)
        if source is None:
            raise CorpusUnavailableError(
                f"parameter {CORPUS_DIR_PARAM!r} is {str(root)!r}, but it has no {language}/{split}.jsonl (nor .json, "
                f".parquet, .csv, .tsv, {split}-NNNNN-of-NNNNN.parquet, {split}/*.parquet, a save_to_disk folder "
                f"{split}/): corpus {self.name!r} needs split {split!r} of language {language!r} there, with the "
                f"columns {self.columns}")
        return source

    def read(self, language: str, split: str, corpus_dir: str | None = None) -> Loaded:
        """One split of one language, read and checked (see the module docstring); :class:`CorpusFormatError`
        names the file, the column and the values when it cannot be used."""
        if language not in self.languages:
            raise ValueError(f"corpus {self.name!r} has no language {language!r}; allowed: {list(self.languages)}")
        if split not in SPLITS:
            raise ValueError(f"split {split!r}; allowed: {list(SPLITS)}")
        root = given_dir(corpus_dir)
        if root is not None:
            source = self._local_source(root, language, split)
            return _read_local(self, language, split, source, _stamp(source))
        config = self.configs.get(language, language)
        try:
            raw = _read_hub(self.hub_id, config, split)
        except Exception as err:  # datasets raises ConnectionError, OSError, DatasetNotFoundError, ValueError...
            raise CorpusUnavailableError(
                f"corpus {self.name!r} ({self.hub_id}, configuration {config!r}, split {split!r}) cannot be "
                f"loaded from the Hugging Face hub or its cache ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:160] if str(err) else ''}). Where a network is available, save it "
                f"with datasets.load_dataset({self.hub_id!r}, {config!r}, split={split!r}).to_json("
                f"'DIR/{language}/{split}.jsonl') (one file per language and split) and set the parameter "
                f"{CORPUS_DIR_PARAM}=DIR (e.g. -p {CORPUS_DIR_PARAM}=/data/{self.name})") from None
        return _checked(self, language, split, f"{self.hub_id} ({config}, {split})", lambda row: f"row {row + 1}",
                        raw)

    def load_split(self, language: str, split: str, corpus_dir: str | None = None) -> pd.DataFrame:
        """One split of one language: ``pair_id`` (str), ``label`` (int), ``text`` (and ``text_pair``), in the
        corpus's order, the rows left out by :meth:`read` removed. From ``corpus_dir`` when given, else from the hub
        (``datasets`` caches it)."""
        return self.read(language, split, corpus_dir).frame.copy()

    # -- alignment ----------------------------------------------------------------------------------------------

    def aligned(self, loaded: dict[str, Loaded], split: str) -> tuple[set[str], dict[str, int]]:
        """Check that ``split`` is aligned across the languages of ``loaded`` (a parallel corpus): the same number of
        rows and the same ids, and, where :attr:`labels_agree`, the same label for the same id, else
        :class:`CorpusFormatError` naming the language and the first mismatching rows. Returns the ids whose labels
        differ across the languages (to leave out) and, per language, how many differ from the first language's."""
        (ref_lang, ref), *others = loaded.items()
        ref_labels = pd.Series(ref.labels, index=ref.ids.to_numpy())
        disputed: set[str] = set()
        differ = {ref_lang: 0}
        for lang, cur in others:
            head = (f"corpus {self.name!r}: the {split} split is not aligned across the "
                    f"{'test' if split == 'test' else 'fine-tuning'} languages ({self.parallel_by})")
            if cur.rows != ref.rows:
                raise CorpusFormatError(f"{head}: {lang} has {cur.rows} rows ({cur.source}), {ref_lang} has "
                                        f"{ref.rows} ({ref.source}); both must hold the same items")
            if self.id_column:
                missing = ~ref.ids.isin(set(cur.ids))
                if missing.any():
                    rows = np.flatnonzero(missing.to_numpy())
                    raise CorpusFormatError(
                        f"{head}: {lang} ({cur.source}) lacks {int(missing.sum())} ids of {ref_lang} ({ref.source}), "
                        f"first {_shown(ref.ids.iloc[rows].tolist(), [ref.where(r) for r in rows])}")
            labels = ref_labels.reindex(cur.ids.to_numpy()).to_numpy()
            rows = np.flatnonzero(labels != cur.labels)
            differ[lang] = len(rows)
            if len(rows) and self.labels_agree:
                shown = "; ".join(f"{cur.where(r)}: label {cur.labels[r]} in {lang}, {labels[r]} in {ref_lang}"
                                  for r in rows[:3])
                raise CorpusFormatError(
                    f"{head}: {len(rows)} of {cur.rows} items have another label in {lang} ({cur.source}) than in "
                    f"{ref_lang} ({ref.source}), first {shown}; {self.title}'s items have the same label in every "
                    "language, so these files do not hold the same items (another split, or another order?)")
            disputed |= set(cur.ids.iloc[rows])
        return disputed, differ

    # -- sampling -----------------------------------------------------------------------------------------------

    def _draw(self, cfg: Mapping[str, Any]) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame],
                                                    np.random.Generator, pd.DataFrame]:
        corpus_dir = cfg.get(CORPUS_DIR_PARAM, "none")
        ft, zs = list(cfg["fine_tune_languages"]), list(cfg["zero_shot_languages"])
        n_labels = len(self.labels[cfg["label"]].names)
        rng = np.random.default_rng(cfg["seed"])
        n_test = cfg["test_per_language"]
        tests = {lang: self.read(lang, "test", corpus_dir) for lang in ft + zs}
        trains = {lang: self.read(lang, "train", corpus_dir) for lang in ft}
        report = {(lang, split): {"source": loaded.source, "rows": loaded.rows, **loaded.left_out}
                  for split, group in (("test", tests), ("train", trains)) for lang, loaded in group.items()}
        test_keys: dict[str, pd.DataFrame] = {}
        if self.parallel:
            disputed, differ = self.aligned(tests, "test")
            if not self.labels_agree:
                ref = ft[0] if ft else zs[0]
                for lang, n in differ.items():
                    report[lang, "test"][f"label differs from {ref}'s (id left out in every language)"] = n
            frames = {lang: t.frame.set_index("pair_id") for lang, t in tests.items()}
            common = sorted(set.intersection(*(set(f.index) for f in frames.values())) - disputed)
            first = frames[(ft + zs)[0]].loc[common]
            chosen = balanced(first.reset_index()[["pair_id", "label"]], n_test, n_labels, rng,
                              f"the test split's items usable in every test language ({len(common)} items)")["pair_id"]
            for lang, frame in frames.items():
                test_keys[lang] = frame.loc[chosen.to_numpy()].reset_index()
        else:
            for lang in ft + zs:
                test_keys[lang] = balanced(tests[lang].frame, n_test, n_labels, rng, f"language {lang!r}, test split")
        pools = {}
        for lang in ft:  # no training item equal to a test item of the same language
            seen = set(map(text_key, test_keys[lang]["text"], test_keys[lang].get("text_pair", [None] * n_test)))
            same = np.array([key in seen for key in trains[lang].keys], dtype=bool)
            report[lang, "train"]["equal to a chosen test item (left out)"] = int(same.sum())
            pools[lang] = trains[lang].frame[~same]
        sizes, base = train_sizes(cfg), cfg["train_per_language"]
        train_keys: dict[str, pd.DataFrame] = {}
        if cfg.get("parallel_train"):  # the same items in every language: the training files must be aligned
            if len(trains) > 1:
                self.aligned(trains, "train")
            common = set.intersection(*(set(p["pair_id"]) for p in pools.values()))
            labels = pd.DataFrame({lang: p.set_index("pair_id")["label"].reindex(sorted(common))
                                   for lang, p in pools.items()})
            agree = set(labels.index[labels.nunique(axis=1) == 1])
            if not self.labels_agree:
                for lang in ft:
                    report[lang, "train"][f"label differs from {ft[0]}'s (not shared)"] = int(
                        (labels[lang] != labels[ft[0]]).sum())
            first = pools[ft[0]][pools[ft[0]]["pair_id"].isin(agree)]
            shared = balanced(first, base, n_labels, rng, f"the items of the train split usable in every "
                                                          f"fine-tuning language ({len(agree)} items)")["pair_id"]
            used = set(shared)
            for lang in ft:
                pool = pools[lang].set_index("pair_id", drop=False)
                extra = (balanced(pools[lang][~pools[lang]["pair_id"].isin(used)], sizes[lang] - base, n_labels, rng,
                                  f"language {lang!r}, train split")
                         if sizes[lang] > base else pool.iloc[:0])
                used |= set(extra["pair_id"])
                train_keys[lang] = pd.concat([pool.loc[shared.to_numpy()], extra]).reset_index(drop=True)
        else:
            used: set[str] = set()
            for lang in ft:
                pool = pools[lang][~pools[lang]["pair_id"].isin(used)] if self.parallel else pools[lang]
                train_keys[lang] = balanced(pool, sizes[lang], n_labels, rng, f"language {lang!r}, train split")
                if self.parallel:
                    used |= set(train_keys[lang]["pair_id"])
        table = pd.DataFrame.from_dict(report, orient="index").rename_axis(["language", "split"])
        left = [c for c in table.columns if c not in ("source", "rows")]
        table[left] = table[left].fillna(0).astype(int)
        return train_keys, test_keys, rng, table

    def sample_keys(self, cfg: Mapping[str, Any]) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame],
                                                          np.random.Generator]:
        """Which items each language trains and tests on, with their texts.

        Test: ``test_per_language`` items per test language from the ``test`` split, balanced over labels; for a
        parallel corpus the same items (by ``pair_id``) in every test language (a parallel test set, checked to be
        aligned, :meth:`aligned`), otherwise drawn per language. Training: from the ``train`` split, never an item
        whose text equals a chosen test item's of the same language, ``train_per_language`` items per fine-tuning
        language (``imbalance_factor`` times more for the ``imbalance_language``), balanced over labels;
        ``parallel_train`` (parallel corpora only) takes the same items in every language (ids whose labels agree; the
        training split checked to be aligned across the fine-tuning languages first, as the test split is),
        otherwise items are disjoint across languages (for a parallel corpus no item is trained on in two
        languages)."""
        return self._draw(cfg)[:3]

    def report(self, cfg: Mapping[str, Any]) -> pd.DataFrame:
        """Per language and split read: where from, rows read and rows left out by reason (the data chapter shows
        it)."""
        return self._draw(cfg)[3]

    def build_splits(self, cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
        train_keys, test_keys, rng = self.sample_keys(cfg)
        task = self.labels[cfg["label"]]

        def frame(split: str, per_language: dict[str, pd.DataFrame]) -> pd.DataFrame:
            parts = []
            for lang, k in per_language.items():
                k = k.sample(frac=1.0, random_state=int(rng.integers(2**31)))  # mix the labels
                part = pd.DataFrame({
                    "uid": [f"{split}-{lang}-{p}" for p in k["pair_id"]], "split": split, "language": lang,
                    "pair_id": k["pair_id"].to_numpy(), "book": -1, "label": k["label"].to_numpy(),
                    "permuted": False, "text": k["text"].to_numpy()})
                if self.pairs:
                    part["text_pair"] = k["text_pair"].to_numpy()
                parts.append(part)
            out = pd.concat(parts, ignore_index=True)
            permute(out, cfg, len(task.names), split)
            out["label_name"] = [task.names[i] for i in out["label"]]
            return out[COLUMNS + (["text_pair"] if self.pairs else [])]

        return frame("train", train_keys), frame("test", test_keys)


def _checked(corpus: HubCorpus, language: str, split: str, source: str, where, raw: pd.DataFrame) -> Loaded:
    """The rows of one split as read (``raw``, the hub's columns) checked and turned into a :class:`Loaded`."""
    missing = [c for c in corpus.columns if c not in raw.columns]
    if missing:
        hints = [hint for column, hint in corpus.column_hints.items() if column in raw.columns]
        raise CorpusFormatError(
            f"{source}: columns {missing} missing (found {list(raw.columns)}); corpus {corpus.name!r} needs "
            f"{corpus.columns}" + (f". {hints[0]}" if hints else ""))
    raw = raw.reset_index(drop=True)
    n_labels = corpus.n_labels
    labels, bad = _class_numbers(raw[corpus.label_column])
    allowed = list(range(n_labels)) + ([corpus.no_gold_label] if corpus.no_gold_label is not None else [])
    outside = ~bad & ~np.isin(labels, allowed)
    for mask, what in ((bad, "values that are not whole class numbers"),
                       (outside, f"class numbers outside 0..{n_labels - 1}")):
        if mask.any():
            rows = np.flatnonzero(mask)
            values = raw[corpus.label_column].iloc[rows].tolist()
            raise CorpusFormatError(
                f"{source}: column {corpus.label_column!r} has {len(rows)} {what}, first "
                f"{_shown(values, [where(r) for r in rows])}; {corpus.title}'s {corpus.label_column!r} must be "
                f"{corpus.label_hint}")
    ids = raw[corpus.id_column].astype(str) if corpus.id_column else pd.Series(raw.index.astype(str))
    if ids.duplicated().any():
        rows = np.flatnonzero(ids.duplicated(keep=False).to_numpy())
        raise CorpusFormatError(f"{source}: column {corpus.id_column!r} has duplicate ids, first "
                                f"{_shown(ids.iloc[rows].tolist(), [where(r) for r in rows])}")
    ids = (f"{language}-{split}-" if not corpus.parallel else f"{split}-") + ids  # never shared across splits
    texts = {}
    for key, column in (("text", corpus.text_column), ("text_pair", corpus.text_pair_column)):
        if column:
            texts[key] = pd.Series([_text(t) for t in raw[column]], dtype=object)
    keep = pd.Series(True, index=raw.index)
    left_out: dict[str, int] = {}
    if corpus.no_gold_label is not None:
        gold = labels != corpus.no_gold_label
        left_out[f"no gold label ({corpus.no_gold_label})"] = int((~gold).sum())
        keep &= gold
    empty = pd.Series(False, index=raw.index)
    for key, text in texts.items():
        if corpus.untranslated:
            empty |= (text == "") | text.isin(corpus.untranslated)
        elif (text == "").any():
            rows = np.flatnonzero((text == "").to_numpy())
            column = corpus.text_column if key == "text" else corpus.text_pair_column
            raise CorpusFormatError(f"{source}: column {column!r} is empty (or null) in {len(rows)} rows, first "
                                    f"{', '.join(where(r) for r in rows[:3])}; every sample needs its text")
    if corpus.untranslated:
        left_out[f"{' or '.join(corpus.untranslated)} or empty sentence"] = int((empty & keep).sum())
        keep &= ~empty
    out = pd.DataFrame({"pair_id": ids.to_numpy(), "label": labels, **{k: v.to_numpy() for k, v in texts.items()}})
    return Loaded(out[keep.to_numpy()].reset_index(drop=True), ids, labels, source, len(raw), left_out, where)
