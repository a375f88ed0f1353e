"""TracIn over several processes: each scores its share of the training rows at every checkpoint and writes its own
shard; a merge assembles exactly the matrix one process computes.

On several GPUs (or several CPU processes), launched by ``torchrun`` or ``accelerate launch``::

    torchrun --standalone --nproc_per_node 4 -m helpers.influence.shard score \\
        --finetune artifacts/<study>/stages/finetune-<id> --out tracin-all --params all
    accelerate launch --num_processes 4 -m helpers.influence.shard score --finetune ... --out ...

or from the pipeline, with the TracIn stage's parameter ``tracin_processes`` (``-p tracin_processes=4``), which runs
the same command (:func:`launch`, from :func:`helpers.compute.tracin.score_finetune`). Each process reads
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from its launcher and joins a ``torch.distributed`` process group (NCCL on
CUDA, gloo on CPU): process 0 plans the walk over the data (:meth:`helpers.influence.engine.TracIn.plan`) and
broadcasts it, every process computes the test-gradient bank and scores the training blocks
:func:`helpers.influence.engine.shard_blocks` gives it (``rank, rank + world, ...``), on ``cuda:<LOCAL_RANK>`` when
CUDA is present, and writes ``<out>/shards/shard-<rank>-of-<world>.npz`` (its rows, their scores, per checkpoint)
and a ``.json`` (what it scored with). After a barrier process 0 merges them (:func:`merge`) into ``<out>/scores``
(:class:`helpers.influence.scores.InfluenceScores`, what every analysis reads) and removes the shards. The settings'
defaults and allowed values are the parameter table's (:data:`helpers.config.PARAMETERS`).

Why the result is identical to one process's: a training row's scores depend only on its block and on the test bank
(the engine forms per-example gradients batch by batch within a block, and multiplies a block by the bank), so with
the same plan every row is computed by the same operations on the same operands, whichever process computes it.
The merge checks that every row was scored exactly once and that all shards share one plan, checkpoint list and
parameter subset. ``tests/test_tracin_shard.py`` compares a 2-process gloo run with a 1-process run bit for bit. (On
CPU, keep the thread count equal: torchrun sets ``OMP_NUM_THREADS=1`` for its processes.)

Shards computed apart (other jobs, other machines): ``score --rank R --world-size W --train-block B --test-chunk C``
without a launcher, then ``python -m helpers.influence.shard merge --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import config
from ..runtime import DEVICES, PRECISIONS
from .scores import InfluenceScores

#: A TracIn stage's settings: their defaults and allowed values are the parameter table's.
_PARAMS, _SIMILARITY, _BATCH_SIZE, _DEVICE = (config.PARAMETERS[k] for k in (
    "tracin_params", "tracin_similarity", "tracin_batch_size", "device"))
#: The dtypes a process computes in (``auto`` is resolved before: :func:`helpers.influence.precision.choose_dtype`).
_DTYPES = tuple(p for p in PRECISIONS if p != "auto")

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


def _parse_groups(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    out = {}
    for item in text.split(","):  # (a re: spec holding a comma cannot be passed this way)
        name, sep, spec = item.partition("=")
        if not sep:
            raise ValueError(f"--groups takes name=spec,name=spec (e.g. head=classifier,all=all); got {item!r}")
        out[name.strip()] = spec.strip()
    return out


def score(args: argparse.Namespace) -> Path | None:
    """The ``score`` command in one process of the group (or alone)."""
    import torch  # here, not at the top: the merge command needs neither torch nor the engine
    import torch.distributed as dist

    from ..compute.tracin import engine_for, inputs  # which launches this command (so imported here)
    from .engine import Plan, shard_blocks

    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = env_world > 1 and args.rank is None
    rank = int(os.environ.get("RANK", "0")) if args.rank is None else args.rank
    world = env_world if args.rank is None else args.world_size
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = args.device != "cpu" and torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise SystemExit("error: --device cuda but torch sees no CUDA device")
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if distributed:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        ft, test, test_ids = inputs(args.finetune, args.test_per_language)
        engine = engine_for(ft, device, args.dtype, params=args.params, similarity=args.similarity,
                            batch_size=args.batch_size, groups=_parse_groups(args.groups),
                            test_chunk_size=args.test_chunk)
        if args.train_block is not None and args.test_chunk is not None:
            plan = Plan(test_chunk=args.test_chunk, train_block=args.train_block, dense_bank=not args.factored_bank)
        else:
            plan = engine.plan(ft.train, test) if rank == 0 or not distributed else None
            if args.train_block is not None:
                plan = Plan(plan.test_chunk, args.train_block, plan.dense_bank) if plan else None
        if distributed:
            box = [asdict(plan) if plan else None]
            dist.broadcast_object_list(box, src=0)
            plan = Plan(**box[0])
        scores = engine.scores(ft.train, test, train_ids=ft.ids("train"), test_ids=test_ids,
                               progress=rank == 0 and not args.quiet, plan=plan, shard=(rank, world))
        rows = np.concatenate([np.arange(b.start, b.stop) for b in shard_blocks(len(ft.train), plan.train_block,
                                                                                rank, world)] or [np.zeros(0, int)])
        out = Path(args.out)
        meta = {"plan": asdict(plan), "dtype": args.dtype, "finetune": str(Path(args.finetune).resolve()),
                "device": str(device)}
        write_shard(out / SHARDS, rank, world, scores, rows, meta)
        if distributed:
            dist.barrier()
        if rank == 0 and (distributed or world == 1):
            merged = merge(out / SHARDS).save(out / SCORES)
            if not args.keep_shards:
                shutil.rmtree(out / SHARDS, ignore_errors=True)
            return merged
        return None
    finally:
        if distributed:
            dist.destroy_process_group()


def launch(processes: int, finetune_folder: Path | str, out: Path | str, params: str = _PARAMS.default,
           similarity: str = _SIMILARITY.default, batch_size: int = _BATCH_SIZE.default, device: str = _DEVICE.default,
           dtype: str = "fp32", groups: dict[str, str] | None = None, train_block: int | None = None,
           test_per_language: int | None = None, quiet: bool = False) -> Path:
    """Run :func:`score` in ``processes`` processes with ``torchrun`` (what the TracIn stage does with
    ``tracin_processes`` > 1); returns ``<out>/scores``. The launcher's output goes to this process's."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(processes)}",
           "-m", "helpers.influence.shard", "score", "--finetune", str(finetune_folder), "--out", str(out),
           "--params", params, "--similarity", similarity, "--batch-size", str(batch_size), "--device", device,
           "--dtype", dtype]
    if groups:
        cmd += ["--groups", ",".join(f"{name}={spec}" for name, spec in groups.items())]
    cmd += ["--train-block", str(train_block)] if train_block else []
    cmd += ["--test-per-language", str(test_per_language)] if test_per_language else []
    subprocess.run(cmd + (["--quiet"] if quiet else []), check=True)
    return Path(out) / SCORES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.influence.shard", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score", help="score this process's share of the training rows (under torchrun: all of them)")
    p.add_argument("--finetune", required=True, help="a fine-tuning stage folder (checkpoints and tokenised samples)")
    p.add_argument("--out", required=True, help="output folder: <out>/scores after the merge")
    p.add_argument("--params", default=_PARAMS.default, help="parameter subset (all, classifier, last_layers:N, "
                   "embeddings, re:<regex>)")
    p.add_argument("--similarity", default=_SIMILARITY.default, choices=_SIMILARITY.allowed())
    p.add_argument("--groups", help="name=spec,... parameter groups scored in the same pass (see TracIn(groups=))")
    p.add_argument("--test-per-language", type=int, help="score only the first N test samples of each language")
    p.add_argument("--batch-size", type=int, default=_BATCH_SIZE.default)
    p.add_argument("--device", default=_DEVICE.default, choices=DEVICES)
    p.add_argument("--dtype", default="fp32", choices=_DTYPES)
    p.add_argument("--train-block", type=int, help="training rows per block (default: planned by rank 0)")
    p.add_argument("--test-chunk", type=int, help="test samples per bank (default: planned by rank 0)")
    p.add_argument("--factored-bank", action="store_true", help="with --train-block and --test-chunk: keep the "
                   "bank factored (less memory) instead of formed once")
    p.add_argument("--rank", type=int, help="without a launcher: this shard's rank (needs --world-size, "
                   "--train-block and --test-chunk); merge afterwards with the merge command")
    p.add_argument("--world-size", type=int, help="without a launcher: the number of shards")
    p.add_argument("--keep-shards", action="store_true", help="keep <out>/shards after merging")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    m = sub.add_parser("merge", help="merge <out>/shards into <out>/scores")
    m.add_argument("--out", required=True)
    m.add_argument("--keep-shards", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "merge":
            merge(Path(args.out) / SHARDS).save(Path(args.out) / SCORES)
            if not args.keep_shards:
                shutil.rmtree(Path(args.out) / SHARDS, ignore_errors=True)
            return 0
        if args.rank is not None and (args.world_size is None or args.train_block is None or args.test_chunk is None):
            parser.error("--rank needs --world-size, --train-block and --test-chunk (every shard must follow one plan)")
        if args.rank is not None and not 0 <= args.rank < args.world_size:
            parser.error(f"--rank {args.rank} is not in 0..{args.world_size - 1}")
        score(args)
        return 0
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
