"""Altair charts of the book, rendered to inline SVG so that they show with no network.

Altair's default HTML output loads vega from a CDN and is blank offline; :func:`show` renders the chart with
``vl-convert`` (a self-contained Vega engine) to SVG, which Jupyter stores in the notebook and the book inlines.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import vl_convert as vlc
from IPython.display import SVG

from . import data

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"


def show(chart: alt.TopLevelMixin) -> SVG:
    """Render ``chart`` to an inline SVG object (display it as a cell's last expression)."""
    chart = chart.configure(font=FONT).configure_view(stroke=None)
    return SVG(vlc.vegalite_to_svg(chart.to_dict()))


def _language_order(codes) -> list[str]:
    return list(dict.fromkeys(codes))


def accuracy_curves(history: pd.DataFrame, fine_tune_languages: list[str], n_labels: int) -> alt.LayerChart:
    """Test accuracy per language after each epoch (epoch 0: before fine-tuning); dashed: zero-shot languages."""
    frame = history.assign(seen=history["language"].isin(fine_tune_languages).map({True: "fine-tuned",
                                                                                  False: "zero-shot"}),
                           name=history["language"].map(lambda c: data.LANGUAGES[c].name))
    base = alt.Chart(frame).encode(
        x=alt.X("epoch:O", title="epoch (0 = before fine-tuning)", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("accuracy:Q", title="test accuracy", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("name:N", title="language", sort=[data.LANGUAGES[c].name
                                                          for c in _language_order(frame["language"])]),
        strokeDash=alt.StrokeDash("seen:N", title="", sort=["fine-tuned", "zero-shot"]),
    )
    chance = alt.Chart(pd.DataFrame({"y": [1 / n_labels]})).mark_rule(color="gray", strokeDash=[2, 2]).encode(y="y:Q")
    return (base.mark_line(point=True) + chance).properties(width=420, height=260)


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
                                                                                              domain=[0, 1])))
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("share:Q", format=".0%"),
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
                                                          tooltip=[category, alt.Tooltip(f"{value}:Q", format=fmt)])
    layers = [rules, points]
    if baseline:
        layers.append(base.mark_tick(color="black", thickness=2, size=14).encode(x=f"{baseline}:Q", **enc))
    return alt.layer(*layers).properties(width=420, height=alt.Step(22 if color else 26), title=title)


def lines(frame: pd.DataFrame, x: str, title: str, color: str, value: str = "value", low: str | None = "low",
          high: str | None = "high", axis_title: str = "share", baseline: float | None = None) -> alt.LayerChart:
    """Lines over ``x`` (e.g. checkpoints), one per ``color``, with a shaded interval band when ``low``/``high``
    are given."""
    base = alt.Chart(frame).encode(x=alt.X(f"{x}:O", title=x.replace("_", " "), axis=alt.Axis(labelAngle=0)),
                                   color=alt.Color(f"{color}:N", title=color.replace("_", " ")))
    y = alt.Y(f"{value}:Q", title=axis_title, axis=alt.Axis(format=".0%"))
    layers = [base.mark_line(point=True).encode(y=y)]
    if low and high:  # after the lines, so that the legend shows their colours at full strength
        layers.append(base.mark_area(opacity=0.2).encode(y=alt.Y(f"{low}:Q", title=axis_title), y2=f"{high}:Q"))
    if baseline is not None:
        layers.append(alt.Chart(pd.DataFrame({"y": [baseline]})).mark_rule(color="gray", strokeDash=[4, 3])
                      .encode(y="y:Q"))
    return alt.layer(*layers).properties(width=380, height=240, title=title)
