"""The kill-and-restart experiment's telemetry (issue 19), shared by both engines' tests.

Thirty 10-second NDJSON files, 60 agents reporting once a second: 18,000 records. In every
file from the third on (``late=True``), the last second of five agents from two files back
arrives late: the watermark has passed that window's end, so the Beam job fires its on-time
pane and then a late one (a kill can fall between them). Flink has no allowed lateness (late
records are dead letters there), so its experiment uses ``late=False``. A batch run over the
same files is the reference: every record is in its window.
"""

from __future__ import annotations

import glob
import os
import shutil

import pyarrow.parquet as pq

from tests.conftest import T0, line, record, write_ndjson

FILES, AGENTS, FILE_SECONDS, DELAYED = 30, 60, 10, 5
RECORDS = FILES * AGENTS * FILE_SECONDS


def crash_files(directory, late: bool = True) -> list[str]:
    """The thirty files in landing order (names sort in that order)."""
    os.makedirs(directory, exist_ok=True)
    per_file: list[list[bytes]] = [[] for _ in range(FILES)]
    for i in range(FILES):
        for s in range(FILE_SECONDS):
            t = T0 + i * FILE_SECONDS + s
            for a in range(AGENTS):
                rec = record(agent=f"a{a}", t=t + 0.25, cpu=round((a * 7 + s) % 100 / 100, 2),
                             calls=[{"dst": f"a{(a + 1) % AGENTS}", "count": 5 + s, "errors": a % 2,
                                     "latency_ms": 3.0 + a % 11}])
                delayed = late and s == FILE_SECONDS - 1 and a < DELAYED and i + 2 < FILES
                per_file[i + 2 if delayed else i].append(line(rec))
    return [write_ndjson(os.path.join(str(directory), f"f{i:02d}.ndjson"), lines)
            for i, lines in enumerate(per_file)]


def land(src: str, landing: str) -> None:
    """Drop a file as a producer would: write a hidden name, then rename."""
    tmp = os.path.join(landing, "." + os.path.basename(src))
    shutil.copy(src, tmp)
    os.replace(tmp, os.path.join(landing, os.path.basename(src)))


def final_counts(out_dir: str) -> dict[tuple[str, int], int]:
    """(tenant, window start ms) -> records in the window's last pane (panes accumulate)."""
    last: dict[tuple[str, int], tuple[int, str]] = {}
    for p in glob.glob(os.path.join(out_dir, "snapshots", "tenant=*", "*.parquet")):
        tenant = os.path.basename(os.path.dirname(p)).removeprefix("tenant=")
        stem = os.path.basename(p).removesuffix(".parquet")
        window, pane = stem.removeprefix("window=").split("-pane=")
        key = (tenant, int(window))
        if key not in last or int(pane) > last[key][0]:
            last[key] = (int(pane), p)
    return {k: int(pq.read_table(p, columns=["n_records"]).column(0)[0].as_py())
            for k, (_, p) in sorted(last.items())}
