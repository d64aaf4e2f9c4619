"""The graph sink: predictions plus topology in Neo4j (or the embedded ArcadeDB Bolt server).

Engine-agnostic core: ``server`` (embedded Bolt server as a child process), ``statements``
(standard Cypher), ``rows`` (plain data -> parameter rows), ``sink`` (batched idempotent
writer with change detection, retry and spill), ``query`` (the read side).
"""
