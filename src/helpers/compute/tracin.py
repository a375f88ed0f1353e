"""The TracIn stage, and the one computation both TracIn stages run (``03_tracin``: every test sample on one
parameter subset; ``04_tracin_groups``: the first test samples of each language, every group in one full-model pass,
:mod:`helpers.compute.tracin_groups`): load the fine-tuning outputs, choose the dtype, score in this process or over
several (:mod:`helpers.influence.shard`, which builds its engine with the same :func:`inputs` and
:func:`engine_for`), save ``<out>/scores``. The engine is loaded inside the functions: reading this stage's
declaration (every chapter downstream does) loads no torch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .. import config
from ..flow.stage import Stage
from ..influence.scores import InfluenceScores
from . import finetune

if TYPE_CHECKING:
    from ..influence.engine import TracIn

STAGE = Stage("tracin", "03_tracin.ipynb", "TracIn", scope="run", reads=(("finetune", "same"),),
              params=("tracin_params", "tracin_similarity", "tracin_batch_size", "device", "precision",
                      "tracin_processes"))
_SIMILARITY, _DEVICE, _PRECISION = (config.PARAMETERS[k].default for k in ("tracin_similarity", "device", "precision"))


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
                   similarity: str = _SIMILARITY, groups: dict[str, str] | None = None, device: str = _DEVICE,
                   precision: str = _PRECISION, processes: int = 1,
                   test_per_language: int | None = None) -> tuple[InfluenceScores, str]:
    """Score a fine-tuning stage's training samples against its test samples (every one, or the first
    ``test_per_language`` of each language) at every checkpoint, save them to ``<out>/scores`` and return them with
    a note on the precision (empty unless a gate was run: ``precision`` auto on CUDA, see
    :func:`~helpers.influence.precision.choose_dtype`). ``processes`` > 1: ``torchrun`` processes, one GPU each where
    CUDA is present (:func:`helpers.influence.shard.launch`); the same scores, bit for bit. ``device``, ``precision``:
    the parameters' values (``auto`` included)."""
    from ..influence import shard
    from ..influence.precision import choose_dtype

    ft, test, test_ids = inputs(finetune_folder, test_per_language)
    where = None if device == "auto" else device
    settings = dict(params=params, similarity=similarity, batch_size=batch_size)
    dtype, gate = choose_dtype(precision, ft.tracin_checkpoints(), ft.train, test, device=where, **settings)
    if processes > 1:
        scores = InfluenceScores.load(shard.launch(processes, finetune_folder, out, device=device, dtype=dtype,
                                                   groups=groups, test_per_language=test_per_language, **settings))
    else:
        engine = engine_for(ft, where, dtype, groups=groups, **settings)
        scores = engine.scores(ft.train, test, train_ids=ft.ids("train"), test_ids=test_ids)
        scores.save(Path(out) / shard.SCORES)
    note = f"precision {precision}: {dtype} (bf16 against fp32 on a sample: {gate})" if gate else ""
    return scores, note
