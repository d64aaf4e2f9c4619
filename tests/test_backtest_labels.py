"""The labels file of recorded telemetry: what `aura simulate` writes is accepted, anything
the scoring could not use is refused with the tenant and field named, and tenants of the
labels and of the telemetry reconcile."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.backtest.labels import LabelsError, check_labels, load_labels, reconcile
from pipelines.simulation.scenario import Scenario, ScenarioConfig


def _doc(tenant: str = "t1") -> dict:
    return {"schema": "aura.labels/v1", "tenant": tenant, "start": 1000.0, "end": 1600.0, "n_agents": 50,
            "graph": "layered",
            "cascades": [{"mechanism": "retry_storm", "trigger_time": 1100.0, "onset": 1250.0,
                          "end": 1300.0}],
            "fizzles": [{"mechanism": "timeout_propagation", "trigger_time": 1400.0}]}


def _file(*docs: dict) -> dict:
    return {"schema": "aura.labels/v1", "scenarios": list(docs)}


def test_what_the_simulator_writes_is_accepted():
    sc = Scenario(ScenarioConfig(n_agents=40, duration_s=400.0, seed=11, tenant="sim",
                                 quiet_s=(5.0, 10.0), ramp_s=(20.0, 30.0), trigger_s=(10.0, 20.0),
                                 severities=(1.0,)))
    for _ in sc.ticks():
        pass
    doc = sc.labels_document()
    assert doc["cascades"], "the scenario should hold a cascade for this test to mean something"
    assert check_labels(_file(doc)) == [doc]
    assert check_labels(doc) == [doc]  # one document on its own


REQUIRED = [*[((), k) for k in ("tenant", "start", "end", "cascades")],
            *[(("cascades", 0), k) for k in ("trigger_time", "onset", "end")],
            (("fizzles", 0), "trigger_time")]


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(REQUIRED), st.integers(0, 2))
def test_a_missing_required_field_is_named(where, position):
    docs = [_doc(f"t{i}") for i in range(3)]
    path, key = where
    target = docs[position]
    for p in path:
        target = target[p]
    del target[key]
    with pytest.raises(LabelsError) as err:
        check_labels(_file(*docs), "labels.json")
    inner = "".join(f"[{p}]" if isinstance(p, int) else f"{p}" for p in path)
    who = "" if key == "tenant" else f" (tenant 't{position}')"
    field = f"{inner}: " if inner else ""
    assert str(err.value) == f"labels.json: scenario {position}{who}: {field}missing {key}"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["cascades"][0].update(onset="soon"), "cascades[0].onset: value must be number"),
    (lambda d: d["cascades"][0].update(onset=1350.0), "cascades[0]: need trigger_time <= onset <= end"),
    (lambda d: d["cascades"][0].update(onset=1050.0), "cascades[0]: need trigger_time <= onset <= end"),
    (lambda d: d.update(start=1700.0), "start (1700.0) must be before end (1600.0)"),
    (lambda d: d.update(end=1200.0), "cascades[0]: onset 1250.0 is outside the recording [1000.0, 1200.0]"),
    (lambda d: d.update(tenant="two words"), "tenant: value must match pattern"),
    (lambda d: d.update(start=-5), "start: value must be bigger than or equal to 0"),
])
def test_values_the_scoring_cannot_use_are_refused(edit, message):
    doc = _doc()
    edit(doc)
    with pytest.raises(LabelsError, match=r"^labels\.json: scenario 0 \(tenant '[^']*'\): ") as err:
        check_labels(_file(doc), "labels.json")
    assert message in str(err.value)


def test_file_level_problems(tmp_path):
    with pytest.raises(LabelsError, match="a second document for this tenant"):
        check_labels(_file(_doc("a"), _doc("b"), _doc("a")))
    with pytest.raises(LabelsError, match="expected a JSON object"):
        check_labels([_doc()])
    with pytest.raises(LabelsError, match="missing scenarios"):
        check_labels({"schema": "aura.labels/v1"})
    with pytest.raises(LabelsError, match="scenarios: value must be array"):
        check_labels({"scenarios": {"t1": _doc()}})
    bad = tmp_path / "labels.json"
    bad.write_text('{"scenarios": [')
    with pytest.raises(LabelsError, match=f"^{bad}: not valid JSON"):
        load_labels(str(bad))
    good = tmp_path / "ok.json"
    good.write_text(json.dumps(_file(_doc("a"), _doc("b"))))
    assert [d["tenant"] for d in load_labels(str(good))] == ["a", "b"]


def test_checking_does_not_modify_the_documents():
    f = _file(_doc("a"), _doc("b"))
    before = copy.deepcopy(f)
    check_labels(f)
    assert f == before


names = st.sets(st.sampled_from([f"t{i}" for i in range(8)]), max_size=8)


@given(names, st.dictionaries(st.sampled_from([f"t{i}" for i in range(8)]), st.integers(1, 100)))
def test_tenants_reconcile(labelled, windows):
    r = reconcile([_doc(t) for t in sorted(labelled)], windows)
    assert set(r["scored"]) | set(r["labels_without_telemetry"]) == labelled
    assert set(r["scored"]) | set(r["telemetry_without_labels"]) == set(windows)
    assert not set(r["scored"]) & set(r["labels_without_telemetry"])
    assert not set(r["scored"]) & set(r["telemetry_without_labels"])
    assert all(r["telemetry_without_labels"][t] == windows[t] for t in r["telemetry_without_labels"])
