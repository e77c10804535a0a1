"""The report's SVG charts: valid XML, data mapped to the right pixels, escaping, empty/NaN inputs."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from eval.svg import fmt_number, histogram_chart, line_chart, nice_ticks

NS = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


@pytest.mark.parametrize("lo,hi,expected", [
    (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0.03, 0.41, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]),
    (1, 20, [0, 5, 10, 15, 20]),
])
def test_nice_ticks_are_round_and_cover_the_range(lo, hi, expected):
    assert nice_ticks(lo, hi) == pytest.approx(expected)


def test_nice_ticks_degenerate_ranges():
    assert nice_ticks(2.0, 2.0)[0] < 2.0 < nice_ticks(2.0, 2.0)[-1]
    assert nice_ticks(float("nan"), 1.0) == [0.0, 1.0]
    assert nice_ticks(5, 1)[0] <= 1 and nice_ticks(5, 1)[-1] >= 5


def test_fmt_number():
    assert fmt_number(0) == "0"
    assert fmt_number(0.25) == "0.25"
    assert fmt_number(1e-5) == "1e-05"
    assert fmt_number(3.0) == "3"


def test_line_chart_maps_points_and_breaks_on_nan():
    svg = line_chart({"a<b": [(1, 0.0), (5, 0.5), (10, 1.0)], "c": [(1, 0.2), (5, float("nan")), (10, 0.4)]},
                     title="HR@K & co", x_label="K", y_label="HR", integer_x=True)
    root = parse(svg)
    assert root.find(f"{NS}title").text == "HR@K & co"
    lines = root.findall(f"{NS}polyline")
    assert len(lines) == 1  # series c has NaN in the middle: two isolated points, no line across the gap
    pts = [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]
    # y = 0 is the bottom of the plot area and y = 1 the top; x is linear in K
    assert pts[0][1] > pts[1][1] > pts[2][1]
    assert (pts[1][0] - pts[0][0]) / (pts[2][0] - pts[0][0]) == pytest.approx(4 / 9, abs=1e-2)
    assert len(root.findall(f"{NS}circle")) == 5
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "a<b" in texts and "1" in texts and "10" in texts  # legend (escaped in the source) and integer K ticks
    assert "a<b" not in svg


def test_line_chart_without_data_says_so():
    root = parse(line_chart({"x": [(1, float("nan"))]}, title="t", x_label="x", y_label="y"))
    assert "no data" in [t.text for t in root.iter(f"{NS}text")]


def test_histogram_density_bars():
    pos = np.array([0.9, 0.8, 0.85, np.nan])
    neg = np.linspace(0.0, 0.5, 40)
    root = parse(histogram_chart({"positives": pos, "negatives": neg}, title="scores", x_label="score", bins=10))
    rects = [r for r in root.findall(f"{NS}rect") if r.get("fill-opacity") == "0.45"]
    assert rects
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "positives (n=3)" in texts and "negatives (n=40)" in texts  # NaN dropped from the count


def test_histogram_density_integrates_to_one():
    # equal-width bins: sum(height * bin width) = 1 for each group, so bar areas are comparable across groups
    from eval import svg as svgmod

    values = np.arange(100) / 100.0
    root = parse(svgmod.histogram_chart({"g": values}, title="t", x_label="x", bins=4))
    bars = [r for r in root.findall(f"{NS}rect") if r.get("fill-opacity") == "0.45"]
    assert len(bars) == 4
    assert len({round(float(b.get("height")), 1) for b in bars}) == 1  # uniform data -> equal bars


def test_histogram_of_constant_and_empty():
    parse(histogram_chart({"g": [0.5, 0.5]}, title="t", x_label="x"))
    root = parse(histogram_chart({"g": []}, title="t", x_label="x"))
    assert "no finite scores" in [t.text for t in root.iter(f"{NS}text")]
