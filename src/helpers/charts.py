"""Altair charts of the book (the base, and the run pages' charts; the chapters' own are
:mod:`helpers.chapters.charts`): interactive in the built book (tooltips on every cell and point) and still there
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


def loss_curve(history: pd.DataFrame, checkpoints: pd.DataFrame) -> alt.LayerChart:
    """Pre-training: the smoothed training loss per step, and the held-out MLM loss at each checkpoint (points)."""
    line = alt.Chart(history).mark_line(color="#4c78a8").encode(
        x=alt.X("step:Q", title="pre-training step"), y=alt.Y("smoothed:Q", title="MLM loss (nats)"),
        tooltip=tooltips(history, ["step", "language", "loss", "smoothed"]))
    points = alt.Chart(checkpoints).mark_point(filled=True, size=70, color="#e45756").encode(
        x="step:Q", y="mlm_loss:Q", tooltip=tooltips(checkpoints, ["name", "step", "mlm_loss"]))
    return (line + points).properties(width=440, height=240, title="Training loss (line) and held-out loss (points)")
