"""The cascade simulator: AURA's source of labelled telemetry."""
