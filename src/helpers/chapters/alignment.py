"""Alignment and sharing: does a model draw more on other languages' data the more aligned its pre-training left it?

Reads the probing stage's measurements of every encoder of the alignment axis (translation retrieval and neuron
overlap, :mod:`helpers.compute.probe`) and TracIn's rankings of the same fine-tuned models:

* the **axis**: per encoder, the retrieval of the encoder fine-tuning started from against the fine-tuned model's
  own-language share of the top-k (the paper's measure of sharing, over the variant's seeds);
* **correlations** (Wang, Minervini & Ponti 2024, who correlate overlap with zero-shot transfer): per ordered pair
  of languages, neuron overlap at the last fine-tuning checkpoint against TracIn's share of the second language's
  data among the first's top-k; per test language, its mean overlap with the fine-tuning languages against its
  accuracy. Points pool encoders (language x encoder), so they are not independent, as Wang et al.'s language x
  checkpoint points are not.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from .. import analysis, claims, data
from ..compute import finetune
from ..flow.stage import STUDY_ROLE, Stage
from ..neurons import overlap
from . import Result

STAGE = Stage("alignment", "20_alignment.ipynb", "Alignment and sharing",
              reads=(("probe", STUDY_ROLE), ("finetune", "axis"), ("tracin", "axis")),
              params=("top_k", "influence_kind", "n_bootstrap", "confidence"),
              modules=("chapters/alignment", "neurons/overlap", "analysis", "claims"))


AXIS = ("The less aligned the encoder that fine-tuning starts from, the more the fine-tuned model draws on its own "
        "language's data: the least aligned encoder's own-language share of the top-k exceeds the most aligned one's.")
SHARING = ("Language pairs whose neurons overlap more share more data: a language's test samples draw more on the "
           "training data of the languages it overlaps with.")
TRANSFER = "Cross-lingual neuron overlap correlates with cross-lingual transfer performance."
CLAIMS = (("AL1", AXIS, claims.METHOD), ("AL2", SHARING, claims.METHOD), ("W1", TRANSFER, claims.RELATED))


def _own(runs: list, cfg: dict[str, Any]) -> pd.DataFrame:
    table = analysis.runs_table(runs, cfg["top_k"], cfg["influence_kind"])
    return table[table["own"].notna()]


def axis_table(runs: list, starts: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame:
    """One row per encoder fine-tuned: the retrieval and overlap of the encoder it started from, its own-language
    share of the top-k (over its seeds, with an interval) next to the language-blind value, and its accuracy."""
    rows = []
    for start in starts.itertuples():
        group = [r for r in runs if r.run.variant == start.variant]
        own, low, high = claims.interval(_own(group, cfg), "own", cfg["confidence"])
        ft = group[0].params["fine_tune_languages"]
        blind = analysis.language_blind(analysis.load_scores(group[0]["tracin"]))
        history = pd.concat([finetune.load(r["finetune"]).history.assign(run=r.name) for r in group])
        last = history[history["epoch"] == history["epoch"].max()]
        rows.append({"encoder": start.encoder, "variant": start.variant, "seeds": len(group),
                     "retrieval": start.retrieval, "overlap": start.overlap, "own": own, "own_low": low,
                     "own_high": high, "language_blind": float(blind.reindex(ft).mean()),
                     "accuracy": float(last[last["language"].isin(ft)]["accuracy"].mean()),
                     "zero_shot_accuracy": float(last[~last["language"].isin(ft)]["accuracy"].mean())})
    return pd.DataFrame(rows)


def last_checkpoints(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pair rows of each fine-tuned run's last checkpoint."""
    fine = pairs[pairs["phase"] == "fine-tuned"]
    return fine[fine["order"] == fine["run"].map(fine.groupby("run")["order"].max())]


def pair_points(runs: list, pairs: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame:
    """Per fine-tuned run and ordered pair (test language a, training language b != a): the overlap of a and b at
    the last checkpoint and the share of b's samples among the top-k of a's test samples (mean over them)."""
    last = last_checkpoints(pairs)
    both = pd.concat([last, last.rename(columns={"language_a": "language_b", "language_b": "language_a"})])
    rows = []
    for run in [r for r in runs if r.name in set(last["run"])]:
        table = analysis.runs_table([run], cfg["top_k"], cfg["influence_kind"])
        for a, part in table.groupby("test_language", sort=False):
            for col in analysis.share_columns(table):
                b = col.removeprefix("share_")
                if b != a:
                    rows.append({"run": run.name, "language_a": a, "language_b": b, "share": part[col].mean()})
    shares = pd.DataFrame(rows, columns=["run", "language_a", "language_b", "share"])
    return shares.merge(both[["run", "encoder", "language_a", "language_b", "overlap"]],
                        on=["run", "language_a", "language_b"])


def transfer_table(runs: list, pairs: pd.DataFrame) -> pd.DataFrame:
    """Per fine-tuned run and test language: its mean overlap with the fine-tuning languages (other than itself) at
    the last checkpoint, and its test accuracy there."""
    last = last_checkpoints(pairs)
    rows = []
    for run in [r for r in runs if r.name in set(last["run"])]:
        ft = run.params["fine_tune_languages"]
        part = last[last["run"] == run.name]
        history = finetune.load(run["finetune"]).history
        accuracy = history[history["epoch"] == history["epoch"].max()].set_index("language")["accuracy"]
        for lang in accuracy.index:
            mine = part[((part["language_a"] == lang) & part["language_b"].isin(ft))
                        | ((part["language_b"] == lang) & part["language_a"].isin(ft))]
            rows.append({"run": run.name, "encoder": part["encoder"].iloc[0], "language": lang,
                         "zero_shot": lang not in ft, "overlap": float(mine["overlap"].mean()),
                         "accuracy": float(accuracy[lang])})
    return pd.DataFrame(rows)


def compute(probing_folder, runs: list, cfg: dict[str, Any]) -> Result:
    """``probing_folder``: the probing stage's outputs; ``runs``: the axis runs (``finetune`` and ``tracin``)."""
    try:
        pairs = pd.read_csv(probing_folder / "pairs.csv")
    except pd.errors.EmptyDataError:  # the probing chapter had no axis to measure
        why = "the probing stage measured no encoder (it needs the Bible corpus)"
        return Result(tables={name: pd.DataFrame() for name in ("axis", "pair_points", "transfer", "correlations")},
                      claims=[claims.not_tested(c, STAGE.name, s, src, "", why) for c, s, src in CLAIMS])
    starts = pd.read_csv(probing_folder / "starts.csv")
    axis = axis_table(runs, starts, cfg)
    points = pair_points(runs, pairs, cfg)
    transfer = transfer_table(runs, pairs)
    opts = dict(n_boot=cfg["n_bootstrap"], confidence=cfg["confidence"])
    correlations = pd.DataFrame([
        {"x": "neuron overlap of the two languages", "y": "TracIn share of the other language's data",
         **overlap.correlation(points["overlap"], points["share"], **opts)},
        {"x": "neuron overlap with the fine-tuning languages", "y": "test accuracy",
         **overlap.correlation(transfer["overlap"], transfer["accuracy"], **opts)},
    ])
    result = Result(tables={"axis": axis, "pair_points": points, "transfer": transfer, "correlations": correlations})
    result.claims = [axis_claim(runs, axis, cfg),
                     correlation_claim("AL2", SHARING, correlations.iloc[0],
                                       f"Spearman correlation of neuron overlap and TracIn's share of the other "
                                       f"language in the top-{cfg['top_k']} (ordered language pair x encoder)",
                                       claims.METHOD, cfg["confidence"]),
                     correlation_claim("W1", TRANSFER, correlations.iloc[1],
                                       "Spearman correlation of a test language's neuron overlap with the "
                                       "fine-tuning languages and its accuracy (language x encoder)",
                                       claims.RELATED, cfg["confidence"])]
    return result


def axis_claim(runs: list, axis: pd.DataFrame, cfg: dict[str, Any]) -> claims.Claim:
    statement = AXIS
    ranked = axis.dropna(subset=["retrieval"]).sort_values("retrieval", kind="stable")
    if len(ranked) < 2 or ranked["retrieval"].iloc[0] >= ranked["retrieval"].iloc[-1]:
        return claims.not_tested("AL1", STAGE.name, statement, claims.METHOD, "own-language share difference",
                                 "the study has fewer than two encoders of different alignment on the axis")
    # Ties (e5 with only layers above the probed one re-initialised measures as e5 itself): the first encoder in
    # the study's order, i.e. the main run's.
    least = ranked.iloc[0]
    most = ranked[ranked["retrieval"] == ranked["retrieval"].iloc[-1]].iloc[0]
    diff = claims.difference(_own([r for r in runs if r.run.variant == least["variant"]], cfg),
                             _own([r for r in runs if r.run.variant == most["variant"]], cfg), "own",
                             confidence=cfg["confidence"])
    claim = claims.claim("AL1", STAGE.name, statement, claims.METHOD,
                         f"own-language share of the top-{cfg['top_k']} {cfg['influence_kind']}: {least['encoder']} "
                         f"(retrieval {least['retrieval']:.0%}) minus {most['encoder']} ({most['retrieval']:.0%})",
                         diff, 0.0, "no difference", "above", confidence=cfg["confidence"])
    n_labels = len(data.LABELS[runs[0].params["label"]].names)
    if least["accuracy"] < finetune.learning_threshold(n_labels):
        return replace(claim, verdict="not tested", note=(
            f"The least aligned encoder's fine-tuned model did not learn the task (accuracy {least['accuracy']:.0%} "
            f"against a chance level of {1 / n_labels:.0%}): its TracIn rankings come from a model near chance, so "
            "the difference says nothing about alignment."))
    return claim


def correlation_claim(claim_id: str, statement: str, stat: pd.Series, statistic: str, source: str,
                      confidence: float) -> claims.Claim:
    """A correlation over points of every encoder's runs, with a bootstrap over the points: it rests on one set of
    training runs (one per encoder and seed), so it reads "conditional on one run"."""
    if not np.isfinite(stat["spearman"]):
        return claims.not_tested(claim_id, STAGE.name, statement, source, statistic,
                                 f"too few points or a constant variable (n = {int(stat['n'])})")
    estimate = claims.Estimate(stat["spearman"], stat["spearman_low"], stat["spearman_high"], runs=1,
                               samples=int(stat["n"]))
    return claims.claim(claim_id, STAGE.name, statement, source, f"{statistic}, n = {int(stat['n'])}", estimate,
                        0.0, "no correlation", "above", percent=False, confidence=confidence,
                        rests_on=f"{int(stat['n'])} points of one set of training runs (a bootstrap over the "
                                 "points, which share runs and languages)")


def axis_display(axis: pd.DataFrame) -> pd.DataFrame:
    def pct(x: float) -> str:
        return "n/a" if pd.isna(x) else f"{x:.1%}"

    return pd.DataFrame({"seeds": axis["seeds"].to_numpy(), "retrieval": axis["retrieval"].map(pct).to_numpy(),
                         "own-language share (interval)": [f"{pct(o)} ({pct(lo)} to {pct(hi)})" for o, lo, hi in
                                                           zip(axis["own"], axis["own_low"], axis["own_high"])],
                         "language-blind": axis["language_blind"].map(pct).to_numpy(),
                         "accuracy": axis["accuracy"].map(pct).to_numpy(),
                         "zero-shot accuracy": axis["zero_shot_accuracy"].map(pct).to_numpy()},
                        index=pd.Index(axis["encoder"], name="encoder"))


def correlations_display(correlations: pd.DataFrame) -> pd.DataFrame:
    out = correlations.copy()
    for name in ("pearson", "spearman"):
        out[name] = [f"{v:.2f} ({lo:.2f} to {hi:.2f})" if np.isfinite(v) else "n/a"
                     for v, lo, hi in zip(out[name], out[f"{name}_low"], out[f"{name}_high"])]
    return out[["x", "y", "n", "pearson", "spearman"]].set_index(["x", "y"])
