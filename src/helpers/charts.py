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
