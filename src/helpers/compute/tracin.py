"""The TracIn stage: every training sample against every test sample, at every checkpoint, on one parameter subset."""

from __future__ import annotations

from ..flow.stage import Stage

STAGE = Stage("tracin", "03_tracin.ipynb", "TracIn", scope="run", reads=(("finetune", "same"),),
              params=("tracin_params", "tracin_similarity", "tracin_batch_size", "device", "precision",
                      "tracin_processes"))
