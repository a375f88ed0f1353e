"""The book's charts: tooltips on every mark a reader points at, a static SVG that stays where scripts are off, and
Vega shipped inside the book (no CDN). The built page itself is checked in headless Chromium by hand (see the
closing notes); here, what the notebooks store and what the book is configured to load."""

import json
import os

import pandas as pd
import yaml

from helpers import charts, paths
from helpers.chapters import charts as chapter_charts


def marks_with_tooltips(spec):
    """(mark type, has a tooltip) for every mark of a Vega-Lite spec, layers and facets included."""
    out = []

    def walk(node):
        if isinstance(node, dict):
            if "mark" in node:
                mark = node["mark"]["type"] if isinstance(node["mark"], dict) else node["mark"]
                out.append((mark, "tooltip" in node.get("encoding", {})))
            for key in ("layer", "spec"):
                if key in node:
                    walk(node[key])
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(spec)
    return out


SHARES = pd.DataFrame({"test_language": ["en", "en", "fr", "fr"], "train_language": ["en", "fr", "en", "fr"],
                       "share": [0.6, 0.4, 0.3, 0.7], "low": [0.5, 0.3, 0.2, 0.6], "high": [0.7, 0.5, 0.4, 0.8],
                       "language_blind": 0.5, "count": [12, 8, 6, 14]})


def test_every_heatmap_cell_and_point_has_a_tooltip():
    history = pd.DataFrame({"epoch": [0, 1, 0, 1], "language": ["en", "en", "ko", "ko"],
                            "accuracy": [0.25, 0.8, 0.25, 0.5]})
    estimates = pd.DataFrame({"language": ["en", "fr"], "value": [0.4, 0.6], "low": [0.3, 0.5], "high": [0.5, 0.7],
                              "language_blind": [0.5, 0.5]})
    built = {
        "heatmap": chapter_charts.share_heatmap(SHARES, "t"),
        "heatmap faceted": chapter_charts.share_heatmap(SHARES.assign(checkpoint="e1"), "t", column="checkpoint"),
        "accuracy": charts.accuracy_curves(history, ["en"], 4),
        "estimates": chapter_charts.estimates(estimates, "language", "t", baseline="language_blind"),
        "lines": chapter_charts.lines(estimates.assign(epoch=[1, 2]), "epoch", "t", color="language"),
    }
    for name, chart in built.items():
        marks = marks_with_tooltips(chart.to_dict())
        pointed = [m for m in marks if m[0] in ("rect", "point", "line", "text")]
        assert pointed and all(has for _, has in pointed), (name, marks)
    cell = next(layer for layer in built["heatmap"].to_dict()["layer"] if layer["mark"]["type"] == "rect")
    fields = {t["field"]: t.get("format") for t in cell["encoding"]["tooltip"]}
    assert set(fields) == set(SHARES.columns)  # language, share, interval, count
    assert fields["share"] == ".1%" and fields["count"] != ".1%"


def test_a_chart_output_is_live_html_over_a_static_svg():
    out = charts.show(chapter_charts.share_heatmap(SHARES, "t"))._repr_mimebundle_()
    assert out["image/svg+xml"].lstrip().startswith("<svg")
    page = out["text/html"]
    static = page.index('class="vega-static"')
    assert page.index("<svg", static) < page.index('class="vega-live"')  # the SVG is there without scripts
    assert "window.vegaEmbed" in page and "<script src" not in page and "cdn" not in page  # nothing fetched
    marker = "vegaEmbed(box.querySelector('.vega-live'), "
    spec = page[page.index(marker) + len(marker): page.index(", {actions")]
    assert json.loads(spec.replace("<\\/", "</"))["layer"]


def test_vega_is_shipped_inside_the_book(tmp_path):
    path = charts.write_bundle(tmp_path)
    text = path.read_text()
    assert text.startswith("// vega bundle of vl-convert") and "(function () {" in text[:200]
    assert "window.vegaEmbed=" in text and text.rstrip().endswith("})();")
    assert "cdn.jsdelivr" not in text
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))
    charts.write_bundle(tmp_path)  # unchanged version: not rewritten
    assert path.stat().st_mtime_ns == stamp - 10**9
    cfg = yaml.safe_load((paths.REPO_ROOT / "_config.yml").read_text())["sphinx"]["config"]
    assert cfg["html_js_files"] == [charts.BUNDLE] and cfg["html_static_path"] == ["book/_static"]


def test_checkpoints_are_drawn_in_training_order_not_alphabetically():
    """The dynamics chart put step0 after epoch2 (an ordinal axis sorts its labels alphabetically): the x axis keeps
    the frame's order."""
    frame = pd.DataFrame({"checkpoint": ["step0", "epoch0.5", "epoch1", "epoch2", "epoch10"],
                          "value": [0.4, 0.3, 0.25, 0.22, 0.2], "low": 0.1, "high": 0.5, "view": "own checkpoint"})
    spec = chapter_charts.lines(frame, "checkpoint", "t", color="view").to_dict()
    assert spec["layer"][0]["encoding"]["x"]["sort"] == ["step0", "epoch0.5", "epoch1", "epoch2", "epoch10"]
