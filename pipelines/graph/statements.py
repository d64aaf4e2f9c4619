"""The Cypher of the graph sink: standard Neo4j 5 Cypher that the embedded ArcadeDB Bolt
server runs verbatim (each statement is exercised against it by tests/test_graph_sink.py).

Every write is an ``UNWIND`` over rows (or over lists, one per property) that MERGEs on a
unique key, or MATCHes a key the writer created earlier, so replaying a batch changes
nothing. Values that describe "now" (agent metrics, CALLS weight, a window's
snapshot, a prediction) are set only from a row at least as new as what the graph holds
(``last_window`` / pane guards), and ``first_window`` takes the minimum: the result does
not depend on the order batches arrive in (a spilled batch replayed later, a late pane).
"""

from __future__ import annotations

import os

from pipelines.graph.rows import AGENT_PROPS

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "schemas", "graph.v1.cypher")


def constraint_statements(path: str = SCHEMA_FILE) -> list[str]:
    """The statements of the schema file (comments dropped, split on ';')."""
    with open(path) as fh:
        text = "\n".join(line for line in fh if not line.lstrip().startswith("//"))
    return [s.strip() for s in text.split(";") if s.strip()]


_FIRST = ("SET {v}.first_window = CASE WHEN {v}.first_window IS NULL OR row.window < {v}.first_window "
          "THEN row.window ELSE {v}.first_window END")

AGENTS = f"""
UNWIND $rows AS row
MERGE (a:Agent {{key: row.key}}) ON CREATE SET a.tenant = row.tenant, a.id = row.id
{_FIRST.format(v='a')}
WITH a, row WHERE a.last_window IS NULL OR row.window >= a.last_window
SET a += row.props, a.last_window = row.window
"""

CALLS = f"""
UNWIND $rows AS row
MERGE (a:Agent {{key: row.src}}) ON CREATE SET a.tenant = row.tenant, a.id = row.src_id
MERGE (b:Agent {{key: row.dst}}) ON CREATE SET b.tenant = row.tenant, b.id = row.dst_id
MERGE (a)-[r:CALLS]->(b)
{_FIRST.format(v='r')}
WITH r, row WHERE r.last_window IS NULL OR row.window >= r.last_window
SET r.weight = row.weight, r.errors = row.errors, r.latency_ms = row.latency_ms,
    r.last_window = row.window
"""

# -- column-shaped statements (``pipelines.graph.plan``): one list per property and the
# window as one scalar, ``UNWIND range(0, size($key) - 1) AS i`` over them; rows sorted by
# key. A NaN agent metric is None in its column and leaves the value held (as ``+=`` with
# the key left out did). Three kinds per row type: MERGE (new keys, windows earlier than
# any seen: every guard), UPDATE (keys this process wrote: MATCH by key + SET), TOUCH
# (staggered refresh of unchanged rows: ``last_window`` only).
_AGENT_VALUES = ", ".join(f"a.{p} = coalesce(${p}[i], a.{p})" for p in AGENT_PROPS)
_CALL_VALUES = ("r.weight = $weight[i], r.errors = $errors[i], r.latency_ms = $latency_ms[i], "
                "r.last_window = $window")
_ID = "substring({k}, size($tenant) + 1)"  # an agent key is tenant/agent_id (rows.agent_key)
_FIRST_COL = ("SET {v}.first_window = CASE WHEN {v}.first_window IS NULL OR $window < {v}.first_window "
              "THEN $window ELSE {v}.first_window END")

AGENTS_MERGE = f"""
UNWIND range(0, size($key) - 1) AS i
MERGE (a:Agent {{key: $key[i]}}) ON CREATE SET a.tenant = $tenant, a.id = {_ID.format(k='$key[i]')}
{_FIRST_COL.format(v='a')}
WITH a, i WHERE a.last_window IS NULL OR $window >= a.last_window
SET {_AGENT_VALUES}, a.last_window = $window
"""

AGENTS_UPDATE = f"""
UNWIND range(0, size($key) - 1) AS i
MATCH (a:Agent {{key: $key[i]}}) WHERE a.last_window IS NULL OR a.last_window <= $window
SET {_AGENT_VALUES}, a.last_window = $window
"""

AGENTS_TOUCH = """
UNWIND $key AS k
MATCH (a:Agent {key: k}) WHERE a.last_window IS NULL OR a.last_window < $window
SET a.last_window = $window
"""

CALLS_MERGE = f"""
UNWIND range(0, size($src) - 1) AS i
MERGE (a:Agent {{key: $src[i]}}) ON CREATE SET a.tenant = $tenant, a.id = {_ID.format(k='$src[i]')}
MERGE (b:Agent {{key: $dst[i]}}) ON CREATE SET b.tenant = $tenant, b.id = {_ID.format(k='$dst[i]')}
MERGE (a)-[r:CALLS]->(b)
{_FIRST_COL.format(v='r')}
WITH r, i WHERE r.last_window IS NULL OR $window >= r.last_window
SET {_CALL_VALUES}
"""

CALLS_UPDATE = f"""
UNWIND range(0, size($src) - 1) AS i
MATCH (a:Agent {{key: $src[i]}})-[r:CALLS]->(b:Agent {{key: $dst[i]}})
WHERE r.last_window IS NULL OR r.last_window <= $window
SET {_CALL_VALUES}
"""

CALLS_TOUCH = """
UNWIND range(0, size($src) - 1) AS i
MATCH (a:Agent {key: $src[i]})-[r:CALLS]->(b:Agent {key: $dst[i]})
WHERE r.last_window IS NULL OR r.last_window < $window
SET r.last_window = $window
"""

_WINDOW = """
UNWIND $rows AS row
MERGE (t:Tenant {id: row.tenant})
MERGE (w:Window {key: row.key})
  ON CREATE SET w.tenant = row.tenant, w.start = row.start, w.end = row.end,
                w.start_time = datetime({epochMillis: row.start})
MERGE (t)-[:HAS_WINDOW]->(w)
SET t.first_window = CASE WHEN t.first_window IS NULL OR row.start < t.first_window
                     THEN row.start ELSE t.first_window END,
    t.last_window = CASE WHEN t.last_window IS NULL OR row.start > t.last_window
                    THEN row.start ELSE t.last_window END
"""

# the snapshot part of a window (call graph size, implicated agents); a later pane wins
WINDOW_SNAPSHOT = _WINDOW + """
WITH w, row WHERE w.snapshot_pane IS NULL OR row.pane >= w.snapshot_pane
SET w += row.props, w.snapshot_pane = row.pane
"""

# the topology part (feature vector, Betti numbers, stability, signature); a later pane wins
WINDOW_TOPOLOGY = _WINDOW + """
WITH w, row WHERE w.feature_pane IS NULL OR row.pane >= w.feature_pane
SET w += row.props, w.feature_pane = row.pane
"""

# consecutive window slots of a tenant, (start - slide) -> start -> (start + slide): both
# directions, so that a window arriving late (a replayed spill) joins the chain
CHAIN_PREV = """
UNWIND $rows AS row
MATCH (p:Window {key: row.prev}), (w:Window {key: row.key})
MERGE (p)-[:NEXT]->(w)
"""

CHAIN_NEXT = """
UNWIND $rows AS row
MATCH (w:Window {key: row.key}), (n:Window {key: row.next})
MERGE (w)-[:NEXT]->(n)
"""

# one prediction per (tenant, window); a later pane replaces the earlier one's values.
# ``row.props`` may carry the consensus certificate (qc_* properties): no migration.
PREDICTION = _WINDOW.replace("row.key", "row.window_key") + """
MERGE (p:Prediction {key: row.key}) ON CREATE SET p.tenant = row.tenant, p.window_start = row.start
MERGE (p)-[:FOR_WINDOW]->(w)
WITH p, row WHERE p.pane IS NULL OR row.pane >= p.pane
SET p += row.props, p.pane = row.pane
"""

# predictions of these windows -> the window's implicated agents (replaced, not added)
IMPLICATES = """
UNWIND $rows AS row
MATCH (p:Prediction)-[:FOR_WINDOW]->(w:Window {key: row.key})
WHERE w.implicated IS NOT NULL
OPTIONAL MATCH (p)-[old:IMPLICATES]->(:Agent)
DELETE old
WITH DISTINCT p, w
UNWIND range(0, size(w.implicated) - 1) AS i
MATCH (a:Agent {key: w.implicated[i]})
MERGE (p)-[r:IMPLICATES]->(a)
SET r.rank = i + 1, r.score = w.implicated_scores[i]
"""

# naive writer for the benchmark: one statement per row, one transaction per statement
NAIVE_AGENT = """
MERGE (a:Agent {key: $key}) ON CREATE SET a.tenant = $tenant, a.id = $id
SET a += $props, a.last_window = $window
"""

NAIVE_CALL = """
MERGE (a:Agent {key: $src}) ON CREATE SET a.tenant = $tenant, a.id = $src_id
MERGE (b:Agent {key: $dst}) ON CREATE SET b.tenant = $tenant, b.id = $dst_id
MERGE (a)-[r:CALLS]->(b)
SET r.weight = $weight, r.errors = $errors, r.latency_ms = $latency_ms, r.last_window = $window
"""

# an incident of the workflow (pipelines/incidents/graph_rows.py): the latest values win
INCIDENT = """
UNWIND $rows AS row
MERGE (i:Incident {id: row.id})
SET i += row.props
"""

# its actions -> the agents they touched (the Agent key convention: tenant/agent_id)
INCIDENT_ACTIONS = """
UNWIND $rows AS row
MATCH (i:Incident {id: row.incident})
MERGE (x:Action {id: row.id})
SET x += row.props
MERGE (i)-[:TOOK]->(x)
WITH x, row
UNWIND row.agents AS agent
MERGE (a:Agent {key: agent.key}) ON CREATE SET a.tenant = row.tenant, a.id = agent.id
MERGE (x)-[:TOUCHED]->(a)
"""
