"""No wrong result without an error (issue 23): inputs that used to pass as something else are refused, naming what
and where; stale or foreign pieces are never taken for a result.

* profiles and ``-p`` values read strictly (:mod:`helpers.strict_yaml`), ``extends`` merged key by key, every
  relation between parameters checked, ``--study ""`` refused;
* every integer parameter bounded, and the profile's seeds;
* TracIn shards refused when they belong to another fine-tuning, plan or parameter set, or to an earlier run;
* an executed page belongs to the commit of its stage, or the stage is stale and the page is never published.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import corpus_fixtures
import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from studies import ONE_RUN

from helpers import config, corpora, paths, pipeline, study
from helpers.compute import tracin as tracin_stage
from helpers.config import ConfigError
from helpers.corpora import local
from helpers.flow import feasible, graph, runner, store
from helpers.influence import shard
from helpers.influence.scores import InfluenceScores

# --- profiles read strictly -----------------------------------------------------------------------------------


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


ONE = yaml.safe_dump(ONE_RUN, sort_keys=False)


def test_a_key_written_twice_is_refused_with_its_line(tmp_path):
    path = write(tmp_path, "parameters:\n  top_k: 5\n  epochs: 2\n  top_k: 7\nruns: {main: {}}\n")
    with pytest.raises(ConfigError, match=r"p\.yaml, line 4: key 'top_k' is written twice, at lines 2 and 4"):
        study.load_profile(path)
    path = write(tmp_path, "runs:\n  main: {}\n  main: {seeds: [1]}\n")
    with pytest.raises(ConfigError, match="key 'main' is written twice, at lines 2 and 3"):
        study.load_profile(path)


def test_extends_merges_a_run_key_by_key(tmp_path):
    write(tmp_path, "runs:\n  main: {}\n  control: {permuted_language: ru, seeds: [0]}\n", "base.yaml")
    path = write(tmp_path, f"extends: {tmp_path / 'base.yaml'}\nruns:\n  control: {{permuted_share: 0.5}}\n")
    runs = study.load_profile(path)["runs"]
    assert runs["control"] == {"permuted_language": "ru", "seeds": [0], "permuted_share": 0.5}
    assert runs["main"] == {}


def test_a_billion_laughs_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "\n".join(lines) + "\n"
    assert len(text) < 500
    path = write(tmp_path, "parameters:\n  " + text.replace("\n", "\n  ").rstrip() + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="anchor &a refused: profiles take no anchors or aliases"):
        study.load_profile(path)
    assert time.perf_counter() - start < 1
    with pytest.raises(ConfigError, match="alias"):
        config.parse_override("fine_tune_languages=*x")


def test_permuted_share_needs_a_permuted_language(tmp_path):
    with pytest.raises(ConfigError, match="'permuted_share' is 0.5 but 'permuted_language' is none"):
        study.resolve("smoke", ["permuted_share=0.5"])
    study.resolve("smoke", ["control.permuted_share=0.5"])  # the control run names its language


def test_examples_per_language_fit_the_test_samples():
    with pytest.raises(ConfigError, match="'examples_per_language' is 7 but each language has 6 test samples"):
        study.resolve("smoke", ["examples_per_language=7"])


def test_counterfactual_seeds_fit_the_main_run_s_seeds():
    with pytest.raises(ConfigError, match=r"'counterfactual_seeds' is 3 but the main run has 1 seed\(s\).*"
                                          r"allowed: 1\.\.1"):
        study.resolve("counterfactual", seeds=[0])
    assert study.resolve("counterfactual").params["counterfactual_seeds"] == 3


@pytest.mark.parametrize("value", ["010", "+010", "00"])
def test_a_number_with_a_leading_zero_is_refused_not_read_as_octal(value):
    needle = f"parameter 'top_k': cannot read value '{value}' (number '{value}' has a leading zero"
    with pytest.raises(ConfigError, match=re.escape(needle)):
        config.parse_override(f"top_k={value}")
    assert config.parse_override("top_k=10") == ("top_k", 10)


def test_a_leading_zero_in_a_profile_is_refused_with_its_line(tmp_path):
    path = write(tmp_path, "parameters:\n  model: tiny-random\n  top_k: 010\n")
    with pytest.raises(ConfigError, match="p.yaml, line 3: number '010' has a leading zero"):
        study.load_profile(path)


def test_names_stay_text(tmp_path):
    path = write(tmp_path, ONE + "  on: {seeds: [0]}\n  'off': {seeds: [1]}\n")
    runs = study.load_profile(path)["runs"]
    assert list(runs) == ["main", "on", "off"]
    assert [r.name for r in study.resolve(path).runs.values()] == ["main-s0", "on-s0", "off-s1"]
    path = write(tmp_path, "parameters:\n  fine_tune_languages: [en, no]\n")  # 'no' would be False
    assert study.load_profile(path)["parameters"]["fine_tune_languages"] == ["en", "no"]
    for text, needle in [("runs:\n  main: {}\n  1: {}\n", "key 1 \\(int\\) at line 3"),
                         ("runs:\n  main: {}\n  true: {}\n", "key True \\(bool\\) at line 3")]:
        with pytest.raises(ConfigError, match=needle):
            study.load_profile(write(tmp_path, text))
    assert config.parse_override("learning_rate=1e-4") == ("learning_rate", 1e-4)
    assert study.load_profile(write(tmp_path, "learning_rate: 1e-4\n"))["parameters"] == {"learning_rate": 1e-4}


def test_an_empty_study_name_is_refused(capsys):
    with pytest.raises(ConfigError, match="option --study is empty"):
        study.resolve("smoke", name="")
    assert pipeline.main(["status", "--profile", "smoke", "--study", ""]) == 2
    assert "option --study is empty" in capsys.readouterr().err


# --- integer bounds -----------------------------------------------------------------------------------------------


def test_every_integer_parameter_has_an_upper_bound():
    unbounded = [k for k, p in config.PARAMETERS.items() if p.type is int and p.maximum is None]
    assert unbounded == []


@pytest.mark.parametrize("override", ["epochs=100000000000000000000", "batch_size=100000000000000000000",
                                      "tracin_batch_size=100000000000000000000", "train_per_language=10000000",
                                      "pretrain_steps=100000000000000000000"])
def test_huge_integers_are_refused_before_any_work(override, capsys):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"parameter '{key}' is 1000+, above the maximum"):
        study.resolve("smoke", [override])
    assert pipeline.main(["status", "--profile", "smoke", "-p", override]) == 2
    assert "above the maximum" in capsys.readouterr().err


@pytest.mark.parametrize("seeds", [[2**64], [2**32]])
def test_seeds_beyond_numpy_s_range_are_refused(tmp_path, seeds):
    with pytest.raises(ConfigError, match=r"'seeds' must be a non-empty list of distinct integers in 0\.\.4294967295"):
        study.resolve("smoke", seeds=seeds)
    path = write(tmp_path, ONE + f"seeds: {seeds}\n")
    with pytest.raises(ConfigError, match="4294967295"):
        study.resolve(path)
    assert [r.seed for r in study.resolve(write(tmp_path, ONE + "seeds: [4294967295]\n")).runs.values()] == [2**32 - 1]


# --- TracIn shards: only one run's, all of them ---------------------------------------------------------------------


def fake_finetune(folder, seed):
    """A fine-tuning folder's record files (what :func:`shard.finetune_identity` reads): another seed, other files."""
    folder.mkdir(parents=True)
    (folder / "info.json").write_text(json.dumps({"seed": seed}))
    (folder / "checkpoints.json").write_text(json.dumps([{"name": "epoch-1", "learning_rate": 1e-3}]))
    return folder


def write_fake_shards(folder, finetune, world=2, ranks=None, test_ids=None, **change):
    """What ``score --rank R --world-size W`` writes for each rank (scores: the row index, so a merge is checkable)."""
    n_train, n_test = 4 * world, 3
    rows = np.tile(np.arange(n_train, dtype=np.float32)[None, :, None], (1, 1, n_test))
    scores = InfluenceScores(per_checkpoint=rows, checkpoints=["epoch-1"], learning_rates=[1e-3],
                             train_ids=pd.DataFrame({"uid": range(n_train)}),
                             test_ids=pd.DataFrame({"uid": range(n_test)}) if test_ids is None else test_ids)
    for rank in range(world) if ranks is None else ranks:
        meta = {"finetune": shard.finetune_identity(finetune), "params": "last_layers:1", "similarity": "dot",
                "batch_size": 32, "dtype": "fp32", "test_per_language": None, "code": shard.code_digest(),
                "launch": None, "plan": {"test_chunk": 3, "train_block": 4, "dense_bank": True}, **change}
        shard.write_shard(folder, rank, world, scores, np.arange(4 * rank, 4 * rank + 4), meta)


def test_shards_of_one_run_merge(tmp_path):
    write_fake_shards(tmp_path / "shards", fake_finetune(tmp_path / "ft0", 0))
    merged = shard.merge(tmp_path / "shards")
    assert np.array_equal(merged.per_checkpoint[0, :, 0], np.arange(8))


def test_shards_of_two_seeds_never_merge(tmp_path):
    write_fake_shards(tmp_path / "shards", fake_finetune(tmp_path / "seed0", 0), ranks=[0])
    write_fake_shards(tmp_path / "shards", fake_finetune(tmp_path / "seed1", 1), ranks=[1])
    ours, theirs = (shard.finetune_identity(tmp_path / f"seed{s}") for s in (0, 1))
    with pytest.raises(shard.ShardError, match=re.escape(f"finetune: {theirs!r} (shard-0001-of-0002) vs {ours!r} "
                                                         "(rank 0's)")):
        shard.merge(tmp_path / "shards")
    # the merge command says so and writes nothing
    assert tracin_stage.main(["merge", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "scores").exists()


@pytest.mark.parametrize("change, key", [({"plan": {"test_chunk": 3, "train_block": 8, "dense_bank": True}}, "plan"),
                                          ({"dtype": "bf16"}, "dtype"), ({"batch_size": 16}, "batch_size"),
                                          ({"code": "0" * 16}, "code"), ({"launch": "earlier"}, "launch")])
def test_a_shard_of_another_plan_parameter_set_code_or_launch_is_refused(tmp_path, change, key):
    ft = fake_finetune(tmp_path / "ft", 0)
    write_fake_shards(tmp_path / "shards", ft, world=3, ranks=[0, 2])
    write_fake_shards(tmp_path / "shards", ft, world=3, ranks=[1], **change)
    with pytest.raises(shard.ShardError, match=re.escape(f"{key}: {change[key]!r} (shard-0001-of-0003) vs ")):
        shard.merge(tmp_path / "shards")


def test_shards_of_other_samples_never_merge(tmp_path):
    """Same fine-tuning, plan and parameters, other test samples (e.g. a slice of another size or order): refused,
    and id tables that are not the ones the shards scored are refused too."""
    ft = fake_finetune(tmp_path / "ft", 0)
    write_fake_shards(tmp_path / "shards", ft, ranks=[0])
    write_fake_shards(tmp_path / "shards", ft, ranks=[1], test_ids=pd.DataFrame({"uid": [2, 1, 0]}))
    with pytest.raises(shard.ShardError,
                       match=r"ids: '[0-9a-f]{16}' \(shard-0001-of-0002\) vs '[0-9a-f]{16}' \(rank 0"):
        shard.merge(tmp_path / "shards")
    write_fake_shards(tmp_path / "alike", ft)
    pd.DataFrame({"uid": [2, 1, 0]}).to_parquet(tmp_path / "alike" / "test_ids.parquet", index=False)
    with pytest.raises(shard.ShardError, match=r"test_ids\.parquet are not the samples the shards scored"):
        shard.merge(tmp_path / "alike")


def test_a_shard_that_does_not_record_its_run_is_refused(tmp_path):
    ft = fake_finetune(tmp_path / "ft", 0)
    write_fake_shards(tmp_path / "shards", ft)
    for f in (tmp_path / "shards").glob("shard-*.json"):  # as an older version wrote them
        meta = json.loads(f.read_text())
        f.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("finetune", "code", "launch")}))
    with pytest.raises(shard.ShardError, match=r"finetune: '\(not recorded\)'"):
        shard.merge(tmp_path / "shards")


def test_a_launch_merges_only_its_own_shards(tmp_path):
    """Rank 0 of a launch passes its own record: an earlier launch's shards, all present and alike, are refused."""
    ft = fake_finetune(tmp_path / "ft", 0)
    write_fake_shards(tmp_path / "shards", ft, launch="earlier")
    with pytest.raises(shard.ShardError, match=re.escape("launch: 'earlier' (shard-0000-of-0002) vs 'now' "
                                                         "(this run)")):
        shard.merge(tmp_path / "shards", expect={"launch": "now"})


def test_a_shard_scored_apart_refuses_a_folder_holding_its_rank_or_another_run(tmp_path):
    ft = fake_finetune(tmp_path / "ft", 0)
    write_fake_shards(tmp_path / "shards", ft, world=3, ranks=[0, 1])  # an earlier run's, kept
    meta = {"finetune": shard.finetune_identity(ft), "params": "last_layers:1", "similarity": "dot",
            "batch_size": 32, "dtype": "fp32", "test_per_language": None, "code": shard.code_digest(), "launch": None,
            "plan": {"test_chunk": 3, "train_block": 4, "dense_bank": True}}
    with pytest.raises(shard.ShardError, match="already holds shard-0001-of-0003 .*a shard is written once"):
        shard.check_free(tmp_path / "shards", 1, 3, meta)
    shard.check_free(tmp_path / "shards", 2, 3, meta)  # this run's last rank: free
    with pytest.raises(shard.ShardError, match=r"holds shard-0000-of-0003, a shard of another run \(finetune: "):
        shard.check_free(tmp_path / "shards", 2, 3, {**meta, "finetune": shard.finetune_identity(
            fake_finetune(tmp_path / "seed1", 1))})
    with pytest.raises(shard.ShardError, match="already holds shard-0000-of-0003"):
        write_fake_shards(tmp_path / "shards", ft, world=3, ranks=[0])


# --- local corpus files read at a bounded cost, checked before any work (issue 23, item 4) ------------------------


def xnli_copy(tmp_path, **kw):
    return corpus_fixtures.write("xnli", tmp_path / "xnli", n_train=6, n_test=6, languages=("en",), **kw)


def test_a_fifo_in_place_of_a_corpus_file_is_refused_before_reading(tmp_path):
    root = xnli_copy(tmp_path)
    (root / "en" / "test.jsonl").unlink()
    os.mkfifo(root / "en" / "test.jsonl")  # a reader would block forever
    with pytest.raises(corpora.CorpusFormatError, match=r"en/test\.jsonl: is a FIFO \(named pipe\), not a regular "
                                                        "file"):
        corpora.get("xnli").read("en", "test", str(root))


def test_a_corpus_file_beyond_the_stated_size_is_refused_before_reading(tmp_path, monkeypatch):
    root = xnli_copy(tmp_path)
    size = (root / "en" / "test.jsonl").stat().st_size
    monkeypatch.setattr(local, "MAX_FILE_BYTES", size - 1)
    monkeypatch.setattr(local, "_read_one", lambda *a: pytest.fail("the file was read"))
    with pytest.raises(corpora.CorpusFormatError, match=rf"en/test\.jsonl: {size:,} bytes, more than the "
                                                        rf"{size - 1:,} this loader reads"):
        corpora.get("xnli").read("en", "test", str(root))


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_invalid_utf8_names_the_file_and_line(tmp_path, fmt):
    root = corpus_fixtures.write("pawsx", tmp_path / "p", n_train=4, n_test=4, languages=("en",), fmt=fmt)
    path = root / "en" / f"test.{fmt}"
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:8] + b"\xe4" + lines[2][8:]  # Latin-1's a-umlaut, not UTF-8
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(corpora.CorpusFormatError, match=rf"en/test\.{fmt}, line 3: not UTF-8 text \(byte 0xe4"):
        corpora.get("pawsx").read("en", "test", str(root))


@pytest.mark.parametrize("value, shown", [('"1"', None), ("1.0", None), ("0.7", "0.7"), ("null", "null"),
                                          ('"2.0"', "'2.0'"), ('"one"', "'one'")])
def test_labels_are_checked_by_type_before_any_work(tmp_path, value, shown):
    """"1" and 1.0 are the class 1 (a CSV or a float column writes them so); a fraction is not truncated (0.7 was
    read as 0), a null not dropped, text not read as a missing class."""
    root = xnli_copy(tmp_path)
    path = root / "en" / "test.jsonl"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace('"label": 1', f'"label": {value}')
    path.write_text("\n".join(lines) + "\n")
    if shown is None:
        assert corpora.get("xnli").read("en", "test", str(root)).frame["label"].tolist() == [0, 1, 2, 0, 1, 2]
        return
    with pytest.raises(corpora.CorpusFormatError, match=rf"column 'label' has 1 values that are not whole class "
                                                        rf"numbers, first {re.escape(shown)} \(line 5\)"):
        corpora.get("xnli").read("en", "test", str(root))
    cfg = {**config.defaults("run"), "dataset": "xnli", "label": "nli", "corpus_dir": str(root),
           "model": "tiny-random", "attribution_groups": ["classifier"], "fine_tune_languages": ["en"],
           "zero_shot_languages": [], "train_per_language": 3, "test_per_language": 3}
    with pytest.raises(ConfigError, match="not whole class numbers"):  # the runner's check before any work
        feasible.check_runs({"main-s0": study.Run("main-s0", "main", 0, cfg)})


def test_a_relative_corpus_dir_is_resolved_once_against_the_callers_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = study.resolve("paper-xnli", ["corpus_dir=copies/xnli", "model_dir=~/models/xlmr"])
    for run in s.runs.values():
        assert run.params["corpus_dir"] == str(tmp_path / "copies" / "xnli")
        assert run.params["model_dir"] == str(Path("~/models/xlmr").expanduser())
    assert study.resolve("paper-xnli").first.params["corpus_dir"] == "none"
    xnli_copy(tmp_path / "copies")
    monkeypatch.chdir(tmp_path / "copies")  # a notebook runs from another directory: the recorded path still reads
    assert len(corpora.get("xnli").load_split("en", "test", s.first.params["corpus_dir"])) == 6


# --- a page belongs to the commit of its stage ----------------------------------------------------------------------


def page_of(s, stage_name):
    inst = next(i for i in graph.plan(s) if i.stage.name == stage_name)
    return inst, paths.executed_notebook(s.name, inst.stage.name, inst.identity)


def status_rows(s):
    return {f"{r['stage']}[{r['runs']}]": r for r in runner.status(s)}


def published(name):
    """The study's published pages, by name, with their bytes."""
    return {p.name: p.read_bytes() for p in sorted(paths.pages_dir(name).iterdir())}


def test_each_study_publishes_into_its_own_book_folder(copy_of_built):
    """Every run used to delete and recopy the checkout's book/executed/, whatever study it ran: two studies
    publishing at once failed with file errors and one book replaced the other, and make test replaced a user's
    pages. A study now publishes into artifacts/<study>/book/ alone, with the book's sources beside its pages."""
    other = paths.pages_dir("other")
    other.mkdir(parents=True)
    (other / "10_language_shares.ipynb").write_text("another study's page")
    checkout_pages = paths.REPO_ROOT / "book" / "executed"
    before = sorted(checkout_pages.iterdir()) if checkout_pages.exists() else None
    s = study.load("one")
    runner.publish(s, graph.plan(s))
    assert (other / "10_language_shares.ipynb").read_text() == "another study's page"
    assert (sorted(checkout_pages.iterdir()) if checkout_pages.exists() else None) == before
    book = paths.book_dir("one")
    assert (book / "_toc.yml").read_text() == (paths.REPO_ROOT / "_toc.yml").read_text()
    assert (book / "book" / "index.md").is_file() and (book / "_config.yml").is_file()
    toc = yaml.safe_load((book / "_toc.yml").read_text())
    for chapter in (c["file"] for part in toc["parts"] for c in part["chapters"]):
        assert any((book / f"{chapter}{ext}").is_file() for ext in (".ipynb", ".md")), chapter  # all the TOC lists
    assert not list(paths.pages_dir("one").parent.glob(".executed-*"))  # no staging folder left behind


def test_every_page_records_the_commit_it_shows(copy_of_built):
    s = study.load("one")
    for inst in graph.plan(s):
        page = paths.executed_notebook("one", inst.stage.name, inst.identity)
        record = store.read_record(store.folder("one", inst))
        stamp = nbformat.read(page, as_version=4).metadata[store.PAGE_KEY]
        assert stamp == {"stage": inst.stage.name, "identity": inst.identity,
                         "commit": record["commit"] if record else None}


def test_a_page_of_an_earlier_commit_makes_its_stage_stale_and_is_never_published(copy_of_built):
    s = study.load("one")
    inst, page = page_of(s, "qualitative")
    folder = store.folder("one", inst)
    record = store.read_record(folder)
    old = record["commit"]
    record["commit"] = "0123456789abcdef"  # a run stopped after the stage's new commit, before its page's rename
    (folder / store.RECORD).write_text(json.dumps(record))
    row = status_rows(s)["qualitative[(study)]"]
    assert row["state"] == "stale" and (f"was executed for commit {old} of its stage, not for its outputs' commit "
                                        "0123456789abcdef") in row["why"]
    before = published("one")
    with pytest.raises(runner.StageFailed, match=r"page \d+_qualitative.ipynb of stage qualitative is not published"):
        runner.publish(s, graph.plan(s))
    assert published("one") == before  # nothing published (and nothing removed from the earlier book)
    assert pipeline.main(["run", "--profile", str(copy_of_built), "--no-book", "--study", "one"]) == 0
    rows = status_rows(s)
    assert all(r["state"] in ("up to date", "always runs") for r in rows.values()), rows
    shown = nbformat.read(paths.pages_dir("one") / inst.stage.notebook, as_version=4).metadata[store.PAGE_KEY]["commit"]
    assert shown == store.read_record(folder)["commit"] not in (old, "0123456789abcdef")


@pytest.mark.parametrize("content", [b"", b"{", b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'])
def test_an_emptied_page_makes_its_stage_stale_and_is_never_published(copy_of_built, content):
    s = study.load("one")
    inst, page = page_of(s, "qualitative")
    page.write_bytes(content)
    row = status_rows(s)["qualitative[(study)]"]
    assert row["state"] == "stale" and f"{page.name} is empty or not a notebook" in row["why"]
    before = published("one")
    with pytest.raises(runner.StageFailed, match="is not published: .* is empty or not a notebook"):
        runner.publish(s, graph.plan(s))
    assert published("one") == before


# --- a local model copy checked before any work ---------------------------------------------------------------


@pytest.fixture
def local_copy(tmp_path):
    """A tiny XLM-R-shaped checkpoint of 300 embedding rows with an 18-piece tokenizer of its own, as save_pretrained
    writes it: what ``model_dir`` names."""
    from helpers import models

    folder = tmp_path / "xlmr-copy"
    models.tiny_xlmr_model(300, num_labels=2, seed=0).roberta.save_pretrained(folder)
    models.train_smoke_tokenizer(["a b c", "d e f"], vocab_size=40).save_pretrained(folder)
    return folder


def _edit_config(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_fitting_local_copy_passes(local_copy):
    from helpers import models

    models.check_local_copy("xlm-roberta-base", local_copy)  # raises on any mismatch


@pytest.mark.parametrize("breakage, message", [
    ("no weights", r"holds config\.json but no weights"),
    ("tokenizer of another model", r"tokenizer has 18 pieces but the model embeds 3000 .*another model"),
    ("tokenizer larger than the embedding", r"tokenizer has 18 pieces but config\.json's vocab_size is 10"),
    ("special tokens of another model", r"config\.json's pad_token_id is 7 but the tokenizer's is 1"),
    ("config of another model", r"stored word embedding has 300 rows but config\.json's vocab_size is 320"),
    ("no tokenizer", r"whose tokenizer does not load"),
])
def test_a_local_model_copy_that_cannot_work_is_refused_before_any_work(local_copy, breakage, message):
    """Each used to pass the checks: training at chance without a word (another model's tokenizer), or failing
    minutes into fine-tuning (no weights, ids beyond the embedding)."""
    from helpers import models

    if breakage == "no weights":
        (local_copy / "model.safetensors").unlink()
    elif breakage == "tokenizer of another model":
        models.tiny_xlmr_model(3000, num_labels=2, seed=0).roberta.save_pretrained(local_copy)
    elif breakage == "tokenizer larger than the embedding":
        models.tiny_xlmr_model(10, num_labels=2, seed=0).roberta.save_pretrained(local_copy)
    elif breakage == "special tokens of another model":
        _edit_config(local_copy, pad_token_id=7)
    elif breakage == "config of another model":
        _edit_config(local_copy, vocab_size=320)
    else:
        for file in local_copy.iterdir():
            if file.name.startswith(("tokenizer", "special_tokens")):
                file.unlink()
    with pytest.raises(models.ModelUnavailableError, match=message):
        models.check_local_copy("xlm-roberta-base", local_copy)


def test_the_runner_refuses_a_mismatched_model_dir_naming_the_run(local_copy, tmp_path):
    from helpers.flow import feasible

    _edit_config(local_copy, pad_token_id=7)
    profile = write(tmp_path, ONE)
    s = study.resolve(str(profile), ["model=xlm-roberta-base", f"model_dir={local_copy}", "tracin_params=classifier",
                                     "attribution_groups=[classifier]"])
    with pytest.raises(ConfigError, match=r"run 'main': parameter 'model_dir' is .*pad_token_id is 7"):
        feasible.check(s)


# --- relative folders resolved once, against the caller's directory -----------------------------------------


def test_a_relative_artifacts_folder_means_the_same_folder_in_the_notebooks(tmp_path):
    """``HELPERS_ARTIFACTS=out`` used to pass the runner's checks from the caller's directory, then name
    ``notebooks/out`` inside the notebooks (they run from ``notebooks/``): the variable is made absolute on import,
    so the kernels inherit the caller's folder."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HELPERS_ARTIFACTS": "out", "HELPERS_CACHE": "~/cache-here"}
    code = ("import os, subprocess, sys; from helpers import paths; "
            "print(paths.artifacts_root()); print(os.environ['HELPERS_CACHE']); "
            "print(subprocess.run([sys.executable, '-c', 'from helpers import paths; print(paths.artifacts_root())'], "
            f"cwd={str(paths.NOTEBOOKS)!r}, capture_output=True, text=True, check=True).stdout.strip())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    home = os.path.expanduser("~")
    assert out == [str(tmp_path / "out"), os.path.join(home, "cache-here"), str(tmp_path / "out")]
