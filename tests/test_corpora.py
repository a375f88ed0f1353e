"""The corpora interface: the three hub corpora loaded from local fixtures in the hub schema (written here, invented
text), their sampling, the offline errors that name ``corpus_dir``, and the one table of language metadata."""

from __future__ import annotations

import json

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


# --- the real files' layouts and quirks (issue 22) -------------------------------------------------------------


@pytest.mark.parametrize("layout, fmt", [("hub", "parquet"), ("hub", "jsonl"), ("shards", "parquet"),
                                         ("save_to_disk", "parquet"), ("file", "json"), ("file", "csv")])
def test_hub_download_layouts_are_read(tmp_path, layout, fmt):
    corpus_fixtures.write("pawsx", tmp_path, n_train=4, n_test=6, fmt=fmt, languages=("en",), layout=layout)
    loaded = corpora.get("pawsx").read("en", "test", str(tmp_path))
    assert loaded.rows == 6 and loaded.frame["pair_id"].tolist() == [f"test-{5000 + i}" for i in range(6)]
    assert loaded.frame["text"].tolist() == [corpus_fixtures.text("en", i, i % 2, 0) for i in range(6)]


def test_two_layouts_of_one_split_are_refused(tmp_path):
    corpus_fixtures.write("marc", tmp_path, n_train=4, n_test=5, languages=("en",))
    corpus_fixtures.write("marc", tmp_path, n_train=4, n_test=5, languages=("en",), layout="hub", fmt="parquet")
    with pytest.raises(corpora.CorpusFormatError, match=r"en: split 'test' is there in 2 layouts .*keep one"):
        corpora.get("marc").read("en", "test", str(tmp_path))


def rewrite(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize("name, old, new, message", [
    ("xnli", '"label": 1}', '"label": "neutral"}', r"column 'label' has 1 values that are not whole class numbers, "
     r"first 'neutral' \(line 2\); XNLI's 'label' must be 0 entailment, 1 neutral, 2 contradiction"),
    ("xnli", '"label": 1}', '"label": 3}', r"column 'label' has 1 class numbers outside 0\.\.2, first 3 \(line 2\)"),
    ("marc", '"label": 4}', '"label": 5}', r"column 'label' has 1 class numbers outside 0\.\.4, first 5 \(line 5\); "
     r"MARC \(Amazon reviews\)'s 'label' must be the star rating minus one"),
    ("pawsx", '"label": 1}', '"label": true}', r"column 'label' has 1 values that are not whole class numbers, first "
     r"True \(line 2\)"),
])
def test_labels_out_of_range_or_not_numbers_are_refused_with_file_line_and_value(tmp_path, name, old, new, message):
    corpus_fixtures.write(name, tmp_path, n_train=5, n_test=5, languages=("en",))
    rewrite(tmp_path / "en" / "test.jsonl", old, new)
    with pytest.raises(corpora.CorpusFormatError, match=rf"en/test\.jsonl: {message}"):
        corpora.get(name).read("en", "test", str(tmp_path))


def test_marc_in_its_original_columns_gets_the_mapping(tmp_path):
    (tmp_path / "en").mkdir()
    pd.DataFrame({"review_body": ["good", "bad"], "stars": [5, 1]}).to_parquet(tmp_path / "en" / "test.parquet")
    with pytest.raises(corpora.CorpusFormatError, match=r"columns \['text', 'label'\] missing.*original schema "
                                                        r"\(review_body, stars 1-5\): write text = review_body and "
                                                        r"label = stars - 1"):
        corpora.get("marc").read("en", "test", str(tmp_path))


def test_empty_texts_are_refused_naming_column_and_line(tmp_path):
    corpus_fixtures.write("xnli", tmp_path, n_train=5, n_test=5, languages=("en",))
    path = tmp_path / "en" / "test.jsonl"
    lines = path.read_text().splitlines()
    lines[3] = json.dumps({**json.loads(lines[3]), "hypothesis": "  "})
    lines[4] = json.dumps({**json.loads(lines[4]), "hypothesis": None})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(corpora.CorpusFormatError, match=r"column 'hypothesis' is empty \(or null\) in 2 rows, first "
                                                        r"line 4, line 5"):
        corpora.get("xnli").read("en", "test", str(tmp_path))


def test_pawsx_ns_rows_are_left_out_and_counted_per_language(tmp_path):
    corpus_fixtures.write("pawsx", tmp_path, n_train=12, n_test=12, fmt="tsv", languages=("en", "de", "fr"),
                          quirks=True)
    pawsx = corpora.get("pawsx")
    de = pawsx.read("de", "train", str(tmp_path))
    assert de.left_out == {"NS or empty sentence": 1} and "NS" not in set(de.frame["text"]) | set(de.frame["text_pair"])
    assert de.frame["text"].iloc[0].startswith('"')  # unquoted TSV: a leading quote is text
    cfg = run_cfg(dataset="pawsx", label="paraphrase", fine_tune_languages=["en", "de"], zero_shot_languages=["fr"],
                  train_per_language=4, test_per_language=4, corpus_dir=str(tmp_path))
    report = data.corpus_report(cfg)
    assert report.loc[("de", "train"), "NS or empty sentence"] == 1
    assert report.loc[("en", "train"), "NS or empty sentence"] == 0
    assert report.loc[("fr", "test"), "NS or empty sentence"] == 1 and report.loc[("fr", "test"), "rows"] == 12
    _, test = data.build_splits(cfg)
    assert not test[["text", "text_pair"]].isin(["NS"]).any().any()


def test_pawsx_label_disagreements_are_reported_and_left_out(tmp_path):
    corpus_fixtures.write("pawsx", tmp_path, n_train=12, n_test=12, languages=("en", "de", "fr"), quirks=True)
    cfg = run_cfg(dataset="pawsx", label="paraphrase", fine_tune_languages=["en", "de"], zero_shot_languages=["fr"],
                  train_per_language=4, test_per_language=8, corpus_dir=str(tmp_path))
    column = "label differs from en's (id left out in every language)"
    report = data.corpus_report(cfg)
    assert report[column].xs("test", level="split").to_dict() == {"en": 0, "de": 1, "fr": 0}
    _, test = data.build_splits(cfg)
    assert "test-5011" not in set(test["pair_id"])  # the disputed id (and the NS one, test-5001)
    assert (test.groupby(["language", "label"]).size() == 4).all()  # balanced in every language, not only the first
    with pytest.raises(data.SizeError, match=r"label class 1 has 4 samples left in the test split's items usable in "
                                             r"every test language \(10 items\)"):
        data.sample_keys({**cfg, "test_per_language": 10})


def test_a_parallel_test_split_that_is_not_aligned_is_refused(tmp_path):
    corpus_fixtures.write("xnli", tmp_path, n_train=6, n_test=9, languages=("en", "de", "ru"))
    corpus_fixtures.write("xnli", tmp_path / "dev", n_train=6, n_test=6, languages=("ru",))
    (tmp_path / "ru" / "test.jsonl").write_text((tmp_path / "dev" / "ru" / "validation.jsonl").read_text())
    cfg = run_cfg(dataset="xnli", label="nli", fine_tune_languages=["en", "de"], zero_shot_languages=["ru"],
                  train_per_language=3, test_per_language=3, corpus_dir=str(tmp_path))
    with pytest.raises(corpora.CorpusFormatError, match=r"the test split is not aligned across the test languages "
                                                        r"\(row number.*\): ru has 6 rows \(.*ru/test\.jsonl\), en "
                                                        r"has 9"):
        data.sample_keys(cfg)
    corpus_fixtures.write("xnli", tmp_path, n_train=6, n_test=9, languages=("ru",))
    path = tmp_path / "ru" / "test.jsonl"
    lines = path.read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # another order
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(corpora.CorpusFormatError, match=r"2 of 9 items have another label in ru .* than in en .*, "
                                                        r"first line 2: label 2 in ru, 1 in en"):
        data.sample_keys(cfg)


def test_a_pawsx_language_lacking_test_ids_is_refused(tmp_path):
    corpus_fixtures.write("pawsx", tmp_path, n_train=6, n_test=6, languages=("en", "de"))
    rewrite(tmp_path / "de" / "test.jsonl", '"id": 5003', '"id": 7003')
    cfg = run_cfg(dataset="pawsx", label="paraphrase", fine_tune_languages=["en"], zero_shot_languages=["de"],
                  train_per_language=2, test_per_language=2, corpus_dir=str(tmp_path))
    with pytest.raises(corpora.CorpusFormatError, match=r"de \(.*\) lacks 1 ids of en \(.*\), first 'test-5003' "
                                                        r"\(line 4\)"):
        data.sample_keys(cfg)


@pytest.mark.parametrize("name", HUB)
def test_pair_ids_are_unique_across_splits(fixture_dirs, name):
    corpus = corpora.get(name)
    train = corpus.load_split("en", "train", str(fixture_dirs[name]))
    test = corpus.load_split("en", "test", str(fixture_dirs[name]))
    assert not set(train["pair_id"]) & set(test["pair_id"])  # old code: both were row numbers (XNLI) or ids


def test_no_item_in_both_train_and_test_of_a_language(tmp_path):
    corpus_fixtures.write("marc", tmp_path, n_train=11, n_test=5, languages=("en", "de"), quirks=True)
    cfg = run_cfg(dataset="marc", label="stars", fine_tune_languages=["en", "de"], zero_shot_languages=[],
                  train_per_language=10, test_per_language=5, corpus_dir=str(tmp_path))
    train, test = data.build_splits(cfg)
    def keys(frame, lang):
        return {corpora.base.text_key(t) for t in frame[frame["language"] == lang]["text"]}

    for lang in ("en", "de"):
        assert not keys(train, lang) & keys(test, lang)
    report = data.corpus_report(cfg)
    assert report["equal to a chosen test item (left out)"].xs("train", level="split").tolist() == [1, 1]


def test_a_shortage_names_the_language_and_split(fixture_dirs):
    cfg = run_cfg(dataset="marc", label="stars", fine_tune_languages=["en", "de"], zero_shot_languages=[],
                  train_per_language=50, test_per_language=5, corpus_dir=str(fixture_dirs["marc"]))
    with pytest.raises(data.SizeError, match=r"label class 0 has 5 samples left in language 'en', train split, 10 "
                                             "needed"):
        data.sample_keys(cfg)


def test_duplicate_ids_are_refused_naming_the_values_and_lines(tmp_path):
    corpus_fixtures.write("pawsx", tmp_path, n_train=4, n_test=6, languages=("en",))
    rewrite(tmp_path / "en" / "test.jsonl", '"id": 5003', '"id": 5001')
    with pytest.raises(corpora.CorpusFormatError,
                       match=r"en/test\.jsonl: column 'id' has duplicate ids, first '5001' \(line 2\)"):
        corpora.get("pawsx").read("en", "test", str(tmp_path))


@pytest.mark.parametrize("damage, message", [
    ("garbage", r"test-00000-of-00001\.parquet: not a readable parquet file"),
    ("dangling", r"test-00000-of-00001\.parquet: cannot be read \(No such file or directory\)"),
    ("folder", r"test\.jsonl: is a folder, not a regular file"),
])
def test_an_unreadable_file_is_refused_naming_it(tmp_path, damage, message):
    corpus_fixtures.write("marc", tmp_path, n_train=4, n_test=5, languages=("en",), layout="hub", fmt="parquet")
    shard = tmp_path / "en" / "test-00000-of-00001.parquet"
    if damage == "garbage":
        shard.write_bytes(b"PAR1 not really parquet")
    elif damage == "dangling":
        shard.unlink()
        shard.symlink_to(tmp_path / "gone.parquet")
    else:
        shard.unlink()
        (tmp_path / "en" / "test.jsonl").mkdir()
    with pytest.raises(corpora.CorpusFormatError, match=message):
        corpora.get("marc").read("en", "test", str(tmp_path))


def test_a_datasetdict_saved_per_language_is_read_and_one_saved_as_a_split_is_refused(tmp_path):
    import datasets

    corpus_fixtures.write("marc", tmp_path / "flat", n_train=4, n_test=5, languages=("en",))
    frames = {split: pd.read_json(tmp_path / "flat" / "en" / f"{split}.jsonl", lines=True, dtype=False)
              for split in ("train", "test")}
    whole = datasets.DatasetDict({s: datasets.Dataset.from_pandas(f, preserve_index=False)
                                  for s, f in frames.items()})
    whole.save_to_disk(str(tmp_path / "dict" / "en"))  # dataset_dict.json + en/train/ + en/test/
    loaded = corpora.get("marc").read("en", "test", str(tmp_path / "dict"))
    expected = corpora.get("marc").read("en", "test", str(tmp_path / "flat"))
    pd.testing.assert_frame_equal(loaded.frame, expected.frame)
    whole.save_to_disk(str(tmp_path / "nested" / "en" / "test"))  # the whole dict where one split belongs
    with pytest.raises(corpora.CorpusFormatError, match=r"en/test: holds a DatasetDict \(\['train', 'test'\]\); "
                                                          r"point at one split's folder"):
        corpora.get("marc").read("en", "test", str(tmp_path / "nested"))


def test_parallel_training_needs_an_aligned_train_split(tmp_path):
    corpus_fixtures.write("xnli", tmp_path, n_train=9, n_test=6, languages=("en", "de"))
    path = tmp_path / "de" / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # another order: row 2 of de is row 3 of en
    path.write_text("\n".join(lines) + "\n")
    cfg = run_cfg(dataset="xnli", label="nli", fine_tune_languages=["en", "de"], zero_shot_languages=[],
                  train_per_language=3, test_per_language=3, corpus_dir=str(tmp_path))
    data.sample_keys(cfg)  # different items in each language: the order does not matter
    with pytest.raises(corpora.CorpusFormatError, match=r"the train split is not aligned across the fine-tuning "
                                                        r"languages \(row number.*\): 2 of 9 items have another "
                                                        r"label in de .* than in en .*, first line 2: label 2 in de, "
                                                        r"1 in en"):
        data.sample_keys({**cfg, "parallel_train": True})
    corpus_fixtures.write("xnli", tmp_path, n_train=9, n_test=6, languages=("de",))
    assert len(data.sample_keys({**cfg, "parallel_train": True})[0]["de"]) == 3  # aligned again: accepted
