"""Closed-loop backtest: cascades prevented and requests lost, four arms on held-out scenarios.

    .venv/bin/python bench/bench_closed_loop.py [--val N] [--test N] [--save-plan]

Runs ``aura backtest --closed-loop`` (``pipelines/backtest/closed_loop.py``): risk-band cuts
fitted on the validation scenarios only, then no action / static rules / AURA / oracle on
the test scenarios from the same seeds. Prints the headline and the metrics as JSON; with
``--save-plan`` writes the AURA arm's frozen cuts beside the committed model (the demo's
story reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from pipelines.backtest.closed_loop import LoopConfig, run_closed_loop
from pipelines.incidents.story import PLAYBOOK_FILE
from pipelines.inference import DEFAULT_MODEL_DIR


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--val", type=int, default=36)
    ap.add_argument("--test", type=int, default=48)
    ap.add_argument("--out", default="output/bench-closed-loop")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--save-plan", action="store_true")
    a = ap.parse_args()
    cfg = LoopConfig(out=a.out, val_scenarios=a.val, test_scenarios=a.test, jobs=a.jobs,
                     plan_out=os.path.join(DEFAULT_MODEL_DIR, PLAYBOOK_FILE) if a.save_plan else None)
    t0 = time.time()
    m = run_closed_loop(cfg)
    print(json.dumps({"test": m["test"], "intervals": m["intervals"], "bar": m["bar"],
                      "fitted": {k: m["fitted_on_validation"][k] for k in ("static", "aura")},
                      "elapsed_s": round(time.time() - t0), "machine": f"{platform.machine()}, "
                      f"{os.cpu_count()} cores"}, default=float))


if __name__ == "__main__":
    main()
