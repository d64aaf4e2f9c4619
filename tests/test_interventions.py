"""The ``aura.intervention/v1`` contract: round trips, schema, the rules beyond it, ids."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.incidents.interventions import (
    CIRCUIT_BREAKER,
    KINDS,
    REROUTE,
    RETRY_BUDGET,
    ROLLBACK,
    SCALE_OUT,
    SCHEMA_PATH,
    SHED_LOAD,
    Intervention,
    InterventionError,
    Link,
)

CERT = {"view": 3, "votes": ["n1", "n2", "n3"], "digest": "ab12"}


def make(**overrides: Any) -> Intervention:
    """A valid shed_load intervention with ``overrides`` applied."""
    fields: dict[str, Any] = dict(
        tenant="acme", window_start=1_767_225_600_000, window_end=1_767_225_660_000, probability=0.93,
        certificate=CERT, kind=SHED_LOAD, targets=("gateway",), magnitude=0.3, ttl_s=300.0,
        reason="error storm at the entry", issued_at=1_767_225_661.5, band="high", incident_id="inc-1")
    fields.update(overrides)
    return Intervention(**fields)


@cache
def schema_validator() -> jsonschema.Draft202012Validator:
    with open(SCHEMA_PATH) as fh:
        return jsonschema.Draft202012Validator(json.load(fh))


def test_round_trip_and_schema() -> None:
    iv = make()
    doc = json.loads(json.dumps(iv.to_dict()))
    schema_validator().validate(doc)
    back = Intervention.from_dict(doc)
    assert back == iv and back.id == iv.id and back.to_dict() == iv.to_dict()


def test_breaker_round_trip_keeps_links() -> None:
    iv = make(kind=CIRCUIT_BREAKER, targets=("db",), magnitude=1.0,
              links=(Link("api", "db"), Link("worker", "db")))
    doc = iv.to_dict()
    schema_validator().validate(doc)
    assert doc["links"] == [{"caller": "api", "callee": "db"}, {"caller": "worker", "callee": "db"}]
    assert Intervention.from_dict(doc) == iv


@pytest.mark.parametrize(("overrides", "rule"), [
    ({"certificate": None}, "committed"),
    ({"certificate": {}}, "committed"),
    ({"magnitude": 1.5}, "shed_load magnitude"),
    ({"magnitude": 0.0}, "shed_load magnitude"),
    ({"kind": RETRY_BUDGET, "magnitude": 1.5}, "retry_budget magnitude"),
    ({"kind": RETRY_BUDGET, "magnitude": float("inf")}, "retry_budget magnitude"),
    ({"kind": SCALE_OUT, "magnitude": 0.0}, "scale_out magnitude"),
    ({"kind": CIRCUIT_BREAKER, "magnitude": 1.0}, "circuit_breaker needs links"),
    ({"kind": CIRCUIT_BREAKER, "magnitude": 0.5, "links": (Link("a", "b"),)}, "circuit_breaker magnitude"),
    ({"kind": REROUTE, "magnitude": 1.0, "links": (Link("a", "b"),)}, "links only on circuit_breaker"),
    ({"kind": ROLLBACK, "magnitude": 1.0}, "rollback_of"),
    ({"rollback_of": "0123456789abcdef"}, "rollback_of"),
    ({"kind": "reboot_everything"}, "unknown kind"),
    ({"probability": 1.2}, "probability"),
    ({"window_end": 0}, "window_end before window_start"),
    ({"ttl_s": 0.0}, "ttl_s"),
    ({"reason": ""}, "reason"),
    ({"targets": ()}, "needs targets"),
])
def test_check_names_the_broken_rule(overrides: dict[str, Any], rule: str) -> None:
    with pytest.raises(InterventionError, match=rule):
        make(**overrides)


def test_ids_are_deterministic_and_keyed() -> None:
    base = make()
    assert make().id == base.id and len(base.id) == 16
    keyed = [{"tenant": "globex"}, {"window_start": base.window_start + 1},
             {"window_end": base.window_end + 1}, {"kind": REROUTE, "magnitude": 1.0},
             {"targets": ("gateway", "edge")}, {"magnitude": 0.31}, {"incident_id": "inc-2"},
             {"incident_id": None}]
    ids = {base.id} | {make(**k).id for k in keyed}
    assert len(ids) == len(keyed) + 1
    breaker = make(kind=CIRCUIT_BREAKER, magnitude=1.0, links=(Link("api", "db"),))
    assert breaker.id != make(kind=CIRCUIT_BREAKER, magnitude=1.0, links=(Link("web", "db"),)).id
    rollback = make(kind=ROLLBACK, magnitude=1.0, rollback_of=base.id)
    assert rollback.id != make(kind=ROLLBACK, magnitude=1.0, rollback_of=breaker.id).id
    # fields outside the key leave the id alone
    assert make(issued_at=1.0, reason="other", probability=0.5, ttl_s=60.0, band=None).id == base.id


def test_replace_recomputes_the_id() -> None:
    base = make()
    assert replace(base, magnitude=0.5).id == make(magnitude=0.5).id != base.id


def test_from_dict_rejects_a_tampered_id() -> None:
    doc = make().to_dict()
    doc["magnitude"] = 0.9  # content changed, id kept
    with pytest.raises(InterventionError, match="does not match"):
        Intervention.from_dict(doc)
    doc = make().to_dict()
    doc["id"] = "0" * 16
    with pytest.raises(InterventionError, match="does not match"):
        Intervention.from_dict(doc)


def test_from_dict_rejects_schema_violations() -> None:
    doc = make().to_dict()
    doc["priority"] = "urgent"
    with pytest.raises(InterventionError, match="priority"):
        Intervention.from_dict(doc)
    doc = make().to_dict()
    del doc["verdict"]["certificate"]
    with pytest.raises(InterventionError, match="certificate"):
        Intervention.from_dict(doc)


_hex16 = st.from_regex(r"[0-9a-f]{16}", fullmatch=True)
_name = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
_finite = {"allow_nan": False, "allow_infinity": False}
_magnitude = {
    SHED_LOAD: st.floats(0.0, 1.0, exclude_min=True),
    RETRY_BUDGET: st.integers(0, 10).map(float),
    SCALE_OUT: st.integers(1, 50).map(float),
    CIRCUIT_BREAKER: st.sampled_from([0.0, 1.0]),
    REROUTE: st.just(1.0),
    ROLLBACK: st.just(1.0),
}


@st.composite
def interventions(draw: st.DrawFn) -> Intervention:
    kind = draw(st.sampled_from(KINDS))
    start = draw(st.integers(0, 2**45))
    targets = draw(st.lists(_name, min_size=0 if kind == ROLLBACK else 1, max_size=4, unique=True))
    links = ()
    if kind == CIRCUIT_BREAKER:
        links = tuple(Link(a, b) for a, b in draw(st.lists(st.tuples(_name, _name), min_size=1, max_size=3)))
    certificate = draw(st.one_of(
        _name, st.dictionaries(_name, st.one_of(st.integers(), _name, st.lists(_name)), min_size=1)))
    return Intervention(
        tenant=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)),
        window_start=start, window_end=start + draw(st.integers(0, 10**7)),
        probability=draw(st.floats(0.0, 1.0)), certificate=certificate, kind=kind, targets=tuple(targets),
        magnitude=draw(_magnitude[kind]), ttl_s=draw(st.floats(1e-3, 1e6, **_finite)),
        reason=draw(_name), issued_at=draw(st.floats(0.0, 4e9, **_finite)), links=links,
        band=draw(st.none() | st.sampled_from(["low", "medium", "high"])),
        incident_id=draw(st.none() | _name),
        rollback_of=draw(_hex16) if kind == ROLLBACK else None)


@settings(max_examples=40, deadline=None)
@given(interventions())
def test_any_valid_intervention_round_trips(iv: Intervention) -> None:
    doc = json.loads(json.dumps(iv.to_dict()))
    schema_validator().validate(doc)
    back = Intervention.from_dict(doc)
    assert back == iv and back.id == iv.id and back.to_dict() == iv.to_dict()
