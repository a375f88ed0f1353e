"""The Bible loader: balanced, reproducible splits with no test leakage."""

import pandas as pd
import pytest

from helpers import config, corpora, data, study
from helpers.corpora import bible

SMOKE_MAIN = study.resolve("smoke").first.params  # resolved once, before any test shrinks the corpus


def splits(seed=0, **overrides):
    """The smoke study's main run with ``overrides``, validated like a run's parameters (the corpus-size check of a
    whole study is not run here: some tests shrink the corpus to the size of one run's splits)."""
    cfg = config.check({**SMOKE_MAIN, **overrides, "seed": seed}, keys=config.RUN_PARAMETERS)
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


@pytest.mark.parametrize("share", [0.5, 1.0, 0.0])
def test_planted_translations_of_a_share_of_the_test_samples_but_never_the_sample_itself(share):
    cfg, train, test = splits(test_translations_in_train=True, parallel_train=True, planted_share=share)
    trained = set(zip(train["language"], train["pair_id"]))
    assert not trained & set(zip(test["language"], test["pair_id"]))  # never the test sample itself
    n_planted = round(share * cfg["test_per_language"])
    in_training = test["pair_id"].isin(set(train["pair_id"]))
    assert (test[in_training].groupby("language").size() == n_planted).all() or n_planted == 0
    assert not in_training.any() or n_planted
    # A planted verse: its translations in the other fine-tuning languages (all of them, except a language whose own
    # test set drew the same verse: test sets are drawn independently from one pool).
    for lang, pair in zip(test.loc[in_training, "language"], test.loc[in_training, "pair_id"]):
        others = [lg for lg in cfg["fine_tune_languages"] if lg != lang]
        testing = set(test.loc[test["pair_id"] == pair, "language"])
        assert all((lg, pair) in trained for lg in others if lg not in testing)
    # The others: the same verses in every test language, none of whose translations is trained on (TR1).
    free = test[~in_training].groupby("language")["pair_id"].apply(frozenset)
    assert len(free) in (0, len(cfg["fine_tune_languages"] + cfg["zero_shot_languages"])) and free.nunique() <= 1
    assert (test[~in_training].groupby("language").size() == cfg["test_per_language"] - n_planted).all()
    if 0 < share:
        per_language = test[in_training].groupby("language")["pair_id"].apply(frozenset)
        assert per_language.nunique() > 1  # each language draws its own planted test verses
    assert (train.groupby("language").size() == cfg["train_per_language"]).all()
    assert (test.groupby(["language", "label"]).size().groupby("language").agg(lambda n: n.max() - n.min()) <= 2).all()


def test_imbalance_gives_one_language_more_data_and_the_control_shifts_its_labels():
    cfg, train, test = splits(imbalance_language="de", imbalance_factor=3, permuted_language="ru")
    sizes = train.groupby("language").size()
    assert sizes["de"] == 3 * cfg["train_per_language"] and sizes["en"] == cfg["train_per_language"]
    _, plain_train, plain_test = splits(imbalance_language="de", imbalance_factor=3)
    ru = test["language"] == "ru"
    n = len(data.LABELS["genre"].names)
    assert (test.loc[ru, "label"].to_numpy() == (plain_test.loc[ru, "label"].to_numpy() + 1) % n).all()
    assert test.loc[ru, "permuted"].all() and not test.loc[~ru, "permuted"].any()
    assert (test.loc[~ru, "label"].to_numpy() == plain_test.loc[~ru, "label"].to_numpy()).all()
    assert train.loc[train["language"] == "ru", "permuted"].all()
    _, half, _ = splits(permuted_language="ru", permuted_share=0.5)
    assert half.loc[half["language"] == "ru", "permuted"].sum() == cfg["train_per_language"] // 2


def small_pool(monkeypatch, per_class: int) -> None:
    """Replace the canon by its first ``per_class`` verses of Genesis (Old Testament) and of Matthew (New)."""
    keys = data.verse_keys()
    pool = pd.concat([keys[keys["book"] == 1].head(per_class), keys[keys["book"] == 40].head(per_class)])
    monkeypatch.setattr(bible, "verse_keys", lambda: pool.reset_index(drop=True))  # where sampling reads it


@pytest.mark.parametrize("parallel", [False, True])
def test_no_test_verse_is_trained_on_when_the_pool_holds_exactly_what_the_splits_need(monkeypatch, parallel):
    # Testament task, 5 fine-tuning languages, 6 test and 12 training verses per language: 3 test verses per class,
    # and 6 training verses per class and language (disjoint: x5; parallel: shared). A pool of exactly that many
    # verses leaves no room for a test verse in training: without the ban, leakage (or a shortage) is certain.
    per_class = 3 + (6 if parallel else 6 * 5)
    small_pool(monkeypatch, per_class)
    cfg, train, test = splits(label="testament", train_per_language=12, test_per_language=6, parallel_train=parallel)
    assert not set(train["pair_id"]) & set(test["pair_id"])
    assert len(set(train["pair_id"]) | set(test["pair_id"])) == 2 * per_class  # every verse of the pool is used
    small_pool(monkeypatch, per_class - 1)  # one verse short per class: the splits cannot be drawn without leaking
    with pytest.raises(ValueError, match="lower train_per_language"):
        splits(label="testament", train_per_language=12, test_per_language=6, parallel_train=parallel)


def test_planted_translations_never_the_test_sample_itself_in_a_small_pool(monkeypatch):
    # With test_translations_in_train, one pool of 12 + 6 verses: every test verse is in the pool, so a test sample
    # is in its own language's training data unless it is taken out.
    small_pool(monkeypatch, 9)
    cfg, train, test = splits(label="testament", train_per_language=12, test_per_language=6, parallel_train=True,
                              test_translations_in_train=True, planted_share=1.0)
    trained = set(zip(train["language"], train["pair_id"]))
    assert not trained & set(zip(test["language"], test["pair_id"]))
    assert (train.groupby("language").size() == 12).all()
    pool = set(train["pair_id"]) | set(test["pair_id"])
    assert len(pool) == 18
    for lang in cfg["fine_tune_languages"]:  # each language trains on the pool minus its own test verses
        own_test = set(test.loc[test["language"] == lang, "pair_id"])
        assert set(train.loc[train["language"] == lang, "pair_id"]) == pool - own_test


def test_labels_follow_the_books():
    _, train, _ = splits(label="testament")
    assert ((train["book"] <= 39) == (train["label_name"] == "old")).all()


def test_parallel_texts_are_translations():
    _, _, test = splits()
    table = data.parallel_examples(test)
    assert table.shape == (test["language"].nunique(), 1)
    assert table.iloc[:, 0].nunique() == len(table)  # one verse, different text in every language


def test_parallel_examples_are_empty_without_a_parallel_test_set_and_the_description_follows_the_flags():
    cfg, train, test = splits(test_translations_in_train=True, parallel_train=True, planted_share=1.0)
    assert data.parallel_examples(test).shape[1] == 0
    text = data.describe_sampling(cfg, train, test)
    assert "parallel, like XNLI" in text and "never a test sample itself" in text
    assert f"{len(test)} of the {len(test)} test samples have translations" in text
    cfg, train, test = splits(test_translations_in_train=True, parallel_train=True)
    assert f"{len(test) // 2} of the {len(test)} test samples have translations" in data.describe_sampling(
        cfg, train, test)
    cfg, train, test = splits(parallel_train=True)
    assert "parallel, like XNLI" in data.describe_sampling(cfg, train, test)


def test_text_key_ignores_case_punctuation_and_spacing_but_not_words():
    key = corpora.base.text_key
    assert key("And the LORD spake unto Moses, saying,") == key("and the Lord  spake unto Moses saying")
    assert key("And the LORD spake unto Moses, saying,") != key("And the LORD spake unto Aaron, saying,")
    assert key("a b", "c") != key("a", "b c")  # a sentence pair keeps its boundary


def test_repeated_verses_are_never_sampled_so_no_training_text_equals_a_test_text(monkeypatch):
    repeated = bible.repeated_verses("en")
    assert "3.4.1" in repeated  # Leviticus 4:1, "And the LORD spake unto Moses, saying," (and 71 more)
    # A pool in which most verses repeat another's English text: without the exclusion they would be drawn.
    keys = data.verse_keys()
    ids = bible.pair_ids(keys)
    pool = pd.concat([keys[ids.isin(repeated) & keys["book"].isin(range(1, 40))].head(300),
                      keys[keys["book"] == 1].head(20), keys[keys["book"] == 40].head(20)])
    monkeypatch.setattr(bible, "verse_keys", lambda: pool.drop_duplicates().reset_index(drop=True))
    for planted in (False, True):
        cfg, train, test = splits(label="testament", train_per_language=4, test_per_language=4,
                                  parallel_train=planted, test_translations_in_train=planted)
        languages = cfg["fine_tune_languages"] + cfg["zero_shot_languages"]
        left_out = frozenset().union(*map(bible.repeated_verses, languages))
        assert not left_out & (set(train["pair_id"]) | set(test["pair_id"]))
        for lang in cfg["fine_tune_languages"]:
            texts = {split: set(map(corpora.base.text_key, frame.loc[frame["language"] == lang, "text"]))
                     for split, frame in (("train", train), ("test", test))}
            assert not texts["train"] & texts["test"]
    report = data.corpus_report(cfg)
    assert list(report.index) == [(lang, "all") for lang in languages]
    assert report.loc[("en", "all"), "rows"] == len(pool.drop_duplicates())
    assert report.loc[("en", "all"), "text repeats another verse's (left out in every language)"] == \
        pool.drop_duplicates().pipe(bible.pair_ids).isin(repeated).sum() > 250
