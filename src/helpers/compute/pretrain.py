"""The pre-training stage: the in-house MLM encoder, the unaligned end of the alignment axis (the training itself:
:mod:`helpers.models.pretrain`)."""

from __future__ import annotations

from ..flow.stage import Stage

STAGE = Stage("pretrain", "05_pretrain.ipynb", "Pre-training an unaligned encoder", scope="run",
              modules=("models/pretrain",),
              params=("seed", "pretrain_languages", "pretrain_verses_per_language", "pretrain_layers",
                      "pretrain_hidden", "pretrain_steps", "pretrain_batch_size", "pretrain_learning_rate",
                      "pretrain_checkpoints", "pretrain_vocab_size", "pretrain_max_length"),
              when=lambda p: p["model"] == "inhouse-mlm")
