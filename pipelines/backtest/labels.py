"""The labels file of recorded telemetry (``schemas/labels.v1.json``): read, checked, and
matched against the tenants the telemetry actually holds.

A labels file decides what every alarm counts as, so a broken one must stop the backtest
with a message that names the tenant and the field, not surface later as a KeyError or
as a recall computed over fewer onsets than the user labelled.
"""

from __future__ import annotations

import json
from functools import lru_cache

import fastjsonschema

from schemas import LABELS_JSON_SCHEMA


class LabelsError(ValueError):
    """The labels file cannot be scored against."""


@lru_cache(maxsize=1)
def _validator():
    return fastjsonschema.compile(json.loads(LABELS_JSON_SCHEMA.read_text()))


def _where(i: int, doc: object) -> str:
    tenant = doc.get("tenant") if isinstance(doc, dict) else None
    return f"scenario {i}" + (f" (tenant {tenant!r})" if isinstance(tenant, str) else "")


def _reason(err: fastjsonschema.JsonSchemaValueException, field: str) -> str:
    """'cascades[0]: missing onset' rather than the validator's own wording."""
    if err.rule == "required" and isinstance(err.value, dict):
        missing = [k for k in err.rule_definition if k not in err.value]
        return f"{field + ': ' if field else ''}missing {', '.join(missing)}"
    return f"{field or 'document'}: {err.message.replace(err.name, 'value')}"


def check_labels(obj: object, source: str = "labels") -> list[dict]:
    """The scenario documents of a decoded labels file, or ``LabelsError`` naming what is
    wrong. Accepts ``{"scenarios": [...]}`` or one scenario document on its own."""
    if isinstance(obj, dict) and "scenarios" not in obj and "tenant" in obj:
        obj = {"scenarios": [obj]}
    if not isinstance(obj, dict):
        raise LabelsError(f"{source}: expected a JSON object with a 'scenarios' list, "
                          f"got {type(obj).__name__}")
    validate = _validator()
    docs = obj.get("scenarios")
    try:  # the file's own fields; each document is checked once, below, where it can be named
        validate({**obj, "scenarios": []} if isinstance(docs, list) else obj)
    except fastjsonschema.JsonSchemaValueException as err:
        raise LabelsError(f"{source}: {_reason(err, err.name.removeprefix('data').lstrip('.'))}") from None
    for i, doc in enumerate(docs):
        try:
            validate({"scenarios": [doc]})
        except fastjsonschema.JsonSchemaValueException as err:
            field = err.name.replace("data.scenarios[0]", "").lstrip(".")
            raise LabelsError(f"{source}: {_where(i, doc)}: {_reason(err, field)}") from None
    seen: set[str] = set()
    for i, doc in enumerate(docs):
        where = f"{source}: {_where(i, doc)}"
        if doc["tenant"] in seen:
            raise LabelsError(f"{where}: a second document for this tenant")
        seen.add(doc["tenant"])
        if not doc["start"] < doc["end"]:
            raise LabelsError(f"{where}: start ({doc['start']}) must be before end ({doc['end']})")
        for k, c in enumerate(doc["cascades"]):
            if not c["trigger_time"] <= c["onset"] <= c["end"]:
                raise LabelsError(f"{where}: cascades[{k}]: need trigger_time <= onset <= end, got "
                                  f"{c['trigger_time']}, {c['onset']}, {c['end']}")
            if not doc["start"] <= c["onset"] <= doc["end"]:
                raise LabelsError(f"{where}: cascades[{k}]: onset {c['onset']} is outside the "
                                  f"recording [{doc['start']}, {doc['end']}]")
    return docs


def load_labels(path: str) -> list[dict]:
    """``check_labels`` of the file at ``path``."""
    try:
        with open(path) as fh:
            obj = json.load(fh)
    except json.JSONDecodeError as err:
        raise LabelsError(f"{path}: not valid JSON ({err})") from None
    return check_labels(obj, path)


def reconcile(docs: list[dict], windows_per_tenant: dict[str, int]) -> dict:
    """Which tenants can be scored: labelled and with windows. The rest is reported, never
    dropped silently: tenants whose telemetry has no labels (with their window counts) and
    labelled tenants without telemetry."""
    labelled = {d["tenant"] for d in docs}
    return {
        "scored": sorted(labelled & set(windows_per_tenant)),
        "telemetry_without_labels": {t: n for t, n in sorted(windows_per_tenant.items())
                                     if t not in labelled},
        "labels_without_telemetry": sorted(labelled - set(windows_per_tenant)),
    }
