"""The TracIn stage, and the one computation both TracIn stages run (``03_tracin``: every test sample on one
parameter subset; ``04_tracin_groups``: the first test samples of each language, every group in one full-model pass,
:mod:`helpers.compute.tracin_groups`): load the fine-tuning outputs, choose the dtype, score in this process or over
several, save ``<out>/scores`` (:func:`score_finetune`). The engine is loaded inside the functions: reading this
stage's declaration (every chapter downstream does) loads no torch.

TracIn over several processes: each scores its share of the training rows at every checkpoint and writes its own
shard (:mod:`helpers.influence.shard`); a merge assembles exactly the matrix one process computes.

On several GPUs (or several CPU processes), launched by ``torchrun`` or ``accelerate launch``::

    torchrun --standalone --nproc_per_node 4 -m helpers.compute.tracin score \\
        --finetune artifacts/<study>/stages/finetune-<id> --out tracin-all --params all
    accelerate launch --num_processes 4 -m helpers.compute.tracin score --finetune ... --out ...

or from the pipeline, with the TracIn stage's parameter ``tracin_processes`` (``-p tracin_processes=4``), which runs
the same command (:func:`launch`, from :func:`score_finetune`). Each process reads
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from its launcher and joins a ``torch.distributed`` process group (NCCL on
CUDA, gloo on CPU): process 0 plans the walk over the data (:meth:`helpers.influence.engine.TracIn.plan`) and
broadcasts it, every process computes the test-gradient bank and scores the training blocks
:func:`helpers.influence.engine.shard_blocks` gives it (``rank, rank + world, ...``), on ``cuda:<LOCAL_RANK>`` when
CUDA is present, and writes ``<out>/shards/shard-<rank>-of-<world>.npz`` (its rows, their scores, per checkpoint)
and a ``.json`` (what it scored with). After a barrier process 0 merges them (:func:`helpers.influence.shard.merge`)
into ``<out>/scores`` (:class:`helpers.influence.scores.InfluenceScores`, what every analysis reads) and removes the
shards. The settings'
defaults and allowed values are the parameter table's (:data:`helpers.config.PARAMETERS`).

Why the result is identical to one process's: a training row's scores depend only on its block and on the test bank
(the engine forms per-example gradients batch by batch within a block, and multiplies a block by the bank), so with
the same plan every row is computed by the same operations on the same operands, whichever process computes it.
The merge checks that every row was scored exactly once and that all shards share one plan, checkpoint list and
parameter subset. ``tests/test_tracin_shard.py`` compares a 2-process gloo run with a 1-process run bit for bit. (On
CPU, keep the thread count equal: torchrun sets ``OMP_NUM_THREADS=1`` for its processes.)

Shards computed apart (other jobs, other machines): ``score --rank R --world-size W --train-block B --test-chunk C``
without a launcher, then ``python -m helpers.compute.tracin merge --out DIR``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import config
from ..flow.stage import Stage
from ..influence import shard as shards
from ..influence.scores import InfluenceScores
from ..influence.shard import SCORES, SHARDS, merge, write_shard
from ..runtime import DEVICES, PRECISIONS
from . import finetune

if TYPE_CHECKING:
    from ..influence.engine import TracIn

STAGE = Stage("tracin", "03_tracin.ipynb", "TracIn", scope="run", reads=(("finetune", "same"),),
              params=("tracin_params", "tracin_similarity", "tracin_batch_size", "device", "precision",
                      "tracin_processes"))
#: A TracIn stage's settings: their defaults and allowed values are the parameter table's.
_PARAMS, _SIMILARITY, _BATCH_SIZE, _DEVICE = (config.PARAMETERS[k] for k in (
    "tracin_params", "tracin_similarity", "tracin_batch_size", "device"))
#: The dtypes a process computes in (``auto`` is resolved before: :func:`helpers.influence.precision.choose_dtype`).
_DTYPES = tuple(p for p in PRECISIONS if p != "auto")


def inputs(finetune_folder: Path | str, test_per_language: int | None = None
           ) -> tuple[finetune.FinetuneOutputs, Any, pd.DataFrame]:
    """The fine-tuning outputs, and the test samples scored with their id table: every one, or the first
    ``test_per_language`` of each language (the attribution chapter's subset)."""
    ft = finetune.load(Path(finetune_folder))
    test, test_ids = ft.test, ft.ids("test")
    if test_per_language:
        rows = test_ids.groupby("language", sort=False).head(test_per_language).index.tolist()
        test, test_ids = ft.test.select(rows), test_ids.iloc[rows].reset_index(drop=True)
    return ft, test, test_ids


def engine_for(ft: finetune.FinetuneOutputs, device: Any, dtype: str, *, params: str, similarity: str,
               batch_size: int, groups: dict[str, str] | None = None, test_chunk_size: int | None = None) -> TracIn:
    """The engine over the fine-tuning run's checkpoints (``device`` None: CUDA when present)."""
    from ..influence.engine import TracIn

    return TracIn(ft.tracin_checkpoints(), params=params, similarity=similarity, device=device, dtype=dtype,
                  batch_size=batch_size, test_chunk_size=test_chunk_size, groups=groups)


def score_finetune(finetune_folder: Path | str, out: Path | str, *, params: str, batch_size: int,
                   similarity: str = _SIMILARITY.default, groups: dict[str, str] | None = None,
                   device: str = _DEVICE.default, precision: str = config.PARAMETERS["precision"].default,
                   processes: int = 1,
                   test_per_language: int | None = None) -> tuple[InfluenceScores, str]:
    """Score a fine-tuning stage's training samples against its test samples (every one, or the first
    ``test_per_language`` of each language) at every checkpoint, save them to ``<out>/scores`` and return them with
    a note on the precision (empty unless a gate was run: ``precision`` auto on CUDA, see
    :func:`~helpers.influence.precision.choose_dtype`). ``processes`` > 1: ``torchrun`` processes, one GPU each where
    CUDA is present (:func:`helpers.influence.shard.launch`); the same scores, bit for bit. ``device``, ``precision``:
    the parameters' values (``auto`` included)."""
    from ..influence.precision import choose_dtype

    ft, test, test_ids = inputs(finetune_folder, test_per_language)
    where = None if device == "auto" else device
    settings = dict(params=params, similarity=similarity, batch_size=batch_size)
    dtype, gate = choose_dtype(precision, ft.tracin_checkpoints(), ft.train, test, device=where, **settings)
    if processes > 1:
        scores = InfluenceScores.load(launch(processes, finetune_folder, out, device=device, dtype=dtype,
                                                   groups=groups, test_per_language=test_per_language, **settings))
    else:
        engine = engine_for(ft, where, dtype, groups=groups, **settings)
        scores = engine.scores(ft.train, test, train_ids=ft.ids("train"), test_ids=test_ids)
        scores.save(Path(out) / SCORES)
    note = f"precision {precision}: {dtype} (bf16 against fp32 on a sample: {gate})" if gate else ""
    return scores, note


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

    from ..influence.engine import Plan, shard_blocks

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
        out = Path(args.out)
        meta = {"finetune": shards.finetune_identity(args.finetune), "world": world, "params": args.params,
                "similarity": args.similarity, "batch_size": args.batch_size, "dtype": args.dtype,
                "test_per_language": args.test_per_language, "code": shards.code_digest(), "launch": None,
                "finetune_path": str(Path(args.finetune).resolve()), "device": str(device)}
        if distributed or world == 1:  # a launch (or a lone process): no earlier run's shard is ever read
            if rank == 0:
                shards.clear(out / SHARDS)
                meta["launch"] = uuid.uuid4().hex[:16]
        else:  # scored apart: the folder may hold this run's other ranks, never its own or another run's
            shards.check_free(out / SHARDS, rank, world, {**meta, "plan": asdict(Plan(
                test_chunk=args.test_chunk, train_block=args.train_block, dense_bank=not args.factored_bank))})
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
            box = [(asdict(plan), meta["launch"]) if plan else None]
            dist.broadcast_object_list(box, src=0)
            plan, meta["launch"] = Plan(**box[0][0]), box[0][1]
        scores = engine.scores(ft.train, test, train_ids=ft.ids("train"), test_ids=test_ids,
                               progress=rank == 0 and not args.quiet, plan=plan, shard=(rank, world))
        rows = np.concatenate([np.arange(b.start, b.stop) for b in shard_blocks(len(ft.train), plan.train_block,
                                                                                rank, world)] or [np.zeros(0, int)])
        meta["plan"] = asdict(plan)
        write_shard(out / SHARDS, rank, world, scores, rows, meta)
        if distributed:
            dist.barrier()
        if rank == 0 and (distributed or world == 1):
            merged = merge(out / SHARDS, expect={k: meta[k] for k in shards.RUN_KEYS if k in meta}).save(out / SCORES)
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
           "-m", "helpers.compute.tracin", "score", "--finetune", str(finetune_folder), "--out", str(out),
           "--params", params, "--similarity", similarity, "--batch-size", str(batch_size), "--device", device,
           "--dtype", dtype]
    if groups:
        cmd += ["--groups", ",".join(f"{name}={spec}" for name, spec in groups.items())]
    cmd += ["--train-block", str(train_block)] if train_block else []
    cmd += ["--test-per-language", str(test_per_language)] if test_per_language else []
    subprocess.run(cmd + (["--quiet"] if quiet else []), check=True)
    return Path(out) / SCORES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.compute.tracin",
                                     description="TracIn over several processes: score shards, merge them.")
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
