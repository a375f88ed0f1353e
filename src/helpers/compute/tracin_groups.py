"""The TracIn-by-group stage: one exact full-model pass that yields the scores of every parameter subset the
attribution chapter compares (dot products add up over parameters), on the first test samples of each language."""

from __future__ import annotations

from ..flow.stage import Stage

STAGE = Stage("tracin_groups", "04_tracin_groups.ipynb", "TracIn by parameter group", scope="run",
              reads=(("finetune", "same"),), modules=("compute/tracin",),
              params=("attribution_groups", "attribution_test_per_language", "tracin_batch_size", "device",
                      "precision", "tracin_processes"))
