"""PAWS-X (Yang et al. 2019): paraphrase identification in 7 languages, the paper's second task.

Hub id ``google-research-datasets/paws-x``, one configuration per language, splits ``train`` (machine-translated
from English, about 49k pairs), ``validation`` and ``test`` (2,000 human-translated pairs each); columns ``id``,
``sentence1``, ``sentence2``, ``label`` (0 not a paraphrase, 1 paraphrase). ``id`` links the translations.
"""

from __future__ import annotations

from .base import HubCorpus, Label

CORPUS = HubCorpus(
    name="pawsx", title="PAWS-X", hub_id="google-research-datasets/paws-x",
    languages=("de", "en", "es", "fr", "ja", "ko", "zh"),
    labels={"paraphrase": Label(("different", "paraphrase"), "are the two sentences paraphrases of each other")},
    text_column="sentence1", text_pair_column="sentence2", label_column="label", id_column="id",
    parallel=True, parallel_by="the id column (shared by the translations of an item)",
)
