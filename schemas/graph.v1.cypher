// AURA graph model, version 1: constraints and indexes, applied at start-up (idempotent).
// Standard Neo4j 5 Cypher; the embedded ArcadeDB Bolt server accepts the same statements.
// One statement per line-terminated block, separated by ';'. Model: schemas/graph.md
CREATE CONSTRAINT aura_tenant_id IF NOT EXISTS FOR (t:Tenant) REQUIRE t.id IS UNIQUE;
CREATE CONSTRAINT aura_agent_key IF NOT EXISTS FOR (a:Agent) REQUIRE a.key IS UNIQUE;
CREATE CONSTRAINT aura_window_key IF NOT EXISTS FOR (w:Window) REQUIRE w.key IS UNIQUE;
CREATE CONSTRAINT aura_prediction_key IF NOT EXISTS FOR (p:Prediction) REQUIRE p.key IS UNIQUE;
CREATE INDEX aura_window_tenant IF NOT EXISTS FOR (w:Window) ON (w.tenant);
CREATE INDEX aura_prediction_tenant IF NOT EXISTS FOR (p:Prediction) ON (p.tenant);
CREATE INDEX aura_agent_tenant IF NOT EXISTS FOR (a:Agent) ON (a.tenant);
CREATE CONSTRAINT aura_incident_id IF NOT EXISTS FOR (i:Incident) REQUIRE i.id IS UNIQUE;
CREATE CONSTRAINT aura_action_id IF NOT EXISTS FOR (x:Action) REQUIRE x.id IS UNIQUE;
