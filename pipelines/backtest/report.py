"""``report.html``: one self-contained page (PNG plots embedded as data URIs) - PR curves
of every method, AURA's lead-time histogram, the metrics table and risk timelines of a few
test scenarios with their triggers and cascade onsets marked."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from pipelines.backtest.scoring import ScenarioWindows

AURA = "aura_cfc"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pr_curves(test: list[ScenarioWindows], scores: dict[str, list[np.ndarray]], metrics: dict) -> str:
    from sklearn.metrics import precision_recall_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    y = np.concatenate([s.label[~s.in_cascade] for s in test])
    for name, per in scores.items():
        p = np.concatenate([sc[~s.in_cascade] for s, sc in zip(test, per)])
        if y.min() == y.max():
            continue
        prec, rec, _ = precision_recall_curve(y, p)
        auc = metrics["methods"][name]["test"]["pr_auc"]
        ax.plot(rec, prec, lw=2.4 if name == AURA else 1.3, label=f"{name} (AP {auc:.3f})")
    ax.axhline(y.mean(), color="grey", ls=":", lw=1, label=f"chance ({y.mean():.2f})")
    ax.set(xlabel="recall (windows)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title="Precision-recall, pooled test split")
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def lead_histogram(metrics: dict) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    op = metrics["methods"][AURA]["test"]["at_threshold"]["operating"]
    leads = op["lead_time_s"]["values"]
    bins = np.arange(0, max(70, (max(leads) if leads else 0) + 10), 10)
    ax.hist(leads, bins=bins, color="#3465a4", edgecolor="white")
    if leads:
        ax.axvline(np.median(leads), color="#cc0000", ls="--", label=f"median {np.median(leads):.0f} s")
    ax.axvline(30, color="grey", ls=":", label="bar: 30 s")
    ax.set(xlabel="lead time before onset (s)", ylabel="onsets",
           title=f"AURA lead time at the operating threshold: {op['onsets_warned']} warned, "
                 f"{op['onsets_late_only']} late, {op['onsets_missed']} missed of {op['onsets']}")
    ax.legend(fontsize=8)
    return _png(fig)


def timeline(s: ScenarioWindows, scores: dict[str, np.ndarray], thresholds: dict) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 2.8))
    t = (s.window_end - s.window_end[0]) if len(s.window_end) else s.window_end
    t0 = s.window_end[0] if len(s.window_end) else 0.0
    for on, end in zip(s.onsets, s.cascade_ends):
        ax.axvspan(on - t0, end - t0, color="#f4cccc", lw=0)
        ax.axvspan(on - t0 - s.horizon_s, on - t0, color="#fff2cc", lw=0)
        ax.axvline(on - t0, color="#cc0000", lw=1.5)
    for tr in s.triggers:
        ax.axvline(tr - t0, color="black", ls=":", lw=1)
    ax.plot(t, scores[AURA], color="#3465a4", lw=2, label="AURA committed risk")
    ax.axhline(thresholds[AURA]["operating"], color="#3465a4", ls="--", lw=1, label="AURA threshold")
    alarms = scores[AURA] >= thresholds[AURA]["operating"]
    ax.scatter(t[alarms], scores[AURA][alarms], color="#3465a4", s=14, zorder=3)
    ax.set(ylim=(-0.02, 1.02), xlabel="seconds since the first window", ylabel="risk",
           title=f"{s.tenant} ({s.family}, {s.n_agents} agents, {s.graph}): triggers dotted, onsets red, "
                 f"cascades shaded, the {s.horizon_s:.0f} s before onset yellow")
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def _fmt(v, d=3) -> str:
    return "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))


def family_note(metrics: dict, split: str) -> str:
    """", all out_of_distribution" when the test split holds one family only (its family
    tables are then left out as copies of it), else ""."""
    run = metrics.get("run", {})
    if split != "test" or split not in run.get("splits", {}):
        return ""
    fams = {run.get("families", {}).get(t, {}).get("family") for t in run["splits"][split]}
    return f", all {fams.pop()}" if len(fams) == 1 and None not in fams else ""


def metrics_table(metrics: dict, split: str) -> str:
    rows = []
    for name, m in metrics["methods"].items():
        if split not in m:
            continue
        op = m[split]["at_threshold"]["operating"]
        f1b = m[split]["at_threshold"]["best_f1"]
        lead = op["lead_time_s"]
        style = ' style="font-weight:bold"' if name == AURA else ""
        rows.append(
            f"<tr{style}><td>{html.escape(name)}</td><td>{_fmt(m[split]['pr_auc'])}</td>"
            f"<td>{_fmt(op['precision'], 2)}</td><td>{_fmt(op['recall'], 2)}</td><td>{_fmt(op['f1'], 2)}</td>"
            f"<td>{_fmt(op['false_alarms_per_fleet_hour'], 2)}</td>"
            f"<td>{op['onsets_warned']}/{op['onsets']} ({_fmt(op['event_recall'], 2)})</td>"
            f"<td>{op['onsets_late_only']}</td><td>{_fmt(lead['median'], 0)}</td>"
            f"<td>{_fmt(f1b['f1'], 2)}</td><td>{_fmt(metrics['thresholds'][name]['operating'], 4)}</td></tr>")
    head = ("<tr><th>method</th><th>PR-AUC</th><th>precision</th><th>recall</th><th>F1</th>"
            "<th>false alarms / fleet-h</th><th>onsets warned</th><th>late only</th><th>median lead (s)</th>"
            "<th>F1 at best-F1 thr.</th><th>operating thr.</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def write_report(path: str, metrics: dict, test: list[ScenarioWindows], scores: dict[str, list[np.ndarray]],
                 n_timelines: int = 4) -> str:
    """Write the page; returns its path."""
    b = metrics.get("bar", {})
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>AURA backtest</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:first-child{text-align:left}"
             ".ok{color:#4e9a06}.no{color:#cc0000}img{max-width:100%}",
             "</style></head><body><h1>AURA backtest</h1>"]
    if b:
        def mark(ok):
            return "<b class='ok'>met</b>" if ok else "<b class='no'>not met</b>"
        parts.append(
            f"<h2>The bar (pooled test split)</h2><ul>"
            f"<li>PR-AUC {_fmt(b['pr_auc'])} vs best baseline {html.escape(str(b['best_baseline']))} "
            f"{_fmt(b['best_baseline_pr_auc'])}: margin {_fmt(b['pr_auc_margin'])} (&ge; 0.10) "
            f"{mark(b['pr_auc_margin_ok'])}</li>"
            f"<li>recall of onsets at the operating threshold (&le; 1 false alarm per fleet-hour on "
            f"validation): {_fmt(b['event_recall_at_operating'], 2)}, test false alarms/fleet-hour "
            f"{_fmt(b['false_alarms_per_fleet_hour_at_operating'], 2)} (&ge; 0.8) {mark(b['recall_ok'])}</li>"
            f"<li>median lead time {_fmt(b['median_lead_time_s'], 0)} s (&ge; 30 s) {mark(b['lead_time_ok'])}"
            f"</li></ul>{_confidence(b.get('confidence'))}")
    parts.append(f"<img src='{pr_curves(test, scores, metrics)}'> <img src='{lead_histogram(metrics)}'>")
    for split in ("test", "test_in_distribution", "test_out_of_distribution", "validation"):
        n = metrics["methods"][AURA].get(split, {}).get("scenarios")
        if n:
            note = html.escape(family_note(metrics, split))
            parts.append(f"<h2>{split.replace('_', ' ')} ({n} scenarios{note})</h2>"
                         f"{metrics_table(metrics, split)}")
    parts.append("<p>Thresholds are chosen on the validation split and frozen: <i>operating</i> is the "
                 "lowest threshold with at most the budgeted false alarms per fleet-hour there. A false "
                 "alarm is a run of consecutive alarmed windows with no onset within the horizon; "
                 "alarms after an onset are late, not early.</p><h2>Risk timelines (test)</h2>")
    with_cascades = sorted(range(len(test)), key=lambda i: (-len(test[i].onsets), test[i].tenant))
    picks = sorted({*with_cascades[: max(n_timelines - 1, 1)], *[i for i, s in enumerate(test)
                                                                   if s.family != test[0].family][:1]})
    for i in picks[:n_timelines]:
        png = timeline(test[i], {n: v[i] for n, v in scores.items()}, metrics["thresholds"])
        parts.append(f"<img src='{png}'>")
    run = metrics.get("run", {})
    parts.append(f"<h2>Run</h2><pre>{html.escape(_run_text(run))}</pre></body></html>")
    with open(path, "w") as fh:
        fh.write("".join(parts))
    return path


def _confidence(ci: dict | None) -> str:
    """The bar's bootstrap intervals (the scenario is the unit resampled)."""
    from pipelines.backtest.uncertainty import describe

    return f"<p>{html.escape(describe(ci))}.</p>" if ci else ""


def _run_text(run: dict) -> str:
    import json

    keep = {k: run.get(k) for k in ("model_dir", "fit_split", "pipeline", "horizon_s", "window_s",
                                    "false_alarm_budget_per_fleet_hour", "elapsed_s")}
    return json.dumps(keep, indent=2, default=str)
