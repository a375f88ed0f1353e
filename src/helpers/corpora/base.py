"""One small interface for every corpus, and the loader and sampler shared by the hub corpora.

A corpus (:class:`Corpus`) says which languages it has, which classification tasks (``label`` parameter values,
:class:`Label`), whether its items are parallel across languages and by which id, whether a sample is a sentence pair,
and loads one split of one language as a frame with ``pair_id`` (the id that links translations, or a per-language
id), ``label`` (an int), ``text`` and, for sentence pairs, ``text_pair``. :meth:`Corpus.sample_keys` draws which
items each language trains and tests on (the run's ``data`` stage parameters) and :meth:`Corpus.build_splits` returns
the two frames every later stage reads (columns :data:`COLUMNS`, plus ``text_pair`` for sentence pairs).

The hub corpora (XNLI, PAWS-X, MARC: :class:`HubCorpus`) load through ``datasets`` by their hub id, or, when the
``corpus_dir`` parameter names a directory, from local files in the same schema (the hub's column names)::

    <corpus_dir>/<language>/<split>.jsonl     (or .json, .parquet, .csv, .tsv)
    <corpus_dir>/<language>/<split>/*.parquet  (the hub's own parquet export)

with ``<split>`` one of ``train``, ``validation``, ``test``. Such a copy is written where a network exists with, e.g.,
``datasets.load_dataset("facebook/xnli", "de", split="test").to_json("<corpus_dir>/de/test.jsonl")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: The parameter that names a local copy of a hub corpus.
CORPUS_DIR_PARAM = "corpus_dir"
#: The columns of the frames the data stage writes (sentence-pair corpora add ``text_pair``).
COLUMNS = ["uid", "split", "language", "pair_id", "book", "label", "label_name", "permuted", "text"]
SPLITS = ("train", "validation", "test")
_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}


class SizeError(ValueError):
    """The corpus has too few samples for the requested sample sizes."""


class CorpusUnavailableError(RuntimeError):
    """A hub corpus can be loaded neither from the hub nor from ``corpus_dir``; the message says what to set."""


@dataclass(frozen=True)
class Label:
    """A classification task of a corpus: its class names (class ``i`` is ``names[i]``)."""

    names: tuple[str, ...]
    help: str


def given_dir(corpus_dir: str | Path | None) -> Path | None:
    return None if corpus_dir in (None, "", "none") else Path(corpus_dir).expanduser()


def balanced(pool: pd.DataFrame, n: int, n_labels: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` rows of ``pool`` with the labels as even as possible (the first ``n % n_labels`` labels get one more)."""
    parts = []
    for cls in range(n_labels):
        want = n // n_labels + (1 if cls < n % n_labels else 0)
        rows = pool[pool["label"] == cls]
        if len(rows) < want:
            raise SizeError(f"label class {cls} has {len(rows)} samples left, {want} needed; lower "
                            "train_per_language, test_per_language or imbalance_factor")
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


@lru_cache(maxsize=64)
def _read_local(path: str, fmt: str, delimiter: str | None) -> pd.DataFrame:
    import datasets

    kwargs = {"delimiter": delimiter} if delimiter else {}
    ds = datasets.load_dataset(fmt, data_files=path, split="train", **kwargs)
    return ds.to_pandas()


@lru_cache(maxsize=64)
def _read_hub(hub_id: str, config: str, split: str) -> pd.DataFrame:
    import datasets

    return datasets.load_dataset(hub_id, config, split=split).to_pandas()


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
    text_pair_column: str | None = None
    id_column: str | None = None
    #: The hub's configuration of each language, when it is not the language code.
    configs: dict[str, str] = field(default_factory=dict)

    @property
    def pairs(self) -> bool:  # type: ignore[override]
        return self.text_pair_column is not None

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.id_column, self.text_column, self.text_pair_column, self.label_column) if c]

    # -- loading ------------------------------------------------------------------------------------------------

    def _local_file(self, root: Path, language: str, split: str) -> tuple[str, str, str | None]:
        if not root.is_dir():
            raise CorpusUnavailableError(
                f"parameter {CORPUS_DIR_PARAM!r} is {str(root)!r}, which is not a directory; expected a local copy of "
                f"{self.hub_id} laid out as <{CORPUS_DIR_PARAM}>/<language>/<split>.jsonl (or .json, .parquet, .csv, "
                f".tsv, or <split>/*.parquet) with the columns {self.columns}")
        for suffix, fmt in _FORMATS.items():
            path = root / language / f"{split}{suffix}"
            if path.is_file():
                return str(path), fmt, "\t" if suffix == ".tsv" else None
        shards = sorted((root / language / split).glob("*.parquet"))
        if shards:
            return str(root / language / split / "*.parquet"), "parquet", None
        raise CorpusUnavailableError(
            f"parameter {CORPUS_DIR_PARAM!r} is {str(root)!r}, but it has no {language}/{split}.jsonl (nor .json, "
            f".parquet, .csv, .tsv, {split}/*.parquet): corpus {self.name!r} needs split {split!r} of language "
            f"{language!r} there, with the columns {self.columns}")

    def load_split(self, language: str, split: str, corpus_dir: str | None = None) -> pd.DataFrame:
        """One split of one language: ``pair_id`` (str), ``label`` (int), ``text`` (and ``text_pair``), in the
        corpus's order. From ``corpus_dir`` when given, else from the hub (``datasets`` caches it)."""
        if language not in self.languages:
            raise ValueError(f"corpus {self.name!r} has no language {language!r}; allowed: {list(self.languages)}")
        if split not in SPLITS:
            raise ValueError(f"split {split!r}; allowed: {list(SPLITS)}")
        root = given_dir(corpus_dir)
        if root is not None:
            raw = _read_local(*self._local_file(root, language, split))
            where = f"{CORPUS_DIR_PARAM} {str(root)!r}"
        else:
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
            where = f"{self.hub_id} ({config})"
        missing = [c for c in self.columns if c not in raw.columns]
        if missing:
            raise CorpusUnavailableError(f"{where}, {language}/{split}: columns {missing} missing (found "
                                         f"{list(raw.columns)}); corpus {self.name!r} needs {self.columns}")
        n_labels = len(next(iter(self.labels.values())).names)
        labels = pd.to_numeric(raw[self.label_column], errors="coerce")
        keep = labels.between(0, n_labels - 1)  # XNLI marks a few items -1 (no gold label): left out
        raw, labels = raw[keep], labels[keep].astype(int)
        ids = raw[self.id_column].astype(str) if self.id_column else pd.Series(raw.index.astype(str), index=raw.index)
        if not self.parallel:  # ids are per language: never let two languages' items look like translations
            ids = language + "-" + ids
        out = pd.DataFrame({"pair_id": ids.to_numpy(), "label": labels.to_numpy(),
                            "text": [" ".join(str(t).split()) for t in raw[self.text_column]]})
        if self.pairs:
            out["text_pair"] = [" ".join(str(t).split()) for t in raw[self.text_pair_column]]
        if out["pair_id"].duplicated().any():
            raise CorpusUnavailableError(f"{where}, {language}/{split}: column {self.id_column!r} has duplicate ids")
        return out

    # -- sampling -----------------------------------------------------------------------------------------------

    def sample_keys(self, cfg: Mapping[str, Any]) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame],
                                                          np.random.Generator]:
        """Which items each language trains and tests on, with their texts.

        Test: ``test_per_language`` items per test language from the ``test`` split, balanced over labels; for a
        parallel corpus the same items (by ``pair_id``) in every test language (a parallel test set), otherwise
        drawn per language. Training: from the ``train`` split, ``train_per_language`` items per fine-tuning language
        (``imbalance_factor`` times more for the ``imbalance_language``), balanced over labels; ``parallel_train``
        (parallel corpora only) takes the same items in every language, otherwise items are disjoint across
        languages (for a parallel corpus no item is trained on in two languages)."""
        corpus_dir = cfg.get(CORPUS_DIR_PARAM, "none")
        ft, zs = list(cfg["fine_tune_languages"]), list(cfg["zero_shot_languages"])
        n_labels = len(self.labels[cfg["label"]].names)
        rng = np.random.default_rng(cfg["seed"])
        n_test = cfg["test_per_language"]
        test_keys: dict[str, pd.DataFrame] = {}
        if self.parallel:
            frames = {lang: self.load_split(lang, "test", corpus_dir).set_index("pair_id") for lang in ft + zs}
            common = sorted(set.intersection(*(set(f.index) for f in frames.values())))
            first = frames[(ft + zs)[0]].loc[common]
            chosen = balanced(first.reset_index()[["pair_id", "label"]], n_test, n_labels, rng)["pair_id"]
            for lang, frame in frames.items():
                test_keys[lang] = frame.loc[chosen.to_numpy()].reset_index()
        else:
            for lang in ft + zs:
                test_keys[lang] = balanced(self.load_split(lang, "test", corpus_dir), n_test, n_labels, rng)
        sizes, base = train_sizes(cfg), cfg["train_per_language"]
        pools = {lang: self.load_split(lang, "train", corpus_dir) for lang in ft}
        train_keys: dict[str, pd.DataFrame] = {}
        if cfg.get("parallel_train"):
            common = set.intersection(*(set(p["pair_id"]) for p in pools.values()))
            first = pools[ft[0]][pools[ft[0]]["pair_id"].isin(common)]
            shared = balanced(first, base, n_labels, rng)["pair_id"]
            used = set(shared)
            for lang in ft:
                pool = pools[lang].set_index("pair_id", drop=False)
                extra = (balanced(pools[lang][~pools[lang]["pair_id"].isin(used)], sizes[lang] - base, n_labels, rng)
                         if sizes[lang] > base else pool.iloc[:0])
                used |= set(extra["pair_id"])
                train_keys[lang] = pd.concat([pool.loc[shared.to_numpy()], extra]).reset_index(drop=True)
        else:
            used: set[str] = set()
            for lang in ft:
                pool = pools[lang][~pools[lang]["pair_id"].isin(used)] if self.parallel else pools[lang]
                train_keys[lang] = balanced(pool, sizes[lang], n_labels, rng)
                if self.parallel:
                    used |= set(train_keys[lang]["pair_id"])
        return train_keys, test_keys, rng

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
