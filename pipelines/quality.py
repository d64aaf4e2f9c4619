"""Statistical checks on telemetry batches with Great Expectations.

The suite lives in ``schemas/expectations/`` as data; this module loads a batch leniently
(every JSON object row, whatever its flaws), runs the suite in an ephemeral GX context and
renders a readable report.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import orjson
import pandas as pd

from schemas import TELEMETRY_EXPECTATIONS
from schemas.arrow import METRICS

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@dataclass
class CheckResult:
    expectation: str
    column: str
    success: bool
    observed: str


@dataclass
class QualityReport:
    suite: str
    rows: int
    results: list[CheckResult]

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    def render(self) -> str:
        width = max(len(r.expectation) for r in self.results)
        lines = [f"Data quality: suite {self.suite} on {self.rows} rows -> "
                 f"{'PASS' if self.success else 'FAIL'} "
                 f"({sum(r.success for r in self.results)}/{len(self.results)} checks passed)"]
        for r in self.results:
            lines.append(f"  [{'ok' if r.success else 'FAIL':>4}] {r.expectation:<{width}}  "
                         f"{r.column:<32} {r.observed}")
        return "\n".join(lines)


def load_frame(paths: list[str]) -> pd.DataFrame:
    """Rows of NDJSON/Parquet telemetry files as a flat frame (calls dropped), with
    ``event_time`` parsed leniently (unparseable -> NaT). Lines that are not JSON objects
    are not rows; the parser's dead letters account for them."""
    frames = []
    for path in paths:
        if path.endswith(".parquet"):
            frames.append(pd.read_parquet(path).drop(columns=["calls"], errors="ignore"))
            continue
        rows = []
        with open(path, "rb") as fh:
            for line in fh:
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    obj.pop("calls", None)
                    rows.append(obj)
        frames.append(pd.DataFrame(rows))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for col in ("tenant", "agent_id", "ts", *METRICS):
        if col not in df:
            df[col] = None
    ts = df["ts"]
    numeric = pd.to_numeric(ts, errors="coerce")
    event = pd.to_datetime(ts.where(numeric.isna()), utc=True, errors="coerce", format="ISO8601")
    # epoch seconds by hand: pandas 2.2's unit="s" path reads uninitialised memory for NaN
    # rows and can raise FloatingPointError
    epoch = numeric.notna() & (numeric >= 0) & (numeric < 2.0**33)
    event[epoch] = pd.to_datetime((numeric[epoch] * 1e9).round().astype("int64"), utc=True)
    df["event_time"] = event
    for m in METRICS:
        df[m] = pd.to_numeric(df[m], errors="coerce")
    return df


def _expectation(spec: dict, allowed_tenants: list[str] | None):
    import great_expectations as gx

    kwargs = dict(spec["kwargs"])
    if kwargs.get("value_set") == "$allowed_tenants":
        if not allowed_tenants:
            return None
        kwargs["value_set"] = allowed_tenants
    cls_name = "".join(part.capitalize() for part in spec["type"].split("_"))
    return getattr(gx.expectations, cls_name)(**kwargs)


def check_frame(df: pd.DataFrame, allowed_tenants: list[str] | None = None) -> QualityReport:
    """Run the telemetry batch suite on a frame. Tenants are checked when given."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    spec = json.loads(TELEMETRY_EXPECTATIONS.read_text())
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("aura").add_dataframe_asset("telemetry")
    batch_def = asset.add_batch_definition_whole_dataframe("batch")
    suite = gx.ExpectationSuite(name=spec["name"])
    for e in spec["expectations"]:
        exp = _expectation(e, allowed_tenants)
        if exp is not None:
            suite.add_expectation(exp)
    suite = context.suites.add(suite)
    result = batch_def.get_batch(batch_parameters={"dataframe": df}).validate(suite)
    checks = []
    for r in result.results:
        cfg = r.expectation_config
        kw = cfg.kwargs
        column = kw.get("column") or ",".join(kw.get("column_list", [])) or \
            f"{kw.get('column_A')}>={kw.get('column_B')}"
        res = r.result or {}
        observed = (f"{res.get('unexpected_count', 0)} unexpected "
                    f"({res.get('unexpected_percent') or 0:.2f}%)"
                    if "unexpected_count" in res else str(res.get("observed_value", "")))
        checks.append(CheckResult(cfg.type, column, bool(r.success), observed))
    return QualityReport(spec["name"], len(df), checks)
