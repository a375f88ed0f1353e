"""Damaged, concurrent and hostile inputs never pass as results (one test per finding of the robustness review).

Most tests are cheap (the runner's checks before work, the stage records); the session's one-run study of the tiny
model (``conftest.built``) serves the tests that need committed stages.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from studies import ONE_RUN

from helpers import config, data, paths, pipeline, study
from helpers.flow import cells, context, fingerprint, graph, runner, store
from helpers.flow.stage import all_stages
from helpers.flow.stage import get as get_stage

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture
def profile(tmp_path, monkeypatch):
    monkeypatch.setenv("HELPERS_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("HELPERS_CACHE", str(paths.cache_dir()))
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(ONE_RUN, sort_keys=False))
    return path


def states_of(profile_path):
    s = study.resolve(str(profile_path))
    rows = runner.status(s)
    return {f"{r['stage']}[{r['runs']}]": r for r in rows}, s


# --- 1 and 10: names that leave the artifacts root, overlong names --------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "../sibling", "a/b", "/tmp/x", ".hidden", "-x", "a" * 300, "a\nb"])
def test_a_study_name_never_resolves_outside_its_root(profile, tmp_path, capsys, name):
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("mine")
    assert pipeline.main(["run", "--profile", str(profile), "--no-book", f"--study={name}"]) == 2
    err = capsys.readouterr().err
    assert "must be a plain folder name" in err and "Traceback" not in err
    assert (sibling / "keep.txt").read_text() == "mine" and not paths.artifacts_root().exists()


def test_a_study_folder_that_is_a_link_elsewhere_is_refused(profile, tmp_path):
    paths.artifacts_root().mkdir(parents=True)
    (paths.artifacts_root() / "linked").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="resolves outside"):
        paths.study_dir("linked")


def test_run_name_as_a_parameter_points_to_the_study_option(profile, capsys):
    assert pipeline.main(["status", "--profile", str(profile), "-p", "run_name=x"]) == 2
    assert "--study option" in capsys.readouterr().err


def test_status_into_a_closed_pipe_is_quiet():
    proc = subprocess.run(f"{sys.executable} -m helpers.pipeline status --profile smoke | head -1", shell=True,
                          capture_output=True, text=True, env=ENV, cwd=paths.REPO_ROOT)
    assert proc.stdout.startswith("Study 'smoke'") and proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


# --- 2: concurrent runners, locks --------------------------------------------------------------------------------


def test_a_second_runner_of_the_same_study_stops_naming_the_first(profile, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from helpers.flow import store\n"
         "with store.study_lock('one'):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**ENV, "HELPERS_ARTIFACTS": str(paths.artifacts_root())})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert pipeline.main(["run", "--profile", str(profile), "--no-book"]) == 1
        err = capsys.readouterr().err
        assert "study 'one' is in use by process" in err and str(holder.pid) in err
        assert not (paths.study_dir("one") / "stages").exists()  # nothing was started
    finally:
        holder.kill()
        holder.wait()
    with store.study_lock("one"):  # released when its holder died
        pass


def test_a_stage_being_written_by_another_process_cannot_be_begun(copy_of_built, tmp_path):
    s = study.load("one")
    inst = next(i for i in graph.plan(s) if i.stage.name == "language_shares")
    final = store.folder("one", inst)
    with store.lock(final.parent / f".{final.name}.lock", "test holder"):
        namespace = {"study": "one", **{k: s.params[k] for k in inst.stage.params}}
        with pytest.raises(store.BusyError, match="in use by process"):
            context.begin("language_shares", namespace, show=False)
    ctx = context.begin("language_shares", namespace, show=False)  # free again; begun twice in one process is fine
    ctx = context.begin("language_shares", namespace, show=False)
    assert ctx.path.exists()


# --- 3 and 9: damaged outputs, status and run agree ----------------------------------------------------------


def test_a_committed_stage_records_every_file_it_wrote(copy_of_built):
    s = study.load("one")
    for inst in graph.plan(s):
        if inst.stage.always_run:
            continue
        folder = store.folder("one", inst)
        record = store.read_record(folder)
        on_disk = {f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file()} - {store.RECORD}
        assert set(record["files"]) == on_disk and record["commit"]
        assert store.damage(folder, record) is None


def damage_largest_file(target, how):
    """Damage the largest file (weights, scores) of the one-run study's ``target`` stage; returns its name."""
    s = study.load("one")
    inst = next(i for i in graph.plan(s) if i.stage.name == target)
    folder = store.folder("one", inst)
    record = store.read_record(folder)
    name = max(record["files"], key=lambda n: record["files"][n]["size"])
    victim = folder / name
    if how == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif how == "empty":
        victim.write_bytes(b"")
    elif how == "flip":  # same size, one byte changed
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        victim.write_bytes(bytes(raw))
    else:
        victim.unlink()
    return inst, name


def readers_of(s, inst):
    """Every stage instance that reads ``inst``, directly or not (labels as in the status table)."""
    affected, readers = {inst.key}, set()
    for i in graph.plan(s):  # inputs first
        if any((up.stage, up.identity) in affected for up in i.inputs):
            affected.add(i.key)
            readers.add(f"{i.stage.name}[{i.run.name if i.run else '(study)'}]")
    return readers


@pytest.mark.parametrize("target, how", [("data", "delete"), ("tracin", "flip"), ("tracin", "empty")])
def test_status_reports_damage_and_what_it_makes_stale(copy_of_built, target, how):
    inst, name = damage_largest_file(target, how)
    rows, s = states_of(copy_of_built)
    row = rows[f"{target}[main-s0]"]
    assert row["state"] == "damaged" and name in row["why"]
    readers = readers_of(s, inst)
    assert readers and {k for k, r in rows.items() if r["state"] == "stale"} == readers


def test_run_recomputes_what_status_reports_and_the_terminal_stays_quiet(copy_of_built, capfd):
    target = "tracin_groups"  # few readers, so little to rerun; it prints TracIn's progress bar
    inst, name = damage_largest_file(target, "truncate")  # its scores cut in half
    rows, s = states_of(copy_of_built)
    assert rows[f"{target}[main-s0]"]["state"] == "damaged"
    predicted = {k for k, r in rows.items() if r["state"] != "up to date"}
    assert predicted == readers_of(s, inst) | {f"{target}[main-s0]", "reproducibility[(study)]"}
    capfd.readouterr()
    assert pipeline.main(["run", "--profile", str(copy_of_built), "--no-book", "--study", "one"]) == 0
    out, err = capfd.readouterr()
    assert f"damaged: {name}" in out
    ran = {f"{e['stage']}[{e['run'] or '(study)'}]" for e in store.read_runlog("one")["stages"].values()
           if e["status"] == "ran"}
    assert ran == predicted  # status said what run would do
    rows, _ = states_of(copy_of_built)
    assert all(r["state"] in ("up to date", "always runs") for r in rows.values())
    # 7: the terminal shows the runner's lines and the notebooks' progress bars, nothing else
    for noise in ("TCP without encryption", "Traceback", "ZMQError", "WARNING", "effective parameters"):
        assert noise not in out + err, noise
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[0].startswith("Study 'one'") and all(ln.startswith(("Study", "[")) for ln in lines), lines
    bars = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert bars and all("%|" in ln for ln in bars), bars  # TracIn's progress bar
    assert list((paths.study_dir("one") / "executed").glob("*.kernel.log"))  # the kernel's messages are kept


def test_a_notebook_refuses_a_damaged_input(copy_of_built):
    s = study.load("one")
    inst = next(i for i in graph.plan(s) if i.stage.name == "tracin")
    folder = store.folder("one", inst)
    files = store.read_record(folder)["files"]
    (folder / max(files, key=lambda n: files[n]["size"])).write_bytes(b"")  # the scores
    namespace = {"study": "one", **{k: s.params[k] for k in get_stage("language_shares").params}}
    with pytest.raises(store.MissingStageError, match="is damaged"):
        context.begin("language_shares", namespace, show=False)


def test_a_stage_whose_input_was_recomputed_is_stale(copy_of_built):
    s = study.load("one")
    tracin = next(i for i in graph.plan(s) if i.stage.name == "tracin")
    folder = store.folder("one", tracin)
    record = store.read_record(folder)
    record["commit"] = "recomputed"  # what a new commit of the same stage looks like to its readers
    (folder / store.RECORD).write_text(json.dumps(record))
    page = paths.executed_notebook("one", "tracin", tracin.identity)  # and its page, executed for it
    nb = nbformat.read(page, as_version=4)
    nb.metadata[store.PAGE_KEY]["commit"] = "recomputed"
    nbformat.write(nb, page)
    rows, _ = states_of(copy_of_built)
    assert rows["tracin[main-s0]"]["state"] == "up to date"
    assert "was recomputed since" in rows["language_shares[(study)]"]["why"]
    assert rows["scoreboard[(study)]"]["state"] == "stale"


def test_the_reproducibility_page_is_shown_as_always_running_not_stale(copy_of_built):
    rows, _ = states_of(copy_of_built)
    assert rows["reproducibility[(study)]"]["state"] == "always runs"
    assert {r["state"] for k, r in rows.items() if not k.startswith("reproducibility")} == {"up to date"}


def test_the_code_a_stage_imports_is_part_of_its_fingerprint(tmp_path, monkeypatch):
    # the closure follows imports: the control chapter's module imports analysis, which imports influence/scores
    assert {"chapters/control", "analysis", "claims", "influence/scores", "chapters/__init__"} <= set(
        fingerprint.stage_modules(get_stage("control")))
    assert "pipeline" not in fingerprint.stage_modules(get_stage("control"))  # the runner is infrastructure
    source = tmp_path / "helpers"
    shutil.copytree(fingerprint.SOURCE, source)
    monkeypatch.setattr(fingerprint, "SOURCE", source)
    fingerprint.clear_caches()
    before = {name: fingerprint.source_hash(st) for name, st in all_stages().items()}
    with open(source / "analysis.py", "a") as fh:  # declared by no run stage, imported by the chapters
        fh.write("\n# an edit\n")
    after = {name: fingerprint.source_hash(st) for name, st in all_stages().items()}
    changed = {n for n in before if before[n] != after[n]}
    assert {"language_shares", "control", "qualitative"} <= changed
    assert not changed & {"data", "finetune", "tracin"}
    fingerprint.clear_caches()


# --- 4: damaged run log, manifest ----------------------------------------------------------------------------


def test_a_corrupt_run_log_is_started_afresh(copy_of_built, capsys):
    # (the runner reads the run log the same way with and without --force, which used to crash on it too)
    (paths.study_dir("one") / "runlog.json").write_text("{not json")
    assert pipeline.main(["run", "--profile", str(copy_of_built), "--no-book", "--study", "one"]) == 0
    assert store.read_runlog("one")["stages"]
    (paths.study_dir("one") / "runlog.json").write_text("[1, 2]")
    s = study.load("one")
    assert store.read_runlog("one") == {}
    assert isinstance(s, study.Study)


def test_a_corrupt_study_manifest_gives_one_clear_error(copy_of_built):
    params = {k: study.load("one").params[k] for k in get_stage("language_shares").params}
    (paths.study_dir("one") / "study.json").write_bytes(b"\x00\xff garbage")
    with pytest.raises(study.MissingStudyError, match="is damaged"):
        study.load("one")
    with pytest.raises(study.MissingStudyError, match="is damaged"):
        context.begin("language_shares", {"study": "one", **params}, show=False)


# --- 5: malformed profiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, needle", [
    (b"- a\n- b\n", "must be a mapping"), (b"3\n", "must be a mapping"), (b"\x91\xfe\x00binary", "not valid YAML"),
    (b"runs: {main: [1, 2]}\n", "run 'main' must be a name"), (b"seeds: [0\n", "not valid YAML"),
    (b"runs: {main: {}, 'a b': {}}\n", "must be a name"), (b"parameters: [1]\n", "must be mappings"),
    (b"runs: {other: {}}\n", "must include 'main'"),
])
def test_a_malformed_profile_is_one_clear_error_naming_the_file(tmp_path, capsys, content, needle):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert pipeline.main(["status", "--profile", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and ("bad.yaml" in err or "'main'" in err)


def test_a_profile_that_is_a_directory_or_unreadable(tmp_path, monkeypatch, capsys):
    (tmp_path / "dir.yaml").mkdir()
    assert pipeline.main(["status", "--profile", str(tmp_path / "dir.yaml")]) == 2
    assert "is a directory" in capsys.readouterr().err
    path = tmp_path / "locked.yaml"
    path.write_text("seeds: [0]\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, "Permission denied")) if self == path else real(self, *a, **k))
    assert pipeline.main(["status", "--profile", str(path)]) == 2
    assert "cannot be read: Permission denied" in capsys.readouterr().err


# --- 6: artifacts folder that cannot be written ----------------------------------------------------------------


def test_an_unwritable_artifacts_folder_says_where_and_what_to_do(profile, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HELPERS_ARTIFACTS", str(blocker / "artifacts"))
    assert pipeline.main(["run", "--profile", str(profile), "--no-book"]) == 1
    err = capsys.readouterr().err
    assert f"cannot write to {blocker}" in err and "HELPERS_ARTIFACTS" in err and "Traceback" not in err


def test_a_full_disk_says_so_before_any_work(profile, monkeypatch, capsys):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    assert pipeline.main(["run", "--profile", str(profile), "--no-book"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "free some space" in err


def test_a_file_system_error_inside_a_stage_gets_the_same_advice():
    assert "HELPERS_ARTIFACTS" in runner._os_hint("OSError", "[Errno 28] No space left on device")
    assert runner._os_hint("ValueError", "bad value") == ""


# --- 7: Ctrl-C (the quiet terminal is checked with the reruns above) ----------------------------------------------


def test_ctrl_c_prints_one_line_and_no_traceback(profile):
    env = {**ENV, "HELPERS_ARTIFACTS": str(paths.artifacts_root()), "HELPERS_CACHE": str(paths.cache_dir())}
    proc = subprocess.Popen([sys.executable, "-m", "helpers.pipeline", "run", "--profile", str(profile),
                             "--no-book"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            # as from a terminal: a shell's background job (e.g. CI) inherits SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # interrupt during the first notebook's execution
        if "data[main-s0]" in line and "running" in line:
            time.sleep(2)
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted: completed stages are kept" in err
    for noise in ("Traceback", "ZMQError", "TCP without encryption", "Task exception"):
        assert noise not in err, err


# --- 8: values that would fail after minutes of work ----------------------------------------------------------


@pytest.mark.parametrize("override, needle", [
    ("tracin_params=re:(", "bad regular expression"),
    ("tracin_params=last_layers:3", "the model has 2 encoder layers"),
    ("tracin_params=re:^nothing$", "selects no parameter"),
    ("attribution_groups=[classifier, last_layers:6]", "the model has 2 encoder layers"),
    ("learning_rate=nan", "finite"), ("learning_rate=.inf", "finite"),
    ("train_per_language=100000", "more samples than the corpus has"),
    ("test_per_language=20000", "more samples than the corpus has"),
])
def test_values_that_would_fail_later_are_refused_before_any_work(profile, capsys, override, needle):
    assert pipeline.main(["run", "--profile", str(profile), "--no-book", "-p", override]) == 2
    assert needle in capsys.readouterr().err
    assert not paths.artifacts_root().exists()


def test_cuda_without_a_gpu_is_refused_before_any_work(profile, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert pipeline.main(["run", "--profile", str(profile), "--no-book", "-p", "device=cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_the_size_check_is_the_sampler_itself():
    cfg = {**config.defaults("run"), "train_per_language": 6000}
    with pytest.raises(data.SizeError):
        data.sample_keys(cfg)


# --- 10: a notebook run directly refuses parameters it does not know ----------------------------------------------


def test_papermill_with_a_misspelled_parameter_writes_nothing(copy_of_built, tmp_path):
    import papermill

    s = study.load("one")
    before = sorted(p.name for p in (paths.study_dir("one") / "stages").iterdir())
    with pytest.raises(papermill.PapermillExecutionError, match=r"unknown parameter\(s\) \['top_kk'\]"):
        papermill.execute_notebook(str(get_stage("language_shares").path), str(tmp_path / "out.ipynb"),
                                   parameters={"study": "one", "top_kk": 3}, cwd=str(paths.NOTEBOOKS),
                                   progress_bar=False, kernel_name="python3")
    assert sorted(p.name for p in (paths.study_dir("one") / "stages").iterdir()) == before
    assert s.params["top_k"] == 10


def test_every_notebook_lists_its_parameters_with_type_and_help():
    assert cells.sync_parameter_cells(check_only=True) == [], \
        "run: python -c 'from helpers.flow import cells; cells.sync_parameter_cells()'"
    nb = nbformat.read(get_stage("finetune").path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "learning_rate: float = " in cell.source and "peak learning rate" in cell.source
    proc = subprocess.run([str(Path(sys.executable).with_name("papermill")), "--help-notebook",
                           str(get_stage("finetune").path)], capture_output=True, text=True, env=ENV)
    listed = [ln.split(":")[0].strip() for ln in proc.stdout.splitlines() if "(default" in ln]
    assert listed == ["study", "run", *get_stage("finetune").params]
    assert "max_length: int (default 48)" in proc.stdout and "min 8, max 512" in proc.stdout


def test_every_module_a_stage_loaded_while_it_worked_is_in_its_fingerprint(copy_of_built):
    """The import tracer: each stage records the package modules its kernel loaded after ``begin``; every one is
    covered by its fingerprint or an input's (the runner checks this after each stage too)."""
    s = study.resolve(copy_of_built)
    plan = graph.plan(s)
    planned = {i.key: i for i in plan}
    loaded = {}
    for inst in plan:
        record = store.read_record(store.folder("one", inst))
        loaded[inst.stage.name] = record["loaded"]
        if not inst.stage.always_run:
            assert fingerprint.uncovered(fingerprint.lineage(inst, planned), record["loaded"]) == [], inst.label
    # not vacuous: fine-tuning reaches the training loop only inside compute.finetune.run
    assert "helpers.finetune" in loaded["finetune"]
    assert fingerprint.uncovered([get_stage("data")], loaded["finetune"])  # data's fingerprint alone misses it
