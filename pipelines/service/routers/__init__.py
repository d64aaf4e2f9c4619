"""One router per resource: ingest, tenants (risk, windows, incidents, agents), health."""
