"""AURA as a service: OTLP and native ingestion, reads, alerts (``aura api``)."""
