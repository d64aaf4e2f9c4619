"""``report.html`` of the closed-loop backtest: the arms' figures, and per scenario the four
arms' unhealthy fraction over time with their actions marked (inline SVG, no scripts)."""

from __future__ import annotations

import html

import numpy as np

COLOURS = {"none": "#888888", "static": "#d9822b", "aura": "#2b6cd9", "oracle": "#2ba84a"}
W, H, PAD = 640, 150, 28


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{100 * v:.2f} %" if pct else f"{v:.3g}"
    return html.escape(str(v))


def _interval(v) -> str:
    return "" if not v else f" [{100 * v[0]:.0f}, {100 * v[1]:.0f}] %"


def _table(metrics: dict) -> str:
    t, iv = metrics["test"], metrics["intervals"]
    rows = []
    for arm in ("none", "static", "aura", "oracle"):
        a = t[arm]
        rows.append(
            f"<tr><td style='color:{COLOURS[arm]}'><b>{arm}</b></td><td>{a['cascades']}</td>"
            f"<td>{a['prevented']}/{t['cascades_without_action']}{_interval(iv[arm]['prevented_share'])}</td>"
            f"<td>{a['new_cascades']}</td>"
            + "".join(f"<td>{_fmt(a['prevented_by_mechanism'][m], True)}</td>"
                      for m in sorted(a["prevented_by_mechanism"]))
            + f"<td>{a['cascade_agent_seconds']:.0f}</td><td>{_fmt(a['lost_share_cascade'], True)}</td>"
            f"<td>{_fmt(a['lost_share_cascade_free'], True)}</td><td>{a['actions']}</td>"
            f"<td>{a['rolled_back']}</td>"
            f"<td>{_fmt(a['trigger_to_first_action_s_median'])}</td></tr>")
    mechs = "".join(f"<th>prevented: {m}</th>" for m in sorted(t["aura"]["prevented_by_mechanism"]))
    head = ("<tr><th>arm</th><th>cascades</th><th>prevented (90 % interval)</th><th>new</th>" + mechs
            + "<th>cascade agent-s</th><th>lost, cascade stretches</th><th>lost, cascade-free</th>"
            "<th>actions</th><th>rolled back</th><th>trigger to first action (s, median)</th></tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def _svg(runs: list) -> str:
    """The arms of one scenario: unhealthy fraction over time, actions as ticks below."""
    n = max(len(r.unhealthy) for r in runs)
    sx = (W - 2 * PAD) / max(n, 1)

    def x(t: float) -> float:
        return PAD + t * sx

    def y(f: float) -> float:
        return H - PAD - f * (H - 2 * PAD)

    parts = [f"<svg width='{W}' height='{H + 12 * len(runs)}' xmlns='http://www.w3.org/2000/svg'>",
             f"<line x1='{PAD}' y1='{y(0)}' x2='{W - PAD}' y2='{y(0)}' stroke='#ccc'/>",
             f"<text x='2' y='{y(1) + 4}' font-size='9'>100%</text>"]
    none = runs[0]
    if np.isfinite(none.trigger_s):
        parts.append(f"<line x1='{x(none.trigger_s)}' y1='{PAD}' x2='{x(none.trigger_s)}' y2='{y(0)}' "
                     "stroke='#000' stroke-dasharray='2,2'><title>trigger</title></line>")
    for r in runs:
        u = r.unhealthy / max(r.n_agents, 1)
        step = max(1, len(u) // 300)
        pts = " ".join(f"{x(i):.1f},{y(float(u[i])):.1f}" for i in range(0, len(u), step))
        parts.append(f"<polyline fill='none' stroke='{COLOURS[r.arm]}' stroke-width='1.5' points='{pts}'>"
                     f"<title>{r.arm}</title></polyline>")
        if r.onset_s is not None:
            parts.append(f"<circle cx='{x(r.onset_s):.1f}' cy='{y(0.1):.1f}' r='3' fill='{COLOURS[r.arm]}'>"
                         f"<title>{r.arm}: onset at {r.onset_s:.0f} s</title></circle>")
    for k, r in enumerate(runs):
        yy = H + 12 * k
        for a in r.actions:
            parts.append(f"<rect x='{x(a['start_s']):.1f}' y='{yy - 8}' width='3' height='8' "
                         f"fill='{COLOURS[r.arm]}'><title>{r.arm}: {html.escape(a['kind'])} "
                         f"{html.escape(', '.join(a['targets'][:4]))} x{a['magnitude']}"
                         f" at {a['start_s']:.0f} s</title></rect>")
    parts.append("</svg>")
    return "".join(parts)


def write_report(path: str, runs: dict[str, list], metrics: dict) -> None:
    from pipelines.backtest.closed_loop import headline

    arms = list(runs)
    blocks = []
    for i in range(len(runs["none"])):
        group = [runs[a][i] for a in arms]
        n = group[0]
        outcome = ", ".join(f"{r.arm}: {'cascade' if r.cascade else 'no cascade'}" for r in group)
        blocks.append(f"<h3>{html.escape(n.tenant)} - {n.mechanism}, {n.n_agents} agents</h3>"
                      f"<p>{html.escape(outcome)}</p>{_svg(group)}")
    bar = metrics["bar"]
    doc = f"""<!doctype html><html><head><meta charset='utf-8'><title>AURA closed-loop backtest</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:3px 6px;font-size:13px}}</style></head><body>
<h1>Closed-loop backtest</h1><pre>{html.escape(headline(metrics))}</pre>
<h2>Test split (plans frozen on validation)</h2>{_table(metrics)}
<p>Bar: AURA prevents &ge; 80 % ({_fmt(bar['prevented_share'], True)}), &ge; 1.5x the static arm
({_fmt(bar['over_static'])}), loses &lt; 0.5 % on cascade-free stretches
({_fmt(bar['lost_share_cascade_free'], True)}).</p>
<h2>Scenarios</h2><p>Unhealthy fraction per arm (grey none, orange static, blue AURA, green oracle);
dashed line: trigger; dots: cascade onsets; ticks below: actions taking effect.</p>
{''.join(blocks)}</body></html>"""
    with open(path, "w") as f:
        f.write(doc)
