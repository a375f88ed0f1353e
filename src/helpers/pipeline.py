"""The command line of the runner (:mod:`helpers.flow.runner`).

    python -m helpers.pipeline run --profile embedded -p top_k=50
    python -m helpers.pipeline status --profile embedded
    python -m helpers.pipeline book
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from . import config, paths
from .config import ConfigError
from .flow import feasible
from .flow.runner import ArtifactsError, StageFailed, build_book, run, status
from .flow.store import BusyError, MissingStageError
from .study import MissingStudyError, resolve


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be integers separated by commas, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.pipeline",
                                     description="Run a study's stages with papermill and build the book.")
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
            p.add_argument("--jobs", type=int, default=1, metavar="N",
                           help="run up to N stages at once, each as soon as its inputs are complete (default 1: "
                                "one after the other, with progress bars). Worth it for many short stages; a "
                                "training stage already uses every core")
    p = sub.add_parser("book", help="build a study's HTML book from its published pages (artifacts/<study>/book)")
    p.add_argument("--study", default="embedded", help="the study's folder in artifacts/ (default: embedded)")
    args = parser.parse_args(argv)

    try:
        if args.command == "book":
            build_book(args.study)
            return 0
        if args.command == "status":
            study = resolve(args.profile, args.param, seeds=_seeds(args.seeds), name=args.study)
            feasible.check(study)
            print(f"Study {study.name!r} (profile {args.profile})")
            for key, value in study.params.items():
                print(f"  {key:<28} {value!r}")
            defaults = config.defaults("run")
            for r in study.runs.values():
                differs = {k: v for k, v in r.params.items() if v != defaults[k]}
                print(f"run {r.name}: {differs if differs else 'the declared defaults'}")
            print()
            rows = status(study)
            width = max(len(r["stage"]) for r in rows)
            for row in rows:
                why = "" if row["why"] in (row["state"], "up to date") else f"  ({row['why']})"
                print(f"{row['stage']:<{width}}  {row['state']:<11}  {row['runs']:<28}  {row['folder']}{why}")
            return 0
        run(args.profile, args.param, force=args.force, build=not args.no_book, seeds=_seeds(args.seeds),
            name=args.study, jobs=args.jobs)
        return 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (MissingStudyError, MissingStageError, BusyError, StageFailed, ArtifactsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        print(f"error: {' '.join(map(str, err.cmd))} exited with {err.returncode}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `status | head -1`: the reader has gone; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:
        print(f"error: {err.strerror or err}: {err.filename or ''}\n(the artifacts folder "
              f"{paths.artifacts_root()} must be writable and have free space; free some, fix its permissions, or "
              "set HELPERS_ARTIFACTS to another folder)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # the stopped kernel's pending tasks
        print("\ninterrupted: completed stages are kept and half-written ones ignored; run the same command again "
              "to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
