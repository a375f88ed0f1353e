"""The CUDA paths of the paper profile: bf16 only where it passes the accuracy gates against fp32, CUDA equal to CPU,
fine-tuning on CUDA through accelerate, sharded TracIn over NCCL. The tests marked ``gpu`` run only where a CUDA
device is lent (none was on the machines this was written on); the gate's own logic is checked here on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import finetune, models
from helpers.compute import finetune as finetune_stage
from helpers.influence.engine import TracIn
from helpers.influence.precision import choose_dtype, precision_gate
from helpers.influence.scores import InfluenceScores
from helpers.influence.spec import Checkpoint

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_precision_gate_passes_small_noise_and_fails_a_reordering():
    rng = np.random.default_rng(0)
    fp32 = rng.normal(size=(200, 5)).astype(np.float32)
    near = fp32 + rng.normal(scale=1e-4, size=fp32.shape).astype(np.float32)
    gate = precision_gate(fp32, near)
    assert gate["passed"] and gate["spearman_min"] > 0.999 and gate["top_overlap_min"] >= 9
    shuffled = fp32.copy()
    shuffled[:, 3] = rng.permutation(shuffled[:, 3])  # one test column ranked at random
    gate = precision_gate(fp32, shuffled)
    assert not gate["passed"] and gate["spearman_min"] < 0.5
    swapped = fp32.copy()
    order = np.argsort(-fp32[:, 0])
    swapped[order[:3], 0] = fp32[order[-3:], 0]  # three of column 0's top 10 pushed to the bottom
    gate = precision_gate(fp32, swapped)
    assert gate["top_overlap_min"] == 7 and not gate["passed"]


def test_cpu_always_runs_fp32_without_scoring_anything():
    untouchable = [Checkpoint(path="/nonexistent", learning_rate=1.0, name="c")]
    assert choose_dtype("auto", untouchable, [], [], device="cpu") == ("fp32", {})
    assert choose_dtype("bf16", untouchable, [], [], device="cpu") == ("fp32", {})
    with pytest.raises(ValueError, match="allowed: \\['auto', 'fp32', 'bf16'\\]"):
        choose_dtype("fp16", untouchable, [], [], device="cpu")
    acc = finetune.accelerator("auto", "auto")
    assert acc.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert acc.mixed_precision == ("bf16" if torch.cuda.is_available() else "no")
    with pytest.raises(ValueError, match="parameter 'precision'"):
        finetune.accelerator("auto", "fp16")


@pytest.fixture(scope="module")
def xlmr_checkpoints(tmp_path_factory):
    """Two checkpoints of a tiny XLM-R-shaped model (random perturbations) and random samples."""
    root = tmp_path_factory.mktemp("xlmr")
    model = models.tiny_xlmr_model(300, num_labels=3, seed=0, hidden=64, layers=2)
    ckpts = []
    torch.manual_seed(0)
    for k in range(2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        model.save_pretrained(root / f"c{k}")
        ckpts.append(Checkpoint(path=root / f"c{k}", learning_rate=1e-3, name=f"epoch{k + 1}"))
    rng = np.random.default_rng(1)

    def samples(n):
        return [{"input_ids": [0] + rng.integers(4, 300, int(rng.integers(3, 40))).tolist() + [2],
                 "label": int(rng.integers(3))} for _ in range(n)]

    return ckpts, samples(96), samples(12)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("spec", ["all", "last_layers:1"])
def test_xlmr_cuda_fp32_equals_cpu_and_auto_precision_follows_the_gate(xlmr_checkpoints, spec):
    ckpts, train, test = xlmr_checkpoints
    cpu = TracIn(ckpts, params=spec, device="cpu").scores(train, test, progress=False).per_checkpoint
    gpu = TracIn(ckpts, params=spec, device="cuda").scores(train, test, progress=False).per_checkpoint
    assert np.abs(gpu - cpu).max() <= 1e-4 * np.abs(cpu).max()
    bf16 = TracIn(ckpts, params=spec, device="cuda", dtype="bf16").scores(train, test, progress=False)
    gate = precision_gate(gpu.sum(0), bf16.total)
    dtype, chosen = choose_dtype("auto", ckpts, train, test, device="cuda", params=spec)
    assert chosen["passed"] == (dtype == "bf16")
    print(f"{spec}: bf16 gate on the full set {gate}; auto chose {dtype} ({chosen})")


@pytest.mark.gpu
@needs_cuda
def test_fine_tuning_on_cuda_with_bf16_autocast_keeps_fp32_checkpoints(tmp_path, xlmr_checkpoints):
    from datasets import Dataset

    _, train, test = xlmr_checkpoints
    ds = Dataset.from_list([dict(s, language="en") for s in train])
    model = models.tiny_xlmr_model(300, num_labels=3, seed=0)
    history, ckpts = finetune.train(model, ds, Dataset.from_list([dict(s, language="en") for s in test]), epochs=2,
                                    batch_size=16, learning_rate=1e-3, warmup_ratio=0.1, seed=0, out_dir=tmp_path,
                                    device="cuda", precision="auto")
    assert next(model.parameters()).device.type == "cuda" and len(ckpts) == 2
    reloaded = models.load_classifier(tmp_path / "checkpoint-epoch2")
    assert next(reloaded.parameters()).dtype == torch.float32
    assert ckpts[0]["learning_rate"] > ckpts[1]["learning_rate"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_over_nccl_equal_one_gpu(tmp_path):
    """The sharded command on two GPUs (NCCL) against one GPU, on the fine-tuning folder of tests/test_tracin_shard.py's
    kind (built here with the smoke model)."""
    from helpers import config, data

    cfg = {**config.defaults("run"), "model": "tiny-random", "train_per_language": 12, "test_per_language": 3,
           "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "max_length": 48}
    train, test = data.build_splits(cfg)
    (tmp_path / "data").mkdir()
    data.save_splits(train, test, tmp_path / "data")
    (tmp_path / "ft").mkdir()
    finetune_stage.run({**cfg, "device": "cpu"}, cfg, tmp_path / "data", tmp_path / "ft")
    args = ["-m", "helpers.influence.shard", "score", "--finetune", str(tmp_path / "ft"), "--params", "all",
            "--train-block", "8", "--quiet", "--device", "cuda"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], check=True, env=env)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
                    "--out", str(tmp_path / "two")], check=True, env=env)
    one = InfluenceScores.load(tmp_path / "one" / "scores").per_checkpoint
    two = InfluenceScores.load(tmp_path / "two" / "scores").per_checkpoint
    assert np.array_equal(one, two)
