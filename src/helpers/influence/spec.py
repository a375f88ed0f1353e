"""What TracIn scores: saved checkpoints (:class:`Checkpoint`) and the parameters a ``params`` spec selects on a
model (:func:`select_parameters`; the grammar itself is :mod:`.subsets`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..models.layout import encoder_layers
from .subsets import DEFAULT_PARAMS, SubsetError, check


@dataclass(frozen=True)
class Checkpoint:
    """A saved model (a ``save_pretrained`` directory) and the learning rate in force when it was saved."""

    path: str | Path
    learning_rate: float
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"Checkpoint learning_rate must be > 0, got {self.learning_rate!r}")
        if self.name is None:
            object.__setattr__(self, "name", Path(self.path).name)



def _embeddings_prefix(model: nn.Module, layers_prefix: str) -> str:
    """Name prefix of the embedding block: the module holding the word embeddings (``bert.embeddings.``), or the
    word embeddings alone when their parent also holds the encoder layers (``model.embed_tokens.``)."""
    word = model.get_input_embeddings()
    name = next(name for name, m in model.named_modules() if m is word)
    parent = name.rpartition(".")[0]
    return (parent if parent and not layers_prefix.startswith(parent + ".") else name) + "."


def select_parameters(model: nn.Module, params: str = DEFAULT_PARAMS) -> dict[str, nn.Parameter]:
    """The parameters a ``params`` spec selects, by name, in the model's order (see :mod:`helpers.influence`).

    Raises ``ValueError`` naming ``params`` for an unknown or empty spec.
    """
    check(params)
    named = dict(model.named_parameters())
    if params == "all":
        names = list(named)
    elif params == "embeddings":
        word = model.get_input_embeddings()
        names = [f"{name}.weight" for name, m in model.named_modules() if m is word]
    elif params == "classifier" or re.fullmatch(r"last_layers:\d+", params):
        prefix, layers = encoder_layers(model)
        outside = (prefix + ".", _embeddings_prefix(model, prefix))
        head = {name for name in named if not name.startswith(outside)}
        stems: tuple[str, ...] = ()
        if params != "classifier":
            n = int(params.split(":")[1])
            if n > len(layers):
                raise SubsetError(params, f"the model has {len(layers)} encoder layers")
            stems = tuple(f"{prefix}.{k}." for k in range(len(layers) - n, len(layers)))
        names = [name for name in named if name in head or name.startswith(stems)]
    else:  # "re:<regex>"
        names = [name for name in named if re.search(params[3:], name)]
    if not names:
        raise SubsetError(params, "it selects no parameter of this model")
    return {name: named[name] for name in names}

