"""MARC, the Multilingual Amazon Reviews Corpus (Keung et al. 2020): star rating of product reviews in 6
languages, the paper's third task.

The original hub id (``amazon_reviews_multi``) is defunct; ``mteb/AmazonReviewsClassification`` mirrors it: one
configuration per language, splits ``train`` (200,000 reviews), ``validation`` and ``test`` (5,000 each); columns
``text`` and ``label`` (0-4: one to five stars, label = stars - 1). The original schema's ``review_body`` and ``stars``
(1-5) are refused with the mapping in the message. Reviews differ from one language to the next (not parallel), so an
item is identified by its language and row.
"""

from __future__ import annotations

from .base import HubCorpus, Label

CORPUS = HubCorpus(
    name="marc", title="MARC (Amazon reviews)", hub_id="mteb/AmazonReviewsClassification",
    languages=("de", "en", "es", "fr", "ja", "zh"),
    labels={"stars": Label(("1 star", "2 stars", "3 stars", "4 stars", "5 stars"), "the review's star rating")},
    text_column="text", label_column="label",
    label_hint="the star rating minus one, 0-4 (stars 1-5 must be shifted down by one)",
    column_hints={
        "review_body": "This looks like MARC's original schema (review_body, stars 1-5): write text = review_body and "
                       "label = stars - 1, e.g. pandas: frame.assign(text=frame.review_body, label=frame.stars - 1)",
        "stars": "This looks like MARC's original schema (stars 1-5): write label = stars - 1"},
    parallel=False, parallel_by="nothing (different reviews in each language; an item is its language and row)",
)
