"""XNLI (Conneau et al. 2018): natural language inference in 15 languages, the paper's first task.

Hub id ``facebook/xnli``, one configuration per language, splits ``train`` (MNLI machine-translated, 392,702 pairs),
``validation`` (2,490) and ``test`` (5,010, human-translated); columns ``premise``, ``hypothesis``, ``label``
(0 entailment, 1 neutral, 2 contradiction; a row labelled -1, no gold label, is left out and counted). The validation
and test items are translations of each other row by row (XNLI's ``all_languages`` configuration pairs them so), so
the row number is the id that links them; the train split
(MNLI machine-translated) is taken to be aligned the same way, which was not checked here (no hub access): it matters
only for ``parallel_train: true`` and for keeping an item out of two languages' training data. The test split's
alignment is checked before any work: the same number of rows and the same label row by row in every test language.
"""

from __future__ import annotations

from .base import HubCorpus, Label

CORPUS = HubCorpus(
    name="xnli", title="XNLI", hub_id="facebook/xnli",
    languages=("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"),
    labels={"nli": Label(("entailment", "neutral", "contradiction"),
                         "does the premise entail, leave open or contradict the hypothesis")},
    text_column="premise", text_pair_column="hypothesis", label_column="label",
    label_hint="0 entailment, 1 neutral, 2 contradiction (copies with label words, such as XTREME's, must be mapped "
               "to these numbers)",
    parallel=True, parallel_by="row number (the splits are aligned row by row across languages)",
    no_gold_label=-1, labels_agree=True,
)
