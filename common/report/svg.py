"""Plots as inline SVG text: line charts (several runs on the same axes) and grouped bar charts.

Drawn by hand rather than by matplotlib so that the page stays small, needs no fonts or images of
its own, and a test can find each plot's marks in the page (`class="series"`, `class="bar"`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
WIDTH, HEIGHT = 520, 300
LEFT, RIGHT, TOP, BOTTOM = 60, 16, 50, 44


@dataclass(frozen=True)
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    color: str


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values from at most `low` to at least `high` (steps of 1, 2 or 5 times a power of ten;
    whole numbers when `integer`, e.g. rounds)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        low, high = low - (abs(low) * 0.1 or 0.5), high + (abs(high) * 0.1 or 0.5)
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if integer:
        step = max(step, 1.0)
    ticks = [round(math.floor(low / step) * step, 12)]
    while ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.001:
        return f"{value:.2g}"
    return f"{value:.4g}"


def line_chart(series: list[Series], *, title: str, xlabel: str, ylabel: str) -> str:
    """Lines (points where a series has one value) on shared axes, with a legend; an empty chart says so."""
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys) if _finite(x) and _finite(y)]
    if not points:
        return _empty(title, "no values to plot")
    integer = all(float(p[0]).is_integer() for p in points)
    xt = nice_ticks(min(p[0] for p in points), max(p[0] for p in points), integer=integer)
    yt = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))

    def sx(x: float) -> float:
        return LEFT + (x - xt[0]) / (xt[-1] - xt[0]) * (WIDTH - LEFT - RIGHT)

    def sy(y: float) -> float:
        return HEIGHT - BOTTOM - (y - yt[0]) / (yt[-1] - yt[0]) * (HEIGHT - TOP - BOTTOM)

    marks = []
    for s in series:
        pts = [(sx(x), sy(y)) for x, y in zip(s.xs, s.ys) if _finite(x) and _finite(y)]
        if not pts:
            continue
        tip = escape(s.name)
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            marks.append(
                f'<polyline class="series" fill="none" stroke="{s.color}" stroke-width="2" points="{path}">'
                f"<title>{tip}</title></polyline>"
            )
        if len(pts) <= 40:
            marks += [
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.color}"><title>{tip}</title></circle>'
                for x, y in pts
            ]
        if len(pts) == 1:
            marks[-1] = marks[-1].replace("<circle ", '<circle class="series" ', 1)
    return _frame(title, xlabel, ylabel, xt, yt, sx, sy, marks, series)


def bar_chart(groups: list[str], series: list[Series], *, title: str, ylabel: str) -> str:
    """One cluster of bars per group, one bar per series (`Series.ys` in the order of `groups`)."""
    values = [v for s in series for v in s.ys if _finite(v)]
    if not groups or not values:
        return _empty(title, "no values to plot")
    yt = nice_ticks(min(0.0, min(values)), max(values))
    span = (WIDTH - LEFT - RIGHT) / len(groups)
    width = span * 0.8 / max(len(series), 1)

    def sy(y: float) -> float:
        return HEIGHT - BOTTOM - (y - yt[0]) / (yt[-1] - yt[0]) * (HEIGHT - TOP - BOTTOM)

    marks = []
    for g, group in enumerate(groups):
        for i, s in enumerate(series):
            value = s.ys[g] if g < len(s.ys) else float("nan")
            if not _finite(value):
                continue
            x = LEFT + g * span + span * 0.1 + i * width
            top, base = sy(value), sy(max(yt[0], 0.0))
            marks.append(
                f'<rect class="bar" x="{x:.1f}" y="{min(top, base):.1f}" width="{width:.1f}" '
                f'height="{max(abs(base - top), 0.5):.1f}" fill="{s.color}"><title>{escape(s.name)}, '
                f"{escape(group)}: {value:.4f}</title></rect>"
            )
        label_x = LEFT + g * span + span / 2
        marks.append(
            f'<text x="{label_x:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle" font-size="10">'
            f"{escape(_short(group, span))}</text>"
        )
    return _frame(title, "", ylabel, None, yt, None, sy, marks, series)


def _frame(title, xlabel, ylabel, xt, yt, sx, sy, marks, series) -> str:
    parts = [
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" role="img" aria-label="{escape(title)}" font-family="sans-serif">',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for y in yt:
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" font-size="10">{_label(y)}</text>'
        )
    if xt is not None:
        for x in xt:
            parts.append(
                f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM + 4}" '
                f'stroke="#555"/><text x="{sx(x):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
                f'font-size="10">{_label(x)}</text>'
            )
    parts.append(
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}" stroke="#555"/>'
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" stroke="#555"/>'
    )
    if xlabel:
        parts.append(
            f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 6}" text-anchor="middle" font-size="11">'
            f"{escape(xlabel)}</text>"
        )
    parts.append(
        f'<text transform="translate(14 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" text-anchor="middle" '
        f'font-size="11">{escape(ylabel)}</text>'
    )
    parts += marks
    x = LEFT
    for s in series:  # the legend, in one row under the title
        parts.append(
            f'<rect x="{x}" y="26" width="10" height="10" fill="{s.color}"/>'
            f'<text x="{x + 14}" y="35" font-size="10">{escape(_short(s.name, 150))}</text>'
        )
        x += 24 + min(len(s.name), 25) * 6
    parts.append("</svg>")
    return "".join(parts)


def _empty(title: str, why: str) -> str:
    return (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} 60" width="{WIDTH}" height="60" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif"><text x="{WIDTH / 2}" y="20" '
        f'text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text><text x="{WIDTH / 2}" '
        f'y="44" text-anchor="middle" font-size="11">{escape(why)}</text></svg>'
    )


def _short(text: str, pixels: float) -> str:
    limit = max(int(pixels / 6), 4)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
