"""The probing stage: translation retrieval and neurons shared between languages (Wang, Minervini & Ponti 2024) for
every encoder state of the alignment axis (forward passes: the expensive part of the probing chapter,
:mod:`helpers.chapters.probing`, which reads these tables).

The encoders of the axis are the runs of role ``axis`` (the main run's data and fine-tuning from another encoder):
e5-small (trained to map translations together: the aligned end), e5-small with its top ``reinit_top_layers``
layers re-initialised (cheap points in between) and the encoder pre-trained here on monolingual text only
(:mod:`helpers.models.pretrain`: the unaligned end). Each is measured before fine-tuning, after every epoch and, for the
in-house encoder, at every pre-training checkpoint, on held-out verses (the same in every test language, never
pre-trained on, :func:`helpers.models.pretrain.held_out`, and in no axis run's training set):

* **translation retrieval** between every pair of test languages, from mean-pooled states of a layer
  (:func:`helpers.neurons.activations.retrieval_hits`): the intrinsic alignment measure;
* **neuron overlap**: per language, the ``probe_neurons`` neurons of the layer that a probe of the task label picks
  greedily (:func:`helpers.neurons.probing.select_neurons`); per pair, the share they have in common, next to what
  two random selections would share (:mod:`helpers.neurons.overlap`), and, at the probed layer, what selections for
  permuted labels share (the null greedy selection really has) and what a language shares with itself under
  another train/dev split (the noise ceiling), ``probe_null_draws`` of each (:mod:`helpers.neurons.probing`);

at the layer of ``probe_depth`` (the tables) and, before fine-tuning and at its last checkpoint, at every layer (the
summary figure). This stage reads checkpoints only: changing ``top_k`` does not rerun it (the alignment chapter,
which reads it and TracIn, reruns alone). Torch is loaded inside the functions that measure, so the chapters reading
the tables load none.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import claims, data
from ..corpora import bible
from ..flow.stage import Stage
from ..influence.scores import checkpoint_epoch
from ..neurons import overlap, probing
from . import finetune

STAGE = Stage("probe", "07_probe.ipynb", "Probing the encoder states",
              reads=(("pretrain", "axis"), ("finetune", "axis")),
              params=("alignment_verses", "probe_depth", "probe_neurons", "probe_null_draws", "confidence"))

PRETRAINING = "in-house MLM"  # the encoder name of the pre-training checkpoints
TABLES = ("points", "layers", "pairs", "starts", "verses")


@dataclass(frozen=True)
class Point:
    """One encoder state whose alignment is measured."""

    encoder: str  # which encoder of the axis
    phase: str  # "pre-trained" (a pre-training checkpoint, or the encoder a fine-tuning starts from) or "fine-tuned"
    checkpoint: str  # "step-300", "start", "epoch3"
    order: int  # position along its training (steps or epochs)
    run: str | None  # the fine-tuning run it belongs to (None: a pre-training checkpoint)


def encoder_name(params: dict[str, Any], pretrain_step: str | None = None) -> str:
    """The axis's name for the encoder a run fine-tunes."""
    if params["model"] == "inhouse-mlm":
        return f"{PRETRAINING} ({pretrain_step})" if pretrain_step else PRETRAINING
    name = params["model"]
    return f"{name}, top {params['reinit_top_layers']} re-initialised" if params["reinit_top_layers"] else name


def pretraining_step(run) -> str | None:
    """The pre-training checkpoint a run fine-tuned (its folder's name), or None."""
    if run.params["model"] != "inhouse-mlm":
        return None
    return Path(finetune.load(run["finetune"]).info["model_dir"]).name


def probed_runs(runs: list) -> list:
    """The runs whose encoders are probed: the first seed of each variant (in ``runs``' order). Its pre-training (for
    the in-house encoder, each seed pre-trains its own) and its training verses alone decide what is measured, so
    adding seeds to a study leaves the probes' values as they were."""
    first: dict[str, Any] = {}
    for run in runs:
        first.setdefault(run.run.variant, run)
    return list(first.values())


def held_out_verses(runs: list, n: int) -> tuple[pd.DataFrame, list[str]]:
    """``n`` held-out verses (about as many per label), the same in every language, and the test languages: from
    the pool never pre-trained on, leaving out any verse a probed run trains on. Deterministic."""
    from ..models import pretrain

    first = runs[0]
    task = data.LABELS[first.params["label"]]
    keys = data.verse_keys()
    keys = keys[pretrain.held_out(keys)].copy()
    keys["label"] = keys["book"].map(task.books)
    keys = keys.dropna(subset=["label"]).astype({"label": int})
    keys["pair_id"] = bible.pair_ids(keys)
    trained = set().union(*(set(finetune.load(r["finetune"]).ids("train")["pair_id"]) for r in runs))
    keys = keys[~keys["pair_id"].isin(trained)].sample(frac=1, random_state=0)
    per_label = -(-n // len(task.names))
    chosen = keys.groupby("label", sort=True).head(per_label).head(n).reset_index(drop=True)
    if len(chosen) < n:
        raise ValueError(f"parameter 'alignment_verses' is {n} but the held-out pool has {len(chosen)} labelled "
                         f"verses outside the axis runs' training sets; allowed: at most {len(chosen)}")
    languages = [*first.params["fine_tune_languages"], *first.params["zero_shot_languages"]]
    return chosen, languages


def measure(point: Point, states: dict[str, np.ndarray], labels: np.ndarray, cfg: dict[str, Any],
            every_layer: bool = True) -> tuple[dict[str, Any], list[dict], list[dict]]:
    """Retrieval and neuron overlap of one encoder state at every layer (or at the probed layer only): (summary row
    at the probed layer, with a t-interval over verses for retrieval; per-layer rows; per-pair rows at the
    probed layer)."""
    from ..neurons import activations

    languages = list(states)
    n_layers, _, d = next(iter(states.values())).shape
    n_layers -= 1
    probed = activations.layer_at(cfg["probe_depth"], n_layers)
    k = min(cfg["probe_neurons"], d)
    layer_rows, pair_rows, summary = [], [], {}
    for layer in range(n_layers + 1) if every_layer else [probed]:
        selections = {lang: probing.select_neurons(states[lang][layer], labels, n_neurons=k, seed=0)
                      for lang in languages}
        pairs = overlap.pairwise({lang: s.neurons for lang, s in selections.items()}, d=d,
                                 confidence=cfg["confidence"])
        hits = np.mean([activations.retrieval_hits(states[a][layer], states[b][layer])
                        for a, b in itertools.combinations(languages, 2)], axis=0)  # per verse
        row = {**point.__dict__, "layer": layer, "depth": layer / n_layers, "retrieval": float(hits.mean()),
               "overlap": float(pairs["overlap"].mean()), "chance": float(pairs["chance"].iloc[0]),
               "probe_nmi": float(np.mean([s.dev_nmi[-1] for s in selections.values()]))}
        layer_rows.append(row)
        if layer == probed:
            retrieval = claims.interval(pd.DataFrame({"hit": hits}), "hit", cfg["confidence"])  # verses: the units
            summary = {**row, "n_layers": n_layers, "retrieval_low": retrieval.low, "retrieval_high": retrieval.high,
                       "chance_low": float(pairs["chance_low"].iloc[0]),
                       "chance_high": float(pairs["chance_high"].iloc[0]),
                       **null_and_ceiling({lang: states[lang][layer] for lang in languages}, labels, k,
                                          {lang: s.neurons for lang, s in selections.items()}, cfg)}
            pair_rows = [{**point.__dict__, **r} for r in pairs.to_dict("records")]
    return summary, layer_rows, pair_rows


def null_and_ceiling(states: dict[str, np.ndarray], labels: np.ndarray, k: int, selections: dict, cfg: dict[str, Any]
                     ) -> dict[str, float]:
    """At one layer: the permuted-label null of the mean pair overlap (its mean and the upper end of its central
    ``confidence`` range over draws) and the split-seed noise ceiling; NaN with ``probe_null_draws`` 0."""
    draws = cfg.get("probe_null_draws", 0)
    if not draws:
        return {"overlap_null": np.nan, "overlap_null_high": np.nan, "ceiling": np.nan}
    null = probing.permutation_null(states, labels, k, draws)
    high = float(np.quantile(null, (1 + cfg["confidence"]) / 2))
    return {"overlap_null": float(null.mean()), "overlap_null_high": high,
            "ceiling": probing.split_ceiling(states, labels, k, draws, first=selections)}


def states_to_measure(runs: list) -> list[tuple[Point, Callable[[], tuple]]]:
    """Every encoder state to measure, with how to load it (model, tokenizer, vocabulary map or None), for ``runs`` as
    :func:`probed_runs` gives them: each pre-training checkpoint once; for the first seed of each variant, the encoder
    fine-tuning starts from (for the in-house encoder, that is a pre-training checkpoint, measured once) and the
    fine-tuning checkpoint after every epoch (not step 0, which is the start, nor the checkpoints inside an epoch, which
    only TracIn reads)."""
    from .. import models
    from ..finetune import initial_model
    from ..models import pretrain

    jobs, seen_pretraining, variants = [], set(), set()
    for run in runs:
        if "pretrain" in run.folders and str(run["pretrain"]) not in seen_pretraining:
            seen_pretraining.add(str(run["pretrain"]))
            for c in pretrain.load(run["pretrain"]).checkpoints:
                jobs.append((Point(PRETRAINING, "pre-trained", c["name"], c["step"], None),
                             lambda c=c: (models.load_classifier(c["path"]), models.load_tokenizer(c["path"]), None)))
        if run.run.variant in variants:
            continue
        variants.add(run.run.variant)
        out = finetune.load(run["finetune"])
        tokenizer = models.load_tokenizer(run["finetune"] / "tokenizer")
        name = encoder_name(run.params, pretraining_step(run))
        if "pretrain" not in run.folders:
            n_labels = len(data.LABELS[run.params["label"]].names)
            jobs.append((Point(name, "pre-trained", "start", 0, run.name),
                         lambda run=run, out=out, tokenizer=tokenizer, n_labels=n_labels: (
                             initial_model(run.params["model"], n_labels, run.params["seed"],
                                                    vocab_size=out.info["full_vocab_size"],
                                                    reinit_top_layers=run.params["reinit_top_layers"]),
                             tokenizer, None)))
        keep = run["finetune"] / "vocab_keep_ids.npy"
        vocab = models.VocabMap(np.load(keep), out.info["full_vocab_size"]) if keep.exists() else None
        for c in out.checkpoints:
            epoch = checkpoint_epoch(c["name"])
            if epoch == 0 or epoch != int(epoch):  # step 0 is the start above; inside an epoch: TracIn's alone
                continue
            jobs.append((Point(name, "fine-tuned", c["name"], int(epoch), run.name),
                         lambda c=c, tokenizer=tokenizer, vocab=vocab: (models.load_classifier(c["path"]), tokenizer,
                                                                         vocab)))
    return jobs


def starts(runs: list, points: pd.DataFrame) -> pd.DataFrame:
    """Per variant: the measurement of the encoder its fine-tuning started from (retrieval, overlap)."""
    rows, seen = [], set()
    for run in runs:
        if run.run.variant in seen:
            continue
        seen.add(run.run.variant)
        step = pretraining_step(run)
        if step:
            match = points[(points["encoder"] == PRETRAINING) & (points["checkpoint"] == step)]
        else:
            match = points[(points["run"] == run.name) & (points["checkpoint"] == "start")]
        rows.append({"variant": run.run.variant, "run": run.name, "encoder": encoder_name(run.params, step),
                     **match[["retrieval", "retrieval_low", "retrieval_high", "overlap"]].iloc[0].to_dict()})
    return pd.DataFrame(rows)


def compute(runs: list, cfg: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """``runs``: the axis runs (``RunInputs`` with ``finetune``, and ``pretrain`` for the in-house encoder), of which
    the first seed of each variant is probed (:func:`probed_runs`). Returns
    the tables (:data:`TABLES`), empty outside the Bible corpus (its held-out pool and the in-house encoder are
    verses)."""
    from tqdm import tqdm

    from ..models import pretrain
    from ..neurons import activations
    from ..runtime import progress_interval, set_threads

    if runs[0].params["dataset"] != "bible":
        return {name: pd.DataFrame() for name in TABLES}
    runs = probed_runs(runs)
    set_threads()
    verses, languages = held_out_verses(runs, cfg["alignment_verses"])
    texts = {lang: data.read_verses(lang, verses) for lang in languages}
    labels = verses["label"].to_numpy()
    max_length = runs[0].params["max_length"]
    summaries, layer_rows, pair_rows = [], [], []
    jobs = states_to_measure(runs)
    last = {p.run: p.order for p, _ in jobs if p.phase == "fine-tuned"}
    for point, load in tqdm(jobs, desc="probing encoder states", unit="checkpoint", mininterval=progress_interval()):
        model, tokenizer, vocab = load()
        states = {lang: activations.pooled_states(model, activations.token_ids(tokenizer, t, max_length, vocab))
                  for lang, t in texts.items()}
        del model
        # every layer before fine-tuning and at its end; the probed layer alone in between (the cost is per layer)
        every_layer = point.phase == "pre-trained" or point.order == last.get(point.run)
        summary, layers, pairs = measure(point, states, labels, cfg, every_layer)
        summaries.append(summary)
        layer_rows += layers
        pair_rows += pairs
    points = pd.DataFrame(summaries)
    losses = [{"encoder": PRETRAINING, "checkpoint": c["name"], "mlm_loss": c["mlm_loss"]}
              for folder in dict.fromkeys(str(r["pretrain"]) for r in runs if "pretrain" in r.folders)
              for c in pretrain.load(Path(folder)).checkpoints]
    if losses:
        points = points.merge(pd.DataFrame(losses), on=["encoder", "checkpoint"], how="left")
    return {"points": points, "layers": pd.DataFrame(layer_rows), "pairs": pd.DataFrame(pair_rows),
            "starts": starts(runs, points), "verses": verses[["book", "chapter", "verse", "label"]]}


def describe(tables: dict[str, pd.DataFrame], probe_neurons: int, dataset: str = "bible") -> str:
    """What was measured, in one sentence (the probe stage's page and the probing chapter), or why nothing was: the
    axis needs the Bible's held-out verses, so on another corpus the chapter says "not tested here"."""
    if tables["points"].empty:
        return (f"**Not tested here**: the alignment axis needs the Bible corpus's parallel held-out verses and its "
                f"encoders; this study's corpus is {dataset!r}, so nothing was measured.")
    return (f"{len(tables['points'])} encoder states measured on {len(tables['verses'])} held-out verses in each of "
            f"{tables['pairs']['language_a'].nunique() + 1} languages, {probe_neurons} neurons per probe.")


def save(tables: dict[str, pd.DataFrame], folder: Path) -> None:
    for name, frame in tables.items():
        frame.to_csv(Path(folder) / f"{name}.csv", index=False)


def load(folder: Path) -> dict[str, pd.DataFrame]:
    """What the stage wrote (empty tables where it measured nothing)."""
    out = {}
    for name in TABLES:
        try:
            out[name] = pd.read_csv(Path(folder) / f"{name}.csv")
        except pd.errors.EmptyDataError:
            out[name] = pd.DataFrame()
    return out
