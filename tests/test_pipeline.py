"""The runner end to end on the smoke profile: validation before work, skipping, resuming, failing loudly.

Runs the real notebooks through papermill into a temporary artifacts folder (about a minute on 2 cores).
"""

import json
import shutil

import nbformat
import pytest

from helpers import artifacts, config, paths, pipeline


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Artifacts, executed notebooks and (when a test needs it) source notebooks in a temporary folder."""
    monkeypatch.setenv("HELPERS_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("HELPERS_CACHE", str(paths.cache_dir()))  # keep sharing the real model cache
    monkeypatch.setattr(paths, "EXECUTED", tmp_path / "executed")
    return tmp_path


def statuses(run_name):
    return {s: e["status"] for s, e in pipeline.read_runlog(run_name)["stages"].items()}


def test_bad_parameters_stop_before_any_work(sandbox, capsys):
    for bad, needle in [(["-p", "nope=1"], "unknown parameter 'nope'"),
                        (["-p", "fine_tune_languages=[en,xx]"], "'fine_tune_languages' has 'xx'"),
                        (["-p", "epochs=2.5"], "'epochs' must be an integer")]:
        assert pipeline.main(["run", "--profile", "smoke", "--no-book", *bad]) == 2
        assert needle in capsys.readouterr().err
    assert not (sandbox / "artifacts").exists()


def test_run_skip_resume_and_partial_outputs(sandbox):
    log = pipeline.run("smoke", build=False)
    assert all(e["status"] == "ran" for e in log["stages"].values())
    assert sorted(p.name for p in paths.EXECUTED.iterdir()) == sorted(pipeline.NOTEBOOKS.values())
    params = config.resolve("smoke")
    for stage in config.STAGES:
        folder = paths.stage_dir("smoke", stage)
        assert json.loads((folder / "params.json").read_text()) == artifacts.stage_params(params, stage)
        assert (folder / "env.json").exists()

    # Same parameters: everything but the summary is reused.
    pipeline.run("smoke", build=False)
    assert statuses("smoke") == {"data": "reused", "finetune": "reused", "tracin": "reused",
                                 "language_shares": "reused", "reproducibility": "ran"}

    # A parameter of the analysis only reruns the analysis.
    pipeline.run("smoke", ["top_k=5"], build=False)
    assert statuses("smoke")["tracin"] == "reused" and statuses("smoke")["language_shares"] == "ran"
    executed = nbformat.read(paths.EXECUTED / "04_language_shares.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert "top_k = 5" in injected[0].source and "hide-input" in injected[0].metadata.tags

    # Outputs rewritten by other means (nbval, a notebook run by hand) with other parameters are not trusted: the
    # executed notebook the book would show was made for top_k=5, so top_k=10 must run again even though the
    # committed folder now says top_k=10.
    pipeline.run("smoke", ["top_k=10"], build=False)
    log = pipeline.read_runlog("smoke")
    pipeline.run("smoke", ["top_k=5"], build=False)
    artifacts.write_json(paths.stage_dir("smoke", "language_shares") / "params.json",
                         artifacts.stage_params(config.resolve("smoke", ["top_k=10"]), "language_shares"))
    assert pipeline.stage_status(config.resolve("smoke", ["top_k=10"]))["language_shares"] == "stale"
    pipeline.run("smoke", ["top_k=10"], build=False)
    assert statuses("smoke")["language_shares"] == "ran" and log["stages"]["tracin"]["fingerprint"]

    # An interrupted fine-tuning stage: a half-written folder and no committed one. The rerun resumes there,
    # ignores the partial folder and recomputes every later stage.
    run_dir = paths.run_dir("smoke")
    shutil.rmtree(run_dir / "finetune")
    (run_dir / ".finetune.partial").mkdir()
    (run_dir / ".finetune.partial" / "junk").write_text("half-written")
    pipeline.run("smoke", ["top_k=5"], build=False)
    assert statuses("smoke") == {"data": "reused", "finetune": "ran", "tracin": "ran", "language_shares": "ran",
                                 "reproducibility": "ran"}
    assert not (run_dir / ".finetune.partial").exists() and not (run_dir / "finetune" / "junk").exists()


def test_failing_cell_exits_nonzero_naming_the_notebook(sandbox, monkeypatch, capsys):
    notebooks = sandbox / "notebooks"
    shutil.copytree(paths.NOTEBOOKS, notebooks)
    nb = nbformat.read(notebooks / "01_data.ipynb", as_version=4)
    nb.cells.insert(len(nb.cells) - 1, nbformat.v4.new_code_cell("raise RuntimeError('planted failure')"))
    nbformat.write(nb, notebooks / "01_data.ipynb")
    monkeypatch.setattr(paths, "NOTEBOOKS", notebooks)
    assert pipeline.main(["run", "--profile", "smoke", "--no-book"]) == 1
    err = capsys.readouterr().err
    assert "01_data.ipynb" in err and "planted failure" in err
    assert not artifacts.is_complete("smoke", "data")  # the stage never committed
