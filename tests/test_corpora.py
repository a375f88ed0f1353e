"""The corpora interface: the three hub corpora loaded from local fixtures in the hub schema (written here, invented
text), their sampling, the offline errors that name ``corpus_dir``, and the one table of language metadata."""

from __future__ import annotations

import corpus_fixtures
import pandas as pd
import pytest

from helpers import config, corpora, data, languages

HUB = ("xnli", "pawsx", "marc")


def run_cfg(**over):
    return {**config.defaults("run"), "attribution_test_per_language": 1, "top_k": 1, **over}


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    formats = {"xnli": "jsonl", "pawsx": "tsv", "marc": "parquet"}  # each loader path once
    return {name: corpus_fixtures.write(name, root / name, fmt=formats[name]) for name in HUB}


def test_every_corpus_language_has_metadata():
    for corpus in corpora.CORPORA.values():
        missing = [lang for lang in corpus.languages if lang not in languages.LANGUAGES]
        assert not missing, f"{corpus.name}: no metadata for {missing}"
    assert data.LANGUAGES is languages.LANGUAGES  # one table, re-exported
    assert set(config.PARAMETERS["fine_tune_languages"].allowed()) == set(languages.LANGUAGES)
    assert languages.LANGUAGES["hi"].script == "Devanagari" and languages.LANGUAGES["ur"].family == "Indo-Aryan"


@pytest.mark.parametrize("name", HUB)
def test_hub_loader_reads_the_hub_schema_from_a_local_copy(fixture_dirs, name):
    corpus = corpora.get(name)
    en = corpus.load_split("en", "test", str(fixture_dirs[name]))
    de = corpus.load_split("de", "test", str(fixture_dirs[name]))
    assert len(en) == 12 and set(en["label"]) == set(range(len(next(iter(corpus.labels.values())).names)))
    n_labels = len(next(iter(corpus.labels.values())).names)
    offset = 0 if corpus.parallel else 1000 * corpus.languages.index("de")
    assert de["text"].tolist() == [corpus_fixtures.text("de", i + offset, i % n_labels, 0) for i in range(12)]
    if name == "pawsx":
        assert de["text_pair"].tolist() == [corpus_fixtures.text("de", i, i % 2, 2) for i in range(12)]
    assert ("text_pair" in en) == (name in ("xnli", "pawsx"))
    if corpus.parallel:  # translations share their id (XNLI: the row; PAWS-X: the id column)
        assert list(en["pair_id"]) == list(de["pair_id"])
        assert (en["pair_id"] == [f"test-{5000 + i}" for i in range(12)]).all() if name == "pawsx" else \
            (en["pair_id"] == [f"test-{i}" for i in range(12)]).all()
    else:  # MARC: ids are per language, so no two languages' reviews look like translations
        assert not set(en["pair_id"]) & set(de["pair_id"]) and en["pair_id"].iloc[0] == "en-test-0"


def test_xnli_rows_without_gold_label_are_left_out_and_counted(tmp_path):
    corpus_fixtures.write("xnli", tmp_path, n_train=6, n_test=6, languages=("en",))
    path = tmp_path / "en" / "test.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1] + [lines[-1].replace('"label": 2', '"label": -1')]) + "\n")
    loaded = corpora.get("xnli").read("en", "test", str(tmp_path))
    assert len(loaded.frame) == 5 and loaded.frame["pair_id"].tolist() == [f"test-{i}" for i in range(5)]
    assert loaded.rows == 6 and loaded.left_out == {"no gold label (-1)": 1}


@pytest.mark.parametrize("name", HUB)
def test_hub_sampling(fixture_dirs, name):
    corpus = corpora.get(name)
    langs = [lang for lang in ("en", "de", "fr", "es", "zh") if lang in corpus.languages][:3]
    zero = [lang for lang in corpus.languages if lang not in langs][:1]
    n_labels = len(next(iter(corpus.labels.values())).names)
    cfg = run_cfg(dataset=name, label=next(iter(corpus.labels)), fine_tune_languages=langs,
                  zero_shot_languages=zero, train_per_language=2 * n_labels, test_per_language=n_labels,
                  corpus_dir=str(fixture_dirs[name]))
    config.check(cfg)
    train, test = data.build_splits(cfg)
    assert list(train.columns[:9]) == data.COLUMNS and train["uid"].is_unique and test["uid"].is_unique
    assert (train.groupby("language").size() == 2 * n_labels).all()
    assert (train.groupby(["language", "label"]).size() == 2).all()  # balanced over labels
    assert set(test["language"]) == set(langs + zero) and (test.groupby("language").size() == n_labels).all()
    per_language = train.groupby("language")["pair_id"].apply(set)
    if corpus.parallel:
        assert len(set.union(*per_language)) == sum(map(len, per_language))  # no item trained in two languages
        tests = test.groupby("language")["pair_id"].apply(frozenset)
        assert tests.nunique() == 1  # a parallel test set
        pair = ("text", "text_pair")
        assert not test[test["language"] == langs[0]][list(pair)].equals(test[test["language"] == langs[1]][list(pair)])
    assert (test["label_name"] == [next(iter(corpus.labels.values())).names[i] for i in test["label"]]).all()
    again, _ = data.build_splits(cfg)
    pd.testing.assert_frame_equal(train, again)  # deterministic in the seed
    assert "test split" in data.describe_sampling(cfg, train, test)


def test_parallel_training_shares_items_across_languages(fixture_dirs):
    cfg = run_cfg(dataset="pawsx", label="paraphrase", fine_tune_languages=["en", "de", "fr"],
                  zero_shot_languages=["ja"], train_per_language=4, test_per_language=2, parallel_train=True,
                  imbalance_language="en", imbalance_factor=2, corpus_dir=str(fixture_dirs["pawsx"]))
    train, _ = data.build_splits(cfg)
    ids = train.groupby("language")["pair_id"].apply(set)
    assert ids["de"] == ids["fr"] and ids["de"] < ids["en"] and len(ids["en"]) == 8


def test_too_few_items_is_a_size_error(fixture_dirs):
    cfg = run_cfg(dataset="marc", label="stars", fine_tune_languages=["en", "de"], zero_shot_languages=[],
                  train_per_language=50, test_per_language=5, corpus_dir=str(fixture_dirs["marc"]))
    with pytest.raises(data.SizeError, match="lower train_per_language"):
        data.sample_keys(cfg)


def test_missing_local_copy_names_corpus_dir(tmp_path):
    xnli = corpora.get("xnli")
    with pytest.raises(corpora.CorpusUnavailableError, match=r"parameter 'corpus_dir' is .*not a directory"):
        xnli.load_split("en", "test", str(tmp_path / "nowhere"))
    only_en = corpus_fixtures.write("xnli", tmp_path / "only-en", n_train=3, n_test=3, languages=("en",))
    with pytest.raises(corpora.CorpusUnavailableError, match=r"has no sw/test\.jsonl.*columns \['premise'"):
        xnli.load_split("sw", "test", str(only_en))
    (tmp_path / "bad" / "en").mkdir(parents=True)
    (tmp_path / "bad" / "en" / "test.jsonl").write_text('{"sentence": "x", "label": 0}\n')
    with pytest.raises(corpora.CorpusUnavailableError, match=r"columns \['premise', 'hypothesis'\] missing"):
        xnli.load_split("en", "test", str(tmp_path / "bad"))


def test_hub_corpus_offline_names_corpus_dir(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub.constants

    # datasets reads these at import (make test sets them in the environment; a plain pytest run may not)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    corpora.base._read_hub.cache_clear()
    with pytest.raises(corpora.CorpusUnavailableError,
                       match=r"cannot be loaded from the Hugging Face hub.*set the parameter corpus_dir=DIR"):
        corpora.get("marc").load_split("en", "test")


@pytest.mark.parametrize("over, message", [
    (dict(dataset="xnli", label="genre"), r"'label' is 'genre' but dataset 'xnli' has the task\(s\) \['nli'\]"),
    (dict(dataset="xnli", label="nli", zero_shot_languages=["ko"]), r"'zero_shot_languages' has 'ko'"),
    (dict(dataset="marc", label="stars", fine_tune_languages=["en", "de"], zero_shot_languages=["ja"],
          parallel_train=True), r"'parallel_train' is true but dataset 'marc' is not parallel"),
    (dict(dataset="pawsx", label="paraphrase", fine_tune_languages=["en", "de"], zero_shot_languages=["ja"],
          parallel_train=True, test_translations_in_train=True), r"'test_translations_in_train' needs one pool"),
    (dict(corpus_dir="/data/x"), r"'corpus_dir' is set but dataset 'bible'"),
])
def test_config_checks_what_the_corpus_allows(over, message):
    with pytest.raises(config.ConfigError, match=message):
        config.check(run_cfg(**over))


def test_the_bible_behind_the_same_interface():
    bible = corpora.get("bible")
    assert bible.single_pool and bible.parallel and not bible.pairs and set(bible.languages) <= set(languages.LANGUAGES)
    en = bible.load_split("en")
    assert len(en) > 25000 and en["pair_id"].is_unique and set(en["label"]) == set(range(6))
    assert en.loc[en["pair_id"] == "1.1.1", "book"].item() == 1
    with pytest.raises(ValueError, match="split 'all'"):
        bible.load_split("en", "test")
    with pytest.raises(ValueError, match="corpus_dir"):
        bible.load_split("en", corpus_dir="/data/bible")
