"""A study: several runs (a main run and variants that override a few parameters), each with several seeds.

A profile (``params/<name>.yaml``) is data::

    seeds: [0, 1, 2]                 # every run gets each seed, unless it names its own
    parameters:                      # what differs from the declared defaults (helpers.config), for every run
      train_per_language: 120
    runs:
      main: {}                       # required: the run most chapters read
      parallel: {parallel_train: true, test_translations_in_train: true, seeds: [0]}

A profile without ``runs``/``parameters``/``seeds`` is read as flat ``parameters`` of a single ``main`` run.
``extends: <profile>`` starts from another profile: its parameters and runs, with this profile's added on top, key
by key (a run both name keeps the base's settings that this profile does not set, the rule of ``-p run.key=value``;
``params/counterfactual.yaml`` extends the embedded study this way). Profiles are read strictly
(:mod:`helpers.strict_yaml`: no key written twice, no aliases, numbers and names as written).
Runs are named ``<variant>-s<seed>`` (``main-s0``). The chapters read runs by *role* (:data:`ROLES`), decided by
their parameters, not their names; ``first`` is the main run's first seed, ``central`` the runs the paper's central
claims are judged on (the ``lm`` runs, else the main run). ``-p key=value`` overrides a parameter for every run (a
run's own overrides still apply on top); ``-p <variant>.key=value`` overrides it for one variant.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import artifacts, config, paths, strict_yaml
from .config import ConfigError

STUDY_KEYS = ("seeds", "parameters", "runs", "extends")
MANIFEST = "study.json"
#: The largest seed: numpy's legacy seeding (``np.random.seed``, which libraries such as transformers call) takes
#: 0..2**32-1; a larger seed would fail minutes into a run, after the data were sampled.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Run:
    name: str  # <variant>-s<seed>
    variant: str
    seed: int
    params: dict[str, Any]  # every run-scope parameter


#: Which runs a chapter reads: role -> (description, predicate on a run). Roles are decided by parameters.
ROLES: dict[str, tuple[str, Callable[[Run], bool]]] = {
    "main": ("the main run, every seed", lambda r: r.variant == "main"),
    "all": ("every run of the study", lambda r: True),
    "parallel": ("parallel training with the test verses' translations planted",
                 lambda r: r.params["test_translations_in_train"]),
    "imbalance": ("one language over-represented (no label permutation)",
                  lambda r: r.params["imbalance_language"] != "none" and r.params["permuted_language"] == "none"),
    "control": ("positive control: one language's labels permuted", lambda r: r.params["permuted_language"] != "none"),
    "axis": ("the main run's data and fine-tuning from each encoder of the alignment axis (the main run itself, "
             "Gemma-3, re-initialised top layers, the in-house encoder)",
             lambda r: _main_design(r)),
    "lm": ("the main design on an encoder pretrained as a language model on plain text (Gemma-3, XLM-R): the "
           "paper's kind of encoder", lambda r: _main_design(r) and r.params["model"] in LM_PRETRAINED),
}
#: Encoders pretrained on plain text only, like the paper's XLM-R (not on translation pairs like e5, not by this
#: project): the paper's central claims are judged on their runs (role ``central``).
LM_PRETRAINED = ("gemma-3-270m", "tiny-gemma", "xlm-roberta-base", "tiny-xlmr")


def _main_design(run: Run) -> bool:
    return (not run.params["parallel_train"] and run.params["imbalance_language"] == "none"
            and run.params["permuted_language"] == "none")


@dataclass
class Study:
    name: str
    profile: str
    params: dict[str, Any]  # study-scope parameters (the analyses)
    runs: dict[str, Run] = field(default_factory=dict)

    def role(self, role: str) -> list[Run]:
        """The runs a chapter reading ``role`` gets, in study order; ``first`` is the main run's first seed."""
        if role == "first":
            return self.role("main")[:1]
        if role == "central":  # the paper's central claims: its kind of encoder when the study has one
            return self.role("lm") or self.role("main")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; allowed: {['first', 'central', *ROLES]}")
        return [r for r in self.runs.values() if ROLES[role][1](r)]

    @property
    def first(self) -> Run:
        """The run whose data, fine-tuning and TracIn pages the book shows."""
        return self.role("first")[0]

    def to_json(self) -> dict[str, Any]:
        return {"study": self.name, "profile": self.profile, "params": self.params,
                "runs": [{"name": r.name, "variant": r.variant, "seed": r.seed, "params": r.params}
                         for r in self.runs.values()]}  # a list: the study's order matters (the JSON sorts keys)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Study:
        runs = {r["name"]: Run(r["name"], r["variant"], r["seed"], r["params"]) for r in obj["runs"]}
        return cls(obj["study"], obj["profile"], obj["params"], runs)

    def save(self) -> Path:
        path = paths.study_dir(self.name) / MANIFEST
        artifacts.write_json(path, self.to_json())
        return path


def profile_path(profile: str | Path) -> Path:
    path = Path(profile)
    if not path.suffix:
        path = paths.PARAMS / f"{profile}.yaml"
    if path.is_dir():
        raise ConfigError(f"profile {str(profile)!r} is a directory ({path}); give a YAML file, e.g. params/smoke.yaml")
    if not path.is_file():
        available = sorted(p.stem for p in paths.PARAMS.glob("*.yaml"))
        raise ConfigError(f"profile {str(profile)!r} not found (no file {path}); available: {available}")
    return path


def load_profile(profile: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The profile as ``{seeds, parameters, runs}``; a clear error naming the file when it is malformed."""
    path = profile_path(profile)
    try:
        raw = strict_yaml.load(path.read_text())
    except strict_yaml.Refused as err:
        raise ConfigError(f"profile {path}, line {err.problem_mark.line + 1}: {err.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"profile {path} is not valid YAML: {err}") from None
    except OSError as err:
        raise ConfigError(f"profile {path} cannot be read: {err.strerror or err}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"profile {path} must be a mapping (seeds / parameters / runs), got "
                          f"{type(raw).__name__}")
    if not set(raw) & set(STUDY_KEYS):
        raw = {"parameters": raw}  # a flat profile: one main run
    unknown = set(raw) - set(STUDY_KEYS)
    if unknown:
        raise ConfigError(f"profile {path}: unknown key(s) {sorted(unknown)}; allowed at the top level: "
                          f"{list(STUDY_KEYS)} (parameters go under 'parameters:')")
    out = {"seeds": raw.get("seeds", [0]), "parameters": raw.get("parameters") or {},
           "runs": raw.get("runs") or {"main": {}}}
    if not isinstance(out["parameters"], dict) or not isinstance(out["runs"], dict):
        raise ConfigError(f"profile {path}: 'parameters' and 'runs' must be mappings")
    if "extends" in raw:
        if not isinstance(raw["extends"], str) or profile_path(raw["extends"]).resolve() in (*_seen, path.resolve()):
            raise ConfigError(f"profile {path}: 'extends' must name another profile, without cycles; got "
                              f"{raw['extends']!r}")
        base = load_profile(raw["extends"], (*_seen, path.resolve()))
        runs = dict(base["runs"])
        for variant, settings in (raw.get("runs") or {}).items():
            below = runs.get(variant)
            if isinstance(below, (dict, type(None))) and isinstance(settings, (dict, type(None))):
                runs[variant] = {**(below or {}), **(settings or {})}  # key by key, as -p variant.key=value
            else:
                runs[variant] = settings  # not a mapping: resolve() names it
        out = {"seeds": raw.get("seeds", base["seeds"]), "parameters": {**base["parameters"], **out["parameters"]},
               "runs": runs}
    return out


def _seeds(value: Any, where: str) -> list[int]:
    if (not isinstance(value, list) or not value or
            any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in value)
            or len(set(value)) != len(value)):
        shown = repr(value) if len(repr(value)) <= 200 else f"{repr(value)[:200]}..."
        raise ConfigError(f"{where} 'seeds' must be a non-empty list of distinct integers in 0..{MAX_SEED} (numpy's "
                          f"seed range), got {shown}")
    return value


def resolve(profile: str | Path, overrides: list[str] | dict[str, Any] | None = None, seeds: list[int] | None = None,
            name: str | None = None) -> Study:
    """Profile + overrides -> the validated study: every run's complete parameters, and the analyses'. What the
    values allow with the chosen model, corpus and machine is checked by the runner before any work
    (:func:`helpers.flow.feasible.check`)."""
    spec = load_profile(profile)
    base = dict(spec["parameters"])
    per_variant: dict[str, dict[str, Any]] = {}
    items = overrides.items() if isinstance(overrides, dict) else map(config.parse_override, overrides or [])
    for key, value in items:
        variant, dot, param = key.partition(".")
        if dot:
            if variant not in spec["runs"]:
                raise ConfigError(f"override {key!r} names run {variant!r}; the profile's runs are "
                                  f"{list(spec['runs'])}")
            per_variant.setdefault(variant, {})[param] = value
        else:
            base[key] = value
    if "seed" in base or any("seed" in v for v in per_variant.values()):
        raise ConfigError("parameter 'seed' is set by the study: use 'seeds: [...]' in the profile or --seeds")
    for key in base:
        if key not in config.PARAMETERS:
            raise config.unknown_parameter(key)
    study_params = config.defaults("study")
    study_params.update({k: v for k, v in base.items() if config.PARAMETERS[k].scope == "study"})
    study_params = config.check(study_params, keys=config.STUDY_PARAMETERS)
    run_base = {k: v for k, v in base.items() if config.PARAMETERS[k].scope == "run"}
    default_seeds = _seeds(seeds if seeds is not None else spec["seeds"], "the study's")

    runs: dict[str, Run] = {}
    if "main" not in spec["runs"]:
        raise ConfigError(f"profile {profile}: 'runs' must include 'main' (the run most chapters read); got "
                          f"{list(spec['runs'])}")
    for variant, variant_overrides in spec["runs"].items():
        if (not isinstance(variant_overrides, (dict, type(None))) or not isinstance(variant, str)
                or not variant.replace("_", "").isalnum() or len(variant) > 40):
            raise ConfigError(f"profile {profile}: run {variant!r} must be a name of letters, digits and '_' (at "
                              f"most 40) mapped to its parameter overrides, got {variant_overrides!r}")
        variant_overrides = dict(variant_overrides or {})
        run_seeds = _seeds(variant_overrides.pop("seeds", default_seeds), f"run {variant!r}:")
        if seeds is not None:
            run_seeds = [s for s in run_seeds if s in seeds] or run_seeds[:1]
        variant_overrides.update(per_variant.get(variant, {}))
        for key in variant_overrides:
            if key not in config.PARAMETERS:
                raise config.unknown_parameter(key)
            if config.PARAMETERS[key].scope != "run":
                raise ConfigError(f"run {variant!r} sets {key!r}, a parameter of the analyses (the same for every "
                                  "run); set it under 'parameters:' or with -p")
        for seed in run_seeds:
            params = config.defaults("run")
            params.update(run_base)
            params.update(variant_overrides)
            params["seed"] = seed
            params = config.absolute_paths(params)  # recorded absolute: notebooks run from another directory
            try:
                params = config.check(params, keys=config.RUN_PARAMETERS)
            except ConfigError as err:
                raise ConfigError(f"run {variant!r}: {err}") from None
            run = Run(f"{variant}-s{seed}", variant, seed, params)
            runs[run.name] = run
    main_seeds = sum(r.variant == "main" for r in runs.values())
    if study_params["counterfactual_seeds"] > main_seeds:  # the chapter would retrain fewer seeds than it was asked
        raise ConfigError(f"parameter 'counterfactual_seeds' is {study_params['counterfactual_seeds']} but the main "
                          f"run has {main_seeds} seed(s) ('seeds' of the profile, or --seeds); allowed: "
                          f"1..{main_seeds}")
    smallest = min(runs.values(), key=lambda r: r.params["train_per_language"] * len(r.params["fine_tune_languages"]))
    try:
        config.check_relations({**smallest.params, **study_params})
    except ConfigError as err:
        raise ConfigError(f"run {smallest.variant!r}: {err}") from None
    if name is not None and not name.strip():
        raise ConfigError("option --study is empty; give the study's folder name, or leave the option out for the "
                          f"profile's name ({profile_path(profile).stem!r})")
    study_name = profile_path(profile).stem if name is None else name
    try:
        paths.study_dir(study_name)  # refuses names outside the artifacts root
    except ValueError as err:
        raise ConfigError(f"option --study: {err}") from None
    return Study(study_name, str(profile), study_params, runs)


class MissingStudyError(RuntimeError):
    """No manifest for this study: the runner has not been started for it."""


def load(name: str) -> Study:
    """The study the runner last started under ``name`` (its manifest ``artifacts/<name>/study.json``)."""
    path = paths.study_dir(name) / MANIFEST
    if not path.exists():
        raise MissingStudyError(f"no study {name!r} in {path.parent}: run `python -m helpers.pipeline run --profile "
                                f"{name}` first (it writes the study's manifest and every stage's outputs)")
    try:
        return Study.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise MissingStudyError(f"{path} is damaged ({err}); run the pipeline again to rewrite it") from None
