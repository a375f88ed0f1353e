"""Tables for the reproducibility page: parameters, stage timings, software versions, the re-run command."""

from __future__ import annotations

import shlex

import pandas as pd

from . import artifacts, config, paths, pipeline


def _last_params(run_name: str) -> dict:
    """The cumulative parameters recorded by the last analysis stage."""
    last = config.STAGES[-2]
    return artifacts.upstream_params(run_name, last)


def parameter_table(run_name: str) -> pd.DataFrame:
    params = _last_params(run_name)
    rows = [{"parameter": k, "value": repr(params[k]), "stage": config.PARAMETERS[k].stage,
             "meaning": config.PARAMETERS[k].help} for k in config.PARAMETERS if k in params]
    return pd.DataFrame(rows).set_index("parameter")


def timing_table(run_name: str) -> pd.DataFrame:
    """Seconds per stage as last computed; 'reused' stages were skipped because their outputs were up to date."""
    log = pipeline.read_runlog(run_name).get("stages", {})
    rows = []
    for stage in config.STAGES:
        if stage in pipeline.ALWAYS_RUN:  # this page itself: still running while the table is made
            continue
        entry = log.get(stage, {})
        rows.append({"stage": stage, "notebook": pipeline.NOTEBOOKS[stage],
                     "status in the last run": entry.get("status", "not run by the runner (e.g. nbval)"),
                     "seconds when computed": entry.get("seconds"), "finished (UTC)": entry.get("finished")})
    table = pd.DataFrame(rows).set_index("stage")
    return table


def environment_table(run_name: str) -> pd.DataFrame:
    """Versions and machine of each stage's outputs (stages may have been computed at different times)."""
    rows = {}
    for stage in config.STAGES[:-1]:
        folder = paths.stage_dir(run_name, stage)
        if (folder / "env.json").exists():
            env = artifacts.read_json(folder / "env.json")
            flat = {"python": env.get("python"), "platform": env.get("platform"), "cpus": env.get("cpu_count"),
                    "torch threads": env.get("torch_threads"), "cuda device": env.get("cuda") or "none",
                    "git commit": env.get("git"), "time (UTC)": env.get("time")}
            flat.update({f"package {k}": v for k, v in env.get("packages", {}).items()})
            rows[stage] = flat
    return pd.DataFrame(rows)


def rerun_command(run_name: str) -> str:
    """A command line that recomputes this run from scratch with the same parameters."""
    params = _last_params(run_name)
    profile = pipeline.read_runlog(run_name).get("profile", "smoke")
    base = config.load_profile(profile)
    overrides = [f"-p {shlex.quote(f'{k}={_yaml(v)}')}" for k, v in params.items() if base.get(k) != v]
    return " ".join(["python -m helpers.pipeline run", f"--profile {profile}", *overrides, "--force"])


def _yaml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(value) + "]"
    return str(value)
