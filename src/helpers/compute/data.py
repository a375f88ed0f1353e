"""The data stage: sample the training and test splits of a run (the sampling itself: :mod:`helpers.data`)."""

from __future__ import annotations

from ..flow.stage import Stage

STAGE = Stage("data", "01_data.ipynb", "Data", scope="run", modules=("data",),
              params=("seed", "dataset", "fine_tune_languages", "zero_shot_languages", "label", "train_per_language",
                      "test_per_language", "parallel_train", "test_translations_in_train", "planted_share",
                      "imbalance_language",
                      "imbalance_factor", "permuted_language", "permuted_share", "corpus_dir"))
