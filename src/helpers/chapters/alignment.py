"""Alignment and sharing: does a model draw more on other languages' data the more aligned its pre-training left it?

The embedded e5-small was trained to map translations together, and on it every TracIn ranking is language-blind.
This chapter puts encoders along an **alignment axis** and measures the same things on each:

* the encoders (the runs of role ``axis``: the main run's data and fine-tuning, from another encoder):
  e5-small itself (the aligned end), e5-small with its top ``reinit_top_layers`` layers re-initialised (cheap points
  in between) and the in-house encoder pre-trained here on monolingual text only (:mod:`helpers.pretrain`, the
  unaligned end), whose every pre-training checkpoint is also measured (a trajectory);
* **intrinsic alignment**: translation retrieval between every pair of test languages on held-out verses (never
  pre-trained on, :func:`helpers.pretrain.held_out`; none in any axis run's training set), from mean-pooled
  states of the probed layer (``probe_depth``);
* **data sharing**: the fine-tuned model's own-language share of the top-k TracIn proponents (the paper's measure);
* **neuron overlap** (Wang, Minervini & Ponti 2024): per language, the ``probe_neurons`` neurons of a layer that a
  probe of the task label selects greedily (:mod:`helpers.neurons.probing`); per pair of languages, the share of
  neurons the two selections share, next to two random selections (:mod:`helpers.neurons.overlap`); on every
  pre-training and fine-tuning checkpoint, at the probed layer and, in the summary, every layer;
* **correlations** per language pair: overlap against TracIn's cross-lingual share and against accuracy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .. import analysis, claims, data, finetune, models, pretrain, progress_interval
from ..neurons import activations, overlap, probing
from ..stages import Stage
from . import Result

STAGE = Stage("alignment", "19_alignment.ipynb", "Alignment and sharing",
              reads=(("pretrain", "axis"), ("finetune", "axis"), ("tracin", "axis")),
              params=("alignment_verses", "probe_depth", "probe_neurons", "top_k", "influence_kind", "n_bootstrap",
                      "confidence"),
              modules=("chapters/alignment", "neurons/activations", "neurons/probing", "neurons/overlap", "analysis",
                       "claims"))

RELATED = claims.RELATED


@dataclass(frozen=True)
class Point:
    """One encoder state whose alignment is measured."""

    encoder: str  # which encoder of the axis
    phase: str  # "pre-trained" (before fine-tuning, or a pre-training checkpoint) or "fine-tuned"
    checkpoint: str  # e.g. "step-400", "epoch3", "start"
    order: int  # position along its training (steps or epochs)
    run: str | None  # the fine-tuning run it belongs to (None: a pre-training checkpoint)


def encoder_name(params: dict[str, Any], pretrain_step: str | None = None) -> str:
    """The axis's name for the encoder a run fine-tunes."""
    if params["model"] == "inhouse-mlm":
        return f"in-house MLM ({pretrain_step})" if pretrain_step else "in-house MLM"
    name = params["model"]
    return f"{name}, top {params['reinit_top_layers']} re-initialised" if params["reinit_top_layers"] else name


def held_out_verses(runs: list, n: int) -> tuple[pd.DataFrame, list[str]]:
    """``n`` held-out verses (about as many per label), the same in every language, and the test languages: from
    the pool never pre-trained on, leaving out any verse an axis run trains on. Deterministic."""
    first = runs[0]
    task = data.LABELS[first.params["label"]]
    keys = data.verse_keys()
    keys = keys[pretrain.held_out(keys)].copy()
    keys["label"] = keys["book"].map(task.books)
    keys = keys.dropna(subset=["label"]).astype({"label": int})
    keys["pair_id"] = keys["book"].astype(str) + "." + keys["chapter"].astype(str) + "." + keys["verse"].astype(str)
    trained = set().union(*(set(finetune.load(r["finetune"]).ids("train")["pair_id"]) for r in runs))
    keys = keys[~keys["pair_id"].isin(trained)].sample(frac=1, random_state=0)
    per_label = -(-n // len(task.names))
    chosen = keys.groupby("label", sort=True).head(per_label).head(n).reset_index(drop=True)
    languages = [*first.params["fine_tune_languages"], *first.params["zero_shot_languages"]]
    return chosen, languages


def _states(model, tokenizer, texts: dict[str, list[str]], max_length: int,
            vocab: models.VocabMap | None = None) -> dict[str, np.ndarray]:
    return {lang: activations.pooled_states(model, activations.token_ids(tokenizer, t, max_length, vocab))
            for lang, t in texts.items()}


def measure(point: Point, states: dict[str, np.ndarray], labels: np.ndarray, cfg: dict[str, Any],
            every_layer: bool) -> tuple[dict[str, Any], list[dict], list[dict], dict[str, tuple[int, ...]]]:
    """Retrieval and neuron overlap of one point: (summary row, per-layer rows, per-pair rows at the probed layer,
    the selections at the probed layer)."""
    languages = list(states)
    n_layers = next(iter(states.values())).shape[0] - 1
    probed = activations.layer_at(cfg["probe_depth"], n_layers)
    k = cfg["probe_neurons"]
    layer_rows, pair_rows, chosen = [], [], {}
    for layer in (range(n_layers + 1) if every_layer else [probed]):
        d = states[languages[0]].shape[2]
        selections = {lang: probing.select_neurons(states[lang][layer], labels, n_neurons=min(k, d), seed=0)
                      for lang in languages}
        pairs = overlap.pairwise({lang: s.neurons for lang, s in selections.items()}, d=d,
                                 confidence=cfg["confidence"])
        hits = [activations.retrieval_hits(states[a][layer], states[b][layer])
                for a, b in itertools.combinations(languages, 2)]
        layer_rows.append({**point.__dict__, "layer": layer, "depth": layer / n_layers,
                           "retrieval": float(np.mean(hits)), "overlap": float(pairs["overlap"].mean()),
                           "chance": float(pairs["chance"].iloc[0]),
                           "probe_nmi": float(np.mean([s.dev_nmi[-1] for s in selections.values()]))})
        if layer == probed:
            chosen = {lang: s.neurons for lang, s in selections.items()}
            pair_rows = [{**point.__dict__, **row} for row in pairs.to_dict("records")]
            summary = {**layer_rows[-1], "n_layers": n_layers,
                       "retrieval_low": np.nan, "retrieval_high": np.nan,
                       "chance_low": float(pairs["chance_low"].iloc[0]),
                       "chance_high": float(pairs["chance_high"].iloc[0])}
            summary["_hits"] = np.mean(hits, axis=0)  # per verse, for intervals (dropped from the tables)
    return summary, layer_rows, pair_rows, chosen


def _retrieval_interval(hits: np.ndarray, cfg: dict[str, Any]) -> tuple[float, float, float]:
    frame = pd.DataFrame({"hit": hits})
    return claims.interval(frame, "hit", cfg["n_bootstrap"], cfg["confidence"], strata=None, unit=None)


def compute(runs: list, cfg: dict[str, Any]) -> Result:
    """``runs``: the axis runs (``RunInputs`` with ``finetune`` and ``tracin``, and ``pretrain`` for the in-house
    encoder)."""
    torch.set_num_threads(finetune.set_threads())
    verses, languages = held_out_verses(runs, cfg["alignment_verses"])
    texts = {lang: data.read_verses(lang, verses) for lang in languages}
    labels = verses["label"].to_numpy()
    max_length = runs[0].params["max_length"]
    summaries, layer_rows, pair_rows, final_selections = [], [], [], {}
    seen_pretraining: set[str] = set()
    firsts = {}  # the first seed of each variant: its fine-tuning checkpoints are probed
    for run in runs:
        firsts.setdefault(run.run.variant, run)
    jobs: list[tuple[Point, Any]] = []
    for run in runs:
        out = finetune.load(run["finetune"])
        tokenizer = models.load_tokenizer(run["finetune"] / "tokenizer")
        step = None
        if "pretrain" in run.folders:
            pre = pretrain.load(run["pretrain"])
            step = Path(out.info["init_from"]).name
            if str(run["pretrain"]) not in seen_pretraining:  # every pre-training checkpoint, once
                seen_pretraining.add(str(run["pretrain"]))
                for c in pre.checkpoints:
                    jobs.append((Point("in-house MLM", "pre-trained", c["name"], c["step"], None),
                                 lambda c=c: (models.load_classifier(c["path"]), models.load_tokenizer(c["path"]),
                                              None)))
        name = encoder_name(run.params, step)
        if run.run is firsts[run.run.variant].run:
            if "pretrain" not in run.folders:
                n_labels = len(data.LABELS[run.params["label"]].names)
                jobs.append((Point(name, "pre-trained", "start", 0, run.name),
                             lambda run=run, out=out, tokenizer=tokenizer, n_labels=n_labels: (
                                 finetune.initial_model(run.params["model"], n_labels, run.params["seed"],
                                                        vocab_size=out.info["full_vocab_size"],
                                                        reinit_top_layers=run.params["reinit_top_layers"]),
                                 tokenizer, None)))
            vocab = (models.VocabMap(np.load(run["finetune"] / "vocab_keep_ids.npy"), out.info["full_vocab_size"])
                     if (run["finetune"] / "vocab_keep_ids.npy").exists() else None)
            for i, c in enumerate(out.checkpoints, 1):
                jobs.append((Point(name, "fine-tuned", c["name"], i, run.name),
                             lambda c=c, tokenizer=tokenizer, vocab=vocab: (models.load_classifier(c["path"]),
                                                                             tokenizer, vocab)))
    for point, load in tqdm(jobs, desc="alignment: encoder states", unit="checkpoint", mininterval=progress_interval()):
        model, tokenizer, vocab = load()
        states = _states(model, tokenizer, texts, max_length, vocab)
        del model
        summary, layers, pairs, chosen = measure(point, states, labels, cfg, every_layer=True)
        summary["retrieval"], summary["retrieval_low"], summary["retrieval_high"] = \
            _retrieval_interval(summary.pop("_hits"), cfg)
        summaries.append(summary)
        layer_rows += layers
        pair_rows += pairs
        if point.phase == "fine-tuned":
            final_selections[point.run] = (point, chosen)  # checkpoints come in order: the last one stays
    points = pd.DataFrame(summaries)
    mlm = _mlm_losses(runs)
    if not mlm.empty:
        points = points.merge(mlm, on=["encoder", "checkpoint"], how="left")
    axis = _axis_table(runs, points, cfg)
    pairs_table = pd.DataFrame(pair_rows)
    shares = _pair_shares(runs, cfg)
    transfer = _transfer_table(runs, pairs_table, final_selections)
    pair_points = _pair_points(pairs_table, shares, final_selections)
    correlations = pd.DataFrame([
        {"x": "neuron overlap", "y": "TracIn share of the other language's data",
         **overlap.correlation(pair_points["overlap"], pair_points["share"], cfg["n_bootstrap"], cfg["confidence"])},
        {"x": "neuron overlap (mean with the fine-tuning languages)", "y": "test accuracy",
         **overlap.correlation(transfer["overlap"], transfer["accuracy"], cfg["n_bootstrap"], cfg["confidence"])},
    ])
    result = Result(tables={"points": points, "layers": pd.DataFrame(layer_rows), "pairs": pairs_table,
                            "axis": axis, "pair_points": pair_points, "transfer": transfer,
                            "correlations": correlations})
    result.claims = _claims(runs, points, axis, correlations, cfg)
    return result


def _mlm_losses(runs: list) -> pd.DataFrame:
    rows = []
    for run in runs:
        if "pretrain" in run.folders:
            for c in pretrain.load(run["pretrain"]).checkpoints:
                rows.append({"encoder": "in-house MLM", "checkpoint": c["name"], "mlm_loss": c["mlm_loss"]})
    return pd.DataFrame(rows).drop_duplicates() if rows else pd.DataFrame()


def _own_shares(run, cfg: dict[str, Any]) -> pd.DataFrame:
    table = analysis.runs_table([run], cfg["top_k"], cfg["influence_kind"])
    return table[table["own"].notna()]


def _axis_table(runs: list, points: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame:
    """One row per encoder fine-tuned: the retrieval of the encoder it started from, its own-language share of the
    top-k (over its seeds) with the language-blind value, and its accuracy."""
    rows = []
    start = points[points["checkpoint"].isin(["start"]) | (points["run"].isna())]
    for variant in dict.fromkeys(r.run.variant for r in runs):
        group = [r for r in runs if r.run.variant == variant]
        first = group[0]
        out = finetune.load(first["finetune"])
        step = Path(out.info["init_from"]).name if out.info.get("init_from") else None
        name = encoder_name(first.params, step)
        if step:
            origin = start[(start["encoder"] == "in-house MLM") & (start["checkpoint"] == step)]
        else:
            origin = start[(start["encoder"] == name) & (start["run"] == first.name)]
        table = pd.concat([_own_shares(r, cfg) for r in group])
        own, low, high = claims.interval(table, "own", cfg["n_bootstrap"], cfg["confidence"])
        blind = analysis.language_blind(analysis.load_scores(first["tracin"]))
        history = pd.concat([finetune.load(r["finetune"]).history.assign(run=r.name) for r in group])
        last = history[history["epoch"] == history["epoch"].max()]
        ft = first.params["fine_tune_languages"]
        rows.append({"encoder": name, "variant": variant, "seeds": len(group),
                     "retrieval": float(origin["retrieval"].iloc[0]) if len(origin) else np.nan,
                     "overlap": float(origin["overlap"].iloc[0]) if len(origin) else np.nan,
                     "own": own, "own_low": low, "own_high": high,
                     "language_blind": float(blind.reindex(ft).mean()),
                     "accuracy": float(last[last["language"].isin(ft)]["accuracy"].mean()),
                     "zero_shot_accuracy": float(last[~last["language"].isin(ft)]["accuracy"].mean())})
    return pd.DataFrame(rows)


def _pair_shares(runs: list, cfg: dict[str, Any]) -> pd.DataFrame:
    """Per run and ordered pair (test language a, training language b != a): the share of b's samples among the
    top-k of a's test samples (mean over a's test samples)."""
    rows = []
    for run in runs:
        table = analysis.runs_table([run], cfg["top_k"], cfg["influence_kind"])
        for a, part in table.groupby("test_language", sort=False):
            for col in analysis.share_columns(table):
                b = col.removeprefix("share_")
                if b != a:
                    rows.append({"run": run.name, "language_a": a, "language_b": b, "share": part[col].mean()})
    return pd.DataFrame(rows)


def _pair_points(pairs: pd.DataFrame, shares: pd.DataFrame, finals: dict[str, tuple[Point, Any]]) -> pd.DataFrame:
    """Overlap at each fine-tuned run's last checkpoint against TracIn's cross-lingual share, per ordered pair of
    languages (the overlap is symmetric, the share is not)."""
    rows = []
    for run, (point, _) in finals.items():
        part = pairs[(pairs["run"] == run) & (pairs["checkpoint"] == point.checkpoint)]
        sym = pd.concat([part, part.rename(columns={"language_a": "language_b", "language_b": "language_a"})])
        merged = shares[shares["run"] == run].merge(sym[["language_a", "language_b", "overlap"]],
                                                    on=["language_a", "language_b"])
        rows.append(merged.assign(encoder=point.encoder))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["run", "language_a", "language_b", "share", "overlap", "encoder"])


def _transfer_table(runs: list, pairs: pd.DataFrame, finals: dict[str, tuple[Point, Any]]) -> pd.DataFrame:
    """Per fine-tuned run (first seed of each variant) and test language: its mean overlap with the fine-tuning
    languages (other than itself) at the last checkpoint, and its test accuracy there."""
    rows = []
    by_name = {r.name: r for r in runs}
    for run_name, (point, _) in finals.items():
        run = by_name[run_name]
        ft = run.params["fine_tune_languages"]
        part = pairs[(pairs["run"] == run_name) & (pairs["checkpoint"] == point.checkpoint)]
        history = finetune.load(run["finetune"]).history
        last = history[history["epoch"] == history["epoch"].max()].set_index("language")["accuracy"]
        for lang in last.index:
            mine = part[((part["language_a"] == lang) & part["language_b"].isin(ft))
                        | ((part["language_b"] == lang) & part["language_a"].isin(ft))]
            rows.append({"run": run_name, "encoder": point.encoder, "language": lang, "zero_shot": lang not in ft,
                         "overlap": float(mine["overlap"].mean()), "accuracy": float(last[lang])})
    return pd.DataFrame(rows)


def _claims(runs: list, points: pd.DataFrame, axis: pd.DataFrame, correlations: pd.DataFrame,
            cfg: dict[str, Any]) -> list[claims.Claim]:
    k, kind = cfg["top_k"], cfg["influence_kind"]
    opts = dict(n_boot=cfg["n_bootstrap"], confidence=cfg["confidence"])
    out = []
    statement = ("The less aligned the encoder that fine-tuning starts from, the more the fine-tuned model draws on "
                 "its own language's data: the least aligned encoder's own-language share of the top-k exceeds the "
                 "most aligned one's.")
    ranked = axis.dropna(subset=["retrieval"]).sort_values("retrieval")
    if len(ranked) >= 2 and ranked["retrieval"].iloc[0] < ranked["retrieval"].iloc[-1]:
        low_v, high_v = ranked.iloc[0], ranked.iloc[-1]
        least = [r for r in runs if r.run.variant == low_v["variant"]]
        most = [r for r in runs if r.run.variant == high_v["variant"]]
        diff = claims.difference(pd.concat([_own_shares(r, cfg) for r in least]),
                                 pd.concat([_own_shares(r, cfg) for r in most]), "own", **opts)
        out.append(claims.claim("AL1", STAGE.name, statement, claims.METHOD,
                                f"own-language share of the top-{k} {kind}: {low_v['encoder']} (retrieval "
                                f"{low_v['retrieval']:.0%}) minus {high_v['encoder']} ({high_v['retrieval']:.0%})",
                                diff, 0.0, "no difference", "above"))
    else:
        out.append(claims.not_tested("AL1", STAGE.name, statement, claims.METHOD, "own-language share difference",
                                     "the study has fewer than two encoders of different alignment on the axis"))
    overlap_stat = correlations.iloc[1]
    out.append(_correlation_claim("W1", "Cross-lingual neuron overlap correlates with cross-lingual transfer "
                                  "(zero-shot performance).", overlap_stat,
                                  "Spearman correlation, language x encoder, of a test language's neuron overlap "
                                  "with the fine-tuning languages and its accuracy"))
    share_stat = correlations.iloc[0]
    out.append(_correlation_claim("AL2", "Language pairs whose neurons overlap more share more data: a language's "
                                  "test samples draw more on the training data of languages it overlaps with.",
                                  share_stat, "Spearman correlation, ordered language pair x encoder, of neuron "
                                  f"overlap and TracIn's share of the other language among the top-{k}",
                                  source=claims.METHOD))
    out.append(_degradation_claim(points, opts))
    return out


def _correlation_claim(claim_id: str, statement: str, stat: pd.Series, statistic: str,
                       source: str = RELATED) -> claims.Claim:
    if not np.isfinite(stat["spearman"]):
        return claims.not_tested(claim_id, STAGE.name, statement, source, statistic,
                                 f"too few points or a constant variable (n = {int(stat['n'])})")
    return claims.claim(claim_id, STAGE.name, statement, source, f"{statistic} (n = {int(stat['n'])})",
                        (stat["spearman"], stat["spearman_low"], stat["spearman_high"]), 0.0, "no correlation",
                        "above", percent=False)


def _degradation_claim(points: pd.DataFrame, opts: dict[str, Any]) -> claims.Claim:
    statement = ("Alignment does not grow steadily during pre-training: it degrades in some phases (a drop between "
                 "successive checkpoints).")
    trajectory = points[(points["encoder"] == "in-house MLM") & points["run"].isna()].sort_values("order")
    statistic = "largest drop of translation retrieval between successive in-house pre-training checkpoints"
    if len(trajectory) < 3:
        return claims.not_tested("W2", STAGE.name, statement, RELATED, statistic,
                                 "the study has no in-house pre-training trajectory of three checkpoints or more")
    drops = -np.diff(trajectory["retrieval"].to_numpy())
    i = int(np.argmax(drops))
    before, after = trajectory.iloc[i], trajectory.iloc[i + 1]
    # the two checkpoints' per-verse hits are paired: an interval from their bootstrap intervals' half-widths
    half = np.hypot(before["retrieval_high"] - before["retrieval"], after["retrieval"] - after["retrieval_low"])
    return claims.claim("W2", STAGE.name, statement, RELATED,
                        f"{statistic} ({before['checkpoint']} to {after['checkpoint']})",
                        (float(drops[i]), float(drops[i] - half), float(drops[i] + half)), 0.0, "no drop", "above",
                        note="Checked on the in-house encoder's pre-training, not on BLOOM's; Wang et al.'s drops "
                             "coincide with collapses of English accuracy too (see the related-work digest), which "
                             "the MLM loss column of the trajectory table checks here.")


def layer_summary(layers: pd.DataFrame) -> pd.DataFrame:
    """The per-layer rows of each encoder before fine-tuning (its start, or its pre-training checkpoints) and at its
    last fine-tuning checkpoint, named by state."""
    fine = layers["phase"] == "fine-tuned"
    last = layers["run"].map(layers[fine].groupby("run")["order"].max())
    keep = ~fine | (layers["order"] == last)
    out = layers[keep].copy()
    out["state"] = out["encoder"] + ": " + out["checkpoint"]
    return out


def axis_display(axis: pd.DataFrame) -> pd.DataFrame:
    out = axis.set_index("encoder")[["seeds", "retrieval", "overlap", "own", "own_low", "own_high", "language_blind",
                                     "accuracy", "zero_shot_accuracy"]].copy()
    out["own (interval)"] = [f"{o:.1%} ({lo:.1%} to {hi:.1%})" for o, lo, hi in
                             zip(out["own"], out["own_low"], out["own_high"])]
    out = out.drop(columns=["own", "own_low", "own_high"])
    for col in ("retrieval", "overlap", "language_blind", "accuracy", "zero_shot_accuracy"):
        out[col] = out[col].map(lambda x: "n/a" if pd.isna(x) else f"{x:.1%}")
    return out


def points_display(points: pd.DataFrame) -> pd.DataFrame:
    cols = ["encoder", "phase", "checkpoint", "layer", "retrieval", "retrieval_low", "retrieval_high", "overlap",
            "chance", "chance_high", "probe_nmi"] + (["mlm_loss"] if "mlm_loss" in points else [])
    out = points[cols].copy()
    for col in ("retrieval", "retrieval_low", "retrieval_high", "overlap", "chance", "chance_high"):
        out[col] = out[col].map(lambda x: f"{x:.1%}")
    return out.set_index(["encoder", "phase", "checkpoint"])


def correlations_display(correlations: pd.DataFrame) -> pd.DataFrame:
    out = correlations.copy()
    for name in ("pearson", "spearman"):
        out[name] = [f"{v:.2f} ({lo:.2f} to {hi:.2f})" if np.isfinite(v) else "n/a"
                     for v, lo, hi in zip(out[name], out[f"{name}_low"], out[f"{name}_high"])]
    return out[["x", "y", "n", "pearson", "spearman"]]
