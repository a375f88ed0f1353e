"""The parameters of the pipeline: one table, validated before any work starts.

Every parameter a notebook accepts is declared once in :data:`PARAMETERS` with its type, its allowed values, the
stage that uses it and a one-line description. Profiles (``params/*.yaml``) and ``-p key=value`` overrides are
checked against this table by :func:`resolve`; a notebook checks its own parameters with :func:`for_stage`.
An unknown name, a wrong type or a value outside the allowed set raises :class:`ConfigError` naming the parameter
and what is allowed.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from . import data, paths


class ConfigError(ValueError):
    """A parameter is unknown, ill-typed or out of range. The message names it and what is allowed."""


@dataclass(frozen=True)
class Param:
    name: str
    type: type  # bool, int, float, str or list (of str)
    stage: str  # the first stage that reads it; later stages depend on it through their inputs
    help: str
    choices: tuple | Callable[[], tuple] | None = None  # allowed values (for lists: allowed items)
    minimum: float | None = None
    maximum: float | None = None

    def allowed(self) -> tuple | None:
        return self.choices() if callable(self.choices) else self.choices

    def describe(self) -> str:
        allowed = self.allowed()
        if allowed is not None:
            what = "a list drawn from" if self.type is list else "one of"
            return f"{what} {list(allowed)}"
        bounds = []
        if self.minimum is not None:
            bounds.append(f">= {self.minimum}")
        if self.maximum is not None:
            bounds.append(f"<= {self.maximum}")
        return f"{self.type.__name__}" + (f" ({', '.join(bounds)})" if bounds else "")


def _models() -> tuple:
    from . import models

    return tuple(models.MODELS)


def _tracin_subsets(value: str) -> bool:
    return bool(re.fullmatch(r"all|classifier|embeddings|last_layers:[1-9][0-9]*|re:.+", value))


#: Parameters every stage receives.
COMMON = ("run_name", "seed")

#: Stages in run order. A stage's outputs depend on its own parameters and on those of every earlier stage.
STAGES = ("data", "finetune", "tracin", "language_shares", "reproducibility")

PARAMETERS: dict[str, Param] = {
    p.name: p
    for p in [
        Param("run_name", str, "data", "name of the run: outputs go to artifacts/<run_name>/"),
        Param("seed", int, "data", "seed for sampling, initialisation and data order", minimum=0),
        # --- data ---
        Param("dataset", str, "data", "where the texts and labels come from", choices=lambda: tuple(data.DATASETS)),
        Param("fine_tune_languages", list, "data", "languages of the training set (ISO 639-1)",
              choices=lambda: tuple(data.LANGUAGES)),
        Param("zero_shot_languages", list, "data", "languages seen only at test time",
              choices=lambda: tuple(data.LANGUAGES)),
        Param("label", str, "data", "the classification task", choices=lambda: tuple(data.LABELS)),
        Param("train_per_language", int, "data", "training samples per fine-tuning language", minimum=2),
        Param("test_per_language", int, "data", "test samples per language (25 in the paper)", minimum=1),
        Param("parallel_train", bool, "data", "same verses in every fine-tuning language (True) or disjoint ones"),
        Param("test_translations_in_train", bool, "data",
              "may translations of a test verse appear in training (False keeps them out)"),
        # --- fine-tuning ---
        Param("model", str, "finetune", "the encoder to fine-tune", choices=_models),
        Param("trim_vocabulary", bool, "finetune", "keep only the word embeddings of tokens the run uses"),
        Param("max_length", int, "finetune", "maximum tokens per sample (longer ones are truncated)", minimum=8,
              maximum=512),
        Param("epochs", int, "finetune", "fine-tuning epochs (one checkpoint each)", minimum=1),
        Param("batch_size", int, "finetune", "fine-tuning batch size", minimum=1),
        Param("learning_rate", float, "finetune", "peak learning rate (linear warm-up then decay)", minimum=0),
        Param("warmup_ratio", float, "finetune", "share of steps spent warming up", minimum=0, maximum=1),
        # --- TracIn ---
        Param("tracin_params", str, "tracin",
              "parameters whose gradients TracIn compares: all | classifier | embeddings | last_layers:N | re:<regex>"),
        Param("tracin_similarity", str, "tracin", "gradient similarity", choices=("dot", "cosine")),
        Param("tracin_batch_size", int, "tracin", "training samples per TracIn batch", minimum=1),
        Param("device", str, "tracin", "where TracIn runs", choices=("auto", "cpu", "cuda")),
        # --- analyses ---
        Param("top_k", int, "language_shares", "how many most influential training samples per test sample",
              minimum=1),
        Param("influence_kind", str, "language_shares",
              "proponents (most positive scores) or opponents (most negative)", choices=("proponents", "opponents")),
    ]
}


def stage_keys(stage: str, cumulative: bool = False) -> list[str]:
    """Parameters a stage reads (``cumulative``: also those of every earlier stage)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; allowed: {list(STAGES)}")
    upto = STAGES[: STAGES.index(stage) + 1] if cumulative else (stage,)
    keys = [k for k, p in PARAMETERS.items() if p.stage in upto and k not in COMMON]
    return [*COMMON, *keys]


def _check_value(p: Param, value: Any) -> Any:
    def bad(reason: str) -> ConfigError:
        return ConfigError(f"parameter {p.name!r} {reason}; expected {p.describe()} ({p.help})")

    if p.type is bool:
        if not isinstance(value, bool):
            raise bad(f"must be true or false, got {value!r}")
    elif p.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"must be an integer, got {value!r} ({type(value).__name__})")
    elif p.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"must be a number, got {value!r} ({type(value).__name__})")
        value = float(value)
    elif p.type is str:
        if not isinstance(value, str) or not value:
            raise bad(f"must be a non-empty string, got {value!r}")
    elif p.type is list:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise bad(f"must be a list, got {value!r}")
        value = list(value)
        if any(not isinstance(v, str) for v in value):
            raise bad(f"must hold strings, got {value!r}")
        if len(set(value)) != len(value):
            raise bad(f"has duplicates: {value!r}")
    allowed = p.allowed()
    if allowed is not None:
        items = value if p.type is list else [value]
        unknown = [v for v in items if v not in allowed]
        if unknown:
            raise bad(f"has {unknown[0]!r}, which is not allowed")
    if p.minimum is not None and value < p.minimum:
        raise bad(f"is {value!r}, below the minimum")
    if p.maximum is not None and value > p.maximum:
        raise bad(f"is {value!r}, above the maximum")
    return value


def check(params: dict[str, Any], keys: list[str] | None = None) -> dict[str, Any]:
    """Validate ``params`` (exactly ``keys`` if given, else any subset of the table); return the typed values."""
    for name in params:
        if name not in PARAMETERS:
            close = difflib.get_close_matches(name, PARAMETERS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown parameter {name!r}{hint}; allowed: {sorted(PARAMETERS)}")
    if keys is not None:
        missing = [k for k in keys if k not in params]
        if missing:
            raise ConfigError(f"missing parameter(s) {missing}")
    out = {name: _check_value(PARAMETERS[name], value) for name, value in params.items()}
    _check_relations(out)
    return out


def _check_relations(cfg: dict[str, Any]) -> None:
    """Constraints between parameters."""
    ft, zs = cfg.get("fine_tune_languages"), cfg.get("zero_shot_languages")
    if ft is not None and not ft:
        raise ConfigError("parameter 'fine_tune_languages' must name at least one language")
    if ft is not None and zs is not None and set(ft) & set(zs):
        raise ConfigError(f"parameter 'zero_shot_languages' overlaps 'fine_tune_languages' in "
                          f"{sorted(set(ft) & set(zs))}; zero-shot languages must be unseen in fine-tuning")
    if cfg.get("learning_rate") == 0:
        raise ConfigError("parameter 'learning_rate' is 0: nothing would be learned and every TracIn score would be "
                          "0; allowed: a number > 0")
    if "run_name" in cfg and not re.fullmatch(r"[A-Za-z0-9_.-]+", cfg["run_name"]):
        raise ConfigError(f"parameter 'run_name' must use letters, digits, '.', '_' or '-', got {cfg['run_name']!r}")
    if "tracin_params" in cfg and not _tracin_subsets(cfg["tracin_params"]):
        raise ConfigError(f"parameter 'tracin_params' is {cfg['tracin_params']!r}; allowed: all, classifier, "
                          "embeddings, last_layers:N (N >= 1) or re:<regex>")
    if "top_k" in cfg and ft is not None and "train_per_language" in cfg:
        n_train = cfg["train_per_language"] * len(ft)
        if cfg["top_k"] > n_train:
            raise ConfigError(f"parameter 'top_k' is {cfg['top_k']} but the training set has only {n_train} samples "
                              f"(train_per_language x fine_tune_languages); allowed: 1..{n_train}")
    if "label" in cfg and "train_per_language" in cfg:
        n_labels = len(data.LABELS[cfg["label"]].names)
        if cfg["train_per_language"] < n_labels:
            raise ConfigError(f"parameter 'train_per_language' is {cfg['train_per_language']} but label "
                              f"{cfg['label']!r} has {n_labels} classes; allowed: >= {n_labels}")


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (``top_k=50``, ``fine_tune_languages=[en,de]``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"parameter {key!r}: cannot read value {raw!r} ({err})") from None
    key = key.strip()
    if key in PARAMETERS and PARAMETERS[key].type is str:
        return key, raw.strip()  # a name such as run_name=2024 stays a string
    if isinstance(value, str) and key in PARAMETERS and PARAMETERS[key].type is float:
        try:  # YAML 1.1 reads "1e-4" as a string
            value = float(value)
        except ValueError:
            pass
    return key, value


def load_profile(profile: str | Path) -> dict[str, Any]:
    """Read ``params/<profile>.yaml`` (or a path to a YAML file)."""
    path = Path(profile)
    if not path.suffix:
        path = paths.PARAMS / f"{profile}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in paths.PARAMS.glob("*.yaml"))
        raise ConfigError(f"profile {str(profile)!r} not found; available: {available}")
    return yaml.safe_load(path.read_text()) or {}


def resolve(profile: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    """Profile + overrides → the complete, validated parameter set of a run."""
    params = load_profile(profile)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        params[key] = value
    return check(params, keys=list(PARAMETERS))


def for_stage(stage: str, namespace: dict[str, Any], show: bool = True) -> dict[str, Any]:
    """Validate the parameters a notebook received (its own stage's keys, read from ``namespace``)."""
    keys = stage_keys(stage)
    cfg = check({k: namespace[k] for k in keys if k in namespace}, keys=keys)
    if STAGES.index(stage):  # relations with earlier stages' parameters (e.g. top_k vs the training set)
        from . import artifacts

        previous = STAGES[STAGES.index(stage) - 1]
        if artifacts.is_complete(cfg["run_name"], previous):
            _check_relations({**artifacts.upstream_params(cfg["run_name"], previous), **cfg})
    if show:
        width = max(map(len, keys))
        print(f"Effective parameters of stage {stage!r}:")
        for k in keys:
            print(f"  {k:<{width}} = {cfg[k]!r}")
    return cfg
