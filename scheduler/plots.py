"""Drift curves as SVG: token agreement with the baseline against output position, one line per slice.

Plain SVG written by hand: no plotting library on the control plane, and the files open in any
browser or review tool.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path
from typing import Any

_WIDTH, _HEIGHT = 720, 420
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 200, 40, 50
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf")


def drift_svg(title: str, drift: dict[str, Any]) -> str:
    positions = drift["positions"]
    series = [("all" if s["dimension"] == "all" else f"{s['dimension']}={s['value']}", s["agreement"])
              for s in drift["slices"]]
    low = min(0.0, *(min(a) for _, a in series)) if series else 0.0
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    last = max(positions)

    def x(p: float) -> float:
        return _LEFT + plot_w * p / last

    def y(v: float) -> float:
        return _TOP + plot_h * (1.0 - (v - low) / (1.0 - low or 1.0))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{_WIDTH}" height="{_HEIGHT}" fill="white"/>',
           f'<text x="{_LEFT}" y="22" font-size="14">{escape(title)}</text>',
           f'<line x1="{_LEFT}" y1="{y(low)}" x2="{x(last)}" y2="{y(low)}" stroke="black"/>',
           f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{y(low)}" stroke="black"/>']
    for tick in (low, (low + 1) / 2, 1.0):
        out.append(f'<text x="{_LEFT - 8}" y="{y(tick) + 4}" text-anchor="end">{tick:.2f}</text>')
        out.append(f'<line x1="{_LEFT}" y1="{y(tick)}" x2="{x(last)}" y2="{y(tick)}" stroke="#ddd"/>')
    for p in positions:
        out.append(f'<text x="{x(p)}" y="{y(low) + 18}" text-anchor="middle">{p}</text>')
    out.append(f'<text x="{_LEFT + plot_w / 2}" y="{_HEIGHT - 10}" text-anchor="middle">'
               'output position (tokens)</text>')
    out.append(f'<text x="16" y="{_TOP + plot_h / 2}" transform="rotate(-90 16 {_TOP + plot_h / 2})" '
               'text-anchor="middle">token agreement with the baseline</text>')
    for i, (label, agreement) in enumerate(series):
        colour = _COLOURS[i % len(_COLOURS)]
        points = " ".join(f"{x(p):.1f},{y(a):.1f}" for p, a in zip([0, *positions], [1.0, *agreement]))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}">'
                   f'<title>{escape(label)}</title></polyline>')
        legend_y = _TOP + 16 * i
        out.append(f'<line x1="{_WIDTH - _RIGHT + 16}" y1="{legend_y}" x2="{_WIDTH - _RIGHT + 36}" '
                   f'y2="{legend_y}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{_WIDTH - _RIGHT + 42}" y="{legend_y + 4}">{escape(label)} '
                   f'({agreement[-1]:.2f})</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_drift_plots(runs: list[dict[str, Any]], directory: str | Path) -> list[Path]:
    """One SVG per run that has drift curves; returns the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for run in runs:
        if not run.get("drift"):
            continue
        name = "--".join(run[k] for k in ("model", "candidate", "target", "suite"))
        path = directory / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".drift.svg")
        title = f"{run['model']} / {run['candidate']} on {run['target']} ({run['suite']}): {run['verdict']}"
        path.write_text(drift_svg(title, run["drift"]))
        written.append(path)
    return written
