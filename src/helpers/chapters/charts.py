"""The chapters' charts (altair, rendered through :func:`helpers.charts.show` so they need no network): their own
module, so that editing a chapter's chart reruns that chapter alone, never a compute stage (whose pages draw theirs
with :mod:`helpers.charts`)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from ..charts import _language_order, show, tooltips

__all__ = ["show", "share_heatmap", "estimates", "lines", "alignment_axis", "alignment_trajectory",
           "alignment_layers", "overlap_scatter"]


def share_heatmap(shares: pd.DataFrame, title: str, column: str | None = None) -> alt.Chart:
    """Heatmap: rows test language, columns fine-tuning language, cell = share of the top-k from that language.

    ``shares`` is the long table of :func:`helpers.analysis.language_shares` (``column`` facets it, e.g. by
    checkpoint).
    """
    test_order = _language_order(shares["test_language"])
    train_order = _language_order(shares["train_language"])
    base = alt.Chart(shares).encode(
        x=alt.X("train_language:N", title="training language", sort=train_order,
                axis=alt.Axis(labelAngle=0, orient="top")),
        y=alt.Y("test_language:N", title="test language", sort=test_order),
    )
    cells = base.mark_rect().encode(color=alt.Color("share:Q", title="share", scale=alt.Scale(scheme="blues",
                                                                                              domain=[0, 1])),
                                    tooltip=tooltips(shares))
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("share:Q", format=".0%"), tooltip=tooltips(shares),
        color=alt.condition("datum.share > 0.5", alt.value("white"), alt.value("black")))
    chart = (cells + text).properties(width=34 * len(train_order), height=26 * len(test_order))
    if column:
        return chart.facet(column=alt.Column(f"{column}:N", title=None)).properties(title=title)
    return chart.properties(title=title)


def estimates(frame: pd.DataFrame, category: str, title: str, color: str | None = None, value: str = "value",
              low: str = "low", high: str = "high", baseline: str | None = None, axis_title: str = "share",
              percent: bool = True) -> alt.LayerChart:
    """Dot-and-whisker chart: one row per ``category`` (coloured by ``color``), the estimate with its interval and,
    if given, a black tick at the ``baseline`` column (e.g. the language-blind value)."""
    fmt = ".0%" if percent else ".2g"
    order = _language_order(frame[category])
    y = alt.Y(f"{category}:N", title=None, sort=order)
    enc = {"y": y, **({"yOffset": alt.YOffset(f"{color}:N")} if color else {})}
    colour = {"color": alt.Color(f"{color}:N", title=color.replace("_", " "))} if color else {}
    base = alt.Chart(frame)
    rules = base.mark_rule(strokeWidth=2).encode(x=alt.X(f"{low}:Q", title=axis_title, axis=alt.Axis(format=fmt)),
                                                 x2=f"{high}:Q", **enc, **colour)
    points = base.mark_point(filled=True, size=60).encode(x=f"{value}:Q", **enc, **colour,
                                                          tooltip=tooltips(frame, percent=percent))
    layers = [rules, points]
    if baseline:
        layers.append(base.mark_tick(color="black", thickness=2, size=14).encode(x=f"{baseline}:Q", **enc))
    return alt.layer(*layers).properties(width=420, height=alt.Step(22 if color else 26), title=title)


def lines(frame: pd.DataFrame, x: str, title: str, color: str, value: str = "value", low: str | None = "low",
          high: str | None = "high", axis_title: str = "share", baseline: float | None = None) -> alt.LayerChart:
    """Lines over ``x`` (e.g. checkpoints, in the frame's order: step0 before epoch0.5, epoch2 before epoch10), one
    per ``color``, with a shaded interval band when ``low``/``high`` are given."""
    order = list(dict.fromkeys(frame[x]))
    base = alt.Chart(frame).encode(x=alt.X(f"{x}:O", title=x.replace("_", " "), sort=order,
                                           axis=alt.Axis(labelAngle=0)),
                                   color=alt.Color(f"{color}:N", title=color.replace("_", " ")))
    y = alt.Y(f"{value}:Q", title=axis_title, axis=alt.Axis(format=".0%"))
    layers = [base.mark_line(point=True).encode(y=y, tooltip=tooltips(frame))]
    if low and high:  # after the lines, so that the legend shows their colours at full strength
        layers.append(base.mark_area(opacity=0.2).encode(y=alt.Y(f"{low}:Q", title=axis_title), y2=f"{high}:Q"))
    if baseline is not None:
        layers.append(alt.Chart(pd.DataFrame({"y": [baseline]})).mark_rule(color="gray", strokeDash=[4, 3])
                      .encode(y="y:Q"))
    return alt.layer(*layers).properties(width=380, height=240, title=title)


def alignment_axis(axis: pd.DataFrame) -> alt.LayerChart:
    """Each fine-tuned encoder: the retrieval of the encoder it started from (x) against its own-language share
    of the top-k with its interval (y); crosses: the language-blind share."""
    base = alt.Chart(axis).encode(x=alt.X("retrieval:Q", title="translation retrieval of the starting encoder",
                                          axis=alt.Axis(format=".0%"), scale=alt.Scale(domain=[0, 1])))
    color = alt.Color("encoder:N", title="encoder")
    rules = base.mark_rule(strokeWidth=2).encode(y=alt.Y("own_low:Q", title="own-language share of the top-k",
                                                         axis=alt.Axis(format=".0%")), y2="own_high:Q", color=color)
    points = base.mark_point(filled=True, size=90).encode(y="own:Q", color=color,
                                                          tooltip=tooltips(axis))
    blind = base.mark_point(shape="cross", size=80, color="black").encode(y="language_blind:Q",
                                                                            tooltip=tooltips(axis))
    return alt.layer(rules, points, blind).properties(width=420, height=260,
                                                      title="Alignment of the encoder vs own-language share")


def alignment_trajectory(points: pd.DataFrame) -> alt.VConcatChart:
    """Retrieval and neuron overlap (dashed: chance) at the probed layer, at every checkpoint, one line per encoder:
    the in-house encoder's pre-training steps, then each encoder's start of fine-tuning and its epochs."""
    frame = points.assign(position=(points["phase"] == "fine-tuned") * 10_000 + points["order"]
                          + (points["checkpoint"] != "start") * (points["phase"] == "pre-trained") * -100_000)
    sort = list(frame.sort_values("position")["checkpoint"].drop_duplicates())
    return _two_panels(frame, alt.X("checkpoint:N", sort=sort, title="checkpoint", axis=alt.Axis(labelAngle=0)),
                       "encoder")


def alignment_layers(layers: pd.DataFrame) -> alt.VConcatChart:
    """Retrieval and neuron overlap (dashed: chance) against relative depth, one line per encoder state."""
    return _two_panels(layers, alt.X("depth:Q", title="relative depth (0: embeddings' output, 1: last layer)"), "state")


def _two_panels(frame: pd.DataFrame, x: alt.X, line: str) -> alt.VConcatChart:
    """Translation retrieval above neuron overlap (with its chance level dashed), one line per ``line``."""
    color = alt.Color(f"{line}:N", title=line.replace("_", " "))

    def panel(value: str, title: str) -> alt.LayerChart:
        base = alt.Chart(frame).encode(x=x, color=color, detail=f"{line}:N")
        layers = [base.mark_line(point=True).encode(y=alt.Y(f"{value}:Q", title=title, axis=alt.Axis(format=".0%")),
                                                    tooltip=tooltips(frame))]
        if value == "overlap":
            layers.append(base.mark_line(strokeDash=[4, 3], opacity=0.6).encode(y="chance:Q"))
        return alt.layer(*layers).properties(width=420, height=200, title=title)

    return alt.vconcat(panel("retrieval", "translation retrieval"), panel("overlap", "neuron overlap"))


def overlap_scatter(pairs: pd.DataFrame, transfer: pd.DataFrame) -> alt.VConcatChart:
    """Neuron overlap against TracIn's data sharing (per encoder and unordered language pair) and against accuracy
    (per run and test language), coloured by encoder."""
    color = alt.Color("encoder:N", title="encoder")
    left = alt.Chart(pairs).mark_point(filled=True, size=50).encode(
        x=alt.X("overlap:Q", title="neuron overlap of the two languages", axis=alt.Axis(format=".0%")),
        y=alt.Y("share:Q", title="share of each other's data in the top-k", axis=alt.Axis(format=".0%")),
        color=color, tooltip=tooltips(pairs)).properties(width=420, height=220, title="Overlap and data sharing")
    right = alt.Chart(transfer).mark_point(filled=True, size=60).encode(
        x=alt.X("overlap:Q", title="mean overlap with the fine-tuning languages", axis=alt.Axis(format=".0%")),
        y=alt.Y("accuracy:Q", title="test accuracy", axis=alt.Axis(format=".0%")),
        color=color, shape=alt.Shape("zero_shot:N", title="zero-shot"),
        tooltip=tooltips(transfer)).properties(width=420, height=220, title="Overlap and accuracy")
    return alt.vconcat(left, right)
