"""Corpora: the Bible package and the three hub corpora of the paper, behind one interface (:mod:`.base`).

:data:`CORPORA` maps each value of the ``dataset`` parameter to its :class:`~.base.Corpus`; :func:`get` looks one up.
A new corpus is one module here with a ``CORPUS`` object and one line below.
"""

from __future__ import annotations

from . import bible, marc, pawsx, xnli
from .base import (
    COLUMNS,
    CORPUS_DIR_PARAM,
    Corpus,
    CorpusFormatError,
    CorpusUnavailableError,
    HubCorpus,
    Label,
    SizeError,
)

CORPORA: dict[str, Corpus] = {c.name: c for c in (bible.CORPUS, xnli.CORPUS, pawsx.CORPUS, marc.CORPUS)}


def get(name: str) -> Corpus:
    if name not in CORPORA:
        raise ValueError(f"parameter 'dataset' is {name!r}; allowed: {list(CORPORA)}")
    return CORPORA[name]


__all__ = ["COLUMNS", "CORPORA", "CORPUS_DIR_PARAM", "Corpus", "CorpusFormatError", "CorpusUnavailableError",
           "HubCorpus", "Label", "SizeError", "get"]
