"""The runner: executes the stage notebooks in order with papermill, then builds the book.

    python -m helpers.pipeline run --profile embedded -p top_k=50 -p fine_tune_languages='[en,de,ru]'
    python -m helpers.pipeline status --profile embedded
    python -m helpers.pipeline book

Every parameter is validated before any work starts. A stage whose committed outputs were made with the same
parameters (its own and every earlier stage's) by the same notebook is skipped and its executed notebook reused;
``--force`` recomputes everything (do that after changing code in ``helpers``, which is not tracked). Once a stage
runs, every later stage runs too. Executed notebooks are written to ``artifacts/<run>/executed/`` under a temporary
name, renamed when complete, and copied to ``book/executed/``, which always holds the notebooks of the last run.
A failing cell stops the run with a non-zero exit naming the notebook; Ctrl-C keeps every completed stage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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

from . import artifacts, config, paths

#: The notebook of each stage, in run order.
NOTEBOOKS: dict[str, str] = {
    "data": "01_data.ipynb",
    "finetune": "02_finetune.ipynb",
    "tracin": "03_tracin.ipynb",
    "language_shares": "04_language_shares.ipynb",
    "reproducibility": "05_reproducibility.ipynb",
}
#: Stages that only summarise and always run (they are cheap and must see the latest timings).
ALWAYS_RUN = {"reproducibility"}

assert tuple(NOTEBOOKS) == config.STAGES


class StageFailed(RuntimeError):
    pass


def runlog_path(run_name: str) -> Path:
    return paths.run_dir(run_name) / "runlog.json"


def read_runlog(run_name: str) -> dict[str, Any]:
    path = runlog_path(run_name)
    return artifacts.read_json(path) if path.exists() else {}


def fingerprint(stage: str, params: dict[str, Any]) -> str:
    """What a stage's outputs depend on: its notebook's source and the parameters of it and every earlier stage.
    Editing the notebook or changing such a parameter makes the stage (and every later one) run again."""
    digest = hashlib.sha256((paths.NOTEBOOKS / NOTEBOOKS[stage]).read_bytes())
    digest.update(json.dumps(artifacts.stage_params(params, stage), sort_keys=True).encode())
    return digest.hexdigest()


def is_fresh(stage: str, params: dict[str, Any], runlog: dict[str, Any]) -> bool:
    """Up to date: committed outputs made with ``params``, and an executed notebook that the runner recorded for
    the same fingerprint (outputs written by other means, e.g. nbval or an interrupted run, do not count)."""
    run_name = params["run_name"]
    return (artifacts.is_complete(run_name, stage, params)
            and (paths.run_dir(run_name) / "executed" / NOTEBOOKS[stage]).exists()
            and runlog.get("stages", {}).get(stage, {}).get("fingerprint") == fingerprint(stage, params))


def stage_status(params: dict[str, Any]) -> dict[str, str]:
    """For each stage: 'up to date', 'stale' (other parameters or notebook) or 'missing'."""
    runlog = read_runlog(params["run_name"])
    out = {}
    for stage in config.STAGES:
        if is_fresh(stage, params, runlog) and stage not in ALWAYS_RUN:
            out[stage] = "up to date"
        elif artifacts.is_complete(params["run_name"], stage):
            out[stage] = "stale"
        else:
            out[stage] = "missing"
    return out


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


def execute_stage(stage: str, params: dict[str, Any], log_output: bool = True) -> Path:
    """Run one stage's notebook with papermill; returns the executed notebook (in the run's folder)."""
    import papermill

    run = params["run_name"]
    source = paths.NOTEBOOKS / NOTEBOOKS[stage]
    target = paths.run_dir(run) / "executed" / NOTEBOOKS[stage]
    partial = target.with_name(f".{target.stem}.partial.ipynb")
    target.parent.mkdir(parents=True, exist_ok=True)
    stage_params = {k: params[k] for k in config.stage_keys(stage)}
    try:
        papermill.execute_notebook(str(source), str(partial), parameters=stage_params, cwd=str(paths.NOTEBOOKS),
                                   log_output=log_output, progress_bar=False, kernel_name="python3")
    except papermill.PapermillExecutionError as err:
        raise StageFailed(f"stage {stage!r} failed in notebook notebooks/{source.name} "
                          f"(cell {err.exec_count}): {err.ename}: {err.evalue}\n"
                          f"The executed notebook with the traceback is {partial}") from None
    except DeadKernelError as err:
        raise StageFailed(f"stage {stage!r}: the kernel running notebooks/{source.name} died ({err}); out of "
                          f"memory? The partly executed notebook is {partial}") from None
    _tag_parameter_cells(partial)
    os.replace(partial, target)
    return target


def run(profile: str, overrides: list[str] | None = None, force: bool = False, build: bool = True) -> dict:
    """Run every stage (skipping up-to-date ones), copy the executed notebooks to ``book/executed``, build the book."""
    params = config.resolve(profile, overrides)
    run_name = params["run_name"]
    print(f"Run {run_name!r} (profile {profile}); outputs in {paths.run_dir(run_name)}", flush=True)
    runlog = read_runlog(run_name)
    runlog["profile"] = str(profile)
    stages = runlog.setdefault("stages", {})
    rerun = force
    for i, stage in enumerate(config.STAGES, 1):
        header = f"[{i}/{len(config.STAGES)}] {stage} ({NOTEBOOKS[stage]})"
        if not rerun and stage not in ALWAYS_RUN and is_fresh(stage, params, runlog):
            print(f"{header}: up to date, skipped", flush=True)
            stages.setdefault(stage, {})["status"] = "reused"
        else:
            print(f"{header}: running", flush=True)
            start = time.perf_counter()
            execute_stage(stage, params)
            seconds = time.perf_counter() - start
            stages[stage] = {"status": "ran", "seconds": round(seconds, 1), "fingerprint": fingerprint(stage, params),
                             "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            print(f"{header}: done in {seconds:.0f} s", flush=True)
            rerun = rerun or stage not in ALWAYS_RUN  # later stages read what this one just wrote
        artifacts.write_json(runlog_path(run_name), runlog)
    publish(run_name)
    if build:
        build_book()
    return runlog


def publish(run_name: str) -> None:
    """Make ``book/executed`` hold exactly the executed notebooks of ``run_name``."""
    if paths.EXECUTED.exists():
        shutil.rmtree(paths.EXECUTED)
    paths.EXECUTED.mkdir(parents=True)
    for name in NOTEBOOKS.values():
        shutil.copy2(paths.run_dir(run_name) / "executed" / name, paths.EXECUTED / name)


def build_book() -> Path:
    """``jupyter-book build`` (the book never executes anything: papermill did)."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(paths.REPO_ROOT)]
    print("Building the book:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=paths.REPO_ROOT)
    index = paths.REPO_ROOT / "_build" / "html" / "index.html"
    print(f"Book: {index}")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.pipeline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in [("run", "run the stages and build the book"), ("status", "show parameters and stage status")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("--profile", default="embedded", help="params/<profile>.yaml (default: embedded)")
        p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                       help="override a parameter (value read as YAML), e.g. -p top_k=50")
        p.add_argument("--run-name", help="shortcut for -p run_name=NAME")
        if name == "run":
            p.add_argument("--force", action="store_true", help="recompute every stage")
            p.add_argument("--no-book", action="store_true", help="do not build the HTML book at the end")
    sub.add_parser("book", help="build the HTML book from book/executed")
    args = parser.parse_args(argv)

    try:
        if args.command == "book":
            build_book()
            return 0
        overrides = args.param + ([f"run_name={args.run_name}"] if args.run_name else [])
        if args.command == "status":
            params = config.resolve(args.profile, overrides)
            for key, value in params.items():
                print(f"{key:<28} {value!r}")
            print()
            for stage, state in stage_status(params).items():
                print(f"{stage:<28} {state}")
            return 0
        run(args.profile, overrides, force=args.force, build=not args.no_book)
        return 0
    except config.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
