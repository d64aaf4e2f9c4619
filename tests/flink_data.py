"""One fixed small telemetry set shared by the Flink tests (engine parity and recovery), and
readers of a run's outputs."""

from __future__ import annotations

import glob
import os
import random

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import T0, line, record, write_ndjson

TENANTS = ("acme", "beta")
AGENTS = 8
FILE_SECONDS = 20
BAD_LINES = [  # one of each kind of invalid record (reason in comments)
    b"{oops",  # malformed_json
    b"[1, 2]",  # not_an_object
    line(record(error_rate=2.0)),  # out_of_range
    line({k: v for k, v in record().items() if k != "cpu"}),  # missing_field
    line(record(colour="red")),  # unknown_field
    line(record(request_count="many")),  # wrong_type
    line(record(calls=[{"dst": "db", "count": 1, "errors": 3, "latency_ms": 1.0}])),  # inconsistent
    line(record(ts="yesterday")),  # bad_timestamp
]


def telemetry_files(directory, n_files: int = 4, seed: int = 7) -> tuple[list[str], int]:
    """NDJSON files, one per FILE_SECONDS of event time, in order; inside a file records are
    shuffled by less than a second (well within the 5 s watermark lag). Includes exact and
    differing duplicates, epoch-number timestamps and BAD_LINES. Returns (paths, bad lines)."""
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    paths, bad = [], 0
    for i in range(n_files):
        recs = []
        for s in range(FILE_SECONDS):
            for tenant in TENANTS:
                for a in range(AGENTS):
                    t = T0 + i * FILE_SECONDS + s + rng.choice([0.0, 0.25, 0.5])
                    calls = [{"dst": f"a{rng.randrange(AGENTS)}", "count": rng.randrange(1, 30),
                              "errors": 0, "latency_ms": round(rng.uniform(1, 80), 3)}
                             for _ in range(rng.randrange(3))]
                    for c in calls:
                        c["errors"] = rng.randrange(c["count"] + 1)
                    p50 = round(rng.uniform(1, 100) * (1 + (tenant == "beta") * s / 10), 3)
                    r = record(agent=f"a{a}", t=t, tenant=tenant, calls=calls, latency_p50_ms=p50,
                               latency_p99_ms=round(p50 * rng.uniform(1.5, 3), 3),
                               error_rate=round(rng.random() * 0.2, 4), request_count=rng.randrange(1000),
                               cpu=round(rng.random(), 3), queue_depth=rng.randrange(50))
                    if rng.random() < 0.1:
                        r["ts"] = t  # epoch seconds instead of RFC 3339
                    recs.append((t, r))
        recs.sort(key=lambda x: x[0] + rng.uniform(0, 0.9))
        lines = [line(r) for _, r in recs]
        twin = line(dict(recs[30][1], cpu=0.999))  # same (agent, ts), different content
        # duplicates right after their originals: redelivered, but not late
        lines = lines[:6] + [lines[5]] + lines[6:18] + [lines[17]] + lines[18:31] + [twin] + lines[31:]
        lines += BAD_LINES
        bad += len(BAD_LINES)
        paths.append(write_ndjson(os.path.join(str(directory), f"part-{i:03d}.ndjson"), lines))
    return paths, bad


def _read(out_dir: str, kind: str) -> pa.Table | None:
    paths = sorted(glob.glob(os.path.join(out_dir, kind, "*", "*.parquet")))
    return pa.concat_tables([pq.read_table(p) for p in paths]) if paths else None


def by_window(out_dir: str, kind: str) -> dict:
    """{(tenant, window start ms): row dict} of the last pane per window."""
    t = _read(out_dir, kind)
    out: dict = {}
    for row in (t.to_pylist() if t is not None else []):
        key = (row["tenant"], int(row["window_start"].timestamp() * 1000))
        if key not in out or out[key]["pane_index"] <= row["pane_index"]:
            out[key] = row
    return out


def feature_vectors(out_dir: str) -> dict:
    from pipelines.topology.features import FeatureExtractor

    names = FeatureExtractor.names()
    return {k: np.array([r[n] for n in names]) for k, r in by_window(out_dir, "features").items()}


def dead_reasons(out_dir: str) -> dict:
    out: dict = {}
    for p in glob.glob(os.path.join(out_dir, "deadletter", "*.ndjson")):
        with open(p, "rb") as fh:
            for x in fh:
                if x.strip():
                    r = orjson.loads(x)["reason"]
                    out[r] = out.get(r, 0) + 1
    return out
