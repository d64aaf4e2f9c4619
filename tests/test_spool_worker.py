"""The spool worker: spooled OTLP requests -> landed telemetry files, counted in the ledger.
Spans are stamped a little after the wall clock: spans far behind the time they were
received are sealed at once (the aggregator's idle rule), which these tests do not want."""

from __future__ import annotations

import json
import os
import time

from pipelines.service.spool import Spool
from pipelines.service.spool_worker import SpoolWorker, read_ledger
from pipelines.telemetry import parse_lines
from tests.otlp_payloads import fleet_request, shifted


def _landed(landing) -> list[dict]:
    records = []
    for name in sorted(os.listdir(landing)):
        if name.endswith(".ndjson"):
            with open(os.path.join(landing, name), "rb") as fh:
                res = parse_lines(fh.read().splitlines(), name)
            assert res.dead == [], res.dead[:3]
            records += res.records
    return records


def test_spooled_spans_land_as_records_and_the_ledger_reconciles(tmp_path):
    spool, landing, ingest = (str(tmp_path / d) for d in ("spool", "landing", "ingest"))
    s = Spool(spool)
    base = fleet_request(256, time.time() + 30, seed=3)  # now-ish: nothing sealed by idleness
    for k in range(12):  # 12 requests, 0.5 s apart in event time
        s.put(shifted(base, 0.5 * k, k + 1), "acme" if k % 2 else "beta")
    w = SpoolWorker(spool, landing, ingest, grace_s=1.0)
    assert w.step() == 12
    early = read_ledger(ingest)
    assert early["spans_received"] == 12 * 256 == early["spans_in_records"] + early["spans_pending"]
    assert early["spans_pending"] > 0 and len(s.pending()) > 0  # the last seconds wait for more spans
    w.step(flush=True)
    led = read_ledger(ingest)
    assert led["spans_pending"] == 0 and led["spans_dead_total"] == 0
    assert led["spans_in_records"] == led["spans_received"] == 12 * 256
    assert s.pending() == []  # released once every span is in a landed record
    records = _landed(landing)
    assert len(records) == led["records_landed"]
    assert {r["tenant"] for r in records} == {"acme", "beta"}
    assert len({(r["tenant"], r["agent_id"], r["ts"]) for r in records}) == len(records)


def test_a_restarted_worker_rereads_what_it_had_not_released(tmp_path):
    spool, landing, ingest = (str(tmp_path / d) for d in ("spool", "landing", "ingest"))
    s = Spool(spool)
    s.put(fleet_request(64, time.time() + 30, seed=1), "acme")
    first = SpoolWorker(spool, landing, ingest, grace_s=30.0)
    first.step()  # read, nothing sealed yet: the file stays in the spool
    assert len(s.pending()) == 1 and _landed(landing) == []
    again = SpoolWorker(spool, landing, ingest, grace_s=30.0)  # the first one "died"
    again.step(flush=True)
    assert s.pending() == [] and sum(r["request_count"] for r in _landed(landing)) > 0
    led = read_ledger(ingest)  # the request and its spans counted once across both
    assert led["requests"] == 1 and led["spans_received"] == led["spans_in_records"] == 64


def test_a_ledger_from_before_crash_safety_is_carried_on(tmp_path):
    spool, landing, ingest = (str(tmp_path / d) for d in ("spool", "landing", "ingest"))
    os.makedirs(ingest)
    old = {"requests": 3, "spans_received": 30, "spans_in_records": 25, "spans_dead": {"late_span": 5},
           "spans_dead_total": 5, "spans_pending": 0, "records_landed": 7, "files_landed": 2}
    with open(os.path.join(ingest, "ledger.json"), "w") as fh:
        json.dump(old, fh, indent=1)
    Spool(spool).put(fleet_request(64, time.time() + 30, seed=1), "acme")
    w = SpoolWorker(spool, landing, ingest, grace_s=1.0)
    w.step(flush=True)
    led = read_ledger(ingest)
    assert led["requests"] == 4 and led["spans_received"] == 94 and led["spans_pending"] == 0
    assert led["spans_dead"]["late_span"] == 5 and led["files_landed"] == 3
    assert led["records_landed"] == 7 + len(_landed(landing))
    landed = [n for n in os.listdir(landing) if not n.startswith("_")]
    assert landed == [f"spans-{w.ledger.epoch}-0000000001.ndjson"]  # one pass, one batch
