"""The graph sink: predictions plus topology in Neo4j (or the embedded ArcadeDB Bolt server).

Engine-agnostic core: ``server`` (embedded Bolt server as a child process), ``statements``
(standard Cypher), ``rows`` (plain data -> parameter rows), ``delta`` (change detection in
numpy), ``plan`` (a snapshot's agent and CALLS writes as column steps), ``steps`` (steps ->
transactions and concurrent lanes), ``sink`` (batched idempotent writer with change
detection, retry and spill), ``query`` (the read side).
"""
