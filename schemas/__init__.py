"""AURA's data contracts: JSON Schema, Arrow schemas and data-quality suites.

The files beside this module are the source of truth; this package only locates them and
builds the matching Arrow schemas.
"""

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
TELEMETRY_SCHEMA_VERSION = 1
TELEMETRY_JSON_SCHEMA = SCHEMA_DIR / f"telemetry.v{TELEMETRY_SCHEMA_VERSION}.json"
TELEMETRY_EXPECTATIONS = SCHEMA_DIR / "expectations" / f"telemetry_batch.v{TELEMETRY_SCHEMA_VERSION}.json"
FEATURES_SCHEMA_VERSION = 1
FEATURES_SCHEMA = SCHEMA_DIR / f"features.v{FEATURES_SCHEMA_VERSION}.json"
LABELS_JSON_SCHEMA = SCHEMA_DIR / "labels.v1.json"


def tenant_pattern() -> str:
    """The telemetry contract's tenant pattern (anchored), for checks outside the parser."""
    import json

    return json.loads(TELEMETRY_JSON_SCHEMA.read_text())["properties"]["tenant"]["pattern"]
