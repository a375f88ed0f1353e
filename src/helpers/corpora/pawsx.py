"""PAWS-X (Yang et al. 2019): paraphrase identification in 7 languages, the paper's second task.

Hub id ``google-research-datasets/paws-x``, one configuration per language, splits ``train`` (machine-translated
from English, about 49k pairs), ``validation`` and ``test`` (2,000 human-translated pairs each); columns ``id``,
``sentence1``, ``sentence2``, ``label`` (0 not a paraphrase, 1 paraphrase). ``id`` links the translations.

Untranslated sentences are written ``NS`` (some rows have both sentences ``NS``, with a label): such rows, and rows
with an empty sentence, are left out and counted per language. The gold labels of the same id differ across
languages for a few ids: the test split is checked to hold the same ids in every test language, and the ids whose
labels differ are counted per language and left out of the parallel test set (and of ``parallel_train``'s shared
items).
"""

from __future__ import annotations

from .base import HubCorpus, Label

CORPUS = HubCorpus(
    name="pawsx", title="PAWS-X", hub_id="google-research-datasets/paws-x",
    languages=("de", "en", "es", "fr", "ja", "ko", "zh"),
    labels={"paraphrase": Label(("different", "paraphrase"), "are the two sentences paraphrases of each other")},
    text_column="sentence1", text_pair_column="sentence2", label_column="label", id_column="id",
    label_hint="0 (not a paraphrase) or 1 (paraphrase)",
    parallel=True, parallel_by="the id column (shared by the translations of an item)",
    untranslated=("NS",), labels_agree=False,
)
