"""Line charts as plain SVG text, with no plotting dependency.

A chart is a few series of (x, y) points on logarithmic x (sizes grow by
powers) and logarithmic or linear y, with gridlines at round values, a
legend and axis titles. The output is deterministic (coordinates rounded to
0.1 px), so a chart regenerated from the same figures is byte-identical and
its diff in git shows only what moved. Cost: O(points).

>>> svg = line_chart("t", "n", "s", [Series("a", [(1, 1.0), (10, 2.0)])], unit="s")
>>> svg.startswith("<svg") and "</svg>" in svg
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 78, 190, 40, 56
#: Colour-blind-safe (Okabe-Ito), in the order series are given.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")

_UNITS = {
    "s": (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)),
    "B": (("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1.0)),
}


@dataclass(frozen=True)
class Series:
    """One line: its legend name, its points, and whether it is a reference
    (a floor or a theory: drawn dashed)."""

    name: str
    points: Sequence[tuple[float, float]]
    reference: bool = False


def label(value: float, unit: str) -> str:
    """``value`` for a tick: ``2 ms``, ``10 kB``, ``1,024``."""
    scales = _UNITS.get(unit)
    if scales is None:
        text = f"{value:,.0f}" if value >= 10 else f"{value:.3g}"
        return f"{text} {unit}".rstrip()
    for name, scale in scales:
        if value >= scale * 0.999:
            return f"{value / scale:.3g} {name}"
    name, scale = scales[-1]
    return f"{value / scale:.3g} {name}"


def _log_ticks(low: float, high: float) -> list[float]:
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    steps = (1, 2, 5) if last - first <= 2 else (1,)
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in steps]
    return [t for t in ticks if low / 1.001 <= t <= high * 1.001]


def _linear_ticks(high: float) -> list[float]:
    raw = high / 5
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(high / step) + 2) if i * step <= high * 1.001]


def line_chart(
    title: str,
    x_title: str,
    y_title: str,
    series: Sequence[Series],
    *,
    unit: str,
    x_unit: str = "",
    log_y: bool = True,
) -> str:
    """An SVG document: ``series`` on a log x axis, y in ``unit`` ("s", "B" or
    a count's name), logarithmic unless ``log_y`` is False."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low / 2, x_high * 2
    if log_y:
        y_low, y_high = min(ys), max(ys)
        y_low, y_high = 10.0 ** math.floor(math.log10(y_low)), 10.0 ** math.ceil(math.log10(y_high))
        y_ticks = _log_ticks(y_low, y_high)
    else:
        y_low, y_high = 0.0, max(ys) * 1.1
        y_ticks = _linear_ticks(y_high)
        y_high = max(y_high, y_ticks[-1])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        span = math.log10(x_high) - math.log10(x_low)
        return LEFT + plot_w * (math.log10(x) - math.log10(x_low)) / span

    def py(y: float) -> float:
        if log_y:
            span = math.log10(y_high) - math.log10(y_low)
            share = (math.log10(y) - math.log10(y_low)) / span
        else:
            share = (y - y_low) / (y_high - y_low)
        return TOP + plot_h * (1 - share)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for t in y_ticks:
        y = py(t)
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        out.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label(t, unit)}</text>'
        )
    for t in sorted(set(xs)):
        x = px(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + plot_h}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">'
            f"{label(t, x_unit)}</text>"
        )
    out.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>'
    )
    out.append(
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 14}" text-anchor="middle">'
        f"{escape(x_title)}</text>"
    )
    out.append(
        f'<text transform="translate(16 {TOP + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_title)}</text>'
    )
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        dash = ' stroke-dasharray="5 4"' if s.reference else ""
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(s.points))
        out.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        for x, y in s.points:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        ly = TOP + 8 + 18 * i
        lx = LEFT + plot_w + 12
        out.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{colour}" '
            f'stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{lx + 28}" y="{ly + 4}">{escape(s.name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
