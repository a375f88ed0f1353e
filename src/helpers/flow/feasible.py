"""What each value allows only with the chosen model, machine and corpus, checked by the runner before any work
(each would otherwise fail minutes into a run)."""

from __future__ import annotations

import json
from typing import Any

from .. import data, models
from ..config import ConfigError
from ..influence.spec import select_parameters
from ..models import pretrain
from ..study import Run, Study
from .graph import plan
from .stage import get


def check(study: Study) -> None:
    """:func:`check_runs` for every run of ``study``, holding to ``attribution_groups`` only the runs whose
    full-model TracIn pass the study plans."""
    check_runs(study.runs, {i.run.name for i in plan(study) if i.run is not None and i.stage.name == "tracin_groups"})


def check_runs(runs: dict[str, Run], grouped: set[str] | None = None) -> None:
    """What each value allows only with the chosen model, machine and corpus, checked before any work (each would
    otherwise fail minutes into a run): a TracIn parameter subset that selects nothing of the model, ``device:
    cuda`` without CUDA, sample sizes beyond what the corpus has. ``grouped``: the runs that score
    ``attribution_groups`` (None: every run), so that a run that does not is not held to them."""
    import torch

    data_stage = get("data")
    skeletons: dict[str, Any] = {}
    sampled: set[str] = set()
    for run in runs.values():
        p = run.params
        where = f"run {run.variant!r}: parameter"
        if p["device"] == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"{where} 'device' is 'cuda' but torch sees no CUDA device here; allowed here: "
                              "'auto' or 'cpu'")
        steps = -(-p["train_per_language"] * len(p["fine_tune_languages"]) // p["batch_size"])  # at least
        if p["checkpoints_per_epoch"] > steps:
            raise ConfigError(f"{where} 'checkpoints_per_epoch' is {p['checkpoints_per_epoch']} but an epoch of "
                              f"{p['train_per_language']} samples x {len(p['fine_tune_languages'])} languages in "
                              f"batches of {p['batch_size']} has {steps} optimiser steps; allowed: 1..{steps}")
        n_labels = len(data.LABELS[p["label"]].names)
        inhouse = p["model"] == "inhouse-mlm"
        key = json.dumps([p["model"], n_labels, p["model_dir"], p["pretrain_layers"] if inhouse else 0,
                          p["pretrain_hidden"] if inhouse else 0])
        if key not in skeletons:
            try:
                if p["model_dir"] != "none":  # a local copy: weights present, a tokenizer that fits them
                    models.check_local_copy(p["model"], p["model_dir"])
                elif models.get(p["model"]).source == "hub":  # fails fast, naming model_dir, when the hub is
                    models.require_available(p["model"], p["model_dir"])  # out of reach and nothing is cached
            except (models.ModelUnavailableError, ValueError) as err:
                raise ConfigError(f"run {run.variant!r}: {err}") from None
            skeletons[key] = models.skeleton(p["model"], n_labels, p["model_dir"], params=p)
        model = skeletons[key]  # None: a hub model whose architecture is not known here
        if model is not None and p["reinit_top_layers"]:
            n_layers = len(models.encoder_layers(model)[1])
            if p["reinit_top_layers"] > n_layers:
                raise ConfigError(f"{where} 'reinit_top_layers' is {p['reinit_top_layers']} but model {p['model']!r} "
                                  f"has {n_layers} encoder layers; allowed: 0..{n_layers}")
        if inhouse:
            try:
                pretrain.check_size(p["pretrain_languages"], p["pretrain_verses_per_language"])
            except data.SizeError as err:
                raise ConfigError(f"{where}s ask for more pre-training text than the corpus has ({err})") from None
        specs = [("tracin_params", p["tracin_params"])]
        if grouped is None or run.name in grouped:
            specs += [("attribution_groups", g) for g in p["attribution_groups"]]
        for name, spec in specs if model is not None else []:
            try:
                select_parameters(model, spec)
            except ValueError as err:
                raise ConfigError(f"{where} {name!r} has {spec!r}, which does not fit model {p['model']!r}: "
                                  f"{err}") from None
        sizes = json.dumps({k: p[k] for k in data_stage.params}, sort_keys=True)  # runs sharing data: once
        if sizes not in sampled:
            try:
                data.sample_keys(p)
            except data.SizeError as err:
                raise ConfigError(f"{where}s ask for more samples than the corpus has ({err})") from None
            except data.CorpusUnavailableError as err:
                raise ConfigError(f"run {run.variant!r}: {err}") from None
            sampled.add(sizes)
