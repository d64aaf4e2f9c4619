"""Prediction rows, the same for every engine: one verdict per (tenant, window, pane)
(``PREDICTION_ROW``), built by ``prediction_row``, written by ``write_prediction`` to
``<out>/predictions/`` (``pipelines.panes``) and read back by ``read_predictions``."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import observe
from pipelines.inference import ModelHandler
from pipelines.panes import write_pane
from pipelines.topology.features import WindowFeatures
from pipelines.windowing import ms
from schemas import FEATURES_SCHEMA_VERSION

PREDICTION_ROW = pa.schema([
    pa.field("tenant", pa.string(), nullable=False),
    pa.field("window_start", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("window_end", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("pane_index", pa.int32(), nullable=False),
    pa.field("probability", pa.float64(), nullable=False),
    pa.field("horizon_s", pa.float64(), nullable=False),
    pa.field("history_windows", pa.int32(), nullable=False),
    pa.field("feature_version", pa.int32(), nullable=False),
    pa.field("predictor", pa.string(), nullable=False),
    pa.field("certificate", pa.string(), nullable=True),  # consensus QC as JSON (null without consensus)
    pa.field("status", pa.string(), nullable=False),  # ok | calibrating | out_of_distribution
])


def prediction_row(wf: WindowFeatures, probability: float, dt: np.ndarray, status: str,
                   predictor: ModelHandler) -> dict:
    """One window pane's verdict as a row (PREDICTION_ROW, without ``certificate``); ``dt``:
    the model input's window gaps (zero for the padding before the tenant's first window)."""
    return {"tenant": wf.tenant, "window_start": ms(wf.window_start), "window_end": ms(wf.window_end),
            "pane_index": wf.pane_index, "probability": probability, "horizon_s": predictor.info.horizon_s,
            "history_windows": int((dt > 0).sum()), "feature_version": FEATURES_SCHEMA_VERSION,
            "predictor": predictor.describe(), "status": status}


def write_prediction(out_dir: str, row: dict) -> str:
    """A verdict's pane file (its consensus certificate, if any, as JSON), timed as the
    prediction sink and recorded as written."""
    cert = row.get("certificate")
    if isinstance(cert, dict):
        row = {**row, "certificate": json.dumps(cert, sort_keys=True)}
    with observe.stage("sinks", row["tenant"], row["window_start"], sink="prediction"):
        path = write_pane(out_dir, "predictions", row["tenant"], row["window_start"], row["pane_index"],
                          pa.Table.from_pylist([row], schema=PREDICTION_ROW))
    observe.verdict_written(row["tenant"], row["window_start"], row["pane_index"], cert is not None)
    return path


def read_predictions(out_dir: str) -> pa.Table:
    """All prediction rows of a run."""
    paths = sorted(glob.glob(os.path.join(out_dir, "predictions", "*", "*.parquet")))
    if not paths:
        return PREDICTION_ROW.empty_table()
    return pa.concat_tables([pq.read_table(p) for p in paths])
