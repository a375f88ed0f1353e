"""TracIn's shards: each process of a sharded run writes its share of the training rows (its rows, their scores per
checkpoint, and what it scored with); :func:`merge` assembles exactly the matrix one process computes, refusing
shards that do not fit together. numpy only: the processes themselves are :mod:`helpers.compute.tracin`'s (its
command line, ``python -m helpers.compute.tracin score|merge``).

Why the result is identical to one process's: a training row's scores depend only on its block and on the test bank
(the engine forms per-example gradients batch by batch within a block, and multiplies a block by the bank), so with
the same plan every row is computed by the same operations on the same operands, whichever process computes it.
The merge checks that every row was scored exactly once and that all shards share one plan, checkpoint list and
parameter subset. ``tests/test_tracin_shard.py`` compares a 2-process gloo run with a 1-process run bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .scores import InfluenceScores

SHARDS = "shards"
SCORES = "scores"


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
    tmp = folder / f".{name}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    info = {**meta, "rank": rank, "world": world, "n_rows": int(len(rows)),
            "checkpoints": list(scores.checkpoints), "learning_rates": [float(x) for x in scores.learning_rates],
            "similarity": scores.similarity, "params": scores.params,
            "groups": {g: v["spec"] for g, v in scores.groups.items()}, "shape": list(scores.per_checkpoint.shape)}
    (folder / f".{name}.tmp.json").write_text(json.dumps(info, indent=2))
    tmp.rename(folder / f"{name}.npz")
    (folder / f".{name}.tmp.json").rename(folder / f"{name}.json")
    if rank == 0:
        scores.train_ids.to_parquet(folder / "train_ids.parquet", index=False)
        scores.test_ids.to_parquet(folder / "test_ids.parquet", index=False)
    return folder / f"{name}.npz"


def merge(folder: Path | str) -> InfluenceScores:
    """Assemble the shards in ``folder`` into one :class:`~.scores.InfluenceScores` (numpy only), checking that
    they come from one run (same world size, plan, checkpoints, subset, shape) and cover every row exactly once."""
    folder = Path(folder)
    metas = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("shard-*-of-*.json"))}
    if not metas:
        raise FileNotFoundError(f"no shard-*-of-*.json in {folder}: run the score command first")
    first = next(iter(metas.values()))
    world = first["world"]
    missing = [r for r in range(world) if _shard_name(r, world) not in metas]
    if missing or len(metas) != world:
        raise ValueError(f"{folder}: {len(metas)} shard(s) for a world of {world}; missing ranks {missing} (or shards "
                         "of another run: remove the folder and score again)")
    shared = ("world", "plan", "checkpoints", "learning_rates", "similarity", "params", "groups", "shape", "dtype")
    for name, meta in metas.items():
        differ = [k for k in shared if meta.get(k) != first.get(k)]
        if differ:
            raise ValueError(f"{folder}/{name}: {differ} differ from rank 0's; the shards come from different runs "
                             f"(e.g. different plans: give every process --train-block and --test-chunk)")
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
    if (seen != 1).any():
        bad = np.flatnonzero(seen != 1)
        raise ValueError(f"{folder}: {bad.size} training rows were scored {sorted(set(seen[bad].tolist()))} times "
                         f"instead of once, e.g. row {int(bad[0])}")
    return InfluenceScores(per_checkpoint=out, checkpoints=first["checkpoints"], learning_rates=first["learning_rates"],
                           train_ids=pd.read_parquet(folder / "train_ids.parquet"),
                           test_ids=pd.read_parquet(folder / "test_ids.parquet"), similarity=first["similarity"],
                           params=first["params"], groups=groups)
