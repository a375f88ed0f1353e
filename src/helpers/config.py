"""The parameters: one table, each parameter declared once with its type, default, allowed values and meaning.

Two scopes:

* ``run`` parameters shape one training run (data, fine-tuning, TracIn). A study (``helpers.study``) runs several
  runs that differ in a few of them (a parallel-data variant, an imbalanced one, several seeds).
* ``study`` parameters shape the analysis chapters (``top_k``, the bootstrap), the same for every run.

Which stage reads which parameter is declared with the stages (each module of ``helpers.compute`` and
``helpers.chapters`` declares its ``STAGE``), not here. Profiles
(``params/*.yaml``) hold only what differs from the defaults below. :func:`check` validates values;
an unknown name, a wrong type or a value outside the allowed set raises :class:`ConfigError` naming the parameter
and what is allowed. At import time this module imports only three bottom modules of the package, all free of
heavy libraries: :mod:`helpers.runtime` (the allowed devices and precisions), :mod:`helpers.influence.subsets`
(TracIn's parameter-subset grammar), and :mod:`helpers.strict_yaml` (``-p`` values read as profiles are).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import strict_yaml
from .influence import subsets
from .runtime import DEVICES, PRECISIONS


class ConfigError(ValueError):
    """A parameter (or a profile) is unknown, ill-typed or out of range. The message names it and what is allowed."""


@dataclass(frozen=True)
class Param:
    name: str
    type: type  # bool, int, float, str or list (of str)
    default: Any
    help: str
    scope: str = "run"  # "run" or "study"
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


def _languages() -> tuple:
    from .languages import LANGUAGES

    return tuple(LANGUAGES)


def _languages_or_none() -> tuple:
    return ("none", *_languages())


def _labels() -> tuple:
    from . import data

    return tuple(data.LABELS)


def _datasets() -> tuple:
    from . import data

    return tuple(data.DATASETS)


def _models() -> tuple:
    from . import models

    return tuple(models.MODELS)


def _similarities() -> tuple:
    from .influence.scores import SIMILARITIES

    return SIMILARITIES


def _kinds() -> tuple:
    from .influence.scores import KINDS

    return KINDS


#: The defaults are the ``embedded`` profile's main run (the default book); profiles list what differs.
PARAMETERS: dict[str, Param] = {
    p.name: p
    for p in [
        Param("seed", int, 0, "seed for sampling, initialisation and data order (a study sets it from 'seeds')",
              minimum=0, maximum=2**32 - 1),  # numpy's seed range (np.random.seed, which transformers calls)
        # --- data ---
        Param("dataset", str, "bible", "where the texts and labels come from: the Bible package, or the paper's hub "
              "corpora (xnli, pawsx, marc)", choices=_datasets),
        Param("corpus_dir", str, "none", "a local copy of a hub corpus, in the hub's schema: <dir>/<language>/"
              "<split>.jsonl (or .json, .parquet, .csv, .tsv); none: load it from the Hugging Face hub"),
        Param("fine_tune_languages", list, ["en", "fr", "de", "es", "ru"], "languages of the training set (ISO 639-1)",
              choices=_languages),
        Param("zero_shot_languages", list, ["ko", "pt"], "languages seen only at test time", choices=_languages),
        Param("label", str, "genre", "the classification task", choices=_labels),
        Param("train_per_language", int, 120, "training samples per fine-tuning language", minimum=2,
              maximum=400_000),  # above every corpus's largest split (XNLI's training set: 392,702 per language)
        Param("test_per_language", int, 25, "test samples per language (25 in the paper)", minimum=1,
              maximum=40_000),  # above every corpus's test pool (the Bible's 31,102 verses)
        Param("parallel_train", bool, False, "same verses in every fine-tuning language (True) or disjoint ones"),
        Param("test_translations_in_train", bool, False,
              "put translations of each test verse in the other languages' training data (never the test sample "
              "itself); False keeps every translation of a test verse out of training"),
        Param("planted_share", float, 0.5, "with test_translations_in_train: the share of each test language's test "
              "verses whose translations are planted (the translations chapter's TR2); the others are kept out of "
              "training in every language, as in the paper (TR1)", minimum=0.0, maximum=1.0),
        Param("imbalance_language", str, "none", "a fine-tuning language given more data than the others (none: "
              "balanced)", choices=_languages_or_none),
        Param("imbalance_factor", int, 1, "how many times train_per_language the imbalance_language gets", minimum=1,
              maximum=20),
        Param("permuted_language", str, "none", "positive control: a fine-tuning language whose labels follow a "
              "cyclic shift of the classes, in training and test (none: no control)", choices=_languages_or_none),
        Param("permuted_share", float, 1.0, "share of the permuted_language's training samples whose labels are "
              "shifted (its test samples always are)", minimum=0, maximum=1),
        # --- fine-tuning ---
        Param("model", str, "multilingual-e5-small", "the encoder to fine-tune", choices=_models),
        Param("model_dir", str, "none", "a local copy of a hub model (a save_pretrained / huggingface-cli download "
              "directory); none: the hub id"),
        Param("precision", str, "auto", "arithmetic on CUDA: auto (bf16 autocast for fine-tuning; bf16 for TracIn "
              "where it passes the accuracy gate against fp32 on a sample, else fp32), fp32 or bf16; CPU: always fp32",
              choices=PRECISIONS),
        Param("trim_vocabulary", bool, True, "keep only the word embeddings of tokens the run uses"),
        Param("max_length", int, 64, "maximum tokens per sample (longer ones are truncated)", minimum=8, maximum=512),
        Param("epochs", int, 3, "fine-tuning epochs", minimum=1,
              maximum=100),  # each epoch keeps checkpoints that TracIn reads: 100 already fill a disk
        Param("checkpoints_per_epoch", int, 1, "checkpoints saved per epoch, evenly spaced in optimiser steps (each "
              "weighted in TracIn by the mean learning rate of the interval it ends): where the dynamics sit inside "
              "an epoch", minimum=1, maximum=20),
        Param("checkpoint_at_start", bool, False, "also save the model before any update (step 0, pretrained "
              "encoder under a random head), weighted by the first interval's mean rate; TracIn scores it too"),
        Param("batch_size", int, 16, "fine-tuning batch size", minimum=1,
              maximum=4096),  # above any training set a run samples on one accelerator's memory
        Param("learning_rate", float, 1e-4, "peak learning rate (linear warm-up then decay)", minimum=0),
        Param("warmup_ratio", float, 0.1, "share of steps spent warming up", minimum=0, maximum=1),
        Param("reinit_top_layers", int, 0, "re-initialise the encoder's top N layers before fine-tuning (0: none): "
              "a cheap point between an aligned encoder and an unaligned one", minimum=0, maximum=48),
        Param("pretrain_checkpoint", int, -1, "with model inhouse-mlm: which pre-training checkpoint to fine-tune "
              "(0: step 0, random weights; 1..pretrain_checkpoints; -1: the last)", minimum=-1, maximum=100),
        # --- pre-training the in-house encoder (model inhouse-mlm; the alignment chapter) ---
        Param("pretrain_languages", list, ["en", "fr", "de", "es", "ru", "ko", "pt"],
              "languages the in-house encoder is pre-trained on (monolingual text, no verse in two languages)",
              choices=_languages),
        Param("pretrain_verses_per_language", int, 2000, "pre-training verses per language", minimum=100,
              maximum=31_102),  # the Bible's verses per translation
        Param("pretrain_layers", int, 4, "layers of the in-house encoder", minimum=1, maximum=24),
        Param("pretrain_hidden", int, 256, "width of the in-house encoder (a multiple of 64; heads of 64)",
              minimum=64, maximum=1024),
        Param("pretrain_steps", int, 300, "masked-language-modelling steps (one language per batch, in turn)",
              minimum=1, maximum=1_000_000),  # about a day of the in-house encoder on a GPU; more is a typo
        Param("pretrain_batch_size", int, 32, "pre-training batch size (sequences)", minimum=1,
              maximum=4096),  # as batch_size
        Param("pretrain_learning_rate", float, 5e-4, "pre-training peak learning rate", minimum=0),
        Param("pretrain_checkpoints", int, 3, "pre-training checkpoints saved besides step 0 (evenly spaced)",
              minimum=1, maximum=100),
        Param("pretrain_vocab_size", int, 8000, "subword vocabulary trained on the pre-training text",
              minimum=500, maximum=64000),
        Param("pretrain_max_length", int, 64, "maximum tokens per pre-training sequence", minimum=8, maximum=512),
        # --- TracIn ---
        Param("tracin_params", str, subsets.DEFAULT_PARAMS,
              "parameters whose gradients TracIn compares: all | classifier | embeddings | last_layers:N | re:<regex>"),
        Param("tracin_similarity", str, "dot", "gradient similarity", choices=_similarities),
        Param("tracin_batch_size", int, 32, "training samples per TracIn batch", minimum=1,
              maximum=4096),  # as batch_size: per-example gradients of a batch are held at once
        Param("tracin_processes", int, 1, "processes TracIn is split over (torchrun; one GPU each where CUDA is "
              "present): each scores a share of the training rows, merged into the one-process matrix", minimum=1,
              maximum=64),
        Param("device", str, "auto", "where fine-tuning and TracIn run (auto: CUDA when present)",
              choices=DEVICES),
        Param("attribution_groups", list, ["last_layers:1", "classifier", "last_layers:6", "all", "embeddings"],
              "parameter subsets the attribution chapter compares (the first is the reference), all scored in one "
              "full-model TracIn pass"),
        Param("attribution_test_per_language", int, 10,
              "test samples per language scored by that full-model pass (its cost grows with it)", minimum=1,
              maximum=40_000),  # as test_per_language, which bounds it
        # --- analyses (the same for every run of a study) ---
        Param("top_k", int, 20, "how many most influential training samples per test sample (the paper: 100 of "
              "thousands); keep it well below the samples per class, see the language-shares chapter",
              scope="study", minimum=1, maximum=10000),
        Param("influence_kind", str, "proponents", "proponents (most positive scores) or opponents (most negative)",
              scope="study", choices=_kinds),
        Param("n_bootstrap", int, 1000, "bootstrap resamples behind the alignment chapter's correlation intervals "
              "(the claims' intervals are t-intervals over runs, or over verses within one run)", scope="study",
              minimum=100, maximum=100000),
        Param("confidence", float, 0.95, "coverage of every interval", scope="study", minimum=0.5, maximum=0.999),
        Param("examples_per_language", int, 2, "test samples per language shown with their proponents and opponents",
              scope="study", minimum=1, maximum=25),
        # --- the counterfactual chapter: each removal is one more fine-tuning of a main run (see its page) ---
        Param("counterfactual_languages", list, ["en"], "test languages L whose top training samples (summed TracIn "
              "over every other one of L's test samples; the chapter measures the others) are removed; each L costs "
              "its own retrainings", scope="study", choices=_languages),
        Param("counterfactual_fractions", list, ["20%"], "how many training samples each removal takes out, as a "
              "share of the training set", scope="study", choices=("5%", "10%", "20%", "30%", "40%", "50%")),
        Param("counterfactual_arms", list, ["top", "random"], "what is removed for each L and fraction: top (TracIn's "
              "top samples), random (as many random samples, matched to top on language x label), own / other (the top "
              "share of L's own samples / as many of the other languages' top samples: equal sizes)", scope="study",
              choices=("top", "random", "own", "other")),
        Param("counterfactual_random_draws", int, 1, "random removals per L and fraction (each one retraining; the "
              "top removal is judged against their spread from 2, by rank from 5)",
              scope="study", minimum=1, maximum=20),
        Param("counterfactual_seeds", int, 1, "how many of the main run's seeds are retrained (the first ones)",
              scope="study", minimum=1, maximum=20),
        Param("counterfactual_zero_shot", bool, False, "also retrain once without each fine-tuning language, to ask "
              "which one a zero-shot language needs most", scope="study"),
        # --- the alignment chapter ---
        Param("alignment_verses", int, 160, "held-out verses (the same in every test language, about as many per "
              "label) for translation retrieval and neuron probing", scope="study", minimum=12, maximum=1500),
        Param("probe_depth", float, 0.5, "relative depth of the probed layer (0: the embeddings' output, 1: the last "
              "layer), rounded to each encoder's nearest layer; the summary figure shows every layer",
              scope="study", minimum=0, maximum=1),
        Param("probe_neurons", int, 50, "neurons the probe of each language selects greedily (50 in Wang et al. "
              "2024)", scope="study", minimum=1, maximum=4096),
        Param("probe_null_draws", int, 3, "at the probed layer: label permutations for the neuron-overlap null "
              "(greedy selection prefers some neurons whatever the label: k/d understates chance) and further "
              "train/dev split seeds for its noise ceiling (a language's overlap with itself); 0: neither",
              scope="study", minimum=0, maximum=100),
        Param("datamodel_subsets", int, 0, "retrainings on random halves of the training set for the linear "
              "datamodeling score, per retrained seed (0: none; at least 3 to rank)", scope="study", minimum=0,
              maximum=1000),
    ]
}

RUN_PARAMETERS = tuple(k for k, p in PARAMETERS.items() if p.scope == "run")
STUDY_PARAMETERS = tuple(k for k, p in PARAMETERS.items() if p.scope == "study")


def defaults(scope: str | None = None) -> dict[str, Any]:
    """Every parameter's declared default (of one scope, if given); lists are copied."""
    return {k: (list(p.default) if isinstance(p.default, list) else p.default)
            for k, p in PARAMETERS.items() if scope is None or p.scope == scope}


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
        if not math.isfinite(value):
            raise bad(f"must be a finite number, got {value!r}")
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


def unknown_parameter(name: str) -> ConfigError:
    close = difflib.get_close_matches(name, PARAMETERS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if name in ("study", "run_name", "name", "study_name"):
        hint = " (a study's folder name is the runner's --study option, not a parameter)"
    return ConfigError(f"unknown parameter {name!r}{hint}; allowed: {sorted(PARAMETERS)}")


#: Parameters naming a local folder: a relative one is made absolute against the caller's directory once, when a study
#: is resolved (:func:`absolute_paths`), so the notebooks (run from notebooks/) read the same folder; what is there is
#: part of the fingerprint of every stage that has the parameter (:attr:`helpers.flow.stage.Stage.local_inputs`).
PATH_PARAMETERS = ("corpus_dir", "model_dir")


def absolute_paths(params: dict[str, Any], base: str | Path | None = None) -> dict[str, Any]:
    """``params`` with each of :data:`PATH_PARAMETERS` that names a folder made absolute (``~`` expanded, relative to
    ``base``, by default the current directory) and normalised; ``none`` stays ``none``."""
    out = dict(params)
    for key in PATH_PARAMETERS:
        value = out.get(key)
        if isinstance(value, str) and value.strip() not in ("", "none"):
            path = Path(value).expanduser()
            out[key] = os.path.normpath(path if path.is_absolute() else Path(base or Path.cwd()) / path)
    return out


def check(params: dict[str, Any], keys: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Validate ``params`` (exactly ``keys`` if given, else any subset of the table); return the typed values."""
    for name in params:
        if name not in PARAMETERS:
            raise unknown_parameter(name)
    if keys is not None:
        missing = [k for k in keys if k not in params]
        if missing:
            raise ConfigError(f"missing parameter(s) {missing}")
    out = {name: _check_value(PARAMETERS[name], value) for name, value in params.items()}
    check_relations(out)
    return out


def check_relations(cfg: dict[str, Any]) -> None:
    """Constraints between parameters (each applies when the parameters it relates are present)."""
    from . import data

    ft, zs = cfg.get("fine_tune_languages"), cfg.get("zero_shot_languages")
    if ft is not None and not ft:
        raise ConfigError("parameter 'fine_tune_languages' must name at least one language")
    if ft is not None and zs is not None and set(ft) & set(zs):
        raise ConfigError(f"parameter 'zero_shot_languages' overlaps 'fine_tune_languages' in "
                          f"{sorted(set(ft) & set(zs))}; zero-shot languages must be unseen in fine-tuning")
    for key in ("imbalance_language", "permuted_language"):
        if ft is not None and cfg.get(key, "none") not in ("none", *ft):
            raise ConfigError(f"parameter {key!r} is {cfg[key]!r}, not a fine-tuning language; allowed: "
                              f"{['none', *ft]}")
    if cfg.get("imbalance_language") == "none" and cfg.get("imbalance_factor", 1) != 1:
        raise ConfigError("parameter 'imbalance_factor' is set but 'imbalance_language' is none; name the "
                          f"language that gets {cfg['imbalance_factor']}x the data")
    if cfg.get("permuted_language") == "none" and cfg.get("permuted_share", 1.0) != 1.0:
        raise ConfigError(f"parameter 'permuted_share' is {cfg['permuted_share']} but 'permuted_language' is none: "
                          "no label would be permuted; name the language whose labels are shifted (allowed: a "
                          "fine-tuning language), or leave 'permuted_share' at 1.0")
    if cfg.get("learning_rate") == 0:
        raise ConfigError("parameter 'learning_rate' is 0: nothing would be learned and every TracIn score would be "
                          "0; allowed: a number > 0")
    for key in ("tracin_params", "attribution_groups"):
        values = cfg.get(key)
        for value in ([values] if isinstance(values, str) else values or []):
            try:
                subsets.check(value)
            except subsets.SubsetError as err:
                raise ConfigError(f"parameter {key!r} has {value!r}{', ' + err.why if err.why else ''}; allowed: "
                                  f"{subsets.FORMS}") from None
    _check_corpus(cfg)
    if "label" in cfg and "train_per_language" in cfg:
        n_labels = len(data.LABELS[cfg["label"]].names)
        if cfg["train_per_language"] < n_labels:
            raise ConfigError(f"parameter 'train_per_language' is {cfg['train_per_language']} but label "
                              f"{cfg['label']!r} has {n_labels} classes; allowed: >= {n_labels}")
    if cfg.get("test_translations_in_train") is False and cfg.get("planted_share", 0.5) != 0.5:
        raise ConfigError(f"parameter 'planted_share' is {cfg['planted_share']} but 'test_translations_in_train' is "
                          "false: nothing is planted; set test_translations_in_train: true, or leave 'planted_share' "
                          "at 0.5")
    if cfg.get("test_translations_in_train") and cfg.get("parallel_train") is False:
        raise ConfigError("parameter 'test_translations_in_train' needs 'parallel_train: true' (the translations of "
                          "a test verse are planted in every other fine-tuning language's training data)")
    if "top_k" in cfg and ft is not None and "train_per_language" in cfg:
        n_train = cfg["train_per_language"] * len(ft)
        if cfg["top_k"] > n_train:
            raise ConfigError(f"parameter 'top_k' is {cfg['top_k']} but the training set has only {n_train} samples "
                              f"(train_per_language x fine_tune_languages); allowed: 1..{n_train}")
    if "examples_per_language" in cfg and "test_per_language" in cfg:
        if cfg["examples_per_language"] > cfg["test_per_language"]:
            raise ConfigError(f"parameter 'examples_per_language' is {cfg['examples_per_language']} but each "
                              f"language has {cfg['test_per_language']} test samples (test_per_language); allowed: "
                              f"1..{cfg['test_per_language']}")
    _check_attribution(cfg)
    _check_counterfactual(cfg)
    _check_pretraining(cfg)


def _check_corpus(cfg: dict[str, Any]) -> None:
    """What the chosen corpus allows: its tasks, its languages, parallel sampling, a local copy."""
    from . import corpora

    if "dataset" not in cfg:
        return
    corpus = corpora.get(cfg["dataset"])
    if "label" in cfg and cfg["label"] not in corpus.labels:
        raise ConfigError(f"parameter 'label' is {cfg['label']!r} but dataset {corpus.name!r} has the task(s) "
                          f"{list(corpus.labels)}; allowed: {list(corpus.labels)}")
    for key in ("fine_tune_languages", "zero_shot_languages"):
        missing = [lang for lang in cfg.get(key) or [] if lang not in corpus.languages]
        if missing:
            raise ConfigError(f"parameter {key!r} has {missing[0]!r}, which dataset {corpus.name!r} does not have; "
                              f"allowed: {list(corpus.languages)}")
    if cfg.get("parallel_train") and not corpus.parallel:
        raise ConfigError(f"parameter 'parallel_train' is true but dataset {corpus.name!r} is not parallel across "
                          "languages; allowed: false")
    if cfg.get("test_translations_in_train") and not corpus.single_pool:
        raise ConfigError(f"parameter 'test_translations_in_train' needs one pool of items for training and test "
                          f"(dataset 'bible'); dataset {corpus.name!r} has its own test split; allowed: false")
    if cfg.get("corpus_dir", "none") != "none" and corpus.single_pool:
        raise ConfigError(f"parameter 'corpus_dir' is set but dataset {corpus.name!r} is read from its Python "
                          "package; allowed: none")


def _check_attribution(cfg: dict[str, Any]) -> None:
    if "attribution_test_per_language" in cfg and "test_per_language" in cfg:
        if cfg["attribution_test_per_language"] > cfg["test_per_language"]:
            raise ConfigError(f"parameter 'attribution_test_per_language' is {cfg['attribution_test_per_language']}"
                              f"; allowed: 1..{cfg['test_per_language']} (test_per_language)")
    if cfg.get("attribution_groups") == []:
        raise ConfigError("parameter 'attribution_groups' must name at least one parameter subset")


def _check_counterfactual(cfg: dict[str, Any]) -> None:
    ft, zs, langs = cfg.get("fine_tune_languages"), cfg.get("zero_shot_languages"), cfg.get("counterfactual_languages")
    if langs and ft is not None and zs is not None:
        unknown = [lang for lang in langs if lang not in (*ft, *zs)]
        if unknown:
            raise ConfigError(f"parameter 'counterfactual_languages' has {unknown[0]!r}, not a test language of the "
                              f"runs; allowed: {[*ft, *zs]}")
    if cfg.get("datamodel_subsets") in (1, 2):
        raise ConfigError("parameter 'datamodel_subsets' is {}; allowed: 0 (none) or at least 3 (a rank correlation "
                          "needs three subsets)".format(cfg["datamodel_subsets"]))


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` (or ``variant.key=value``) with the value read as a profile's YAML is (``top_k=50``,
    ``fine_tune_languages=[en,de]``, ``learning_rate=1e-4``; :mod:`helpers.strict_yaml`: ``top_k=010`` is refused,
    not read as octal 8); a text parameter's value is kept as written (a language code ``no`` stays ``'no'``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    param = PARAMETERS.get(key.rpartition(".")[2])
    if param is not None and param.type is str:
        return key, raw.strip()  # a name such as a language code stays a string
    try:
        value = strict_yaml.load(raw)
    except strict_yaml.Refused as err:
        raise ConfigError(f"parameter {key!r}: cannot read value {raw!r} ({err.problem})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"parameter {key!r}: cannot read value {raw!r} ({err})") from None
    if isinstance(value, str) and param is not None and param.type is float:
        try:  # e.g. "nan", "inf": read as Python reads them, then refused as not finite by check()
            value = float(value)
        except ValueError:
            pass
    return key, value


def show(cfg: dict[str, Any], title: str) -> None:
    """Print a stage's effective parameters (the cell after a notebook's parameters does this)."""
    width = max(map(len, cfg), default=0)
    print(title)
    for k, v in cfg.items():
        print(f"  {k:<{width}} = {v!r}")


def _check_pretraining(cfg: dict[str, Any]) -> None:
    if cfg.get("pretrain_hidden", 64) % 64:
        raise ConfigError(f"parameter 'pretrain_hidden' is {cfg['pretrain_hidden']}; allowed: a multiple of 64 "
                          "(attention heads of 64)")
    if "pretrain_checkpoint" in cfg and "pretrain_checkpoints" in cfg:
        if cfg["pretrain_checkpoint"] > cfg["pretrain_checkpoints"]:
            raise ConfigError(f"parameter 'pretrain_checkpoint' is {cfg['pretrain_checkpoint']} but only "
                              f"{cfg['pretrain_checkpoints']} checkpoints besides step 0 are saved "
                              f"(pretrain_checkpoints); allowed: -1..{cfg['pretrain_checkpoints']}")
    if "model" not in cfg:
        return
    if cfg["model"] != "inhouse-mlm":
        if cfg.get("pretrain_checkpoint", -1) != -1:
            raise ConfigError(f"parameter 'pretrain_checkpoint' is set but 'model' is {cfg['model']!r}; it chooses a "
                              "checkpoint of model 'inhouse-mlm' only")
        return
    if cfg.get("max_length", 0) > cfg.get("pretrain_max_length", 10**6):
        raise ConfigError(f"parameter 'max_length' is {cfg['max_length']} but model 'inhouse-mlm' is pre-trained on "
                          f"sequences of at most {cfg['pretrain_max_length']} tokens (its positions beyond are never "
                          f"trained); allowed: max_length <= pretrain_max_length")
    if cfg.get("dataset", "bible") != "bible":
        raise ConfigError(f"model 'inhouse-mlm' is pre-trained on the Bible corpus's languages (its held-out pool is "
                          f"verses); parameter 'dataset' is {cfg['dataset']!r}; allowed with it: 'bible'")
    langs = cfg.get("pretrain_languages")
    unseen = [lang for lang in (*cfg.get("fine_tune_languages", ()), *cfg.get("zero_shot_languages", ()))
              if langs is not None and lang not in langs]
    if unseen:
        raise ConfigError(f"model 'inhouse-mlm' is not pre-trained on {unseen} (parameter 'pretrain_languages' is "
                          f"{langs}); add them to 'pretrain_languages'")
