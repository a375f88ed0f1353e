"""Sharded TracIn: 2 processes launched by torchrun on the CPU (gloo) give the same score store as 1 process, bit for
bit; shards scored apart (--rank/--world-size) merge to the same; the merge refuses incomplete or mixed shards."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from helpers import config, data
from helpers.compute import finetune as finetune_stage
from helpers.compute import tracin as tracin_stage
from helpers.compute.tracin import score_finetune
from helpers.influence.engine import Plan, TracIn, shard_blocks
from helpers.influence.scores import InfluenceScores
from helpers.influence.shard import merge

GROUPS = "head=classifier,last=last_layers:1,words=embeddings,every=all"  # every: a sum over the others
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A smoke fine-tuning stage folder: tiny-random on 12 verses x 5 languages, 2 epochs (2 checkpoints)."""
    root = tmp_path_factory.mktemp("shard")
    cfg = {**config.defaults("run"), "model": "tiny-random", "train_per_language": 12, "test_per_language": 3,
           "zero_shot_languages": ["ko"], "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "max_length": 48}
    train, test = data.build_splits(cfg)
    (root / "data").mkdir()
    data.save_splits(train, test, root / "data")
    (root / "ft").mkdir()
    before, threads = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # runtime.set_threads reads it: tiny models run fastest on one thread
    try:
        finetune_stage.run(cfg, cfg, root / "data", root / "ft")
    finally:
        torch.set_num_threads(before)
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = threads
    return root / "ft"


def test_two_gloo_processes_equal_one_process_bit_for_bit(finetuned, tmp_path):
    # torchrun --standalone --nproc_per_node=2 -m helpers.compute.tracin score ... (as the TracIn stages launch it)
    env = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    try:
        tracin_stage.launch(2, finetuned, tmp_path / "two", params="all", train_block=8, quiet=True,
                     groups=dict(g.split("=") for g in GROUPS.split(",")))
    finally:
        for k, v in env.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    two = InfluenceScores.load(tmp_path / "two" / "scores")
    assert not (tmp_path / "two" / tracin_stage.SHARDS).exists()  # merged, then removed

    # One process: the engine called here with the same plan, on one thread (as torchrun's processes)
    ft = finetune_stage.load(finetuned)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = TracIn(ft.tracin_checkpoints(), params="all", groups=dict(
            g.split("=") for g in GROUPS.split(",")))
        plan = engine.plan(ft.train, ft.test)
        plan = Plan(plan.test_chunk, 8, plan.dense_bank)
        one = engine.scores(ft.train, ft.test, train_ids=ft.ids("train"), test_ids=ft.ids("test"), progress=False,
                            plan=plan)
    finally:
        torch.set_num_threads(before)
    assert one.per_checkpoint.shape == (2, 60, 18) and np.abs(one.per_checkpoint).min() > 0  # every cell scored
    assert np.array_equal(one.per_checkpoint, two.per_checkpoint)
    for g in ("head", "last", "words", "every"):
        for key in ("dot", "train_sq", "test_sq"):
            assert np.array_equal(one.groups[g][key], two.groups[g][key]), (g, key)
    assert one.train_ids.equals(two.train_ids) and one.test_ids.equals(two.test_ids)


def test_the_stages_one_path_saves_what_the_engine_computes(finetuned, tmp_path):
    """score_finetune (both TracIn notebooks): on a CPU the dtype is fp32 with no gate note, the test rows are the
    first N of each language, and the saved scores are the engine's, called directly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scores, note = score_finetune(finetuned, tmp_path, params="all", groups={"head": "classifier"},
                                      batch_size=8, device="cpu", test_per_language=1)
        ft = finetune_stage.load(finetuned)
        test_ids = ft.ids("test")
        rows = test_ids.groupby("language", sort=False).head(1).index.tolist()
        direct = TracIn(ft.tracin_checkpoints(), params="all", groups={"head": "classifier"}, batch_size=8,
                        device="cpu").scores(ft.train, ft.test.select(rows), train_ids=ft.ids("train"),
                                             test_ids=test_ids.iloc[rows].reset_index(drop=True), progress=False)
    finally:
        torch.set_num_threads(before)
    saved = InfluenceScores.load(tmp_path / "scores")
    assert note == "" and scores.test_ids["language"].is_unique and len(scores.test_ids) == len(rows)
    for got in (scores, saved):
        assert np.array_equal(got.per_checkpoint, direct.per_checkpoint)
        assert np.array_equal(got.groups["head"]["dot"], direct.groups["head"]["dot"])
        assert got.test_ids.equals(direct.test_ids) and got.train_ids.equals(direct.train_ids)


def test_shards_scored_apart_merge_to_the_same_matrix(finetuned, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        common = ["score", "--finetune", str(finetuned), "--params", "last_layers:1", "--train-block", "16",
                  "--test-chunk", "9", "--quiet", "--out", str(tmp_path)]
        for rank in (0, 2):
            assert tracin_stage.main([*common, "--rank", str(rank), "--world-size", "3"]) == 0
        assert tracin_stage.main([*common[:-2], "--out", str(tmp_path / "sub"), "--test-per-language", "1",
                           "--rank", "0", "--world-size", "1"]) == 0  # one shard: merged at once
        sub = InfluenceScores.load(tmp_path / "sub" / "scores")
        assert sub.per_checkpoint.shape == (2, 60, 6) and sub.test_ids["language"].is_unique
        with pytest.raises(ValueError, match=r"2 shard\(s\) for a world of 3; missing ranks \[1\]"):
            merge(tmp_path / tracin_stage.SHARDS)
        assert tracin_stage.main([*common, "--rank", "1", "--world-size", "3"]) == 0
        assert tracin_stage.main(["merge", "--out", str(tmp_path), "--keep-shards"]) == 0
        merged = InfluenceScores.load(tmp_path / "scores")
        ft = finetune_stage.load(finetuned)
        whole = TracIn(ft.tracin_checkpoints(), params="last_layers:1").scores(
            ft.train, ft.test, progress=False, plan=Plan(test_chunk=9, train_block=16, dense_bank=True))
        assert np.array_equal(merged.per_checkpoint, whole.per_checkpoint)
        # a shard of another run (another plan) is refused
        other = tmp_path / "other"
        assert tracin_stage.main(["score", "--finetune", str(finetuned), "--params", "last_layers:1", "--train-block",
                           "8", "--test-chunk", "9", "--quiet", "--out", str(other), "--rank", "0",
                           "--world-size", "3"]) == 0
        (tmp_path / tracin_stage.SHARDS / "shard-0000-of-0003.json").write_bytes(
            (other / tracin_stage.SHARDS / "shard-0000-of-0003.json").read_bytes())
        with pytest.raises(ValueError, match=r"shard-0001-of-0003 and rank 0's shard come from different runs "
                                             r"\(plan: \{'test_chunk': 9, 'train_block': 16"):
            merge(tmp_path / tracin_stage.SHARDS)
        # the kept shards are an earlier run's: a new run's rank refuses the folder before any work
        assert tracin_stage.main([*common, "--rank", "1", "--world-size", "3"]) == 2
        # a lone process (or a launch) empties the folder first: the earlier shards are never read
        stale = tmp_path / "sub" / tracin_stage.SHARDS
        stale.mkdir()
        for name in ("shard-0001-of-0002.json", "shard-0001-of-0002.npz"):
            (stale / name).write_bytes((tmp_path / tracin_stage.SHARDS / name.replace("0002", "0003")).read_bytes())
        assert tracin_stage.main([*common[:-2], "--out", str(tmp_path / "sub"), "--test-per-language", "1",
                                  "--rank", "0", "--world-size", "1"]) == 0
        assert np.array_equal(InfluenceScores.load(tmp_path / "sub" / "scores").per_checkpoint, sub.per_checkpoint)
    finally:
        torch.set_num_threads(before)


def test_blocks_are_dealt_out_once():
    blocks = [shard_blocks(21, 4, r, 3) for r in range(3)]
    rows = sorted(i for mine in blocks for b in mine for i in b)
    assert rows == list(range(21)) and blocks[1] == [range(4, 8), range(16, 20)]
    with pytest.raises(ValueError):
        shard_blocks(21, 4, 3, 3)
    with pytest.raises(SystemExit):
        tracin_stage.main(["score", "--finetune", "x", "--out", "y", "--rank", "0"])  # needs --world-size etc.
