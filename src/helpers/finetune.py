"""Multilingual fine-tuning: tokenise, train, save checkpoints (per epoch or finer, and at step 0) with their learning
rates, score per language.

The loop is written out (about forty lines) rather than delegated to ``transformers.Trainer`` because TracIn needs
exactly what it saves and nothing else: checkpoints where the dynamics happen (before any update, and several per
epoch when asked), the learning rate in force during the interval each ends, and per-language accuracy at each; a
plain loop states all three in one screen and is deterministic on CPU.
Devices and mixed precision are ``accelerate``'s (:func:`accelerator`): the model, the optimiser's steps and the
backward pass go through an ``Accelerator``, on CUDA when present (``device``) with bf16 autocast (``precision``);
on a CPU it changes nothing (the embedded default's checkpoints are bit-identical to the plain loop's).

Learning rate recorded for TracIn: the mean over the interval's optimiser steps of the scheduled rate (with a linear
decay to zero, the rate *at* the last checkpoint would be zero and would erase that checkpoint from the sum).

Retraining (:func:`helpers.compute.retrain.retrain`, for the counterfactual chapter) runs the same loop again from
the same initialisation (:func:`initial_model`), seed and data order (:func:`epoch_orders`) without some training
samples: with nothing removed it reproduces the original checkpoints exactly. The fine-tuning stage itself (what it
writes, and the reader of its outputs) is :mod:`helpers.compute.finetune`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup
from transformers.trainer_pt_utils import LengthGroupedSampler

from . import models
from .models import encoder_layers
from .runtime import DEVICES, PRECISIONS, progress_interval, set_threads


# pragma: no mutate start (make mutation leaves out what tokenises or fine-tunes: a model build per mutant)
def initial_model(model_name: str, num_labels: int, seed: int, vocab_size: int | None = None,
                  model_dir: str | None = None, reinit_top_layers: int = 0) -> torch.nn.Module:
    """The model before fine-tuning, with its full vocabulary: the pretrained encoder with a classification head
    initialised afresh from ``seed``, or a smoke model (``vocab_size`` tokens, from its tokenizer); then its top
    ``reinit_top_layers`` encoder layers re-initialised (:func:`reinit_top`). Deterministic in ``seed``;
    :func:`tokenise_splits` and :func:`retrain` both start from it (``model_dir``: a local copy of a hub model, or
    the pre-training checkpoint of ``inhouse-mlm``, see :func:`helpers.models.checkpoint`)."""
    torch.manual_seed(seed)
    model = models.initial_classifier(model_name, num_labels, seed, vocab_size=vocab_size, model_dir=model_dir)
    return reinit_top(model, reinit_top_layers)


def reinit_top(model: torch.nn.Module, n: int) -> torch.nn.Module:
    """Re-initialise the top ``n`` encoder layers as BERT initialises them (linear weights normal(0,
    initializer_range), zero biases, unit LayerNorms), drawing from the global torch generator: what pre-training
    left in them is erased, so the encoder keeps its aligned lower layers but must learn the upper ones from the task.
    Written out rather than ``model._init_weights``: transformers 5 skips weights that were loaded from a checkpoint,
    which made that a silent no-op on a pretrained model."""
    if n:
        _, layers = encoder_layers(model)
        if n > len(layers):
            raise ValueError(f"parameter 'reinit_top_layers' is {n} but the model has {len(layers)} encoder layers; "
                             f"allowed: 0..{len(layers)}")
        std = model.config.initializer_range
        with torch.no_grad():
            for module in (m for layer in layers[len(layers) - n:] for m in layer.modules()):
                if isinstance(module, torch.nn.Linear):
                    module.weight.normal_(0.0, std)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, torch.nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
    return model


def tokenise_splits(model_name: str, train: pd.DataFrame, test: pd.DataFrame, max_length: int, trim: bool,
                    seed: int, num_labels: int, out_dir: Path, model_dir: str | None = None,
                    reinit_top_layers: int = 0) -> tuple[torch.nn.Module, Dataset, Dataset, dict]:
    """Build the model and tokenised splits; return (model, train, test, info).

    The tokenizer runs once here; the stored ``input_ids`` are what the model consumes, so TracIn and the
    analyses never tokenise again. With ``trim``, ids are remapped into the trimmed vocabulary.
    """
    texts = list(train["text"]) + list(test["text"])
    pairs = (list(train["text_pair"]) + list(test["text_pair"])) if "text_pair" in train.columns else None
    tokenizer = models.tokenizer_for(model_name, texts + (pairs or []), model_dir=model_dir)
    model = initial_model(model_name, num_labels, seed, vocab_size=len(tokenizer), model_dir=model_dir,
                          reinit_top_layers=reinit_top_layers)
    ids = models.tokenize(tokenizer, texts, max_length=max_length, pairs=pairs)
    info: dict[str, Any] = {"model": model_name, "full_vocab_size": int(model.config.vocab_size),
                            "n_parameters_before_trim": sum(p.numel() for p in model.parameters()),
                            "model_dir": str(model_dir) if model_dir else None,
                            "reinit_top_layers": reinit_top_layers}
    if trim:
        vocab = models.VocabMap.from_ids(ids, specials=tokenizer.all_special_ids)
        model = models.trim_vocabulary(model, vocab.keep_ids)
        ids = [vocab.to_new(x).tolist() for x in ids]
        np.save(out_dir / "vocab_keep_ids.npy", np.asarray(vocab.keep_ids))
    info["vocab_size"] = int(model.config.vocab_size)
    info["n_parameters"] = sum(p.numel() for p in model.parameters())
    tokenizer.save_pretrained(out_dir / "tokenizer")
    lengths = [len(x) for x in ids]
    info["tokens_per_sample_mean"] = float(np.mean(lengths))
    info["truncated_share"] = float(np.mean([n >= max_length for n in lengths]))

    def to_dataset(frame: pd.DataFrame, rows: list[list[int]]) -> Dataset:
        meta = frame[["uid", "language", "pair_id", "label", "label_name"]].reset_index(drop=True)
        return Dataset.from_pandas(meta.assign(input_ids=rows))

    n = len(train)
    return model, to_dataset(train, ids[:n]), to_dataset(test, ids[n:]), info
# pragma: no mutate end


def accelerator(device: str = "auto", precision: str = "auto"):
    """The ``accelerate.Accelerator`` for fine-tuning: CUDA when ``device`` is auto or cuda and a GPU is present (else
    the CPU), bf16 autocast on CUDA unless ``precision`` is fp32 (the optimiser's weights and states stay fp32)."""
    from accelerate import Accelerator

    if device not in DEVICES:
        raise ValueError(f"parameter 'device' is {device!r}; allowed: {list(DEVICES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"parameter 'precision' is {precision!r}; allowed: {list(PRECISIONS)}")
    cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ValueError("parameter 'device' is 'cuda' but torch sees no CUDA device; allowed here: 'auto' or 'cpu'")
    mixed = "bf16" if cuda and precision in ("auto", "bf16") else "no"
    return Accelerator(cpu=not cuda, mixed_precision=mixed)


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch of tokenised rows: right-padded ids, attention mask from the lengths, labels."""
    input_ids, mask = models.pad_batch([r["input_ids"] for r in rows], pad_id=pad_id)
    return {"input_ids": input_ids, "attention_mask": mask,
            "labels": torch.as_tensor([r["label"] for r in rows], dtype=torch.long)}


# pragma: no mutate start (make mutation leaves out what tokenises or fine-tunes: a model build per mutant)
@torch.no_grad()
def predict(model: torch.nn.Module, ds: Dataset, batch_size: int = 64) -> np.ndarray:
    """Logits for every sample of ``ds``, in its order (eval mode, no dropout; batches of similar length)."""
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(ds), model.config.num_labels), dtype=np.float32)
    for rows in models.length_batches([len(x) for x in ds["input_ids"]], batch_size):
        batch = collate(ds.select(rows).to_list(), model.config.pad_token_id)
        batch.pop("labels")
        out[rows] = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
    return out


def accuracy_by_language(model: torch.nn.Module, ds: Dataset, epoch: int) -> pd.DataFrame:
    logits = predict(model, ds)
    frame = ds.select_columns(["language", "label"]).to_pandas()
    frame["correct"] = logits.argmax(1) == frame["label"].to_numpy()
    out = frame.groupby("language", sort=False)["correct"].agg(accuracy="mean", n="size").reset_index()
    return out.assign(epoch=epoch)


@torch.no_grad()
def sample_outcomes(model: torch.nn.Module, ds: Dataset) -> pd.DataFrame:
    """One row per sample of ``ds``, in order: ``row``, ``language``, ``label``, the model's cross-entropy ``loss``
    and whether its prediction is ``correct`` (eval mode)."""
    logits = torch.from_numpy(predict(model, ds))
    labels = torch.as_tensor(ds["label"], dtype=torch.long)
    loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    return pd.DataFrame({"row": np.arange(len(ds)), "language": ds["language"], "label": labels.numpy(),
                         "loss": loss.numpy().astype(np.float64),
                         "correct": (logits.argmax(1) == labels).numpy().astype(float)})


def epoch_orders(lengths: list[int], batch_size: int, seed: int, epochs: int,
                 exclude: Collection[int] = ()) -> Iterator[list[int]]:
    """The order in which each epoch visits the training rows: transformers' length-grouped sampler (shuffled
    mega-batches sorted by length) over *all* ``lengths``, from a generator seeded with ``seed``, with the rows in
    ``exclude`` deleted. A retraining without some samples therefore sees the remaining ones in the original order."""
    generator = torch.Generator().manual_seed(seed)
    sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
    removed = set(int(i) for i in exclude)
    for _ in range(epochs):
        yield [i for i in sampler if i not in removed]


def checkpoint_steps(steps_per_epoch: int, epochs: int, per_epoch: int) -> list[int]:
    """The optimiser steps after which a checkpoint is saved: ``per_epoch`` evenly spaced boundaries in every epoch
    (the last one at the epoch's end), e.g. 20 steps per epoch, 2 per epoch -> 10, 20, 30, 40, ... Refuses more
    checkpoints per epoch than the epoch has steps."""
    if not 1 <= per_epoch <= steps_per_epoch:
        raise ValueError(f"parameter 'checkpoints_per_epoch' is {per_epoch} but an epoch has {steps_per_epoch} "
                         f"optimiser steps; allowed: 1..{steps_per_epoch}")
    return [e * steps_per_epoch + round(j * steps_per_epoch / per_epoch)
            for e in range(epochs) for j in range(1, per_epoch + 1)]


def checkpoint_epochs(epochs: int, per_epoch: int) -> list[float]:
    """The nominal epochs done at each of :func:`checkpoint_steps` (``0.5`` for the middle of the first epoch, even
    when an odd number of steps puts it one step off)."""
    return [round(e + j / per_epoch, 4) for e in range(epochs) for j in range(1, per_epoch + 1)]


def checkpoint_name(epoch: float) -> str:
    """``step0`` before any update, else ``epoch<e>`` with ``e`` the epochs done (``epoch0.5``, ``epoch1``)."""
    return "step0" if epoch == 0 else f"epoch{epoch:g}"


def train(model: torch.nn.Module, train_ds: Dataset, test_ds: Dataset | None, epochs: int, batch_size: int,
          learning_rate: float, warmup_ratio: float, seed: int, out_dir: Path | None,
          exclude: Collection[int] = (), device: str = "auto", precision: str = "auto",
          checkpoints_per_epoch: int = 1, checkpoint_at_start: bool = False) -> tuple[pd.DataFrame, list[dict]]:
    """Fine-tune; save a checkpoint ``checkpoints_per_epoch`` times per epoch (``checkpoint-epoch<e>/``, evenly
    spaced in optimiser steps) and, with ``checkpoint_at_start``, one before any update (``checkpoint-step0/``);
    return (accuracy history, checkpoint list).

    Each checkpoint records the mean scheduled learning rate over the interval it ends (``learning_rate``, what
    TracIn weights it by; with a linear decay to zero the rate *at* the last checkpoint would be zero and erase it
    from the sum); the step-0 checkpoint ends no interval and records the mean rate of the interval it starts
    (TracIn's left end point for that interval). The history has one row per (checkpoint, test language), ``epoch``
    being the epochs done (0 = before fine-tuning; empty when ``test_ds`` is None). ``out_dir=None`` saves no
    checkpoint. ``exclude``: training rows left out of every epoch, the others keeping their order
    (:func:`epoch_orders`); the schedule follows the remaining number of steps. Dropout draws from the global torch
    generator as :func:`initial_model` (and trimming) left it. ``device`` and ``precision``: see
    :func:`accelerator`; the model is returned on that device.
    """
    set_threads()
    acc = accelerator(device, precision)
    n_train = len(train_ds) - len(set(int(i) for i in exclude))
    if n_train < 1:
        raise ValueError("every training sample is excluded: nothing to train on")
    steps_per_epoch = math.ceil(n_train / batch_size)
    total = steps_per_epoch * epochs
    saves = dict(zip(checkpoint_steps(steps_per_epoch, epochs, checkpoints_per_epoch),
                     checkpoint_epochs(epochs, checkpoints_per_epoch)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    # The scheduler is stepped here once per optimiser step (not prepared: accelerate would step it per process).
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total), total)
    model, optimizer = acc.prepare(model, optimizer)
    history = [] if test_ds is None else [accuracy_by_language(model, test_ds, epoch=0)]
    checkpoints = []

    def save(name: str, epoch: float, rates: list[float], losses: list[float]) -> None:
        if out_dir is not None:
            acc.unwrap_model(model).save_pretrained(out_dir / f"checkpoint-{name}")
        checkpoints.append({"name": name, "path": f"checkpoint-{name}", "epoch": epoch,
                            "learning_rate": float(np.mean(rates)),
                            "learning_rate_at_end": float(scheduler.get_last_lr()[0]),
                            "train_loss": float(np.mean(losses)) if losses else float("nan")})

    if checkpoint_at_start:
        interval = min(saves)  # the first interval's scheduled rates (LambdaLR's rate after s steps)
        rates = [learning_rate * scheduler.lr_lambdas[0](s) for s in range(interval)]
        save(checkpoint_name(0), 0.0, rates, [])
    # Batches of similar length (transformers' group_by_length sampler: shuffled mega-batches sorted by length)
    # pad less: about a third of the tokens of a fine-tuning step on this corpus.
    orders = epoch_orders([len(x) for x in train_ds["input_ids"]], batch_size, seed, epochs, exclude)
    pad_id = acc.unwrap_model(model).config.pad_token_id
    bar = tqdm(total=total, desc="fine-tuning", unit="step", mininterval=progress_interval())
    step, rates, losses = 0, [], []
    for epoch, order in enumerate(orders, 1):
        model.train()
        for start in range(0, len(order), batch_size):
            batch = collate(train_ds.select(order[start: start + batch_size]).to_list(), pad_id)
            rates.append(scheduler.get_last_lr()[0])
            loss = model(**{k: v.to(acc.device) for k, v in batch.items()}).loss
            acc.backward(loss)
            acc.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
            if step in saves:
                done = saves[step]
                save(checkpoint_name(done), done, rates, losses)
                rates, losses = [], []
                if test_ds is not None:
                    history.append(accuracy_by_language(model, test_ds, epoch=done))
                model.train()
    bar.close()
    model = acc.unwrap_model(model)
    model.eval()
    return (pd.concat(history, ignore_index=True) if history else pd.DataFrame()), checkpoints
# pragma: no mutate end
