"""Where a model keeps its parts: the stack of encoder layers, found generically (BERT, XLM-R, ...)."""

from __future__ import annotations

import re

from torch import nn


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of encoder layers: the ``ModuleList`` named ``*encoder.layer`` (or ``*layers``)."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    for pattern in (r"(^|.*\.)encoder\.layers?", r"(^|.*\.)layers?"):
        found = [(name, m) for name, m in lists if re.fullmatch(pattern, name)]
        if len(found) == 1:
            return found[0]
    raise ValueError(f"cannot find the encoder layers of {type(model).__name__}: expected one ModuleList named "
                     f"'encoder.layer' or 'layers', found {[name for name, _ in lists]}")

