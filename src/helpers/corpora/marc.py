"""MARC, the Multilingual Amazon Reviews Corpus (Keung et al. 2020): star rating of product reviews in 6
languages, the paper's third task.

The original hub id (``amazon_reviews_multi``) is defunct; ``mteb/AmazonReviewsClassification`` mirrors it: one
configuration per language, splits ``train`` (200,000 reviews), ``validation`` and ``test`` (5,000 each); columns
``text`` and ``label`` (0-4: one to five stars). Reviews differ from one language to the next (not parallel), so an
item is identified by its language and row.
"""

from __future__ import annotations

from .base import HubCorpus, Label

CORPUS = HubCorpus(
    name="marc", title="MARC (Amazon reviews)", hub_id="mteb/AmazonReviewsClassification",
    languages=("de", "en", "es", "fr", "ja", "zh"),
    labels={"stars": Label(("1 star", "2 stars", "3 stars", "4 stars", "5 stars"), "the review's star rating")},
    text_column="text", label_column="label",
    parallel=False, parallel_by="nothing (different reviews in each language; an item is its language and row)",
)
