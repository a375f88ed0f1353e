"""benchmarks/tracin.py's XLM-R comparison runs on a CPU with the tiny XLM-R-shaped model (the GPU figures need a
GPU): our scores agree with brute force and captum, and every column of the table is filled."""

from __future__ import annotations

import importlib.util
import math

import torch

from helpers import paths


def test_xlmr_tiny_table_runs_and_agrees(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the benchmark sets it (--threads); restored after the test
    spec = importlib.util.spec_from_file_location("bench_tracin", paths.REPO_ROOT / "benchmarks" / "tracin.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    before = torch.get_num_threads()
    try:
        results = bench.main(["--model", "xlmr-tiny", "--params", "all", "--device", "cpu", "--n-train", "24",
                              "--n-test", "4", "--checkpoints", "2", "--min-len", "4", "--max-len", "12",
                              "--memory-sweep", "0.5", "--threads", "1", "--json", str(tmp_path / "b.json")])
    finally:
        torch.set_num_threads(before)
    assert results["max_rel_err_vs_bruteforce"] <= 1e-4
    assert results["spearman_vs_captum_min"] >= 0.999 and results["speedup_vs_captum"] > 0
    assert results["ours_over_forward_backward"] > 0 and set(results["ours_peak_mib_by_n_train"]) == {12, 24}
    assert results["model_parameters"] == results["subset_parameters"]  # params=all: the whole model
    out = capsys.readouterr().out
    assert "captum TracInCP" in out and "plain forward+backward" in out and "target <= 3" in out
    assert (tmp_path / "b.json").is_file() and not math.isnan(results["ours_peak_growth"])
