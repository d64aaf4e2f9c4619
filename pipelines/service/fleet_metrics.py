"""The fleet as Prometheus metric families, read at scrape time from the job's outputs: per
tenant the latest window's topology (stability, Betti numbers), health and size, the worst
``top_k`` agents, and the served model's backtest headline (docs/OBSERVABILITY.md).

Each read is cached by the path of the window file it came from, so a scrape re-reads only
tenants whose latest window changed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable

import pyarrow.parquet as pq
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pipelines.service import outputs

BETTI = {"0": "stress_h0_betti_t0.5", "1": "stress_h1_betti_t0.5"}
_FEATURES = [*BETTI.values(), "unhealthy_frac", "stress_wasserstein_h0", "has_previous"]
_SNAPSHOT = ["agents", "agg_error_rate", "agg_latency_p99_ms"]


class _ByPath:
    """One parsed value per file path (a window's latest pane never changes under its name)."""

    def __init__(self, read, keep: int = 256):
        self.read, self.keep, self.cache = read, keep, {}

    def __call__(self, path: str):
        if path not in self.cache:
            if len(self.cache) >= self.keep:
                self.cache.clear()
            self.cache[path] = self.read(path)
        return self.cache[path]


def _features(path: str) -> dict:
    table = pq.read_table(path)
    return {c: table.column(c)[0].as_py() for c in _FEATURES if c in table.column_names}


def _snapshot(path: str) -> dict:
    return pq.read_table(path, columns=_SNAPSHOT).to_pylist()[0]


def topology_stability(wasserstein_h0: float | None, has_previous: float | None) -> float | None:
    """1 / (1 + W): 1 when the stress diagram did not move since the previous window; none
    for a tenant's first window (nothing to compare)."""
    if wasserstein_h0 is None or not has_previous or not math.isfinite(wasserstein_h0):
        return None
    return 1.0 / (1.0 + max(0.0, wasserstein_h0))


def worst_agents(snap: dict, k: int) -> list[tuple[str, float, float]]:
    """(agent, error rate, p99 s) of the ``k`` agents with the highest error rate, then p99."""
    rows = [(a, float(e or 0.0), float(p or 0.0) / 1000.0)
            for a, e, p in zip(snap["agents"], snap["agg_error_rate"], snap["agg_latency_p99_ms"])]
    rows.sort(key=lambda r: (-r[1], -r[2], r[0]))
    return rows[:k]


class FleetMetrics:
    """``collect()`` -> the fleet families for every tenant with outputs under ``out_dir``."""

    def __init__(self, out_dir: str, top_k: int = 10, model_dir: str | None = None,
                 backtest_report: str | None = None, open_incidents=lambda: {}):
        self.out_dir, self.top_k = out_dir, top_k
        self.model_dir, self.backtest_report = model_dir, backtest_report
        self.open_incidents = open_incidents
        self._features, self._snapshot = _ByPath(_features), _ByPath(_snapshot)

    def _latest(self, kind: str, tenant: str) -> str | None:
        panes = outputs.latest_panes(self.out_dir, kind, tenant)
        return panes[max(panes)] if panes else None

    def collect(self) -> list:
        stab = GaugeMetricFamily("aura_tenant_topology_stability", "1 / (1 + Wasserstein distance between "
                                 "this and the previous window's stress H0 diagrams): 1 = unchanged",
                                 labels=["tenant"])
        betti = GaugeMetricFamily("aura_tenant_betti", "Betti numbers of the latest window's stress "
                                  "filtration at 0.5", labels=["tenant", "dim"])
        unhealthy = GaugeMetricFamily("aura_tenant_unhealthy_ratio", "Fraction of the tenant's agents "
                                      "unhealthy in the latest window", labels=["tenant"])
        agents = GaugeMetricFamily("aura_tenant_agents", "Agents reporting in the latest window "
                                   "(agents monitored)", labels=["tenant"])
        err = GaugeMetricFamily("aura_agent_error_ratio", "Error rate of the tenant's worst agents "
                                "(top-k by error rate, then p99) in the latest window",
                                labels=["tenant", "agent"])
        p99 = GaugeMetricFamily("aura_agent_latency_p99_seconds", "p99 latency of the same top-k agents",
                                labels=["tenant", "agent"])
        incidents = GaugeMetricFamily("aura_tenant_open_incidents", "Incidents open", labels=["tenant"])
        opened = self.open_incidents()
        for tenant in outputs.tenants(self.out_dir):
            incidents.add_metric([tenant], opened.get(tenant, 0))
            snap_path = self._latest("snapshots", tenant)
            if snap_path is not None:
                snap = self._snapshot(snap_path)
                agents.add_metric([tenant], len(snap["agents"]))
                for agent, e, p in worst_agents(snap, self.top_k):
                    err.add_metric([tenant, agent], e)
                    p99.add_metric([tenant, agent], p)
            feat_path = self._latest("features", tenant)
            if feat_path is not None:
                f = self._features(feat_path)
                s = topology_stability(f.get("stress_wasserstein_h0"), f.get("has_previous"))
                if s is not None:
                    stab.add_metric([tenant], s)
                for dim, col in BETTI.items():
                    if f.get(col) is not None:
                        betti.add_metric([tenant, dim], f[col])
                if f.get("unhealthy_frac") is not None:
                    unhealthy.add_metric([tenant], f["unhealthy_frac"])
        return [stab, betti, unhealthy, agents, err, p99, incidents, *self._backtest()]

    def _backtest(self) -> Iterable:
        pr = GaugeMetricFamily("aura_backtest_pr_auc", "PR-AUC of the served model's cascade prediction "
                               "on its held-out split (the model's metrics.json)", labels=["split"])
        if self.model_dir is not None:
            m = _json(os.path.join(self.model_dir, "metrics.json"))
            test = (m or {}).get("cfc_test") or {}
            if isinstance(test.get("pr_auc"), int | float):
                pr.add_metric(["test"], test["pr_auc"])
            if isinstance((m or {}).get("cfc_validation_pr_auc"), int | float):
                pr.add_metric(["validation"], m["cfc_validation_pr_auc"])
        prevented = GaugeMetricFamily("aura_backtest_cascades_prevented_ratio", "Share of the cascades "
                                      "prevented in the latest closed-loop backtest (--backtest-report), "
                                      "by arm",
                                      labels=["arm"])
        test = ((_json(self.backtest_report) or {}).get("test") or {}) if self.backtest_report else {}
        base = test.get("cascades_without_action")
        for arm, figures in sorted(test.items()):
            if isinstance(figures, dict) and isinstance(figures.get("prevented"), int | float) and base:
                prevented.add_metric([arm], figures["prevented"] / base)
        return [pr, prevented]


def _json(path: str) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def interventions_family(by_tenant: dict[tuple[str, str], int]) -> list:
    """Interventions taken, per tenant and kind (usage)."""
    c = CounterMetricFamily("aura_interventions", "Interventions taken by the incident workflow, per tenant "
                            "and kind", labels=["tenant", "kind"])
    for (tenant, kind), n in sorted(by_tenant.items()):
        c.add_metric([tenant, kind], n)
    return [c]


def landing_backlog_family(landing: str) -> list:
    """Files landed for the job and not read yet."""
    g = GaugeMetricFamily("aura_landing_backlog_files", "Telemetry files landed for the streaming job and "
                          "not read yet")
    try:
        n = sum(1 for e in os.scandir(landing) if e.is_file() and not e.name.startswith((".", "_"))
                and not e.name.endswith(".tmp"))
    except FileNotFoundError:
        n = 0
    g.add_metric([], n)
    return [g]
