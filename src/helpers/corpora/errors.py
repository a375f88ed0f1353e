"""What goes wrong with a corpus, before any work."""

from __future__ import annotations


class SizeError(ValueError):
    """The corpus has too few samples for the requested sample sizes."""


class CorpusUnavailableError(RuntimeError):
    """A hub corpus can be loaded neither from the hub nor from ``corpus_dir``; the message says what to set."""


class CorpusFormatError(CorpusUnavailableError):
    """A copy of a corpus is there but cannot be used as it is: the message names the file (and line, column, values)
    and what is wrong."""
