"""``aura testbed``: start a fleet of real agent processes, load it, inject triggers,
record when it broke, stop it; outputs in ``--out`` and a short table on stdout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.testbed.fleet import Fleet, FleetError
from pipelines.testbed.spec import (
    DISTRIBUTIONS,
    ON_FAILURE,
    TOPOLOGIES,
    FleetSpec,
    RetryPolicy,
    ServiceTime,
    SpecError,
    Trigger,
)


def add_testbed_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``aura testbed``."""
    p.add_argument("--spec", help="a FleetSpec JSON file (then the fleet-shape flags are ignored; "
                                  "--rate, --tenant, --seed, --otlp-endpoint still override it)")
    p.add_argument("--agents", type=int, default=8, help="number of agents (default 8)")
    p.add_argument("--topology", choices=TOPOLOGIES, default="layered", help="wiring (default layered)")
    p.add_argument("--fanout", type=int, default=1, help="calls per agent in a layered fleet (default 1)")
    p.add_argument("--replicas", type=int, default=1, help="processes per agent (default 1)")
    p.add_argument("--workers", type=int, default=8, help="concurrent requests per process (default 8)")
    p.add_argument("--queue", type=int, default=16, help="queued requests per process beyond the "
                                                         "workers; more get 503 (default 16)")
    p.add_argument("--timeout", type=float, default=1.0, help="client timeout per downstream attempt, s")
    p.add_argument("--max-attempts", type=int, default=3, help="attempts per downstream call (default 3)")
    p.add_argument("--service-ms", type=float, default=30.0, help="mean service time of the latency "
                                                                   "model (default 30 ms)")
    p.add_argument("--service-dist", choices=DISTRIBUTIONS, default="lognormal",
                   help="service-time distribution (default lognormal)")
    p.add_argument("--backoff", type=float, default=0.05, help="retry backoff before the second attempt, "
                                                               "s, doubling after (default 0.05)")
    p.add_argument("--on-failure", choices=ON_FAILURE, default="fail",
                   help="a failed downstream call fails the request or degrades it (default fail)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--rate", type=float, default=None, help="entry requests/s, Poisson (default 20)")
    p.add_argument("--trigger", action="append", default=[], metavar="KIND@SECONDS[:ARGS]",
                   help="slow@20:agent=agent-7,factor=20,ramp=5 | surge@20:factor=3,ramp=5 | "
                        "kill@20:agent=agent-3,count=1[,for=30] | fail@20:agent=agent-7,p=0.8; "
                        "for=S undoes it after S s; repeatable")
    p.add_argument("--otlp-endpoint", default=None,
                   help="OTLP/HTTP traces endpoint (default http://127.0.0.1:4318/v1/traces)")
    p.add_argument("--tenant", default=None, help="tenant of every span (default testbed)")
    p.add_argument("--seed", type=int, default=None, help="seed of the wiring, latencies and arrivals")
    p.add_argument("--threshold", type=float, default=0.5, help="entry failure fraction that counts as "
                                                                "broken (default 0.5)")
    p.add_argument("--sustain", type=int, default=3, help="... for this many seconds in a row (default 3)")
    p.add_argument("--out", default="output/testbed", help="output directory (default output/testbed)")


def spec_from_args(a: argparse.Namespace) -> FleetSpec:
    """The fleet the flags describe."""
    over = {k: v for k, v in (("rate", a.rate), ("tenant", a.tenant), ("seed", a.seed),
                              ("otlp_endpoint", a.otlp_endpoint)) if v is not None}
    if a.spec:
        try:
            d = json.loads(Path(a.spec).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SpecError(f"--spec {a.spec}: {err}") from None
        d.pop("triggers", None)
        d.pop("duration_s", None)
        return FleetSpec.from_dict({**d, **over})
    return FleetSpec.build(
        a.agents, a.topology, fanout=a.fanout, workers=a.workers, queue=a.queue, replicas=a.replicas,
        timeout_s=a.timeout, retry=RetryPolicy(max_attempts=a.max_attempts, backoff_s=a.backoff),
        service_time=ServiceTime(a.service_dist, a.service_ms / 1e3), on_failure=a.on_failure,
        onset_threshold=a.threshold,
        onset_sustain_s=a.sustain, **over)


def table(summary: dict, final: dict[str, dict], agents: list[str]) -> str:
    """The end-of-run report: per agent (processes that reported at shutdown; a killed
    one does not), then the entry outcome and the onsets."""
    head = f"{'agent':<14}{'procs':>6}{'received':>10}{'ok':>8}{'failed':>8}{'503':>7}{'retries':>9}" \
           f"{'spans':>8}{'exported':>10}"
    lines = [head, "-" * len(head)]
    for name in agents:
        t = final.get(name, {})
        lines.append(f"{name:<14}{t.get('replicas_reporting', 0):>6}{t.get('received', 0):>10}"
                     f"{t.get('ok', 0):>8}{t.get('failed', 0):>8}{t.get('rejected', 0):>7}"
                     f"{t.get('retries', 0):>9}{t.get('spans_ended', 0):>8}{t.get('spans_exported', 0):>10}")
    r = summary["requests"]
    lines.append(f"entry: {r['sent']} sent, {r['ok']} ok, {r['failed']} failed, {r['timed_out']} timed out, "
                 f"{r['shed']} shed; failure fraction {summary['entry_fail_frac']:.1%}")
    t0 = summary["start"]
    for c in summary["cascades"]:
        lines.append(f"cascade ({c['mechanism']}): trigger +{c['trigger_time'] - t0:.1f} s, onset "
                     f"+{c['onset'] - t0:.0f} s ({c['onset'] - c['trigger_time']:.1f} s later), "
                     f"end +{c['end'] - t0:.0f} s")
    for f in summary["fizzles"]:
        lines.append(f"fizzle ({f['mechanism']}): trigger +{f['trigger_time'] - t0:.1f} s, no break")
    for b in summary["breaks_without_trigger"]:
        lines.append(f"break without a trigger: +{b['onset'] - t0:.0f} s .. +{b['end'] - t0:.0f} s")
    if not summary["cascades"] and not summary["breaks_without_trigger"]:
        lines.append("no cascade")
    lost = sum(t.get("spans_ended", 0) - t.get("spans_exported", 0) for t in final.values())
    if lost:
        failed = sum(t.get("spans_export_failed", 0) for t in final.values())
        lines.append(f"spans not exported: {lost} ({failed} in failed exports; is the OTLP endpoint up?)")
    cpu = summary["cpu"]
    lines.append(f"cpu: agents {cpu['agents_s']} s + driver {cpu['driver_s']} s over {cpu['wall_s']} s = "
                 f"{cpu['cores']} cores; {summary['spans']['per_s']} spans/s")
    return "\n".join(lines)


def testbed_main(a: argparse.Namespace) -> int:
    """Run ``aura testbed``; 0 when the run completed, 2 on a bad spec or a fleet that
    would not start."""
    try:
        spec = spec_from_args(a)
        triggers = [Trigger.parse(t) for t in a.trigger]
        for t in triggers:
            t.validate(spec, a.duration)
    except SpecError as err:
        print(f"aura testbed: {err}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(spec, workdir=str(out / "processes"))
    try:
        fleet.start()
        print(f"testbed: {len(fleet.pids()) - 1} processes up in {fleet.startup_s} s; {a.duration:g} s of "
              f"load at {spec.rate:g} req/s -> {spec.otlp_endpoint} (tenant {spec.tenant})", flush=True)
        summary = fleet.run(a.duration, triggers, str(out))
    except FleetError as err:
        print(f"aura testbed: {err}", file=sys.stderr)
        return 2
    finally:
        fleet.stop()
    final = fleet.agent_totals(fleet.final_stats)
    summary.pop("labels")
    summary.pop("seconds")
    summary["agents_final"] = final
    summary["spans"]["exported_total"] = sum(t.get("spans_exported", 0) for t in final.values())
    summary["spans"]["export_failed_total"] = sum(t.get("spans_export_failed", 0) for t in final.values())
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table(summary, final, [ag.name for ag in spec.agents]))
    return 0


def add_corpus_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``aura corpus``."""
    p.add_argument("--out", default="output/testbed-corpus", help="corpus directory (default "
                                                                  "output/testbed-corpus); resumable")
    p.add_argument("--split", default="calibration,evaluation",
                   help="which splits to record (default both; calibration first)")
    p.add_argument("--calibration-runs", type=int, default=None, help="runs in the calibration split "
                                                                      "(default 12)")
    p.add_argument("--evaluation-runs", type=int, default=None,
                   help="runs in the evaluation split (default 16)")
    p.add_argument("--jobs", type=int, default=2, help="fleets recorded at once (default 2)")
    p.add_argument("--plan", action="store_true", help="print the plan and exit")
    p.add_argument("--redo-disturbed", type=float, default=None, metavar="FRACTION",
                   help="record again runs whose quiet lead failed more than FRACTION of entry requests "
                        "(a machine too busy to keep the fleet healthy)")
    p.add_argument("--pack", metavar="DIR", help="then write a copy small enough to ship to DIR "
                                                 "(telemetry as zstd Parquet, no process logs)")


def corpus_main(a: argparse.Namespace) -> int:
    """Record (or complete) the testbed corpus; 0 when every planned run is recorded."""
    from pipelines.testbed.corpus import DEFAULT_RUNS, SPLITS, pack_corpus, plan_corpus, record_corpus

    splits = tuple(s.strip() for s in a.split.split(",") if s.strip())
    bad = [s for s in splits if s not in SPLITS]
    if bad or a.jobs < 1:
        print(f"aura corpus: --split must name {SPLITS}, --jobs >= 1 (got {bad or a.jobs})",
              file=sys.stderr)
        return 2
    given = {"calibration": a.calibration_runs, "evaluation": a.evaluation_runs}
    runs = {k: DEFAULT_RUNS[k] if v is None else v for k, v in given.items()}
    plan = plan_corpus(runs)
    if a.plan:
        for r in plan.runs:
            print(f"{r.split:<12}{r.name:<24}{r.spec.topology:<9}{len(r.spec.agents):>3} agents "
                  f"{r.spec.rate:>6g} req/s {r.duration_s:>5g} s  {[t.to_dict() for t in r.triggers]}")
        return 0
    manifest = {}
    for split in SPLITS:  # calibration first: a model can be fitted while evaluation records
        if split in splits:
            manifest = record_corpus(a.out, plan, a.jobs, (split,), redo_disturbed=a.redo_disturbed)
    missing = [r["name"] for r in manifest.get("runs", []) if r["split"] in splits and not r["recorded"]]
    print(f"corpus {a.out}: {sum(r['recorded'] for r in manifest['runs'])} runs recorded"
          + (f"; not recorded: {missing}" if missing else ""))
    if a.pack and not missing:
        packed = pack_corpus(a.out, a.pack)
        print(f"packed into {a.pack}: {packed['files']} runs, {packed['bytes'] / 1e6:.1f} MB")
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="aura testbed", description=__doc__.splitlines()[0])
    add_testbed_args(p)
    return testbed_main(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
