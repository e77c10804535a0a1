"""Tiny SVG charts (line plots and overlaid histograms) for the report.

matplotlib is not a dependency, and the report only needs two chart kinds, so they are drawn here as plain
SVG text: self-contained, crisp at any zoom, and checkable as XML in tests. All text is escaped.
"""
from __future__ import annotations

import math
from html import escape
from typing import Mapping, Sequence

import numpy as np

# Colour-blind-safe palette (Okabe-Ito), in the order series are drawn.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
FONT = "font-family='system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif'"
MARGIN = {"left": 56, "right": 14, "top": 30, "bottom": 44}  # the top grows by one line per legend row


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values (steps of 1, 2 or 5 x 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10)), key=lambda st: abs((hi - lo) / st - (n - 1)))
    start = math.floor(lo / step + 1e-9) * step
    ticks, t = [], start
    while t < hi + step * 0.999:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi - 1e-12:  # float drift can stop one short
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def fmt_number(v: float) -> str:
    """Short label for an axis tick: 0.25, 1e-05, 1200, 3."""
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.0e}"
    return f"{v:.4g}"


class _Frame:
    """Maps data coordinates to pixels inside the plot area of a `width` x `height` chart."""

    def __init__(self, width: int, height: int, x_ticks: list[float], y_ticks: list[float], names: Sequence[str] = ()):
        self.w, self.h = width, height
        self.x0, self.x1 = x_ticks[0], x_ticks[-1]
        self.y0, self.y1 = y_ticks[0], y_ticks[-1]
        self.x_ticks, self.y_ticks = x_ticks, y_ticks
        self.left, self.right = MARGIN["left"], width - MARGIN["right"]
        self.names = list(names)
        self.slots = self._legend_slots()
        rows = len({y for _, y in self.slots})
        self.top, self.bottom = MARGIN["top"] + 14 * rows + (6 if rows else 0), height - MARGIN["bottom"]

    def _legend_slots(self) -> list[tuple[float, float]]:
        """(x, baseline y) of each legend entry: rows between the title and the plot, wrapped to the width."""
        slots, x, y = [], float(self.left), 40.0
        for name in self.names:
            width = 22 + 6.2 * len(name)
            if x + width > self.right and x > self.left:
                x, y = float(self.left), y + 14
            slots.append((x, y))
            x += width
        return slots

    def px(self, x: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (x - self.x0) / span * (self.right - self.left)

    def py(self, y: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return self.bottom - (y - self.y0) / span * (self.bottom - self.top)

    def axes(self, title: str, x_label: str, y_label: str,
             x_tick_labels: Mapping[float, str] | None = None) -> list[str]:
        out = [f"<rect x='0' y='0' width='{self.w}' height='{self.h}' fill='white'/>",
               f"<text x='{self.w / 2:.1f}' y='18' text-anchor='middle' font-size='13' font-weight='600'>"
               f"{escape(title)}</text>"]
        for y in self.y_ticks:
            p = self.py(y)
            out.append(f"<line x1='{self.left}' x2='{self.right}' y1='{p:.1f}' y2='{p:.1f}' stroke='#e5e5e5'/>")
            out.append(f"<text x='{self.left - 6}' y='{p + 4:.1f}' text-anchor='end' font-size='10'>"
                       f"{escape(fmt_number(y))}</text>")
        for x in self.x_ticks:
            p = self.px(x)
            label = (x_tick_labels or {}).get(x, fmt_number(x))
            out.append(f"<line x1='{p:.1f}' x2='{p:.1f}' y1='{self.bottom}' y2='{self.bottom + 4}' stroke='#555'/>")
            out.append(f"<text x='{p:.1f}' y='{self.bottom + 16}' text-anchor='middle' font-size='10'>"
                       f"{escape(label)}</text>")
        out.append(f"<line x1='{self.left}' x2='{self.right}' y1='{self.bottom}' y2='{self.bottom}' stroke='#555'/>")
        out.append(f"<line x1='{self.left}' x2='{self.left}' y1='{self.top}' y2='{self.bottom}' stroke='#555'/>")
        out.append(f"<text x='{(self.left + self.right) / 2:.1f}' y='{self.h - 8}' text-anchor='middle' "
                   f"font-size='11'>{escape(x_label)}</text>")
        cy = (self.top + self.bottom) / 2
        out.append(f"<text x='14' y='{cy:.1f}' text-anchor='middle' font-size='11' "
                   f"transform='rotate(-90 14 {cy:.1f})'>{escape(y_label)}</text>")
        return out

    def legend(self) -> list[str]:
        """The legend, above the plot area so it never hides data."""
        out = []
        for i, (name, (x, y)) in enumerate(zip(self.names, self.slots)):
            color = PALETTE[i % len(PALETTE)]
            out.append(f"<rect x='{x:.1f}' y='{y - 8:.1f}' width='10' height='8' fill='{color}'/>")
            out.append(f"<text x='{x + 14:.1f}' y='{y:.1f}' font-size='10'>{escape(name)}</text>")
        return out


def _document(width: int, height: int, title: str, body: list[str]) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
            f"role='img' {FONT}><title>{escape(title)}</title>" + "".join(body) + "</svg>")


def _empty(width: int, height: int, title: str, why: str) -> str:
    body = [f"<rect x='0' y='0' width='{width}' height='{height}' fill='white' stroke='#ddd'/>",
            f"<text x='{width / 2:.1f}' y='18' text-anchor='middle' font-size='13' font-weight='600'>"
            f"{escape(title)}</text>",
            f"<text x='{width / 2:.1f}' y='{height / 2:.1f}' text-anchor='middle' font-size='12' fill='#777'>"
            f"{escape(why)}</text>"]
    return _document(width, height, title, body)


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str, x_label: str, y_label: str,
               width: int = 460, height: int = 300, markers: bool = True, integer_x: bool = False) -> str:
    """One polyline per named series of (x, y) points; non-finite points break the line instead of bending it."""
    finite = {name: [(float(x), float(y)) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
              for name, pts in series.items()}
    allpts = [p for pts in finite.values() for p in pts]
    if not allpts:
        return _empty(width, height, title, "no data")
    xs, ys = [p[0] for p in allpts], [p[1] for p in allpts]
    integer_x = integer_x or all(x.is_integer() for x in xs)  # steps, epochs, K: no 1.2-th epoch on the axis
    x_ticks = sorted(set(xs)) if integer_x and len(set(xs)) <= 12 else nice_ticks(min(xs), max(xs))
    if integer_x and len(x_ticks) == 1:
        x_ticks = [x_ticks[0] - 1, x_ticks[0], x_ticks[0] + 1]
    frame = _Frame(width, height, x_ticks, nice_ticks(min(ys), max(ys)), list(series))
    body = frame.axes(title, x_label, y_label)
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        segments: list[list[tuple[float, float]]] = [[]]
        for x, y in pts:
            if math.isfinite(x) and math.isfinite(y):
                segments[-1].append((frame.px(x), frame.py(y)))
            elif segments[-1]:
                segments.append([])
        for seg in segments:
            if len(seg) > 1:
                coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in seg)
                body.append(f"<polyline points='{coords}' fill='none' stroke='{color}' stroke-width='2'/>")
            if markers or len(seg) == 1:
                body += [f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{color}'/>" for x, y in seg]
    body += frame.legend()
    return _document(width, height, title, body)


def histogram_chart(groups: Mapping[str, Sequence[float]], *, title: str, x_label: str, bins: int = 20,
                    width: int = 460, height: int = 300, density: bool = True) -> str:
    """Overlaid histograms of each group on shared bins (density by default, so groups of unequal size compare)."""
    data = {name: np.asarray(v, dtype=np.float64) for name, v in groups.items()}
    data = {name: v[np.isfinite(v)] for name, v in data.items()}
    allv = np.concatenate([v for v in data.values()]) if data else np.array([])
    if allv.size == 0:
        return _empty(width, height, title, "no finite scores")
    lo, hi = float(allv.min()), float(allv.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    heights = {}
    for name, v in data.items():
        counts, _ = np.histogram(v, bins=edges)
        heights[name] = counts / (v.size * (edges[1] - edges[0])) if density and v.size else counts.astype(float)
    top = max(float(h.max()) for h in heights.values() if h.size) or 1.0
    frame = _Frame(width, height, nice_ticks(lo, hi), nice_ticks(0.0, top),
                   [f"{n} (n={data[n].size})" for n in heights])
    body = frame.axes(title, x_label, "density" if density else "count")
    for i, (name, h) in enumerate(heights.items()):
        color = PALETTE[i % len(PALETTE)]
        for left, right, value in zip(edges[:-1], edges[1:], h):
            if value <= 0:
                continue
            x, y = frame.px(left), frame.py(value)
            body.append(f"<rect x='{x:.1f}' y='{y:.1f}' width='{max(frame.px(right) - x - 0.5, 0.5):.1f}' "
                        f"height='{frame.bottom - y:.1f}' fill='{color}' fill-opacity='0.45' stroke='{color}' "
                        "stroke-width='0.6'/>")
    body += frame.legend()
    return _document(width, height, title, body)
