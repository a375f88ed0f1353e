"""TracIn's results, numpy and pandas only (the analyses read them without loading torch): the score matrices with
the ids of their rows and columns (:class:`InfluenceScores`, saved and loaded as a folder), self-influence
(:class:`SelfInfluence`), and :func:`top_rows`, the one definition of "the top-k"."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..artifacts import replace_dir
from .subsets import DEFAULT_PARAMS

SIMILARITIES = ("dot", "cosine")
KINDS = ("proponents", "opponents")


def checkpoint_epoch(name: str) -> float:
    """Epochs done at a checkpoint, from the name fine-tuning gives it (``step0`` -> 0, ``epoch0.5`` -> 0.5,
    ``epoch3`` -> 3)."""
    if name == "step0":
        return 0.0
    if name.startswith("epoch"):
        return float(name[5:])
    raise ValueError(f"checkpoint name {name!r} is neither 'step0' nor 'epoch<e>'")


def top_rows(values: np.ndarray, k: int, kind: str = "proponents") -> np.ndarray:
    """(k, n_test) training rows of the ``k`` highest (proponents) or lowest (opponents) scores of each column of a
    (n_train, n_test) matrix, strongest first; ties broken by the lower training row. The one definition of "the
    top-k" that :meth:`InfluenceScores.top_k` and every analysis use."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    if not 1 <= k <= values.shape[0]:
        raise ValueError(f"k={k} must be in 1..{values.shape[0]} (the number of training samples)")
    signed = -values if kind == "proponents" else values
    return np.argsort(signed, axis=0, kind="stable")[:k]



def _write_atomically(directory: Path, write: Callable[[Path], None]) -> Path:
    """Write into a temporary sibling directory, then rename it into place (replacing any earlier result)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory



@dataclass
class InfluenceScores:
    """TracIn scores of every (training, test) pair, per checkpoint, with the ids of rows and columns.

    ``per_checkpoint[c, i, j]`` is checkpoint ``c``'s score (learning rate included) of training row ``i`` on test
    column ``j``; ``train_ids``/``test_ids`` have one row per sample, aligned with rows/columns.
    """

    per_checkpoint: np.ndarray
    checkpoints: list[str]
    learning_rates: list[float]
    train_ids: pd.DataFrame
    test_ids: pd.DataFrame
    similarity: str = "dot"
    params: str = DEFAULT_PARAMS
    #: From ``TracIn(groups=...)``: per group, its ``spec``, ``dot`` scores (like ``per_checkpoint``) and the squared
    #: gradient norms ``train_sq`` (n_checkpoints, n_train) and ``test_sq`` (n_checkpoints, n_test).
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)

    def group(self, name: str, similarity: str = "dot") -> InfluenceScores:
        """One group's scores as a plain :class:`InfluenceScores` (``cosine``: each checkpoint's dot products divided
        by the two gradient norms, as ``TracIn(params=spec, similarity="cosine")`` computes them)."""
        if name not in self.groups:
            raise ValueError(f"group {name!r} is not one of {list(self.groups)}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity={similarity!r} is not one of {SIMILARITIES}")
        g = self.groups[name]
        values = g["dot"]
        if similarity == "cosine":
            tiny = np.finfo(np.float32).tiny
            norms = (np.sqrt(np.maximum(g["train_sq"], tiny))[:, :, None]
                     * np.sqrt(np.maximum(g["test_sq"], tiny))[:, None, :])
            values = (values / norms).astype(np.float32)
        return InfluenceScores(values, list(self.checkpoints), list(self.learning_rates), self.train_ids,
                               self.test_ids, similarity=similarity, params=g["spec"])

    def __post_init__(self) -> None:
        c, n_train, n_test = self.per_checkpoint.shape
        if (len(self.checkpoints), len(self.learning_rates), len(self.train_ids), len(self.test_ids)) != (
                c, c, n_train, n_test):
            raise ValueError(f"scores of shape {self.per_checkpoint.shape} do not match {len(self.checkpoints)} "
                             f"checkpoints, {len(self.train_ids)} training ids and {len(self.test_ids)} test ids")

    @property
    def total(self) -> np.ndarray:
        """(n_train, n_test) sum over checkpoints."""
        return self.per_checkpoint.sum(0, dtype=np.float64).astype(np.float32)

    def matrix(self, checkpoint: str | None = None) -> np.ndarray:
        """The scores of one checkpoint (by name), or the total when ``checkpoint`` is None."""
        if checkpoint is None:
            return self.total
        if checkpoint not in self.checkpoints:
            raise ValueError(f"checkpoint={checkpoint!r} is not one of {self.checkpoints}")
        return self.per_checkpoint[self.checkpoints.index(checkpoint)]

    def top_k(self, k: int, kind: str = "proponents", checkpoint: str | None = None) -> pd.DataFrame:
        """The ``k`` most positive (proponents) or most negative (opponents) training samples of every test sample.

        A long table: ``test_row, rank (1 = strongest), train_row, score``, then the test id columns prefixed
        ``test_`` and the training id columns prefixed ``train_``. Ties are broken by training row.
        """
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {KINDS}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        scores = self.matrix(checkpoint)
        k = min(int(k), scores.shape[0])
        cols = np.arange(scores.shape[1])
        train_rows = top_rows(scores, k, kind)
        table = pd.DataFrame({
            "test_row": np.repeat(cols, k),
            "rank": np.tile(np.arange(1, k + 1), len(cols)),
            "train_row": train_rows.T.reshape(-1),
        })
        table["score"] = scores[table["train_row"].to_numpy(), table["test_row"].to_numpy()]
        test = self.test_ids.add_prefix("test_").iloc[table["test_row"]].reset_index(drop=True)
        train = self.train_ids.add_prefix("train_").iloc[table["train_row"]].reset_index(drop=True)
        return pd.concat([table, test, train], axis=1)

    def save(self, directory: str | Path) -> Path:
        """Write ``scores.npy``, ``train_ids.parquet``, ``test_ids.parquet`` and ``meta.json`` (atomically)."""
        meta = {"groups": {g: v["spec"] for g, v in self.groups.items()}, "checkpoints": list(self.checkpoints),
                "learning_rates": [float(x) for x in self.learning_rates], "similarity": self.similarity,
                "params": self.params, "shape": list(self.per_checkpoint.shape)}

        def write(tmp: Path) -> None:
            np.save(tmp / "scores.npy", np.ascontiguousarray(self.per_checkpoint, dtype=np.float32))
            self.train_ids.to_parquet(tmp / "train_ids.parquet", index=False)
            self.test_ids.to_parquet(tmp / "test_ids.parquet", index=False)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            if self.groups:
                np.savez(tmp / "groups.npz", **{f"{g}/{key}": v[key] for g, v in self.groups.items()
                                                for key in ("dot", "train_sq", "test_sq")})

        return _write_atomically(Path(directory), write)

    @classmethod
    def load(cls, directory: str | Path) -> InfluenceScores:
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        return cls(per_checkpoint=np.load(directory / "scores.npy"), checkpoints=meta["checkpoints"],
                   learning_rates=meta["learning_rates"], train_ids=pd.read_parquet(directory / "train_ids.parquet"),
                   test_ids=pd.read_parquet(directory / "test_ids.parquet"), similarity=meta["similarity"],
                   params=meta["params"], groups=cls._load_groups(directory, meta.get("groups", {})))

    @staticmethod
    def _load_groups(directory: Path, specs: dict[str, str]) -> dict[str, dict[str, Any]]:
        if not specs:
            return {}
        with np.load(directory / "groups.npz") as arrays:
            return {g: {"spec": spec, **{key: arrays[f"{g}/{key}"] for key in ("dot", "train_sq", "test_sq")}}
                    for g, spec in specs.items()}


@dataclass
class SelfInfluence:
    """Self-influence ``sum_c lr_c ||g_c(i)||^2`` of every training sample (``np.asarray`` gives per_checkpoint)."""

    per_checkpoint: np.ndarray  # (n_checkpoints, n_train)
    checkpoints: list[str]
    learning_rates: list[float]
    train_ids: pd.DataFrame

    @property
    def total(self) -> np.ndarray:
        return self.per_checkpoint.sum(0, dtype=np.float64).astype(np.float32)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self.per_checkpoint if dtype is None else self.per_checkpoint.astype(dtype)

    def to_frame(self) -> pd.DataFrame:
        """The training ids with a ``self_influence`` column (total) and one column per checkpoint."""
        frame = self.train_ids.copy()
        frame["self_influence"] = self.total
        for name, values in zip(self.checkpoints, self.per_checkpoint):
            frame[f"self_influence_{name}"] = values
        return frame

