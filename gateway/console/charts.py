"""Server-rendered SVG charts of the console: stacked bars, and sparklines.

No chart library and no script: plain SVG with presentation attributes only (the
console's Content-Security-Policy forbids inline styles), a ``<title>`` for assistive
technology, and the numbers also shipped as a table beside the chart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from config.money import format_amount

# Distinguishable for common colour-vision deficiencies (Okabe-Ito), plus grey.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8a7a00",
           "#666666")  # fmt: skip
W, H = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 8, 10, 28


def thousands(n: int) -> str:
    return f"{n:,}"


def money(micros: int) -> str:
    """``$1,234.50``: exact, never rounded (the console's one rule for amounts, the CSV's
    and console.js' ``money``): at least two decimals, as many as the micro-dollars need,
    from integers (:func:`config.money.format_amount`), never from a float."""
    text = format_amount(micros)
    sign = "-" if text.startswith("-") else ""
    whole, _, frac = text.removeprefix("-").partition(".")
    return f"{sign}${int(whole):,}.{frac}"


def nice_step(v: int) -> int:
    """A round whole step at least ``v`` (1, 2 or 5 times a power of ten)."""
    mag = 1
    while mag * 10 <= v:
        mag *= 10
    for step in (1, 2, 5, 10):
        if step * mag >= v:
            return step * mag
    return 10 * mag


def axis_top(v: int) -> int:
    """The y axis' top: four equal, round, whole steps covering ``v``."""
    return 4 * nice_step(max(1, -(-v // 4)))


def label(ms: int, granularity: str) -> str:
    t = datetime.fromtimestamp(ms / 1000, UTC)
    if granularity == "hour":
        return t.strftime("%d %H:00")
    if granularity == "month":
        return t.strftime("%b %Y")
    return t.strftime("%b %d")


def bars(
    periods: list[int],
    series: dict[str, list[int]],
    *,
    granularity: str,
    is_money: bool,
    title: str,
    names: dict[str, str] | None = None,
) -> str:
    """A stacked bar chart of ``series`` (label -> value per period)."""
    names = names or {}
    n = max(len(periods), 1)
    totals = [sum(v[i] for v in series.values()) for i in range(len(periods))]
    top = axis_top(max(totals, default=0))
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.8)
    fmt = money if is_money else thousands
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" '
        f'aria-labelledby="chart-title" class="chart">',
        f'<title id="chart-title">{escape(title)}</title>',
    ]
    for k in range(5):  # grid lines and y labels
        v = top * k // 4
        y = TOP + plot_h - plot_h * k / 4
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                   'stroke="#d0d4da" stroke-width="1"/>')  # fmt: skip
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                   f'fill="#333">{escape(fmt(v))}</text>')  # fmt: skip
    every = max(1, n // 8)
    for i, start in enumerate(periods):
        x = LEFT + slot * i + (slot - bar_w) / 2
        y = TOP + plot_h
        for j, (key, values) in enumerate(series.items()):
            v = values[i]
            if v <= 0:
                continue
            h = plot_h * v / top
            y -= h
            tip = f"{names.get(key, key)}: {fmt(v)} ({label(start, granularity)})"
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(tip)}</title></rect>'
            )
        if i % every == 0:
            out.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{H - 8}" text-anchor="middle" '
                f'font-size="11" fill="#333">{escape(label(start, granularity))}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def sparkline(values: list[int], title: str) -> str:
    """A small line of ``values`` (e.g. sessions per day)."""
    w, h = 120, 28
    top = max(values, default=0) or 1
    step = w / max(len(values) - 1, 1)
    points = " ".join(
        f"{i * step:.1f},{h - 2 - (h - 4) * v / top:.1f}" for i, v in enumerate(values)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" '
        f'height="{h}" role="img" aria-label="{escape(title)}" class="spark">'
        f'<polyline points="{points}" fill="none" stroke="#0072B2" stroke-width="2"/></svg>'
    )
