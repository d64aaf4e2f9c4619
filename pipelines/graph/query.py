"""The read side of the graph: agents most at risk now, a tenant's topology timeline, and a
prediction with its window and implicated agents. Plain functions over a driver, returning
lists of dicts; ``render`` prints them as a table or JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime

AT_RISK = """
MATCH (p:Prediction)
WHERE $tenant IS NULL OR p.tenant = $tenant
WITH p.tenant AS tenant, max(p.window_start) AS latest
MATCH (p:Prediction {tenant: tenant, window_start: latest})-[r:IMPLICATES]->(a:Agent)
RETURN tenant, latest AS window_start, p.probability AS probability, coalesce(p.status, 'ok') AS status,
       a.id AS agent, r.rank AS rank,
       r.score AS involvement, a.error_rate AS error_rate, a.latency_p99_ms AS latency_p99_ms
ORDER BY probability DESC, tenant, rank
LIMIT $limit
"""

TIMELINE = """
MATCH (w:Window {tenant: $tenant})
OPTIONAL MATCH (p:Prediction)-[:FOR_WINDOW]->(w)
RETURN w.start AS window_start, w.n_agents AS agents, w.n_edges AS edges, w.betti_0 AS betti_0,
       w.betti_1 AS betti_1, w.stability AS stability, w.signature AS signature,
       p.status AS status, p.probability AS probability
ORDER BY window_start DESC
LIMIT $limit
"""

PREDICTION = """
MATCH (p:Prediction {key: $key})-[:FOR_WINDOW]->(w:Window)
OPTIONAL MATCH (p)-[r:IMPLICATES]->(a:Agent)
RETURN properties(p) AS prediction, properties(w) AS window, a.id AS agent, r.rank AS rank,
       r.score AS involvement
ORDER BY rank
"""

AGENT = """
MATCH (a:Agent {key: $key})
OPTIONAL MATCH (a)-[o:CALLS]->(callee:Agent)
WITH a, collect(CASE WHEN callee IS NULL THEN NULL ELSE {agent: callee.id, calls: o.weight, errors: o.errors,
     latency_ms: o.latency_ms, last_window: o.last_window} END) AS callees
OPTIONAL MATCH (caller:Agent)-[i:CALLS]->(a)
RETURN properties(a) AS agent, callees,
       collect(CASE WHEN caller IS NULL THEN NULL ELSE {agent: caller.id, calls: i.weight, errors: i.errors,
       latency_ms: i.latency_ms, last_window: i.last_window} END) AS callers
"""

LATEST = """
MATCH (p:Prediction {tenant: $tenant}) RETURN p.key AS key ORDER BY p.window_start DESC LIMIT 1
"""


def _run(driver, database: str, cypher: str, **params) -> list[dict]:
    records, _, _ = driver.execute_query(cypher, params, database_=database)
    return [r.data() for r in records]


def at_risk(driver, database: str, tenant: str | None = None, limit: int = 10) -> list[dict]:
    """Implicated agents of each tenant's latest prediction, most probable cascade first."""
    return _run(driver, database, AT_RISK, tenant=tenant, limit=limit)


def timeline(driver, database: str, tenant: str, limit: int = 50) -> list[dict]:
    """A tenant's last ``limit`` windows, oldest first: size, Betti numbers, stability,
    signature and the prediction."""
    return _run(driver, database, TIMELINE, tenant=tenant, limit=limit)[::-1]


def prediction(driver, database: str, tenant: str, window_start: int | None = None) -> dict | None:
    """One prediction (the latest when no window is given) with its window and agents."""
    if window_start is None:
        found = _run(driver, database, LATEST, tenant=tenant)
        if not found:
            return None
        key = found[0]["key"]
    else:
        key = f"{tenant}/{window_start}"
    rows = _run(driver, database, PREDICTION, key=key)
    if not rows:
        return None
    window = dict(rows[0]["window"])
    window.pop("features", None)  # 65 numbers: in the graph, not in the report
    return {"prediction": rows[0]["prediction"], "window": window,
            "implicated": [{"agent": r["agent"], "rank": r["rank"], "involvement": r["involvement"]}
                           for r in rows if r["agent"] is not None]}


def agent(driver, database: str, tenant: str, agent_id: str) -> dict | None:
    """One agent's latest written metrics with its callers and callees (CALLS edges)."""
    rows = _run(driver, database, AGENT, key=f"{tenant}/{agent_id}")
    if not rows:
        return None
    r = rows[0]
    return {"agent": r["agent"], "callers": [c for c in r["callers"] if c],
            "callees": [c for c in r["callees"] if c]}


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(_cell(x) for x in v)
    return str(v)


def iso_ms(t: int) -> str:
    return datetime.fromtimestamp(t / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(rows: list[dict]) -> str:
    """Rows as an aligned text table (window starts shown as UTC times)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    cells = [[iso_ms(r[c]) if c == "window_start" and isinstance(r[c], int) else _cell(r[c]) for c in cols]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()
    return "\n".join([line, "-" * len(line)] + ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip()
                                               for row in cells])


def render(result, as_json: bool) -> str:
    """JSON, or a table (a prediction as two key/value tables and its agents)."""
    if as_json:
        return json.dumps(result, indent=2, sort_keys=True, default=str)
    if result is None:
        return "(not found)"
    if isinstance(result, list):
        return table(result)
    parts = []
    for name in ("prediction", "window"):
        props = result[name]
        parts.append(f"{name}:\n" + table([{"property": k, "value": props[k]} for k in sorted(props)]))
    parts.append("implicated agents:\n" + table(result["implicated"]))
    return "\n\n".join(parts)
