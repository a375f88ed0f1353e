"""The Bible loader: balanced, reproducible splits with no test leakage."""

import pytest

from helpers import config, data


def splits(**overrides):
    cfg = config.resolve("smoke", overrides)
    return cfg, *data.build_splits(cfg)


def test_sizes_and_balance():
    cfg, train, test = splits(train_per_language=12, test_per_language=6)
    assert len(train) == 12 * len(cfg["fine_tune_languages"])
    langs = cfg["fine_tune_languages"] + cfg["zero_shot_languages"]
    assert list(test["language"].unique()) == langs and len(test) == 6 * len(langs)
    counts = data.label_counts(train)
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()
    assert set(train.columns) == set(data.COLUMNS) and train["uid"].is_unique and test["uid"].is_unique


def test_same_seed_same_splits_other_seed_other_splits():
    _, a, _ = splits(seed=3)
    _, b, _ = splits(seed=3)
    _, c, _ = splits(seed=4)
    assert a.equals(b)
    assert set(a["pair_id"]) != set(c["pair_id"])


def test_parallel_test_set_and_no_translation_of_a_test_verse_in_training():
    _, train, test = splits()
    per_language = test.groupby("language")["pair_id"].apply(frozenset)
    assert per_language.nunique() == 1  # the same verses in every test language
    assert not set(train["pair_id"]) & set(test["pair_id"])


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_training_flag(parallel):
    _, train, _ = splits(parallel_train=parallel)
    sets = train.groupby("language")["pair_id"].apply(frozenset)
    if parallel:
        assert sets.nunique() == 1
    else:
        union = frozenset().union(*sets)
        assert len(union) == sum(len(s) for s in sets)  # disjoint


def test_translations_allowed_but_never_the_test_sample_itself():
    _, train, test = splits(test_translations_in_train=True, parallel_train=False)
    assert not set(zip(train["language"], train["pair_id"])) & set(zip(test["language"], test["pair_id"]))
    per_language = test.groupby("language")["pair_id"].apply(frozenset)
    assert per_language.nunique() == len(per_language)  # each language has its own test verses


def test_labels_follow_the_books():
    _, train, _ = splits(label="testament")
    assert ((train["book"] <= 39) == (train["label_name"] == "old")).all()


def test_parallel_texts_are_translations():
    _, _, test = splits()
    table = data.parallel_examples(test)
    assert table.shape == (test["language"].nunique(), 1)
    assert table.iloc[:, 0].nunique() == len(table)  # one verse, different text in every language


def test_parallel_examples_are_empty_without_a_parallel_test_set_and_the_description_follows_the_flags():
    cfg, train, test = splits(test_translations_in_train=True, parallel_train=False)
    assert data.parallel_examples(test).shape[1] == 0
    text = data.describe_sampling(cfg, train, test)
    assert "different verses in each language (non-parallel)" in text and "never a test sample itself" in text
    cfg, train, test = splits(parallel_train=True)
    assert "parallel, like XNLI" in data.describe_sampling(cfg, train, test)
