"""Flink sizing (infra/flink/sizing.py): regenerating yields the committed manifests and the table
of docs/SCALING.md; every size has the capacity it claims; the model is monotone in fleet size."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("aura_flink_sizing", REPO / "infra" / "flink" / "sizing.py")
sizing = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sizing  # dataclasses look their module up there
_spec.loader.exec_module(sizing)


def test_regenerating_gives_the_committed_manifests_and_table():
    files, md = sizing.render()
    committed = {p.name: p.read_text() for p in sizing.SIZES_DIR.glob("*.yaml")}
    assert committed == files, "infra/flink/sizes/ is stale: run python infra/flink/sizing.py"
    assert md in (REPO / "docs" / "SCALING.md").read_text(), "docs/SCALING.md's table is stale"


def test_each_manifest_is_one_consistent_flink_deployment():
    for name, agents in sizing.SIZES.items():
        d = yaml.safe_load((sizing.SIZES_DIR / f"{name}.yaml").read_text())
        s = sizing.size(agents)
        conf, job = d["spec"]["flinkConfiguration"], d["spec"]["job"]
        assert d["kind"] == "FlinkDeployment" and d["metadata"]["name"] == f"aura-{name}"
        args = job["args"]
        assert (int(conf["parallelism.default"]) == job["parallelism"]
                == int(args[args.index("--parallelism") + 1]) == s.parallelism)
        assert (int(conf["pipeline.max-parallelism"]) == int(args[args.index("--max-parallelism") + 1])
                == s.max_parallelism)
        slots = int(conf["taskmanager.numberOfTaskSlots"]) * d["spec"]["taskManager"]["replicas"]
        assert slots >= s.parallelism
        assert conf["state.backend.type"] == args[args.index("--state-backend") + 1] == s.state_backend


def test_the_job_takes_the_manifests_max_parallelism_and_refuses_one_below_its_parallelism():
    from pipelines.cli import build_parser
    from pipelines.config import RunConfig

    a = build_parser().parse_args(["run", "--input", "x", "--out", "y", "--engine", "flink",
                                   "--parallelism", "4", "--max-parallelism", "2048"])
    assert a.max_parallelism == 2048
    cfg = RunConfig(input="x", engine="flink", parallelism=4, max_parallelism=2048).validate()
    assert cfg.max_parallelism == 2048
    with pytest.raises(ValueError, match="max_parallelism must be in"):
        RunConfig(input="x", engine="flink", parallelism=4, max_parallelism=2).validate()


def test_the_100k_fleet_fits_what_this_machine_measured():
    s = sizing.size(100_000)
    m, p = sizing.Measured(), sizing.Plan()
    assert s.events_per_s == 100_000
    assert s.capacity_events_per_s >= s.events_per_s * p.headroom
    assert s.parallelism == 4  # 100k x 1.5 / 47.5k per core -> 3.2 -> 4 (two 2-slot TaskManagers)
    # ~15 s of packed records buffered: 100k/s x 15 s x 150 B
    assert math.isclose(s.state_bytes, 100_000 * 15 * m.packed_bytes_per_record)
    assert s.graph_rows_per_window == 53_400


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 100_000_000), st.integers(1, 100_000_000))
def test_more_agents_never_need_less(a: int, b: int):
    small, big = sorted((a, b))
    s, t = sizing.size(small), sizing.size(big)
    for field in ("parallelism", "max_parallelism", "taskmanagers", "kafka_partitions", "state_bytes",
                  "graph_rows_per_s", "graph_servers"):
        assert getattr(s, field) <= getattr(t, field), field
    for x in (s, t):
        assert x.capacity_events_per_s >= x.events_per_s * sizing.Plan().headroom
        assert x.parallelism <= x.max_parallelism and x.max_parallelism & (x.max_parallelism - 1) == 0
        assert x.kafka_partitions >= x.parallelism
        assert x.taskmanagers * sizing.Plan().slots_per_taskmanager >= x.parallelism
