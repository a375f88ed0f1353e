"""Pre-training an encoder here, on monolingual text only: the unaligned end of the alignment axis.

The embedded e5-small was trained to map translations together; every TracIn ranking measured on it is
language-blind. To see the other end of the axis, the ``pretrain`` stage pre-trains a small BERT of the same kind
from scratch with masked language modelling (MLM) on the corpus's languages, with nothing that aligns languages:

* **no parallel data at all**: every verse of the canon is given to one language only (a seeded shuffle dealt out
  in turn), so no batch, and indeed no corpus, holds a verse and its translation;
* **one language per batch**, the languages taking turns;
* **no alignment objective**: MLM only (the 15 % masking of BERT, through ``transformers``'
  ``DataCollatorForLanguageModeling``); the one thing languages share is the subword vocabulary, trained here on
  all of them together (anchor tokens such as names and numbers, as in multilingual BERT).

The verses of the held-out pool (:func:`held_out`) are never pre-trained on: the alignment chapter measures
translation retrieval and probes neurons on them. Checkpoints are saved at step 0 (random weights) and at
``pretrain_checkpoints`` evenly spaced steps; each has its held-out MLM loss per language, the cheap integrity
check Wang et al. (2024) recommend against broken checkpoints.

Measured on 2 cores (4 layers, hidden 256, batch 32, 64 tokens): see the pre-training page for this run's time.
The loop is written out (as fine-tuning's) because it needs one language per batch and checkpoints at given steps;
``transformers.Trainer`` would need a custom sampler and callbacks for the same.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .. import artifacts, data
from ..runtime import progress_interval, set_threads
from .smoke import train_smoke_tokenizer
from .tokens import BOS_ID, EOS_ID, PAD_ID, tokenize

CHECKPOINTS_FILE = "checkpoints.json"
#: Verses whose CRC-32 of ``book:chapter:verse`` is divisible by this form the held-out pool (about 5 % of the
#: canon): never pre-trained on, used by the alignment chapter for retrieval and probing.
HELD_OUT_MODULUS = 20
EVAL_PER_LANGUAGE = 64  # pre-training sequences per language kept out of training to measure MLM loss


def held_out(keys: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the ``keys`` (columns book, chapter, verse) in the held-out pool: fixed, independent of any
    run or seed."""
    labels = keys["book"].astype(str) + ":" + keys["chapter"].astype(str) + ":" + keys["verse"].astype(str)
    return np.array([zlib.crc32(s.encode()) % HELD_OUT_MODULUS == 0 for s in labels])


def _pool() -> pd.DataFrame:
    keys = data.verse_keys()
    return keys[~held_out(keys)].reset_index(drop=True)


def check_size(languages: list[str], per_language: int) -> None:
    """Raise :class:`helpers.data.SizeError` when the canon outside the held-out pool has fewer than
    ``per_language`` verses for each language (no verse is given to two languages)."""
    available = len(_pool())
    if per_language * len(languages) > available:
        raise data.SizeError(f"pre-training asks for {per_language} verses in each of {len(languages)} languages "
                             f"({per_language * len(languages)}), but only {available} verses are outside the "
                             f"held-out pool: lower 'pretrain_verses_per_language' to at most "
                             f"{available // len(languages)}")
    if per_language <= EVAL_PER_LANGUAGE:
        raise data.SizeError(f"'pretrain_verses_per_language' is {per_language}; the last {EVAL_PER_LANGUAGE} verses "
                             "of each language measure the held-out MLM loss, so give more than that")


def corpus_keys(languages: list[str], per_language: int, seed: int) -> dict[str, pd.DataFrame]:
    """Which verses each language pre-trains on: ``per_language`` each, dealt in turn from a seeded shuffle of the
    canon outside the held-out pool, so no verse is in two languages. Raises :class:`helpers.data.SizeError` when
    the canon has too few verses."""
    check_size(languages, per_language)
    keys = _pool()
    order = np.random.default_rng(seed).permutation(len(keys))
    return {lang: keys.iloc[np.sort(order[i::len(languages)][:per_language])] for i, lang in enumerate(languages)}


def corpus(languages: list[str], per_language: int, seed: int) -> dict[str, list[str]]:
    """Monolingual pre-training text: the verses of :func:`corpus_keys`, each in its one language."""
    return {lang: data.read_verses(lang, keys) for lang, keys in corpus_keys(languages, per_language, seed).items()}


def config(cfg: dict[str, Any], vocab_size: int):
    """The encoder's architecture: a BERT of ``pretrain_layers`` layers and width ``pretrain_hidden`` (heads of 64,
    feed-forward 4x), with the special-token layout of the rest of the package."""
    from transformers import BertConfig

    hidden = cfg["pretrain_hidden"]
    return BertConfig(vocab_size=int(vocab_size), hidden_size=hidden, num_hidden_layers=cfg["pretrain_layers"],
                      num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                      max_position_embeddings=cfg["pretrain_max_length"], type_vocab_size=2,
                      pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)


def save_steps(steps: int, n_checkpoints: int) -> list[int]:
    """Step 0 and ``n_checkpoints`` evenly spaced steps ending at ``steps``."""
    return sorted({0, *(round(steps * (i + 1) / n_checkpoints) for i in range(n_checkpoints))})


def masked_lm_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the masked tokens of ``batch``, with the output layer applied to those tokens only
    (``BertForMaskedLM`` would compute logits for every position: with 15 % masking, most of its output layer's
    cost, a third of a pre-training step here, would be thrown away). Same value as ``model(**batch).loss``."""
    hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    chosen = batch["labels"] != -100
    return torch.nn.functional.cross_entropy(model.cls(hidden[chosen]), batch["labels"][chosen])


@torch.no_grad()
def mlm_loss(model, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean masked-token cross-entropy over fixed, pre-masked batches (eval mode)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        n = int((batch["labels"] != -100).sum())
        total += float(masked_lm_loss(model, batch)) * n
        count += n
    model.train(was)
    return total / max(count, 1)


@dataclass
class PretrainOutputs:
    folder: Path
    checkpoints: list[dict]  # name, step, path (absolute), mlm_loss (mean over languages), per-language losses
    history: pd.DataFrame  # step, language, loss (training, per batch)
    info: dict

    def path(self, index: int) -> Path:
        """The checkpoint ``index`` (in saving order; -1 = the last)."""
        return Path(self.checkpoints[index]["path"])


# pragma: no mutate start (make mutation leaves out what trains a model)
def run(cfg: dict[str, Any], out: Path) -> PretrainOutputs:
    """The whole stage: corpus, tokenizer, MLM pre-training; checkpoints ``step-<n>/`` (model and tokenizer) in
    ``out``, with ``checkpoints.json``, ``history.csv`` and ``info.json``."""
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling, get_linear_schedule_with_warmup
    from transformers.trainer_pt_utils import LengthGroupedSampler


    start_time = time.perf_counter()
    languages, seed = list(cfg["pretrain_languages"]), int(cfg["seed"])
    texts = corpus(languages, cfg["pretrain_verses_per_language"], seed)
    tokenizer = train_smoke_tokenizer([t for lang in languages for t in texts[lang]],
                                             vocab_size=cfg["pretrain_vocab_size"],
                                             model_max_length=cfg["pretrain_max_length"])
    ids = {lang: tokenize(tokenizer, texts[lang], cfg["pretrain_max_length"]) for lang in languages}
    threads = set_threads()
    torch.manual_seed(seed)
    model = BertForMaskedLM(config(cfg, len(tokenizer)))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, return_tensors="pt")
    batch_size = cfg["pretrain_batch_size"]

    def masked(rows: list[list[int]]) -> dict[str, torch.Tensor]:
        batch = collator([{"input_ids": r} for r in rows])
        return {"input_ids": batch["input_ids"], "attention_mask": (batch["input_ids"] != PAD_ID).long(),
                "labels": batch["labels"]}

    with torch.random.fork_rng(devices=[]):  # the held-out masks are fixed, whatever the training draws
        torch.manual_seed(seed + 1)
        evaluation = {lang: [masked(ids[lang][-EVAL_PER_LANGUAGE:][i: i + batch_size])
                             for i in range(0, EVAL_PER_LANGUAGE, batch_size)] for lang in languages}
    train_ids = {lang: ids[lang][:-EVAL_PER_LANGUAGE] for lang in languages}
    # Each pass over a language's verses is in the order of transformers' length-grouped sampler (shuffled
    # mega-batches sorted by length), as fine-tuning's: batches of similar length pad about a third less.
    generator = torch.Generator().manual_seed(seed)
    orders = {lang: iter(()) for lang in languages}

    def next_rows(lang: str) -> list[list[int]]:
        rows = []
        while len(rows) < batch_size:
            try:
                rows.append(train_ids[lang][next(orders[lang])])
            except StopIteration:  # a new pass over this language's verses
                orders[lang] = iter(list(LengthGroupedSampler(batch_size, lengths=[len(x) for x in train_ids[lang]],
                                                              generator=generator)))
        return rows

    steps = cfg["pretrain_steps"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["pretrain_learning_rate"], weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(0.06 * steps), steps)
    saves = save_steps(steps, cfg["pretrain_checkpoints"])
    checkpoints, history = [], []
    tokenizer.save_pretrained(out / "tokenizer")

    def save(step: int) -> None:
        name = f"step-{step}"
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
        losses = {lang: mlm_loss(model, evaluation[lang]) for lang in languages}
        checkpoints.append({"name": name, "step": step, "path": name, "mlm_loss": float(np.mean(list(losses.values()))),
                            **{f"mlm_loss_{lang}": v for lang, v in losses.items()}})

    model.train()
    bar = tqdm(total=steps, desc="pre-training (MLM)", unit="step", mininterval=progress_interval())
    save(0)
    for step in range(1, steps + 1):
        lang = languages[(step - 1) % len(languages)]  # one language per batch, in turn
        loss = masked_lm_loss(model, masked(next_rows(lang)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step, "language": lang, "loss": loss.item()})
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean([h['loss'] for h in history[-20:]]):.2f}", refresh=False)
        if step in saves:
            save(step)
    bar.close()
    info = {"languages": languages, "verses_per_language": cfg["pretrain_verses_per_language"],
            "vocab_size": len(tokenizer), "n_parameters": sum(p.numel() for p in model.parameters()),
            "threads": threads, "seconds": round(time.perf_counter() - start_time, 1),
            "tokens_per_sequence_mean": float(np.mean([len(x) for lang in languages for x in ids[lang]]))}
    pd.DataFrame(history).to_csv(out / "history.csv", index=False)
    artifacts.write_json(out / CHECKPOINTS_FILE, checkpoints)
    artifacts.write_json(out / "info.json", info)
    return load(out)
# pragma: no mutate end


def load(folder: Path) -> PretrainOutputs:
    """Read a committed (or just written) pre-training stage folder."""
    checkpoints = [dict(c, path=str(Path(folder) / c["path"])) for c in artifacts.read_json(folder / CHECKPOINTS_FILE)]
    return PretrainOutputs(Path(folder), checkpoints, pd.read_csv(folder / "history.csv"),
                           artifacts.read_json(folder / "info.json"))


def loss_summary(result: PretrainOutputs, vocab_size: int) -> str:
    """What pre-training did to the held-out MLM loss, measured: the mean over the languages at step 0 and at the
    last checkpoint, against uniform guessing over the vocabulary (ln V), and the spread of the change per language.
    No verdict: whether the encoder is aligned is measured by the probing chapter (and its claims), not assumed."""
    first, last = result.checkpoints[0], result.checkpoints[-1]
    languages = [k.removeprefix("mlm_loss_") for k in first if k.startswith("mlm_loss_")]
    change = [last[f"mlm_loss_{lang}"] - first[f"mlm_loss_{lang}"] for lang in languages]
    fell = sum(c < 0 for c in change)
    return (f"Held-out MLM loss, mean over the {len(languages)} languages: {first['mlm_loss']:.2f} at step 0, "
            f"{last['mlm_loss']:.2f} at step {last['step']:,} (uniform guessing over the vocabulary: "
            f"{math.log(vocab_size):.2f}). It fell in {fell} of {len(languages)} languages (change per language "
            f"{min(change):+.2f} to {max(change):+.2f}).")
