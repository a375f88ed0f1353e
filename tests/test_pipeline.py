"""The stage graph and the runner: freshness rules, shared stages, validation before work, resuming, failing loudly.

The graph tests are pure (identities and fingerprints); the end-to-end test reruns and resumes, through papermill, a
copy of the session's one-run study of the tiny model (``conftest.built``).
"""

import shutil

import nbformat
import pytest
import yaml

from helpers import paths, pipeline, study
from helpers.flow import fingerprint, graph, runner, store
from helpers.flow.stage import all_stages

MINI = {"parameters": {"model": "tiny-random", "train_per_language": 12, "test_per_language": 6, "max_length": 48,
                       "epochs": 2, "batch_size": 8, "learning_rate": 0.001, "top_k": 10, "n_bootstrap": 100,
                       "attribution_test_per_language": 2, "examples_per_language": 1,
                       "attribution_groups": ["last_layers:1", "classifier", "all", "embeddings"]},
        "runs": {"main": {}, "cosine": {"tracin_similarity": "cosine"}}}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Artifacts and executed notebooks in a temporary folder; a small profile."""
    monkeypatch.setenv("HELPERS_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("HELPERS_CACHE", str(paths.cache_dir()))  # keep sharing the real model cache
    profile = tmp_path / "mini.yaml"
    profile.write_text(yaml.safe_dump(MINI, sort_keys=False))
    return profile


def keyed(s):
    return {inst.label: inst.identity for inst in graph.plan(s)}


def test_top_k_changes_only_the_chapters_and_epochs_everything_after_data(sandbox):
    base = keyed(study.resolve("smoke"))
    top_k = keyed(study.resolve("smoke", ["top_k=4"]))
    changed = {k for k in base if base[k] != top_k.get(k)}
    assert changed and all("[" not in k for k in changed)  # no run stage
    assert "qualitative" not in changed  # it does not read top_k
    epochs = keyed(study.resolve("smoke", ["epochs=2"]))
    assert base["data[main-s0]"] == epochs["data[main-s0]"]
    assert base["finetune[main-s0]"] != epochs["finetune[main-s0]"]
    assert base["tracin[main-s0]"] != epochs["tracin[main-s0]"]


def test_a_variant_sharing_stages_with_the_main_run_plans_them_once(sandbox):
    s = study.resolve(sandbox)
    plan = graph.plan(s)
    finetunes = [i for i in plan if i.stage.name == "finetune"]
    assert len(finetunes) == 1  # cosine-s0 differs only in TracIn: its data and fine-tuning are main-s0's
    rows = {r["stage"]: r for r in runner.status(s) if r["stage"] == "finetune"}
    assert rows["finetune"]["runs"] == "main-s0, cosine-s0"


def test_fingerprints_follow_notebook_code_and_upstream(sandbox, tmp_path, monkeypatch):
    s = study.resolve(sandbox)
    plan = graph.plan(s)
    before = fingerprint.expected(plan)
    notebooks = tmp_path / "notebooks"
    shutil.copytree(paths.NOTEBOOKS, notebooks)
    monkeypatch.setattr(paths, "NOTEBOOKS", notebooks)
    nb = nbformat.read(notebooks / "02_finetune.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("an edit"))
    nbformat.write(nb, notebooks / "02_finetune.ipynb")
    after = fingerprint.expected(graph.plan(s))
    changed = {i.label for i in plan if before[i.key] != after[i.key]}
    assert "data[main-s0]" not in changed
    assert {"finetune[main-s0]", "tracin[main-s0]", "language_shares", "scoreboard"} <= changed
    # code: a stage's module is part of its fingerprint
    monkeypatch.setattr(paths, "NOTEBOOKS", paths.REPO_ROOT / "notebooks")
    real = fingerprint.source_hash
    monkeypatch.setattr(fingerprint, "source_hash", lambda st: real(st) + ("x" if st.name == "tracin" else ""))
    code = fingerprint.expected(plan)
    assert {i.label for i in plan if before[i.key] != code[i.key]} >= {"tracin[main-s0]", "dynamics"}
    assert before[plan[0].key] == code[plan[0].key]


def test_toc_and_stages_agree():
    toc = yaml.safe_load((paths.REPO_ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    executed = {f.removeprefix("book/executed/") for f in files if f.startswith("book/executed/")}
    notebooks = {st.path.stem for st in all_stages().values()}
    assert executed == notebooks, f"in _toc.yml only: {executed - notebooks}; stages only: {notebooks - executed}"
    assert {p.stem for p in paths.NOTEBOOKS.glob("*.ipynb")} == notebooks


def test_bad_parameters_stop_before_any_work(sandbox, capsys):
    for bad, needle in [(["-p", "nope=1"], "unknown parameter 'nope'"),
                        (["-p", "fine_tune_languages=[en,xx]"], "'fine_tune_languages' has 'xx'"),
                        (["-p", "epochs=2.5"], "'epochs' must be an integer"),
                        (["--study", ".."], "must be a plain folder name")]:
        assert pipeline.main(["run", "--profile", str(sandbox), "--no-book", *bad]) == 2
        assert needle in capsys.readouterr().err
    assert not paths.artifacts_root().exists()


def test_run_skip_resume_and_partial_outputs(copy_of_built):
    profile = str(copy_of_built)  # the session's one-run study (conftest.built), built by a first run

    def statuses():
        log = store.read_runlog("one")["stages"]
        return {f"{e['stage']}[{e['run']}]" if e["run"] else e["stage"]: e["status"] for e in log.values()}

    assert statuses() and all(v == "ran" for v in statuses().values())  # the first run computed everything
    runner.run(profile, build=False)  # same parameters: only the reproducibility page runs
    assert {k for k, v in statuses().items() if v == "ran"} == {"reproducibility"}
    assert {p.name for p in paths.pages_dir("one").iterdir()} == {st.notebook for st in all_stages().values()}
    executed = nbformat.read(paths.pages_dir("one") / "10_language_shares.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert "top_k = 10" in injected[0].source and "hide-input" in injected[0].metadata.tags  # the study's value

    # An interrupted stage (a half-written folder, the committed one gone): the rerun recomputes it and the stages
    # that read it, ignores the partial folder, and reuses everything else. (That an analysis parameter reruns only
    # chapters is the stage identities' business: test_top_k_changes_only_the_chapters_and_epochs_everything_...)
    s = study.resolve(profile)
    groups = next(i for i in graph.plan(s) if i.stage.name == "tracin_groups")
    final = store.folder("one", groups)
    shutil.rmtree(final)
    partial = final.parent / f".{final.name}.partial"
    partial.mkdir()
    (partial / "junk").write_text("half-written")
    runner.run(profile, build=False)
    ran = {k for k, v in statuses().items() if v == "ran"}
    assert {"tracin_groups[main-s0]", "attribution", "reproducibility"} <= ran
    assert not ran & {"data[main-s0]", "finetune[main-s0]", "tracin[main-s0]", "language_shares"}
    assert not partial.exists() and not (final / "junk").exists()


def test_failing_cell_exits_nonzero_naming_the_notebook(sandbox, tmp_path, monkeypatch, capsys):
    notebooks = tmp_path / "notebooks"
    shutil.copytree(paths.NOTEBOOKS, notebooks)
    nb = nbformat.read(notebooks / "01_data.ipynb", as_version=4)
    nb.cells.insert(len(nb.cells) - 1, nbformat.v4.new_code_cell("raise RuntimeError('planted failure')"))
    nbformat.write(nb, notebooks / "01_data.ipynb")
    monkeypatch.setattr(paths, "NOTEBOOKS", notebooks)
    assert pipeline.main(["run", "--profile", str(sandbox), "--no-book"]) == 1
    err = capsys.readouterr().err
    assert "01_data.ipynb" in err and "planted failure" in err
    s = study.resolve(sandbox)
    assert store.read_record(store.folder("mini", graph.plan(s)[0])) is None  # the stage never committed


class FakeStages:
    """Stands in for papermill and the stage store: ``execute`` sleeps a little and "commits" the instance, ``state``
    says an instance is up to date once it has been executed. Records the order of starts and ends."""

    def __init__(self, monkeypatch, fail: str | None = None):
        import threading
        import time

        self.lock, self.events, self.done, self.running, self.most = threading.Lock(), [], set(), 0, 0
        self.fail, self.threads = fail, set()

        def execute(study_name, inst, bars=True, threads=None):
            with self.lock:
                self.threads.add(threads)
                self.events.append(("start", inst.key))
                self.running += 1
                self.most = max(self.most, self.running)
            time.sleep(0.02)
            with self.lock:
                self.running -= 1
                self.events.append(("end", inst.key))
                if inst.label == self.fail:
                    raise runner.StageFailed(f"stage {inst.label} failed")
                self.done.add(inst.key)

        def state(study_name, inst, expected, upstream, extra=None):
            fresh = inst.key in self.done
            return store.State(fresh, "up to date" if fresh else "missing", "c" if fresh else None)

        monkeypatch.setattr(runner, "execute", execute)
        monkeypatch.setattr(runner, "state", state)
        monkeypatch.setattr(runner, "uncovered", lambda lineage, loaded: [])


def schedule(jobs):
    s = study.resolve("smoke")
    instances = graph.plan(s)
    return runner._Schedule(s, instances, {i.key: "x" for i in instances}, {"stages": {}}, False, jobs), instances


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_stages_run_at_once_only_after_their_inputs(sandbox, monkeypatch, jobs):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 4)
    fake = FakeStages(monkeypatch)
    sched, instances = schedule(jobs)
    sched.run()
    assert fake.done == {i.key for i in instances}  # every stage ran, once each
    starts = [key for what, key in fake.events if what == "start"]
    assert len(starts) == len(set(starts)) == len(instances)
    ended: set = set()
    for what, key in fake.events:
        if what == "start":  # every input ended before the stage started
            inst = sched.planned[key]
            assert {(i.stage, i.identity) for i in inst.inputs} <= ended, inst.label
        else:
            ended.add(key)
    assert fake.most == jobs  # never more than jobs at once, and the smoke study's graph lets that many run
    # the cores shared out among the kernels running at once (4 here); one at a time: every core
    assert fake.threads == {None if jobs == 1 else 4 // jobs}
    if jobs == 1:
        assert starts == [i.key for i in instances]  # one after the other, in the plan's order


def test_a_failing_stage_stops_new_starts_and_the_running_ones_finish(sandbox, monkeypatch):
    fake = FakeStages(monkeypatch, fail="finetune[main-s0]")
    sched, instances = schedule(2)
    with pytest.raises(runner.StageFailed, match=r"finetune\[main-s0\] failed"):
        sched.run()
    failed = next(i.key for i in instances if i.label == "finetune[main-s0]")
    at = fake.events.index(("end", failed))
    # the scheduler learns of the failure when it next wakes: at most one round of starts (2 slots) can come between
    # the failed stage's end and that moment; after it, nothing starts (38 stages would otherwise follow)
    assert sum(what == "start" for what, _ in fake.events[at + 1:]) <= 2
    starts = {key for what, key in fake.events if what == "start"}
    assert starts - {failed} <= fake.done  # the stage running beside it was completed, not abandoned
    assert not any(failed_input in {(i.stage, i.identity) for i in sched.planned[k].inputs} for k in starts
                   for failed_input in [failed])  # nothing that reads the failed stage started


@pytest.mark.parametrize("jobs", [0, -1, 17, 1.5, True, "2"])
def test_jobs_out_of_range_are_refused_before_any_work(sandbox, jobs):
    with pytest.raises(ValueError, match=r"jobs must be an integer from 1 to 16"):
        runner.run(str(sandbox), jobs=jobs, build=False)
    assert not paths.study_dir("mini").exists()
