"""The parameter-subset grammar of TracIn's ``params`` (and of each of ``attribution_groups``), declared once.

Pure Python (no torch): the parameter table (:mod:`helpers.config`) validates profiles with :func:`check`, and the
engine validates its arguments with it before loading any model. What a valid spec selects on a given model is
:func:`helpers.influence.spec.select_parameters`.

* ``"all"``: every parameter (the word embeddings handled sparsely);
* ``"last_layers:N"``: the last ``N`` encoder layers (``N >= 1``) and the classification head;
* ``"classifier"``: the head alone, i.e. every parameter outside the embedding block and the encoder layers;
* ``"embeddings"``: the word embeddings alone ("TracIn-WE", Yeh et al. 2022);
* ``"re:<regex>"``: the parameters whose name matches the regular expression (``re.search``).
"""

from __future__ import annotations

import re

#: The parameter subset the book uses unless a profile says otherwise (see :mod:`helpers.influence` for why).
DEFAULT_PARAMS = "last_layers:1"
#: The allowed forms, as every error message names them.
FORMS = "'all', 'classifier', 'last_layers:N' (N >= 1), 'embeddings' or 're:<regex>'"

_FORM = re.compile(r"all|classifier|embeddings|last_layers:\d+|re:.+")


class SubsetError(ValueError):
    """A ``params`` spec that is not a parameter subset (of the grammar, or of a given model): ``spec`` and ``why``
    (empty when the spec has none of the allowed forms)."""

    def __init__(self, spec: object, why: str = ""):
        self.spec, self.why = spec, why
        super().__init__(f"params={spec!r} is not a parameter subset{': ' + why if why else ''}; allowed: {FORMS}")


def check(spec: object) -> str:
    """``spec`` if it has one of the allowed forms (model-independent), else :class:`SubsetError` (a ``ValueError``)
    saying why."""
    if not isinstance(spec, str) or not _FORM.fullmatch(spec):
        raise SubsetError(spec)
    if spec.startswith("last_layers:"):
        n = spec.split(":")[1]
        if int(n) < 1:
            raise SubsetError(spec, "N must be >= 1")
        if n != str(int(n)):  # one spelling per subset (a stage's identity hashes the spec)
            raise SubsetError(spec, "write N without leading zeros")
    if spec.startswith("re:"):
        try:
            re.compile(spec[3:])
        except re.error as err:
            raise SubsetError(spec, f"a bad regular expression ({err})") from err
    return spec
