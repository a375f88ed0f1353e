"""TracIn's shards: each process of a sharded run writes its share of the training rows (its rows, their scores per
checkpoint, and what it scored with); :func:`merge` assembles exactly the matrix one process computes, refusing
shards that do not fit together. numpy only: the processes themselves are :mod:`helpers.compute.tracin`'s (its
command line, ``python -m helpers.compute.tracin score|merge``).

Why the result is identical to one process's: a training row's scores depend only on its block and on the test bank
(the engine forms per-example gradients batch by batch within a block, and multiplies a block by the bank), so with
the same plan every row is computed by the same operations on the same operands, whichever process computes it.
The merge checks that every row was scored exactly once and that all shards share one plan, checkpoint list and
parameter subset. ``tests/test_tracin_shard.py`` compares a 2-process gloo run with a 1-process run bit for bit.

What a shard belongs to (:data:`RUN_KEYS`, recorded in its ``.json``): the fine-tuning it scored
(:func:`finetune_identity`: its stage commit and a digest of its small record files, the same on every machine
that holds a copy), the plan (world size, row blocks, test chunks), the TracIn parameters (subset, similarity, batch
size, dtype, groups, test rows), the samples scored (:func:`ids_digest` of the training and test id tables, also
checked against the id tables the merge reads), the scoring code (:func:`code_digest`) and, under a launcher, the
launch (a nonce rank 0 draws). The merge refuses shards that differ in any of them, naming both values: shards of
two seeds, or of an earlier run left in the same folder, never merge into one matrix. Scoring never reads an earlier
run's shards either: under a launcher (or alone) rank 0 empties the shard folder before any process writes; a shard
scored apart (``--rank``) refuses to start when the folder holds its own rank already or shards of another run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .scores import InfluenceScores

SHARDS = "shards"
SCORES = "scores"
#: What every shard of one run shares, besides the scores' own layout (checkpoints, shape, subset): a shard that
#: differs in one of them, or lacks it, belongs to another run.
RUN_KEYS = ("finetune", "world", "plan", "params", "similarity", "batch_size", "dtype", "groups", "test_per_language",
            "code", "launch")
#: The fine-tuning stage's small files that record what it trained (its checkpoints and their learning rates, its
#: accuracy per epoch, its settings): a digest of them tells two fine-tunings apart without reading the weights.
_FINETUNE_RECORDS = ("checkpoints.json", "info.json", "accuracy.csv", "stage.json")


class ShardError(ValueError):
    """Shards that do not belong together, or a shard folder that holds another run's."""


def finetune_identity(folder: Path | str) -> dict[str, Any]:
    """What tells a fine-tuning stage folder apart from another (another seed, a recomputation in the same place),
    read from the folder itself so that a copy on another machine has the same identity: its stage commit (None for
    a folder written outside the runner) and a SHA-256 of its record files (:data:`_FINETUNE_RECORDS`)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in _FINETUNE_RECORDS:
        f = folder / name
        digest.update(name.encode() + b"\0" + (f.read_bytes() if f.is_file() else b"(none)") + b"\0")
    try:
        commit = json.loads((folder / "stage.json").read_text()).get("commit")
    except (OSError, ValueError, AttributeError):
        commit = None
    return {"commit": commit, "records": digest.hexdigest()[:16]}


def code_digest() -> str:
    """A SHA-256 of the scoring code (this package's ``influence`` modules and the TracIn stage): shards scored by
    different versions of it are not parts of one matrix."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for f in [*sorted(here.glob("*.py")), here.parent / "compute" / "tracin.py"]:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def ids_digest(train_ids: pd.DataFrame, test_ids: pd.DataFrame) -> str:
    """A digest of the training and test id tables a shard scored (their columns and values, in order): two shards
    of one fine-tuning and plan but other samples (another ``test_per_language`` slice, a reordered table) differ."""
    digest = hashlib.sha256()
    for frame in (train_ids, test_ids):
        digest.update(json.dumps([str(c) for c in frame.columns]).encode() + b"\0")
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes() + b"\0")
    return digest.hexdigest()[:16]


def _differences(meta: dict[str, Any], other: dict[str, Any], keys: tuple[str, ...], here: str = "this shard",
                 there: str = "rank 0's") -> list[str]:
    """``key: value (here) vs value (there)`` for each of ``keys`` that differs or that one of them lacks."""
    return [f"{k}: {meta.get(k, '(not recorded)')!r} ({here}) vs {other.get(k, '(not recorded)')!r} ({there})"
            for k in keys if k not in meta or k not in other or meta[k] != other[k]]


def clear(folder: Path) -> None:
    """Empty a shard folder (rank 0, before any process of a launch writes): an earlier run's shards are never read."""
    for f in folder.glob("*"):
        if f.is_file() and (f.name.startswith(("shard-", ".shard-")) or f.suffix == ".parquet"):
            f.unlink()


def check_free(folder: Path, rank: int, world: int, meta: dict[str, Any]) -> None:
    """Before a shard scored apart (``--rank``) starts its work: refuse when ``folder`` holds this rank's shard
    already (of an earlier run: remove it to score again) or a shard of another run (:data:`RUN_KEYS` differ)."""
    name = _shard_name(rank, world)
    if (folder / f"{name}.json").exists() or (folder / f"{name}.npz").exists():
        raise ShardError(f"{folder} already holds {name} (of an earlier run): a shard is written once; remove it "
                         "(or the whole folder) and score again")
    for other in sorted(folder.glob("shard-*-of-*.json")):
        try:
            theirs = json.loads(other.read_text())
        except (OSError, ValueError):
            raise ShardError(f"{other} cannot be read: remove it and score its rank again") from None
        known = tuple(k for k in RUN_KEYS if k in meta or k == "world")  # (groups: known once scored)
        differ = _differences({**meta, "world": world}, theirs, known, "this run", other.stem)
        if differ:
            raise ShardError(f"{folder} holds {other.stem}, a shard of another run ({'; '.join(differ)}): remove "
                             "the folder's shards, or score into another --out")


def _shard_name(rank: int, world: int) -> str:
    return f"shard-{rank:04d}-of-{world:04d}"


def write_shard(folder: Path, rank: int, world: int, scores: InfluenceScores, rows: np.ndarray,
                meta: dict[str, Any]) -> Path:
    """Write process ``rank``'s rows of ``scores`` (an :class:`~.scores.InfluenceScores` whose other rows are
    unscored) as ``shard-<rank>-of-<world>.npz`` + ``.json`` in ``folder`` (written under a temporary name, then
    renamed: a shard that exists is complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"rows": rows.astype(np.int64), "scores": scores.per_checkpoint[:, rows, :]}
    for g, v in scores.groups.items():
        arrays[f"group/{g}/dot"] = v["dot"][:, rows, :]
        arrays[f"group/{g}/train_sq"] = v["train_sq"][:, rows]
        arrays[f"group/{g}/test_sq"] = v["test_sq"]
    name = _shard_name(rank, world)
    if (folder / f"{name}.json").exists():
        raise ShardError(f"{folder} already holds {name}: a shard is written once (remove it to score again)")
    tmp = folder / f".{name}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    info = {**meta, "rank": rank, "world": world, "n_rows": int(len(rows)),
            "checkpoints": list(scores.checkpoints), "learning_rates": [float(x) for x in scores.learning_rates],
            "similarity": scores.similarity, "params": scores.params,
            "groups": {g: v["spec"] for g, v in scores.groups.items()}, "shape": list(scores.per_checkpoint.shape),
            "ids": ids_digest(scores.train_ids, scores.test_ids)}
    (folder / f".{name}.tmp.json").write_text(json.dumps(info, indent=2))
    if rank == 0:  # before the shard itself: rank 0's shard never stands beside an earlier run's id tables
        scores.train_ids.to_parquet(folder / "train_ids.parquet", index=False)
        scores.test_ids.to_parquet(folder / "test_ids.parquet", index=False)
    tmp.rename(folder / f"{name}.npz")
    (folder / f".{name}.tmp.json").rename(folder / f"{name}.json")
    return folder / f"{name}.npz"


def merge(folder: Path | str, expect: dict[str, Any] | None = None) -> InfluenceScores:
    """Assemble the shards in ``folder`` into one :class:`~.scores.InfluenceScores` (numpy only), checking that
    they come from one run (the same :data:`RUN_KEYS`: fine-tuning, plan, parameters, code, launch; the same
    checkpoints, subset and shape) and cover every row exactly once. ``expect``: values of :data:`RUN_KEYS` every
    shard must hold (rank 0 of a launch passes its own: a shard of another run is refused even when it is alone)."""
    folder = Path(folder)
    metas = {}
    for p in sorted(folder.glob("shard-*-of-*.json")):
        try:
            metas[p.stem] = json.loads(p.read_text())
        except (OSError, ValueError):
            raise ShardError(f"{p} cannot be read (damaged?): remove it and score its rank again") from None
    if not metas:
        raise FileNotFoundError(f"no shard-*-of-*.json in {folder}: run the score command first")
    rank0 = metas.get(_shard_name(0, next(iter(metas.values())).get("world", 0)))
    first = rank0 if rank0 is not None else next(iter(metas.values()))
    shared = (*RUN_KEYS, "checkpoints", "learning_rates", "shape", "ids")
    for name, meta in metas.items():
        if expect is not None:
            differ = _differences(meta, expect, tuple(expect), name, "this run")
            if differ:
                raise ShardError(f"{folder}/{name} is a shard of another run ({'; '.join(differ)}); remove the "
                                 "folder's shards and score again")
        differ = _differences(meta, first, shared, name)
        if differ:
            raise ShardError(f"{folder}/{name} and rank 0's shard come from different runs ({'; '.join(differ)}); "
                             "remove the folder's shards and score again (shards scored apart: give every process "
                             "the same --finetune, --train-block, --test-chunk and parameters)")
    world = first["world"]
    missing = [r for r in range(world) if _shard_name(r, world) not in metas]
    if missing or len(metas) != world:
        raise ShardError(f"{folder}: {len(metas)} shard(s) for a world of {world}; missing ranks {missing} (score "
                         "them with the same settings, then merge)")
    c, n_train, n_test = first["shape"]
    out = np.zeros((c, n_train, n_test), dtype=np.float32)
    groups = {g: {"spec": spec, "dot": np.zeros_like(out), "train_sq": np.zeros((c, n_train), np.float32),
                  "test_sq": None} for g, spec in first["groups"].items()}
    seen = np.zeros(n_train, dtype=np.int64)
    for rank in range(world):
        with np.load(folder / f"{_shard_name(rank, world)}.npz") as z:
            rows = z["rows"]
            seen[rows] += 1
            out[:, rows, :] = z["scores"]
            for g, v in groups.items():
                v["dot"][:, rows, :] = z[f"group/{g}/dot"]
                v["train_sq"][:, rows] = z[f"group/{g}/train_sq"]
                if v["test_sq"] is None:
                    v["test_sq"] = z[f"group/{g}/test_sq"]
                elif not np.array_equal(v["test_sq"], z[f"group/{g}/test_sq"]):
                    raise ValueError(f"{folder}: rank {rank}'s test gradient norms of group {g!r} differ from rank "
                                     "0's: the processes did not compute the same test bank")
    train_ids, test_ids = pd.read_parquet(folder / "train_ids.parquet"), pd.read_parquet(folder / "test_ids.parquet")
    if ids_digest(train_ids, test_ids) != first.get("ids"):
        raise ShardError(f"{folder}: train_ids.parquet / test_ids.parquet are not the samples the shards scored (ids "
                         f"{ids_digest(train_ids, test_ids)} vs {first.get('ids')!r}); remove the folder's shards and "
                         "score again")
    if (seen != 1).any():
        bad = np.flatnonzero(seen != 1)
        raise ValueError(f"{folder}: {bad.size} training rows were scored {sorted(set(seen[bad].tolist()))} times "
                         f"instead of once, e.g. row {int(bad[0])}")
    return InfluenceScores(per_checkpoint=out, checkpoints=first["checkpoints"], learning_rates=first["learning_rates"],
                           train_ids=train_ids, test_ids=test_ids, similarity=first["similarity"],
                           params=first["params"], groups=groups)
