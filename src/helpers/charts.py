"""Altair charts of the book: interactive in the built book (tooltips on every cell and point) and still there
with no network and with scripts off.

:func:`show` renders a chart twice into one output: a static SVG made by ``vl-convert`` (a self-contained Vega
engine), and a small script that replaces it with the live Vega chart when the page has loaded Vega. The book
ships Vega itself (:func:`write_bundle`, called by the runner before ``jupyter-book build``, writes the bundle
``vl-convert`` carries to ``book/_static/``), so nothing comes from a CDN. Where scripts are off, or in a notebook
viewer without the bundle, the SVG stays.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import altair as alt
import pandas as pd
import vl_convert as vlc

from . import languages

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
BUNDLE = "vega-bundle.js"  # in book/_static, loaded by every page (see _config.yml)
PERCENT = ("share", "value", "low", "high", "own", "accuracy", "language_blind", "baseline")


class Chart:
    """A chart as a notebook output: HTML (the static SVG and the script that makes it live) and the SVG alone."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.svg = vlc.vegalite_to_svg(spec)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        box = f"chart-{uuid.uuid4().hex[:12]}"
        spec = json.dumps(self.spec).replace("</", "<\\/")
        live = (f"<script>(function () {{ var box = document.getElementById('{box}'); if (!window.vegaEmbed) return; "
                f"vegaEmbed(box.querySelector('.vega-live'), {spec}, {{actions: false, renderer: 'svg'}})"
                ".then(function () { box.querySelector('.vega-static').remove(); })"
                ".catch(function () {}); })();</script>")
        page = (f'<div id="{box}" class="companion-chart"><div class="vega-static">{self.svg}</div>'
                f'<div class="vega-live"></div></div>{live}')
        return {"text/html": page, "image/svg+xml": self.svg}


def show(chart: alt.TopLevelMixin) -> Chart:
    """Display ``chart`` (make it a cell's last expression): live with tooltips in the book, an SVG elsewhere."""
    return Chart(chart.configure(font=FONT).configure_view(stroke=None).to_dict())


def write_bundle(folder: Path) -> Path:
    """Write Vega, Vega-Lite and Vega-Embed (the versions ``vl-convert`` renders with) as one script that defines
    ``window.vegaEmbed``; rewritten only when ``vl-convert``'s version changes."""
    path = Path(folder) / BUNDLE
    stamp = f"// vega bundle of vl-convert {vlc.__version__}, wrapped\n"
    if not path.exists() or not path.read_text(errors="replace").startswith(stamp):
        path.parent.mkdir(parents=True, exist_ok=True)
        # in a function of its own: its top-level names (e.g. '_') would clash with the theme's scripts
        path.write_text(stamp + "(function () {\n" + vlc.javascript_bundle("window.vegaEmbed = vegaEmbed;")
                        + "\n})();\n")
    return path


def tooltips(frame: pd.DataFrame, columns: list[str] | None = None, percent: bool = True) -> list[alt.Tooltip]:
    """A tooltip with each of ``columns`` (default: every column); shares and accuracies as percentages unless
    ``percent`` is False."""
    out = []
    for column in columns or list(frame.columns):
        if column not in frame.columns:
            continue
        title = column.replace("_", " ")
        if pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column]):
            fmt = ".1%" if percent and column in PERCENT else ",.4~g"
            out.append(alt.Tooltip(f"{column}:Q", title=title, format=fmt))
        else:
            out.append(alt.Tooltip(f"{column}:N", title=title))
    return out


def _language_order(codes) -> list[str]:
    return list(dict.fromkeys(codes))


def accuracy_curves(history: pd.DataFrame, fine_tune_languages: list[str], n_labels: int) -> alt.LayerChart:
    """Test accuracy per language after each epoch (epoch 0: before fine-tuning); dashed: zero-shot languages."""
    frame = history.assign(seen=history["language"].isin(fine_tune_languages).map({True: "fine-tuned",
                                                                                  False: "zero-shot"}),
                           name=history["language"].map(languages.name))
    base = alt.Chart(frame).encode(
        x=alt.X("epoch:O", title="epoch (0 = before fine-tuning)", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("accuracy:Q", title="test accuracy", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("name:N", title="language",
                        sort=[languages.name(c) for c in _language_order(frame["language"])]),
        strokeDash=alt.StrokeDash("seen:N", title="", sort=["fine-tuned", "zero-shot"]),
        tooltip=tooltips(frame, ["name", "epoch", "accuracy", "seen"]),
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
    """Lines over ``x`` (e.g. checkpoints), one per ``color``, with a shaded interval band when ``low``/``high``
    are given."""
    base = alt.Chart(frame).encode(x=alt.X(f"{x}:O", title=x.replace("_", " "), axis=alt.Axis(labelAngle=0)),
                                   color=alt.Color(f"{color}:N", title=color.replace("_", " ")))
    y = alt.Y(f"{value}:Q", title=axis_title, axis=alt.Axis(format=".0%"))
    layers = [base.mark_line(point=True).encode(y=y, tooltip=tooltips(frame))]
    if low and high:  # after the lines, so that the legend shows their colours at full strength
        layers.append(base.mark_area(opacity=0.2).encode(y=alt.Y(f"{low}:Q", title=axis_title), y2=f"{high}:Q"))
    if baseline is not None:
        layers.append(alt.Chart(pd.DataFrame({"y": [baseline]})).mark_rule(color="gray", strokeDash=[4, 3])
                      .encode(y="y:Q"))
    return alt.layer(*layers).properties(width=380, height=240, title=title)


def loss_curve(history: pd.DataFrame, checkpoints: pd.DataFrame) -> alt.LayerChart:
    """Pre-training: the smoothed training loss per step, and the held-out MLM loss at each checkpoint (points)."""
    line = alt.Chart(history).mark_line(color="#4c78a8").encode(
        x=alt.X("step:Q", title="pre-training step"), y=alt.Y("smoothed:Q", title="MLM loss (nats)"),
        tooltip=tooltips(history, ["step", "language", "loss", "smoothed"]))
    points = alt.Chart(checkpoints).mark_point(filled=True, size=70, color="#e45756").encode(
        x="step:Q", y="mlm_loss:Q", tooltip=tooltips(checkpoints, ["name", "step", "mlm_loss"]))
    return (line + points).properties(width=440, height=240, title="Training loss (line) and held-out loss (points)")


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
    """Neuron overlap against TracIn's cross-lingual share (per ordered language pair) and against accuracy (per
    test language), coloured by encoder."""
    color = alt.Color("encoder:N", title="encoder")
    left = alt.Chart(pairs).mark_point(filled=True, size=50).encode(
        x=alt.X("overlap:Q", title="neuron overlap of the two languages", axis=alt.Axis(format=".0%")),
        y=alt.Y("share:Q", title="share of the other language in the top-k", axis=alt.Axis(format=".0%")),
        color=color, tooltip=tooltips(pairs)).properties(width=420, height=220, title="Overlap and data sharing")
    right = alt.Chart(transfer).mark_point(filled=True, size=60).encode(
        x=alt.X("overlap:Q", title="mean overlap with the fine-tuning languages", axis=alt.Axis(format=".0%")),
        y=alt.Y("accuracy:Q", title="test accuracy", axis=alt.Axis(format=".0%")),
        color=color, shape=alt.Shape("zero_shot:N", title="zero-shot"),
        tooltip=tooltips(transfer)).properties(width=420, height=220, title="Overlap and accuracy")
    return alt.vconcat(left, right)
