"""A small line chart as inline SVG: the report must open with no network and no scripts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 860, 320
LEGEND_WIDTH = 240  # beside the plot, so it never hides a curve
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16 + LEGEND_WIDTH, 16, 44


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    color: str
    style: str = "line"  # "line", "points" (markers joined by a thin line) or "level" (a horizontal dashed line)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 x 10^k) covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.1e}"


def line_chart(series: list[Series], x_label: str, y_label: str, title: str) -> str:
    """An <svg> element with axes, grid, the series and a legend; a note instead when there is no data."""
    drawn = [s for s in series if s.points]
    head = (f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'xmlns="http://www.w3.org/2000/svg">')
    if not drawn:
        return head + f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="note">no data</text></svg>'
    xs = [x for s in drawn if s.style != "level" for x, _ in s.points] or [0.0, 1.0]
    ys = [y for s in drawn for _, y in s.points]
    x_ticks = nice_ticks(min(xs), max(xs), count=6)
    y_ticks = nice_ticks(min(0.0, min(ys)), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    left, right, top, bottom = MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP, HEIGHT - MARGIN_BOTTOM

    def px(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y0) / ((y1 - y0) or 1) * (bottom - top)

    parts = [head]
    for t in y_ticks:
        parts.append(f'<line class="grid" x1="{left}" x2="{right}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>'
                     f'<text class="tick" x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    for t in x_ticks:
        parts.append(f'<line class="grid" x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top}" y2="{bottom}"/>'
                     f'<text class="tick" x="{px(t):.1f}" y="{bottom + 16}" text-anchor="middle">{_label(t)}</text>')
    parts.append(f'<rect class="frame" x="{left}" y="{top}" width="{right - left}" height="{bottom - top}"/>')
    parts.append(f'<text class="axis" x="{(left + right) / 2}" y="{HEIGHT - 6}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text class="axis" transform="translate(14 {(top + bottom) / 2}) rotate(-90)" '
                 f'text-anchor="middle">{escape(y_label)}</text>')
    for s in drawn:
        color = escape(s.color)
        if s.style == "level":
            y = py(s.points[0][1])
            parts.append(f'<line class="series level" stroke="{color}" x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}"/>')
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        width = "1.2" if s.style == "points" else "2"
        parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="{width}" points="{path}"/>')
        if s.style == "points" or len(s.points) == 1:
            parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{color}"/>' for x, y in s.points]
    # Legend, right of the plot, one line per series.
    for i, s in enumerate(drawn):
        y = top + 14 + i * 18
        dash = ' stroke-dasharray="5 4"' if s.style == "level" else ""
        parts.append(f'<line x1="{right + 14}" x2="{right + 36}" y1="{y - 4}" y2="{y - 4}" stroke="{escape(s.color)}" '
                     f'stroke-width="2"{dash}/><text class="legend" x="{right + 42}" y="{y}">{escape(s.label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
