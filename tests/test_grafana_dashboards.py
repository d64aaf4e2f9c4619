"""The Grafana dashboards as code (infra/grafana/): regenerating them with build.py yields the
committed JSON; each dashboard is in a current schema, has the panels it exists for, unique
panel ids and the provisioned datasource; every query is PromQL that promtool accepts; and
every metric a panel (or a rule in infra/prometheus/rules.yml) queries is one a running
``aura api`` that processed data exports on its ``/metrics`` (tests/service_fixture.py),
recording rules resolved to the metrics they are computed from."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.service_fixture import LiveService

pytest_plugins = ["tests.service_fixture"]

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "infra" / "grafana"
RULES = REPO / "infra" / "prometheus" / "rules.yml"
PROMTOOL = "/usr/bin/promtool"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself; only the rules may use them

# title -> panel type each dashboard must have (issue 20)
REQUIRED = {
    "aura-fleet": {"Cascade risk per tenant": "timeseries",
                   "Risk by tenant (latest committed verdict)": "bargauge",
                   "Verdict status per tenant": "state-timeline", "Tenants at high risk (trusted)": "stat"},
    "aura-tenant": {"Cascade risk": "timeseries", "Betti numbers (stress filtration)": "timeseries",
                    "Verdict status": "state-timeline", "Topology stability": "timeseries"},
    "aura-agents": {"Agent error ratio (heatmap)": "heatmap", "Agent p99 latency (heatmap)": "heatmap"},
    "aura-pipeline": {"Records per second": "timeseries", "Dead letters by reason": "timeseries",
                      "Window → verdict latency": "heatmap", "Stage p99": "timeseries",
                      "Watermark lag": "timeseries", "Child restarts": "timeseries",
                      "Graph writes": "timeseries"},
    "aura-incidents": {"Open incidents per tenant": "timeseries",
                       "Interventions by kind and status": "timeseries"},
}
# the metric each must chart
CHARTS = {("aura-tenant", "Betti numbers (stress filtration)"): "aura_tenant_betti",
          ("aura-agents", "Agent error ratio (heatmap)"): "aura_agent_error_ratio",
          ("aura-fleet", "Cascade risk per tenant"): "aura_tenant_risk"}


def load_build():
    spec = importlib.util.spec_from_file_location("aura_grafana_build", GRAFANA / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict]:
    import json

    return {p.stem: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


def panels(items: list[dict]) -> Iterator[dict]:
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def queries(board: dict) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target, annotation and template variable."""
    for p in panels(board["panels"]):
        for t in p.get("targets", []):
            yield f"{board['uid']}/{p['title']}/{t['refId']}", t["expr"]
    for a in board.get("annotations", {}).get("list", []):
        if "expr" in a:
            yield f"{board['uid']}/annotation {a['name']}", a["expr"]
    for v in board.get("templating", {}).get("list", []):
        if v["type"] == "query":
            m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_]\w*\s*\)\s*", v["query"])
            yield f"{board['uid']}/variable {v['name']}", m.group(1) if m else v["query"]


# --- a small PromQL tokenizer: the metric names an expression selects ------------------------

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "offset", "bool", "inf", "nan", "atan2"}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:[smhdwy]|ms)*")
_IDENT = re.compile(r"[A-Za-z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """Identifiers that select series: not functions or aggregations (followed by ``(``), not
    keywords, label names, label values, durations, numbers or Grafana variables."""
    s = _STRINGS.sub(" ", expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = _LABEL_LISTS.sub(" ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables
    s = re.sub(r"\boffset\s+-?\S+", " ", s)
    s = _NUMBER.sub(" ", s)
    out = set()
    for m in _IDENT.finditer(s):
        if m.group() in KEYWORDS or re.match(r"\s*\(", s[m.end():]):
            continue
        out.add(m.group())
    return out


def test_the_tokenizer_finds_metric_names_only():
    expr = ('histogram_quantile(0.99, sum by (le, stage) (rate(aura_x_seconds_bucket{stage="a b",le!="1e3"}'
            '[$__rate_interval]))) > bool 1.5e3 and on (tenant) group_left (agent) foo:bar:rate5m offset 5m '
            'unless sum(baz_total) without (instance) or vector(0) * inf')
    assert metric_names(expr) == {"aura_x_seconds_bucket", "foo:bar:rate5m", "baz_total"}
    assert metric_names('count(aura_tenant_risk{tenant="$tenant"} >= 0.7)') == {"aura_tenant_risk"}


def recording_rules() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def resolve(names: set[str], records: dict[str, str]) -> set[str]:
    """Recording rules replaced by the metrics they are computed from, recursively."""
    out: set[str] = set()
    for n in names:
        out |= resolve(metric_names(records[n]), records) if n in records else {n}
    return out


def exported(families: list) -> set[str]:
    """The series names a scrape of these families gives Prometheus (samples or not yet)."""
    names = set()
    for f in families:
        names |= {s.name for s in f.samples}
        if f.type == "counter":
            names.add(f.name.removesuffix("_total") + "_total")
        elif f.type in ("histogram", "gaugehistogram"):
            names |= {f.name + "_bucket", f.name + "_sum", f.name + "_count"}
        elif f.type == "summary":
            names |= {f.name, f.name + "_sum", f.name + "_count"}
        else:
            names.add(f.name)
    return names


# --- static checks --------------------------------------------------------------------------

def test_regenerating_yields_the_committed_json():
    build = load_build()
    committed = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert set(committed) == {f"aura-{n}.json" for n in build.DASHBOARDS}
    for name in build.DASHBOARDS:
        assert build.render(name) == committed[f"aura-{name}.json"], \
            f"aura-{name}.json is stale: run `python infra/grafana/build.py`"


def test_provisioning_names_the_datasource_every_panel_uses():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "aura.yml").read_text())
    assert ds["apiVersion"] == 1 and prov["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    for uid, board in dashboards().items():
        refs = [p["datasource"] for p in panels(board["panels"]) if p["type"] != "row"]
        refs += [t["datasource"] for p in panels(board["panels"]) for t in p.get("targets", [])]
        refs += [a["datasource"] for a in board["annotations"]["list"]]
        refs += [v["datasource"] for v in board["templating"].get("list", [])]
        assert refs and all(r == {"type": "prometheus", "uid": source["uid"]} for r in refs), uid


def test_each_dashboard_has_its_panels_with_unique_ids():
    boards = dashboards()
    assert set(boards) == set(REQUIRED) and {b["uid"] for b in boards.values()} == set(REQUIRED)
    for uid, board in boards.items():
        assert board["schemaVersion"] >= 39 and board["title"].startswith("AURA / ")
        every = list(panels(board["panels"]))
        ids = [p["id"] for p in every]
        assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids), uid
        titles = {p["title"]: p["type"] for p in every}
        for title, kind in REQUIRED[uid].items():
            assert titles.get(title) == kind, f"{uid}: no {kind} panel {title!r}"
        for p in every:
            pos = p["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, (uid, p["title"])
            if p["type"] != "row":
                assert p.get("targets") and all(t["refId"] and t["expr"] for t in p["targets"]), p["title"]
    for (uid, title), metric in CHARTS.items():
        (panel,) = [p for p in panels(boards[uid]["panels"]) if p["title"] == title]
        assert any(metric in metric_names(t["expr"]) for t in panel["targets"]), (uid, title)
    for uid in ("aura-tenant", "aura-agents"):  # one tenant at a time
        (var,) = boards[uid]["templating"]["list"]
        assert var["name"] == "tenant" and var["query"] == "label_values(aura_tenant_risk, tenant)"
        for where, expr in queries(boards[uid]):
            if "/variable" not in where and "tenant" in expr:
                assert 'tenant="$tenant"' in expr, where


def test_every_query_is_valid_promql(tmp_path):
    """promtool parses each query (Grafana's variables given values) as a recording rule."""
    rules = [{"record": f"dashboard:query:{i}",
              "expr": expr.replace("$__rate_interval", "1m").replace("$tenant", "acme")}
             for i, (_, expr) in enumerate(q for b in dashboards().values() for q in queries(b))]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert Path(PROMTOOL).is_file(), f"{PROMTOOL} missing: `make` installs Debian's prometheus"
    out = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# --- against a live service -------------------------------------------------------------------

@pytest.fixture(scope="module")
def live_names(live_service: LiveService) -> set[str]:
    return exported(live_service.metric_families())


def _missing(uses: dict[str, set[str]], have: set[str]) -> dict[str, list[str]]:
    return {name: sorted(where) for name, where in sorted(uses.items()) if name not in have}


def test_every_metric_a_dashboard_queries_is_exported(live_names):
    records = recording_rules()
    uses: dict[str, set[str]] = {}
    for board in dashboards().values():
        for where, expr in queries(board):
            for name in resolve(metric_names(expr), records):
                uses.setdefault(name, set()).add(where)
    assert len(uses) > 30  # the tokenizer found the dashboards' metrics
    missing = _missing(uses, live_names)
    assert not missing, f"queried but not on the live /metrics: {missing}"


def test_every_metric_the_rules_use_is_exported(live_names):
    doc = yaml.safe_load(RULES.read_text())
    records = recording_rules()
    uses: dict[str, set[str]] = {}
    for rule in (r for g in doc["groups"] for r in g["rules"]):
        for name in resolve(metric_names(rule["expr"]), records) - PROMETHEUS_OWN:
            uses.setdefault(name, set()).add(rule.get("alert") or rule["record"])
    missing = _missing(uses, live_names)
    assert not missing, f"used by rules but not on the live /metrics: {missing}"
