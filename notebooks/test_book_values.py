"""What the book shows, checked by value: not "the cell ran" but "the number on the page is right".

Collected by the nbval session of ``make test`` (``pytest ... notebooks``), after ``conftest.py`` has built the smoke
study. It reads the executed notebooks (what the book publishes) and the stages' stored outputs, and recomputes the
key numbers here, without the package's analysis code:

* the accuracy table of the fine-tuning page, from the saved last checkpoint run on the saved test tokens;
* the language shares, the own-language share and the language-blind baseline of the language-shares page, from
  the saved TracIn scores (a sort and a count per test sample);
* every verdict of every chapter and of the scoreboard, from its interval and baseline by the rule the book states.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from bs4 import BeautifulSoup
from datasets import load_from_disk
from scipy import stats
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModelForSequenceClassification

from helpers import data, paths, study
from helpers.flow import graph, store

STUDY = "smoke"


@cache
def built() -> tuple[study.Study, tuple[graph.Instance, ...]]:
    s = study.load(STUDY)
    return s, tuple(graph.plan(s))


def instances(stage: str, role: str | None = None) -> list[graph.Instance]:
    s, plan = built()
    runs = None if role is None else {r.name for r in s.role(role)}
    return [i for i in plan if i.stage.name == stage and (runs is None or i.run.name in runs)]


def folder(inst: graph.Instance) -> Path:
    return store.folder(STUDY, inst)


def outputs(inst: graph.Instance, mime: str) -> list[str]:
    """The executed notebook's outputs of one type (``text/html``, ``text/markdown``, ...), in cell order."""
    nb = json.loads(paths.executed_notebook(STUDY, inst.stage.name, inst.identity).read_text())
    found = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if mime in out.get("data", {}):
                value = out["data"][mime]
                found.append("".join(value) if isinstance(value, list) else value)
    return found


def glued(inst: graph.Instance, name: str) -> str:
    """A value the notebook glued for its prose (myst-nb ``glue``)."""
    nb = json.loads(paths.executed_notebook(STUDY, inst.stage.name, inst.identity).read_text())
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if out.get("metadata", {}).get("scrapbook", {}).get("name") == name:
                return json.loads(out["data"]["application/papermill.record/text/plain"].replace("'", '"'))
    raise KeyError(name)


def html_table(html: str) -> pd.DataFrame:
    """A rendered DataFrame or Styler, as text: the first header row names the columns, each body row's header
    cell is its index."""
    table = BeautifulSoup(html, "html.parser").find("table")
    if table is None:  # e.g. a chart
        return pd.DataFrame()
    header = [th.get_text(strip=True) for th in table.find("thead").find("tr").find_all("th")][1:]
    rows = {tr.find("th").get_text(strip=True): [td.get_text(strip=True) for td in tr.find_all("td")]
            for tr in table.find("tbody").find_all("tr")}
    return pd.DataFrame.from_dict(rows, orient="index", columns=header)


def tables_with(inst: graph.Instance, column: str) -> list[pd.DataFrame]:
    return [t for t in map(html_table, outputs(inst, "text/html")) if column in t.columns]


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning: the accuracy table


def recomputed_accuracy(finetune_folder: Path) -> pd.DataFrame:
    """Per test language: correct predictions and samples of the last saved checkpoint on the saved test tokens."""
    checkpoints = json.loads((finetune_folder / "checkpoints.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(finetune_folder / checkpoints[-1]["path"]).eval()
    test = load_from_disk(str(finetune_folder / "test_tokens"))
    ids = [torch.tensor(x) for x in test["input_ids"]]
    input_ids = pad_sequence(ids, batch_first=True, padding_value=model.config.pad_token_id)
    mask = pad_sequence([torch.ones(len(x), dtype=torch.long) for x in ids], batch_first=True)
    with torch.no_grad():
        predicted = model(input_ids=input_ids, attention_mask=mask).logits.argmax(1).numpy()
    frame = pd.DataFrame({"language": test["language"], "correct": predicted == np.asarray(test["label"])})
    return frame.groupby("language", sort=False)["correct"].agg(["sum", "size"])


@pytest.mark.parametrize("inst", instances("finetune"), ids=lambda i: i.label)
def test_accuracy_table_is_the_saved_checkpoints_accuracy(inst):
    run = inst.run.params
    counts = recomputed_accuracy(folder(inst))
    accuracy = counts["sum"] / counts["size"]
    epochs = len(json.loads((folder(inst) / "checkpoints.json").read_text()))
    stored = pd.read_csv(folder(inst) / "accuracy.csv")
    last = stored[stored["epoch"] == epochs].set_index("language")
    assert last["accuracy"].to_dict() == pytest.approx(accuracy.to_dict())
    assert last["n"].to_dict() == counts["size"].to_dict()

    [table] = tables_with(inst, f"epoch {epochs}")
    fine_tuned = run["fine_tune_languages"]
    mean = float(accuracy[fine_tuned].mean())
    assert list(table.index) == list(accuracy.index) + ["mean (fine-tuning languages)"]
    assert table[f"epoch {epochs}"].tolist() == [f"{a:.0%}" for a in accuracy] + [f"{mean:.0%}"]
    assert table["seen in fine-tuning"].tolist() == [str(lang in fine_tuned) for lang in accuracy.index] + ["True"]
    for epoch in range(epochs):  # the earlier epochs: as stored
        shown = stored[stored["epoch"] == epoch].set_index("language")["accuracy"]
        assert table[f"epoch {epoch}"].iloc[:-1].tolist() == [f"{shown[lang]:.0%}" for lang in accuracy.index]
    assert glued(inst, "mean_accuracy") == f"{mean:.0%}"
    n_classes = len(data.LABELS[run["label"]].names)
    [summary] = [m for m in outputs(inst, "text/markdown") if "This run's accuracy" in m]
    assert ("**below**" not in summary) == (mean >= 2 / n_classes), summary
    assert f"is {mean:.0%} against" in summary and "FT1" in summary  # a point value; the claim is on the scoreboard


# ----------------------------------------------------------------------------------------------------------------
# Language shares


def top_languages(tracin_folder: Path, k: int, kind: str) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """(k, n_test) languages of each test sample's top-k training samples (highest total score for proponents,
    lowest for opponents; ties to the lower row), with the training and test ids."""
    scores = np.load(tracin_folder / "scores" / "scores.npy")
    total = scores.sum(0, dtype=np.float64).astype(np.float32)
    train = pd.read_parquet(tracin_folder / "scores" / "train_ids.parquet")
    test = pd.read_parquet(tracin_folder / "scores" / "test_ids.parquet")
    signed = -total if kind == "proponents" else total
    rows = np.arange(len(train))
    top = np.stack([np.lexsort((rows, signed[:, j]))[:k] for j in range(len(test))], axis=1)
    return train["language"].to_numpy()[top], train, test


def recomputed_shares(k: int, kind: str) -> tuple[pd.DataFrame, float, pd.Series]:
    """Share of each training language in each test language's top-k (mean over test samples, then over the seeds
    of the runs the paper's central claims are judged on: role central; the smoke study's runs have one checkpoint
    per epoch and none at step 0, so the paper's sum is the total), the own-language share over the fine-tuned test
    languages, and the language-blind shares."""
    per_run, own_per_run = [], []
    for inst in instances("tracin", "central"):
        languages, train, test = top_languages(folder(inst), k, kind)
        shares = pd.DataFrame({lang: (languages == lang).mean(0) for lang in dict.fromkeys(train["language"])})
        shares["test_language"] = test["language"].to_numpy()
        per_run.append(shares.groupby("test_language", sort=False).mean())
        seen = test["language"].isin(set(train["language"])).to_numpy()
        own = (languages == test["language"].to_numpy()[None, :]).mean(0)
        own_per_run.append(own[seen].mean())
        blind = train["language"].value_counts(normalize=True)[list(shares.columns[:-1])]
    return sum(per_run) / len(per_run), float(np.mean(own_per_run)), blind


def recomputed_auc(kind: str) -> float:
    """The label-conditioned own-language AUC (LS2), by brute force over every own x other pair of training samples
    with the test sample's label: mean over the fine-tuned test samples of each central run, then over the runs."""
    per_run = []
    for inst in instances("tracin", "central"):
        scores = np.load(folder(inst) / "scores" / "scores.npy").sum(0, dtype=np.float64).astype(np.float32)
        scores = scores if kind == "proponents" else -scores
        train = pd.read_parquet(folder(inst) / "scores" / "train_ids.parquet")
        test = pd.read_parquet(folder(inst) / "scores" / "test_ids.parquet")
        aucs = []
        for j, (lang, label) in enumerate(zip(test["language"], test["label"])):
            same = (train["label"] == label).to_numpy()
            own = same & (train["language"] == lang).to_numpy()
            other = same & ~(train["language"] == lang).to_numpy()
            if own.any() and other.any():
                a, b = scores[own, j][:, None], scores[other, j][None, :]
                aucs.append(float(((a > b) + 0.5 * (a == b)).mean()))
        per_run.append(np.mean(aucs))
    return float(np.mean(per_run))


def test_language_shares_are_the_top_k_of_the_saved_scores():
    s, _ = built()
    k, kind = s.params["top_k"], s.params["influence_kind"]
    shares, own, blind = recomputed_shares(k, kind)
    [inst] = instances("language_shares")
    cells = pd.read_csv(folder(inst) / "cells.csv")
    stored = cells.pivot(index="test_language", columns="train_language", values="share")
    np.testing.assert_allclose(stored.loc[shares.index, shares.columns], shares, atol=1e-12)
    assert cells.groupby("train_language")["language_blind"].first()[blind.index].tolist() == pytest.approx(
        blind.tolist())

    [intervals] = tables_with(inst, "en")[:1]  # the page's table: each cell's interval, as stored
    for _, row in cells.iterrows():
        assert intervals.loc[row["test_language"], row["train_language"]] == f"{row['low']:.0%} to {row['high']:.0%}"
    [blind_row] = [t for t in tables_with(inst, "en") if "language_blind" in t.index]
    assert blind_row.loc["language_blind", blind.index].tolist() == [f"{b:.0%}" for b in blind]

    claims = pd.read_csv(folder(inst) / "claims.csv").set_index("claim_id")
    auc = recomputed_auc(kind)
    assert claims.loc["LS2", "value"] == pytest.approx(auc, abs=1e-9)
    assert claims.loc["LS1", "value"] == pytest.approx(1 - own, abs=1e-12)
    assert claims.loc["LS2", "runs"] == len(instances("tracin", "central"))
    [verdict] = [m for m in outputs(inst, "text/markdown") if "**LS2**" in m]
    assert "label-conditioned own-language AUC" in verdict and f" = **{auc:.3g}**" in verdict
    assert f"{own:.1%} own-language" in verdict  # the top-k share, now descriptive

    [sweep] = tables_with(inst, "same_label")
    for k_row in sweep.index:
        _, own_k, _ = recomputed_shares(int(k_row), kind)
        assert sweep.loc[k_row, "own"] == f"{own_k:.1%}"


# ----------------------------------------------------------------------------------------------------------------
# Verdicts


def expected_verdict(row: pd.Series, p_column: str = "p", eq_column: str = "p_equivalent") -> str:
    """The rule the book states, recomputed here with scipy from the stored estimate: a claim resting on one run
    reads "conditional on one run"; else the two-sided t-test against the null decides supports / contradicts (on
    the predicted side or the other), two one-sided tests against null +- margin decide "equivalent", and what is
    left is "underpowered". Also checks the stored p-values and the printed interval against the estimate."""
    if row["verdict"] == "not tested":
        return "not tested"
    value, se, df, null, margin = row["value"], row["se"], row["df"], row["baseline"], row["margin"]
    alpha = 1 - row["confidence"]
    if row["runs"] < 2:
        return "conditional on one run" if math.isfinite(value) else "underpowered"
    if math.isfinite(se) and se > 0:
        half = stats.t.ppf(1 - alpha / 2, df) * se
        assert row["low"] == pytest.approx(value - half) and row["high"] == pytest.approx(value + half)
        p = 2 * stats.t.sf(abs(value - null) / se, df)
        p_eq = max(stats.t.sf((value - null + margin) / se, df), stats.t.cdf((value - null - margin) / se, df)) \
            if margin > 0 else 1.0
        assert row["p"] == pytest.approx(p) and row["p_equivalent"] == pytest.approx(p_eq)
    p, p_eq = row[p_column], row[eq_column]
    if math.isfinite(p) and p < alpha:
        return "supports" if (value > null) == (row["expect"] == "above") else "contradicts"
    return "equivalent" if math.isfinite(p_eq) and p_eq < alpha else "underpowered"


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment, written again here (the package's is what is checked)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def chapter_claims() -> dict[str, pd.DataFrame]:
    out = {}
    for inst in built()[1]:
        path = folder(inst) / "claims.csv"
        if inst.run is None and path.exists():
            out[inst.stage.name] = pd.read_csv(path)
    return out


def test_every_verdict_follows_from_its_interval_and_is_the_one_the_page_prints():
    chapters = chapter_claims()
    assert {"language_shares", "dynamics", "translations", "zero_shot", "imbalance", "control",
            "attribution"} <= set(chapters)
    for stage, claims in chapters.items():
        assert claims.apply(expected_verdict, axis=1).tolist() == claims["verdict"].tolist(), stage
        [inst] = instances(stage)
        paragraphs = [p for text in outputs(inst, "text/markdown") for p in text.split("\n\n")]
        for _, row in claims.iterrows():
            [paragraph] = [p for p in paragraphs if p.startswith(f"**{row['claim_id']}** —")]
            said = "*Not tested:*" if row["verdict"] == "not tested" else f"Verdict: **{row['verdict']}**"
            assert said in paragraph, (stage, paragraph)


def test_scoreboard_lists_every_claim_by_section_with_the_papers_claims_holm_adjusted():
    [inst] = instances("scoreboard")
    board = pd.read_csv(folder(inst) / "all_claims.csv")
    every = pd.concat(chapter_claims().values(), ignore_index=True)
    assert sorted(board["claim_id"]) == sorted(["FT1", *every["claim_id"]])
    sections = ["The paper's claims", "Related work", "Checks of the method"]
    assert board["section"].map(sections.index).is_monotonic_increasing
    assert set(board.loc[board["section"] == sections[0], "claim_id"].str.split("-").str[0]) <= {
        "LS2", "DY1", "DY2", "IM1", "IM2", "TR1"}
    family = board["primary"].astype(bool) & (board["runs"] >= 2) & board["p"].notna()
    for column, adjusted in (("p", "p_adjusted"), ("p_equivalent", "p_equivalent_adjusted")):
        assert board.loc[family, adjusted].tolist() == pytest.approx(holm(board.loc[family, column].tolist()))
        assert board.loc[~family, adjusted].isna().all()
    for _, row in board.iterrows():
        columns = ("p_adjusted", "p_equivalent_adjusted") if family[_] else ("p", "p_equivalent")
        assert expected_verdict(row, *columns) == row["verdict"], row["claim_id"]
    parts = tables_with(inst, "verdict")  # one table per section
    assert [len(t) for t in parts] == board.groupby("section", sort=False).size().tolist()
    assert "Holm p" in parts[0].columns and all("Holm p" not in t.columns for t in parts[1:])
    shown = pd.concat(parts)
    assert list(shown.index) == board["claim_id"].tolist()
    assert shown["verdict"].tolist() == board["verdict"].tolist()
    assert shown["runs"].tolist() == [str(int(r)) for r in board["runs"].fillna(0)]
    shares = board["percent"].astype(bool).tolist()

    def fmt(v, share):  # a share as a percentage, another quantity (a change of loss) as a number
        return "n/a" if not math.isfinite(v) else f"{v:.1%}" if share else f"{v:.3g}"

    assert shown["value"].tolist() == [fmt(v, p) for v, p in zip(board["value"], shares)]
    assert shown["interval"].tolist() == [f"{fmt(lo, p)} to {fmt(hi, p)}" for lo, hi, p in
                                          zip(board["low"], board["high"], shares)]
    assert shown["null"].tolist() == [fmt(v, p) for v, p in zip(board["baseline"], shares)]
    # FT1: the main runs' last-epoch accuracy over the fine-tuning languages (mean over seeds), against twice chance.
    values = []
    for ft in instances("finetune", "main"):
        counts = recomputed_accuracy(folder(ft)).loc[ft.run.params["fine_tune_languages"]]
        values.append(counts["sum"].sum() / counts["size"].sum())
    assert shown.loc["FT1", "value"] == f"{np.mean(values):.1%}"
    chance = 1 / len(data.LABELS[instances("finetune", "main")[0].run.params["label"]].names)
    assert shown.loc["FT1", "null"] == f"{2 * chance:.1%}"
