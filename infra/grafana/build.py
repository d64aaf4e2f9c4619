"""AURA's Grafana dashboards as code, built with grafana-foundation-sdk.

``python infra/grafana/build.py`` writes ``infra/grafana/dashboards/*.json`` (committed; the
provisioning in ``provisioning/`` loads them). tests/test_grafana_dashboards.py checks that
regenerating yields the committed files and that every metric a panel queries is one a live
``aura api`` exports. Queries use the recording rules of ``infra/prometheus/rules.yml``
where one exists (``tenant:...:rate5m``): load the rules into the Prometheus Grafana reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    heatmap,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueGraphMode,
    GraphTresholdsStyleMode,
    HeatmapCellLayout,
    LegendDisplayMode,
    LegendPlacement,
    LineInterpolation,
    SortOrder,
    TooltipDisplayMode,
    VisibilityMode,
)
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DATASOURCE_UID = "aura-prometheus"  # provisioning/datasources/prometheus.yml
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
SCHEMA_VERSION = 39
HIGH_RISK = 0.7  # the high band's lower edge (RunConfig.risk_bands), as in the AuraTenantRiskHigh alert
T = '{tenant="$tenant"}'
RI = "[$__rate_interval]"
# 0 ok, 1 calibrating, 2 out of distribution: one state per tenant for state timelines
STATUS_CODE = ('max by (tenant) (aura_tenant_verdict_status{{status="calibrating"{sel}}} '
               '+ ignoring (status) 2 * aura_tenant_verdict_status{{status="out_of_distribution"{sel}}})')


def query(expr: str, legend: str = "", ref: str = "A", fmt: PromQueryFormat | None = None,
          instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    if fmt is not None:
        q = q.format(fmt)
    return q.instant() if instant else q.range()


def _targets(panel: Builder, queries: list[tuple[str, str]], **kw) -> Builder:
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(query(expr, legend, chr(ord("A") + i), **kw))
    return panel


def _thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(
        [model.Threshold(value=v, color=c) for v, c in steps])


RISK_STEPS = ((None, "green"), (0.3, "orange"), (HIGH_RISK, "red"))
RED_FROM_1 = ((None, "green"), (1, "red"))
ORANGE_FROM_1 = ((None, "green"), (1, "orange"))


def ts(title: str, queries: list[tuple[str, str]], unit: str = "short", w: int = 12, h: int = 8,
       description: str = "", step: bool = False, thresholds: tuple | None = None,
       lo: float | None = None, hi: float | None = None) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
         .span(w).height(h).line_width(1).fill_opacity(10).show_points(VisibilityMode.NEVER)
         .legend(common.VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST)
                 .placement(LegendPlacement.BOTTOM).calcs([]))
         .tooltip(common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING)))
    if step:
        p = p.line_interpolation(LineInterpolation.STEP_AFTER)
    if thresholds:
        p = p.thresholds(_thresholds(*thresholds)).thresholds_style(
            common.GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.DASHED))
    if lo is not None:
        p = p.min(lo)
    if hi is not None:
        p = p.max(hi)
    return _targets(p, queries)


def single(title: str, expr: str, unit: str = "short", w: int = 6, h: int = 4, description: str = "",
           thresholds: tuple = ((None, "green"),)) -> stat.Panel:
    p = (stat.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit).span(w)
         .height(h).graph_mode(BigValueGraphMode.AREA).thresholds(_thresholds(*thresholds))
         .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    return p.with_target(query(expr))


def status_timeline(title: str, sel: str = "", w: int = 12, h: int = 8) -> statetimeline.Panel:
    mapping = model.ValueMap(options={
        "0": model.ValueMappingResult(text="ok", color="green", index=0),
        "1": model.ValueMappingResult(text="calibrating", color="blue", index=1),
        "2": model.ValueMappingResult(text="out of distribution", color="orange", index=2)})
    p = (statetimeline.Panel().title(title).datasource(DATASOURCE).span(w).height(h)
         .description("Status of the latest committed verdict: only 'ok' verdicts are trusted "
                      "(raise alerts).").mappings([mapping]).show_value(VisibilityMode.NEVER))
    return p.with_target(query(STATUS_CODE.format(sel=sel), "{{tenant}}"))


def agent_heatmap(title: str, metric: str, unit: str, description: str) -> heatmap.Panel:
    """One row per agent (each series a bucket, not calculated), colour by value."""
    p = (heatmap.Panel().title(title).description(description).datasource(DATASOURCE).span(24).height(10)
         .calculate(False).cell_gap(1)
         .color(heatmap.HeatmapColorOptions().mode(HeatmapColorMode.SCHEME).scheme("Reds").steps(64)
                .exponent(0.5).fill("dark-red").reverse(False))
         .y_axis(heatmap.YAxisConfig().unit("short").reverse(False))
         .rows_frame(heatmap.RowsHeatmapOptions().layout(HeatmapCellLayout.AUTO))
         .cell_values(heatmap.CellValues().unit(unit))
         .show_tooltip().hide_y_histogram().show_legend().show_value(VisibilityMode.NEVER))
    return p.with_target(query(f"{metric}{T}", "{{agent}}"))


def histogram_heatmap(title: str, hist: str, description: str) -> heatmap.Panel:
    """A Prometheus histogram over time: its buckets' increases per interval."""
    p = (heatmap.Panel().title(title).description(description).datasource(DATASOURCE).span(12).height(8)
         .calculate(False).cell_gap(1)
         .color(heatmap.HeatmapColorOptions().mode(HeatmapColorMode.SCHEME).scheme("Oranges").steps(64)
                .exponent(0.5).fill("dark-orange").reverse(False))
         .y_axis(heatmap.YAxisConfig().unit("s").reverse(False))
         .rows_frame(heatmap.RowsHeatmapOptions().layout(HeatmapCellLayout.LE))
         .show_tooltip().show_y_histogram().show_legend().show_value(VisibilityMode.NEVER))
    return p.with_target(query(f"sum by (le) (increase({hist}_bucket{RI}))", "{{le}}",
                               fmt=PromQueryFormat.HEATMAP))


def p99(hist: str, by: str = "") -> str:
    groups = f"{by}, le" if by else "le"
    return f"histogram_quantile(0.99, sum by ({groups}) (rate({hist}_bucket{RI})))"


def tenant_variable() -> dash.QueryVariable:
    return (dash.QueryVariable("tenant").label("Tenant").datasource(DATASOURCE)
            .query("label_values(aura_tenant_risk, tenant)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(model.VariableSort.ALPHABETICAL_ASC).include_all(False).multi(False))


def high_risk_annotation(one_tenant: bool) -> dash.AnnotationQuery:
    """Marks where a tenant's trusted risk was in the high band (the AuraTenantRiskHigh condition)."""
    risk, status = ((f"aura_tenant_risk{T}", 'aura_tenant_verdict_status{status="ok",tenant="$tenant"}')
                    if one_tenant else ("aura_tenant_risk", 'aura_tenant_verdict_status{status="ok"}'))
    return (dash.AnnotationQuery().name("High risk (trusted)").datasource(DATASOURCE).enable(True).hide(False)
            .icon_color("red").expr(f"{risk} >= {HIGH_RISK} and on (tenant) ({status} == 1)"))


def base(uid: str, title: str, description: str, tenant: bool = False) -> dash.Dashboard:
    d = (dash.Dashboard(title).uid(uid).description(description).tags(["aura"]).refresh("30s")
         .annotation(high_risk_annotation(tenant))
         .time("now-3h", "now").timezone("browser").tooltip(model.DashboardCursorSync.CROSSHAIR)
         .link(dash.DashboardLink("AURA").type(model.DashboardLinkType.DASHBOARDS).tags(["aura"])
               .as_dropdown(True).include_vars(True).keep_time(True)))
    return d.with_variable(tenant_variable()) if tenant else d


def fleet() -> dash.Dashboard:
    trusted_high = (f'count((aura_tenant_risk >= {HIGH_RISK}) and on (tenant) '
                    f'(aura_tenant_verdict_status{{status="ok"}} == 1)) or vector(0)')
    risk_bars = (bargauge.Panel().title("Risk by tenant (latest committed verdict)").datasource(DATASOURCE)
                 .span(8).height(9).unit("percentunit").min(0).max(1).thresholds(_thresholds(*RISK_STEPS))
                 .display_mode(BarGaugeDisplayMode.GRADIENT)
                 .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    return (base("aura-fleet", "AURA / Fleet overview", "Every tenant AURA watches: cascade risk, "
                 "verdict status, health and load.")
            .with_row(dash.Row("Fleet"))
            .with_panel(single("Tenants watched", "count(aura_tenant_risk)"))
            .with_panel(single("Tenants at high risk (trusted)", trusted_high, thresholds=RED_FROM_1,
                               description="Trusted (status ok) latest verdicts at or above the high band."))
            .with_panel(single("Agents monitored", "sum(aura_tenant_agents)"))
            .with_panel(single("Open incidents", "sum(aura_tenant_open_incidents)", thresholds=ORANGE_FROM_1))
            .with_panel(_targets(risk_bars, [("sort_desc(aura_tenant_risk)", "{{tenant}}")], instant=True))
            .with_panel(ts("Cascade risk per tenant", [("aura_tenant_risk", "{{tenant}}")], "percentunit",
                           w=16, h=9, lo=0, hi=1, thresholds=RISK_STEPS,
                           description="Probability of a cascade within the horizon, latest committed "
                                       "verdict (any status)."))
            .with_row(dash.Row("Health"))
            .with_panel(status_timeline("Verdict status per tenant"))
            .with_panel(ts("Unhealthy agents per tenant", [("aura_tenant_unhealthy_ratio", "{{tenant}}")],
                           "percentunit", lo=0, hi=1))
            .with_panel(ts("Topology stability per tenant",
                           [("aura_tenant_topology_stability", "{{tenant}}")], lo=0, hi=1,
                           description="1 / (1 + Wasserstein distance between consecutive windows' stress "
                                       "H0 diagrams): 1 = unchanged."))
            .with_panel(ts("Records read per tenant", [("tenant:aura_records_read:rate5m", "{{tenant}}")],
                           "rps"))
            .with_panel(ts("Agents per tenant", [("aura_tenant_agents", "{{tenant}}")], step=True))
            .with_panel(ts("Served model PR-AUC (held-out test split)",
                           [("aura_backtest_pr_auc", "{{split}}")], lo=0, hi=1)))


def tenant() -> dash.Dashboard:
    trusted = (f'aura_tenant_risk{T} and on (tenant) '
               f'(aura_tenant_verdict_status{{status="ok",tenant="$tenant"}} == 1)')
    return (base("aura-tenant", "AURA / Tenant risk", "One tenant: its cascade risk, verdict status and "
                 "the topology of its call graph under stress (Betti numbers).", tenant=True)
            .with_row(dash.Row("Risk"))
            .with_panel(ts("Cascade risk", [(f"aura_tenant_risk{T}", "any status"),
                                            (trusted, "trusted (ok)")],
                           "percentunit", w=16, h=9, lo=0, hi=1, thresholds=RISK_STEPS))
            .with_panel(single("Agents", f"aura_tenant_agents{T}", w=4, h=9))
            .with_panel(single("Open incidents", f"aura_tenant_open_incidents{T}", w=4, h=9,
                               thresholds=ORANGE_FROM_1))
            .with_panel(status_timeline("Verdict status", sel=',tenant="$tenant"', w=24, h=5))
            .with_row(dash.Row("Topology"))
            .with_panel(ts("Betti numbers (stress filtration)", [(f"aura_tenant_betti{T}", "Betti-{{dim}}")],
                           step=True, lo=0,
                           description="Betti-0 (components) and Betti-1 (loops) of the call graph's "
                                       "stress filtration at 0.5, per window."))
            .with_panel(ts("Topology stability", [(f"aura_tenant_topology_stability{T}", "stability")],
                           lo=0, hi=1))
            .with_panel(ts("Unhealthy agents", [(f"aura_tenant_unhealthy_ratio{T}", "unhealthy")],
                           "percentunit", lo=0, hi=1))
            .with_panel(ts("Records per second", [(f"tenant:aura_records_read:rate5m{T}", "read"),
                                                  (f"tenant:aura_records_windowed:rate5m{T}", "windowed"),
                                                  (f"tenant:aura_records_dead_lettered:rate5m{T}",
                                                   "dead-lettered")], "rps"))
            .with_panel(ts("Verdicts by outcome",
                           [(f"tenant_outcome:aura_verdicts:rate5m{T}", "{{outcome}}")], "ops")))


def agents() -> dash.Dashboard:
    worst = (table.Panel().title("Worst agents now").datasource(DATASOURCE).span(12).height(10)
             .unit("percentunit").show_header(True)
             .with_transformation(model.DataTransformerConfig(id_val="organize", options={
                 "excludeByName": {"Time": True, "__name__": True, "instance": True, "job": True},
                 "renameByName": {"Value": "error ratio"}})))
    return (base("aura-agents", "AURA / Agent health", "The top-k agents of a tenant (by error rate, then "
                 "p99 latency), per window.", tenant=True)
            .with_panel(agent_heatmap("Agent error ratio (heatmap)", "aura_agent_error_ratio", "percentunit",
                                      "Error rate of each of the tenant's top-k agents over time."))
            .with_panel(agent_heatmap("Agent p99 latency (heatmap)", "aura_agent_latency_p99_seconds", "s",
                                      "p99 latency of the same agents."))
            .with_panel(_targets(worst, [(f"sort_desc(aura_agent_error_ratio{T})", "{{agent}}")],
                                 fmt=PromQueryFormat.TABLE, instant=True))
            .with_panel(ts("Agent error ratio", [(f"aura_agent_error_ratio{T}", "{{agent}}")], "percentunit",
                           h=10, lo=0)))


def pipeline() -> dash.Dashboard:
    return (base("aura-pipeline", "AURA / Pipeline health", "AURA's own health: ingest, the streaming "
                 "job, consensus, the graph and the service's children.")
            .with_row(dash.Row("Throughput"))
            .with_panel(ts("Records per second", [("sum(tenant:aura_records_read:rate5m)", "read"),
                                                  ("sum(tenant:aura_records_windowed:rate5m)", "windowed"),
                                                  ("sum(tenant:aura_records_dead_lettered:rate5m)",
                                                   "dead-lettered")], "rps"))
            .with_panel(ts("Ingest requests", [
                (f"sum by (route, code) (rate(aura_ingest_requests_total{RI}))", "{{route}} {{code}}"),
                (f"sum by (tenant) (rate(aura_spans_received_total{RI}))", "spans {{tenant}}")], "reqps"))
            .with_row(dash.Row("Dead letters"))
            .with_panel(ts("Dead letters by reason", [("tenant_reason:aura_records_dead_lettered:rate5m",
                                                       "{{tenant}} {{reason}}")], "rps"))
            .with_panel(ts("Dead-letter ratio",
                           [("tenant:aura_records_dead_letter_ratio:rate5m", "{{tenant}}")],
                           "percentunit", lo=0, thresholds=((None, "green"), (0.05, "red"))))
            .with_panel(ts("Ingest rejected and spans dead-lettered", [
                (f"sum by (route, reason) (rate(aura_ingest_rejected_total{RI}))",
                 "rejected {{route}} {{reason}}"),
                (f"sum by (reason) (rate(aura_spans_dead_lettered_total{RI}))", "spans {{reason}}")],
                "rps", w=24))
            .with_row(dash.Row("Latency"))
            .with_panel(histogram_heatmap("Window → verdict latency", "aura_window_verdict_latency_seconds",
                                          "Wall time from a window's pane firing to its committed verdict."))
            .with_panel(ts("Window → verdict latency p50 / p99", [
                ("aura:window_verdict_latency_seconds:p50_5m", "p50"),
                ("aura:window_verdict_latency_seconds:p99_5m", "p99")], "s",
                thresholds=((None, "green"), (30, "red"))))
            .with_panel(ts("Stage p99", [("stage:aura_stage_duration_seconds:p99_5m", "{{stage}}")], "s"))
            .with_panel(ts("Inference and consensus p99", [
                (p99("aura_inference_duration_seconds"), "inference"),
                (p99("aura_consensus_commit_duration_seconds"), "consensus commit"),
                (p99("aura_ingest_request_duration_seconds", "route"), "ingest {{route}}")], "s"))
            .with_row(dash.Row("Progress"))
            .with_panel(ts("Watermark lag", [("aura_watermark_lag_seconds", "lag")], "s", w=8))
            .with_panel(ts("Backlogs", [("aura_landing_backlog_files", "landing files"),
                                        ("aura_spool_backlog_files", "spool files"),
                                        ("aura_spans_pending", "spans pending")], w=8))
            .with_panel(ts("Verdicts by outcome", [
                ("sum by (outcome) (tenant_outcome:aura_verdicts:rate5m)", "{{outcome}}")], "ops", w=8))
            .with_row(dash.Row("Components"))
            .with_panel(ts("Child restarts", [
                (f"sum by (child) (increase(aura_service_child_restarts_total{RI}))", "{{child}}")],
                step=True, description="Children of the service started again after they died."))
            .with_panel(ts("Graph writes",
                           [("kind_outcome:aura_graph_writes:rate5m", "{{kind}} {{outcome}}")],
                           "ops", description="Windows' snapshots, topologies and predictions written to "
                                              "the graph database, or spilled to disk for replay when it "
                                              "was unreachable.")))


def incidents() -> dash.Dashboard:
    return (base("aura-incidents", "AURA / Incidents and interventions", "Incidents the alert service "
                 "opened, alerts it delivered, and the interventions of the incident workflow.")
            .with_panel(single("Open incidents", "sum(aura_tenant_open_incidents)", thresholds=ORANGE_FROM_1))
            .with_panel(single("Incidents opened (24 h)", "sum(increase(aura_alerts_incidents_total[24h]))"))
            .with_panel(single("Interventions (24 h)", "sum(increase(aura_alerts_interventions_total[24h]))"))
            .with_panel(single("Alerts not delivered (24 h)",
                               "sum(increase(aura_alerts_alerts_failed_total[24h]))", thresholds=RED_FROM_1))
            .with_panel(ts("Open incidents per tenant", [("aura_tenant_open_incidents", "{{tenant}}")],
                           step=True))
            .with_panel(ts("Interventions by kind and status", [
                (f"sum by (kind, status) (increase(aura_alerts_interventions_total{RI}))",
                 "{{kind}} {{status}}")], step=True))
            .with_panel(ts("Interventions per tenant", [
                (f"sum by (tenant, kind) (increase(aura_interventions_total{RI}))", "{{tenant}} {{kind}}")],
                step=True))
            .with_panel(ts("Alerts sent and failed", [
                (f"rate(aura_alerts_alerts_sent_total{RI})", "sent"),
                (f"rate(aura_alerts_alerts_failed_total{RI})", "failed")], "ops"))
            .with_panel(ts("Verdicts held back by reason", [
                (f"sum by (reason) (increase(aura_alerts_held_back_total{RI}))", "{{reason}}")],
                step=True, w=24, description="Committed verdicts the alert service did not act on (the "
                                             "model is unsure).")))


DASHBOARDS = {"fleet": fleet, "tenant": tenant, "agents": agents, "pipeline": pipeline,
              "incidents": incidents}


def _number_panels(panels: list[dict], start: int = 1) -> int:
    """Unique ids in reading order (rows and the panels inside them)."""
    n = start
    for p in panels:
        p["id"] = n
        n += 1
        n = _number_panels(p.get("panels", []), n)
    return n


def build(name: str) -> dict:
    """One dashboard as Grafana's JSON model (a dict)."""
    board = DASHBOARDS[name]().build()
    board.schema_version = SCHEMA_VERSION
    doc = json.loads(JSONEncoder(sort_keys=True).encode(board))
    doc.pop("style", None)  # deprecated: the user's theme decides
    _number_panels(doc["panels"])
    return doc


def render(name: str) -> str:
    return json.dumps(build(name), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DASHBOARDS:
        path = out / f"aura-{name}.json"
        path.write_text(render(name), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(p)
