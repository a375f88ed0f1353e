"""The runner: executes a study's stage graph with papermill, then builds the book.

    python -m helpers.pipeline run --profile embedded -p top_k=50
    python -m helpers.pipeline status --profile embedded
    python -m helpers.pipeline book

Every parameter of every run is validated before any work starts. The study's manifest
(``artifacts/<study>/study.json``) is written, then each planned stage instance (``helpers.stages.plan``) runs unless
it is up to date: its committed folder records the fingerprint expected now (its parameters, notebook, code and
inputs). Stages shared by several runs run once. ``--force`` recomputes everything. Executed notebooks are written
under a temporary name and renamed when complete; ``book/executed/`` receives the chapters and the first main run's
run stages. A failing cell stops the run with a non-zero exit naming the notebook; Ctrl-C keeps every completed stage.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat
from nbclient.exceptions import DeadKernelError

from . import artifacts, paths, stages, study as study_mod
from .config import ConfigError


class StageFailed(RuntimeError):
    pass


def runlog_path(study: str) -> Path:
    return paths.study_dir(study) / "runlog.json"


def read_runlog(study: str) -> dict[str, Any]:
    """Timings and status of every stage instance the runner executed for this study (damaged: empty)."""
    try:
        log = artifacts.read_json(runlog_path(study))
    except (OSError, ValueError):
        return {}
    return log if isinstance(log, dict) else {}


def is_fresh(study: str, inst: stages.Instance, expected: str) -> bool:
    """Up to date: a committed folder whose record carries the expected fingerprint, and the executed notebook the
    book shows (outputs written otherwise, e.g. by nbval in another folder, are never mistaken for these)."""
    if inst.stage.always_run:
        return False
    record = stages.read_record(stages.folder(study, inst))
    return (record is not None and record.get("fingerprint") == expected
            and paths.executed_notebook(study, inst.stage.name, inst.identity).exists())


def status(study: study_mod.Study) -> list[dict[str, Any]]:
    """One row per planned stage instance: stage, runs using it, state (up to date / stale / missing), folder."""
    instances = stages.plan(study)
    expected = stages.expected_fingerprints(instances)
    users: dict[tuple[str, str], list[str]] = {}
    for run in study.runs.values():
        for stage in stages.RUN_STAGES:
            inst = stages.run_instance(stage, run, study)
            users.setdefault(inst.key, []).append(run.name)
    rows = []
    for inst in instances:
        folder = stages.folder(study.name, inst)
        if inst.stage.always_run:
            state = "always runs"
        elif is_fresh(study.name, inst, expected[inst.key]):
            state = "up to date"
        elif stages.read_record(folder) is not None:
            state = "stale"
        else:
            state = "missing"
        rows.append({"stage": inst.stage.name, "runs": ", ".join(users.get(inst.key, [])) or "(study)",
                     "state": state, "folder": str(folder.relative_to(paths.artifacts_root()))})
    return rows


def _tag_parameter_cells(path: Path) -> None:
    """In the book, fold the injected parameters (papermill tags that cell 'injected-parameters') and drop the
    notebook's own defaults, which the injected values override: the next cell prints the effective ones."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        for marker, tag in (("injected-parameters", "hide-input"), ("parameters", "remove-cell")):
            if marker in tags and tag not in tags:
                tags.append(tag)
    nbformat.write(nb, path)


def execute(study: str, inst: stages.Instance, log_output: bool = True) -> Path:
    """Run one stage instance's notebook with papermill; returns the executed notebook."""
    import papermill

    source = inst.stage.path
    target = paths.executed_notebook(study, inst.stage.name, inst.identity)
    partial = target.with_name(f".{target.stem}.partial.ipynb")
    target.parent.mkdir(parents=True, exist_ok=True)
    parameters = {"study": study, **({"run": inst.run.name} if inst.run else {}), **inst.params}
    try:
        papermill.execute_notebook(str(source), str(partial), parameters=parameters, cwd=str(paths.NOTEBOOKS),
                                   log_output=log_output, progress_bar=False, kernel_name="python3")
    except papermill.PapermillExecutionError as err:
        raise StageFailed(f"stage {inst.label} failed in notebook notebooks/{source.name} "
                          f"(cell {err.exec_count}): {err.ename}: {err.evalue}\n"
                          f"The executed notebook with the traceback is {partial}") from None
    except DeadKernelError as err:
        raise StageFailed(f"stage {inst.label}: the kernel running notebooks/{source.name} died ({err}); out of "
                          f"memory? The partly executed notebook is {partial}") from None
    _tag_parameter_cells(partial)
    os.replace(partial, target)
    return target


def run(profile: str, overrides: list[str] | None = None, force: bool = False, build: bool = True,
        seeds: list[int] | None = None, name: str | None = None) -> dict:
    """Run every stage of the study (skipping up-to-date ones), publish the book's notebooks, build the book."""
    study = study_mod.resolve(profile, overrides, seeds=seeds, name=name)
    instances = stages.plan(study)
    expected = stages.expected_fingerprints(instances)
    study.save()
    print(f"Study {study.name!r} (profile {profile}): {len(study.runs)} run(s) "
          f"[{', '.join(study.runs)}], {len(instances)} stage(s); outputs in {paths.study_dir(study.name)}",
          flush=True)
    runlog = read_runlog(study.name)
    runlog["profile"] = str(profile)
    log = runlog["stages"] = {k: v for k, v in runlog.get("stages", {}).items() if isinstance(v, dict)}
    for i, inst in enumerate(instances, 1):
        header = f"[{i}/{len(instances)}] {inst.label} ({inst.stage.notebook})"
        entry_key = f"{inst.stage.name}-{inst.identity}"
        if not force and is_fresh(study.name, inst, expected[inst.key]):
            print(f"{header}: up to date, skipped", flush=True)
            log.setdefault(entry_key, {})["status"] = "reused"
        else:
            print(f"{header}: running", flush=True)
            start = time.perf_counter()
            execute(study.name, inst)
            seconds = time.perf_counter() - start
            log[entry_key] = {"status": "ran", "seconds": round(seconds, 1),
                              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            print(f"{header}: done in {seconds:.0f} s", flush=True)
        log[entry_key].update(stage=inst.stage.name, run=inst.run.name if inst.run else None)
        artifacts.write_json(runlog_path(study.name), runlog)
    publish(study, instances)
    if build:
        build_book()
    return runlog


def publish(study: study_mod.Study, instances: list[stages.Instance]) -> None:
    """Make ``book/executed`` hold the chapters' executed notebooks and the run stages of the study's first run."""
    first = study.first.name
    chosen = {inst.stage.notebook: inst for inst in instances if inst.run is None or inst.run.name == first}
    if paths.EXECUTED.exists():
        shutil.rmtree(paths.EXECUTED)
    paths.EXECUTED.mkdir(parents=True)
    for notebook, inst in chosen.items():
        shutil.copy2(paths.executed_notebook(study.name, inst.stage.name, inst.identity), paths.EXECUTED / notebook)


def build_book() -> Path:
    """``jupyter-book build`` (the book never executes anything: papermill did)."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(paths.REPO_ROOT)]
    print("Building the book:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=paths.REPO_ROOT)
    index = paths.REPO_ROOT / "_build" / "html" / "index.html"
    print(f"Book: {index}")
    return index


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be integers separated by commas, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.pipeline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd, text in [("run", "run the study's stages and build the book"),
                      ("status", "show every run's parameters and every stage's state")]:
        p = sub.add_parser(cmd, help=text)
        p.add_argument("--profile", default="embedded", help="params/<profile>.yaml (default: embedded)")
        p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                       help="override a parameter of every run (value read as YAML), e.g. -p top_k=50; "
                            "RUN.KEY=VALUE overrides it for one run variant")
        p.add_argument("--seeds", help="comma-separated seeds replacing the profile's, e.g. --seeds 0,1")
        p.add_argument("--study", help="name of the study's folder in artifacts/ (default: the profile's name)")
        if cmd == "run":
            p.add_argument("--force", action="store_true", help="recompute every stage")
            p.add_argument("--no-book", action="store_true", help="do not build the HTML book at the end")
    sub.add_parser("book", help="build the HTML book from book/executed")
    args = parser.parse_args(argv)

    try:
        if args.command == "book":
            build_book()
            return 0
        if args.command == "status":
            study = study_mod.resolve(args.profile, args.param, seeds=_seeds(args.seeds), name=args.study)
            print(f"Study {study.name!r} (profile {args.profile})")
            for key, value in study.params.items():
                print(f"  {key:<28} {value!r}")
            defaults = study_mod.config.defaults("run")
            for r in study.runs.values():
                differs = {k: v for k, v in r.params.items() if v != defaults[k]}
                print(f"run {r.name}: {differs if differs else 'the declared defaults'}")
            print()
            rows = status(study)
            width = max(len(r["stage"]) for r in rows)
            for row in rows:
                print(f"{row['stage']:<{width}}  {row['state']:<11}  {row['runs']:<28}  {row['folder']}")
            return 0
        run(args.profile, args.param, force=args.force, build=not args.no_book, seeds=_seeds(args.seeds),
            name=args.study)
        return 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (study_mod.MissingStudyError, stages.MissingStageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        print(f"error: {' '.join(map(str, err.cmd))} exited with {err.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: completed stages are kept and half-written ones ignored; run the same command again "
              "to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
