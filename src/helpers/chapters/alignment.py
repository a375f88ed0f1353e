"""Alignment and sharing: does a model draw more on other languages' data the more aligned its pre-training left it?

Reads the probing stage's measurements of every encoder of the alignment axis (translation retrieval and neuron
overlap, :mod:`helpers.compute.probe`) and TracIn's rankings of the same fine-tuned models:

* the **axis**: per encoder, the retrieval of the encoder fine-tuning started from against the fine-tuned model's
  own-language share of the top-k (the paper's measure of sharing, over the variant's seeds). AL1 compares the least
  and the most aligned encoder only among those that learned the task (accuracy interval above chance) on at least
  :data:`MIN_SEEDS` seeds: encoders that differ in everything but alignment, one of them near chance, say nothing
  about alignment;
* **correlations**, within one encoder at a time (pooling encoders would make "the better encoder has more of both"
  pass for a correlation): per unordered pair of languages, neuron overlap at the last fine-tuning checkpoint against
  TracIn's data sharing between them (AL2); per zero-shot language (Wang, Minervini & Ponti 2024 correlate overlap
  with zero-shot transfer; a fine-tuning language's accuracy is not transfer), its mean overlap with the fine-tuning
  languages against its accuracy (W1). Intervals come from a bootstrap over languages
  (:func:`helpers.neurons.overlap.language_correlation`): the pairs of a language are not independent.
"""

from __future__ import annotations

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
#: AL1 compares two encoders only when each has at least this many seeds (the run is the unit).
MIN_SEEDS = 3


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
        per_run = last[last["language"].isin(ft)].groupby("run", as_index=False)["accuracy"].mean()
        accuracy = claims.interval(per_run, "accuracy", cfg["confidence"], cluster="run")
        rows.append({"encoder": start.encoder, "variant": start.variant, "seeds": len(group),
                     "retrieval": start.retrieval, "overlap": start.overlap, "own": own, "own_low": low,
                     "own_high": high, "language_blind": float(blind.reindex(ft).mean()),
                     "accuracy": float(last[last["language"].isin(ft)]["accuracy"].mean()),
                     "accuracy_low": accuracy.low,
                     "zero_shot_accuracy": float(last[~last["language"].isin(ft)]["accuracy"].mean())})
    return pd.DataFrame(rows)


def last_checkpoints(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pair rows of each fine-tuned run's last checkpoint."""
    fine = pairs[pairs["phase"] == "fine-tuned"]
    return fine[fine["order"] == fine["run"].map(fine.groupby("run")["order"].max())]


def _unordered(frame: pd.DataFrame) -> pd.DataFrame:
    """``language_a`` / ``language_b`` put in alphabetical order (one name per unordered pair)."""
    a, b = frame["language_a"], frame["language_b"]
    return frame.assign(language_a=a.where(a < b, b), language_b=b.where(a < b, a))


def pair_points(runs: list, pairs: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame:
    """Per encoder and unordered pair of languages {a, b}: the neuron overlap of a and b at the last checkpoint of
    each of its fine-tuned runs, and TracIn's data sharing between them (the share of b's samples among the top-k of
    a's test samples, and of a's among b's, averaged over the directions that exist: a zero-shot language has no
    training data), both averaged over the encoder's runs (``runs``: how many)."""
    last = _unordered(last_checkpoints(pairs))
    rows = []
    for run in [r for r in runs if r.name in set(last["run"])]:
        table = analysis.runs_table([run], cfg["top_k"], cfg["influence_kind"])
        for a, part in table.groupby("test_language", sort=False):
            for col in analysis.share_columns(table):
                b = col.removeprefix("share_")
                if b != a:
                    rows.append({"run": run.name, "language_a": a, "language_b": b, "share": part[col].mean()})
    shares = _unordered(pd.DataFrame(rows, columns=["run", "language_a", "language_b", "share"]))
    shares = shares.groupby(["run", "language_a", "language_b"], as_index=False)["share"].mean()
    both = shares.merge(last[["run", "encoder", "language_a", "language_b", "overlap"]],
                        on=["run", "language_a", "language_b"])
    return (both.groupby(["encoder", "language_a", "language_b"], sort=False)
            .agg(runs=("run", "nunique"), overlap=("overlap", "mean"), share=("share", "mean")).reset_index())


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


def correlations(points: pd.DataFrame, transfer: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame:
    """Per encoder: Spearman's ρ of overlap and sharing over its unordered language pairs (AL2), and of overlap and
    accuracy over its zero-shot languages (W1, each language averaged over the encoder's runs), each with a bootstrap
    over languages."""
    opts = dict(n_boot=cfg["n_bootstrap"], confidence=cfg["confidence"])
    if transfer.empty:
        transfer = pd.DataFrame(columns=["run", "encoder", "language", "zero_shot", "overlap", "accuracy"])
    rows = []
    for encoder in dict.fromkeys([*points["encoder"], *transfer["encoder"]]):
        mine = points[points["encoder"] == encoder]
        zero = (transfer[(transfer["encoder"] == encoder) & transfer["zero_shot"].astype(bool)]
                .groupby("language", as_index=False)
                .agg(runs=("run", "nunique"), overlap=("overlap", "mean"), accuracy=("accuracy", "mean")))
        for claim, frame, y, x_name, y_name, languages in (
                ("AL2", mine, "share", "neuron overlap of the two languages", "TracIn share of each other's data",
                 ("language_a", "language_b")),
                ("W1", zero, "accuracy", "zero-shot language's overlap with the fine-tuning languages",
                 "its test accuracy", ("language",))):
            rows.append({"encoder": encoder, "claim": claim, "x": x_name, "y": y_name,
                         "runs": int(frame["runs"].min()) if len(frame) else 0,
                         **overlap.language_correlation(frame, "overlap", y, languages=languages, **opts)})
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
    table = correlations(points, transfer, cfg)
    result = Result(tables={"axis": axis, "pair_points": points, "transfer": transfer, "correlations": table})
    result.claims = [axis_claim(runs, axis, cfg)]
    for row in table.itertuples():
        statement, source, what = ((SHARING, claims.METHOD, "unordered language pairs") if row.claim == "AL2" else
                                   (TRANSFER, claims.RELATED, "zero-shot languages"))
        result.claims.append(correlation_claim(
            f"{row.claim}-{row.encoder}", statement, row, f"Spearman correlation of {row.x} and {row.y}, over the "
            f"{what} of {row.encoder}", source, cfg["confidence"]))
    return result


def axis_claim(runs: list, axis: pd.DataFrame, cfg: dict[str, Any]) -> claims.Claim:
    """AL1: the least minus the most aligned encoder's own-language share, among the encoders that learned the task
    (accuracy interval over seeds above chance) on at least :data:`MIN_SEEDS` seeds; else not tested, saying why
    for each encoder."""
    statement = AXIS
    n_labels = len(data.LABELS[runs[0].params["label"]].names) if runs else 2
    usable = axis.dropna(subset=["retrieval"])
    fit = usable[(usable["seeds"] >= MIN_SEEDS) & (usable["accuracy_low"] > 1 / n_labels)]
    ranked = fit.sort_values("retrieval", kind="stable")
    if len(ranked) < 2 or ranked["retrieval"].iloc[0] >= ranked["retrieval"].iloc[-1]:
        status = "; ".join(
            f"{row.encoder}: {row.seeds} seed{'s' * (row.seeds != 1)}, accuracy interval from {row.accuracy_low:.0%}"
            if np.isfinite(row.accuracy_low) else f"{row.encoder}: {row.seeds} seed{'s' * (row.seeds != 1)}"
            for row in usable.itertuples())
        return claims.not_tested(
            "AL1", STAGE.name, statement, claims.METHOD, "own-language share difference",
            f"it compares two encoders of different alignment that each learned the task (accuracy interval above "
            f"chance, {1 / n_labels:.0%}) on at least {MIN_SEEDS} seeds; this study has {len(fit)} such encoder"
            f"{'s' * (len(fit) != 1)} ({status or 'no encoder on the axis'})")
    # Ties (e5 with only layers above the probed one re-initialised measures as e5 itself): the first encoder in
    # the study's order, i.e. the main run's.
    least = ranked.iloc[0]
    most = ranked[ranked["retrieval"] == ranked["retrieval"].iloc[-1]].iloc[0]
    diff = claims.difference(_own([r for r in runs if r.run.variant == least["variant"]], cfg),
                             _own([r for r in runs if r.run.variant == most["variant"]], cfg), "own",
                             confidence=cfg["confidence"])
    return claims.claim("AL1", STAGE.name, statement, claims.METHOD,
                        f"own-language share of the top-{cfg['top_k']} {cfg['influence_kind']}: {least['encoder']} "
                        f"(retrieval {least['retrieval']:.0%}) minus {most['encoder']} ({most['retrieval']:.0%})",
                        diff, 0.0, "no difference", "above", confidence=cfg["confidence"])


def correlation_claim(claim_id: str, statement: str, stat, statistic: str, source: str,
                      confidence: float) -> claims.Claim:
    """A correlation within one encoder, its interval from a bootstrap over languages. The runs it rests on are the
    encoder's runs whose values each point averages; the verdict's test uses the bootstrap's standard error with
    ``languages - 1`` degrees of freedom (the languages are the sample)."""
    if not np.isfinite(stat.spearman):
        return claims.not_tested(claim_id, STAGE.name, statement, source, statistic,
                                 f"too few points or a constant variable ({int(stat.n)} points of "
                                 f"{int(stat.languages)} languages; a correlation needs at least 3 of each)")
    estimate = claims.Estimate(stat.spearman, stat.spearman_low, stat.spearman_high, runs=int(stat.runs), se=stat.se,
                               df=float(stat.languages - 1), samples=int(stat.n))
    return claims.claim(claim_id, STAGE.name, statement, source, f"{statistic}, n = {int(stat.n)}", estimate,
                        0.0, "no correlation", "above", percent=False, confidence=confidence,
                        rests_on=f"{int(stat.n)} points of {int(stat.languages)} languages, each averaged over "
                                 f"{int(stat.runs)} training run{'s' * (stat.runs != 1)} (a bootstrap over languages)")


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
    out["spearman"] = [f"{v:.2f} ({lo:.2f} to {hi:.2f})" if np.isfinite(v) else "n/a"
                       for v, lo, hi in zip(out["spearman"], out["spearman_low"], out["spearman_high"])]
    return out[["encoder", "claim", "x", "y", "runs", "languages", "n", "spearman"]].set_index(["encoder", "claim"])
