"""Feature rows as Arrow tables: one row per (tenant, window, pane), named columns in the
versioned order, every row carrying the feature-schema version."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.topology.features import FeatureExtractor, WindowFeatures
from schemas import FEATURES_SCHEMA_VERSION

_KEYS = [
    pa.field("tenant", pa.string(), nullable=False),
    pa.field("window_start", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("window_end", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("pane_index", pa.int32(), nullable=False),
    pa.field("feature_version", pa.int32(), nullable=False),
]
FEATURE_ROW = pa.schema(_KEYS + [pa.field(n, pa.float64(), nullable=False) for n in FeatureExtractor.names()],
                        metadata={"aura.schema": f"window_features/v{FEATURES_SCHEMA_VERSION}"})


def non_finite(vector: np.ndarray) -> list[str]:
    """Names of features that are NaN or infinite."""
    names = FeatureExtractor.names()
    return [names[i] for i in np.flatnonzero(~np.isfinite(vector))]


def feature_table(rows: list[tuple[WindowFeatures, np.ndarray]]) -> pa.Table:
    names = FeatureExtractor.names()
    cols: dict[str, list] = {f.name: [] for f in FEATURE_ROW}
    for wf, vec in rows:
        cols["tenant"].append(wf.tenant)
        cols["window_start"].append(int(round(wf.window_start * 1000)))
        cols["window_end"].append(int(round(wf.window_end * 1000)))
        cols["pane_index"].append(wf.pane_index)
        cols["feature_version"].append(FEATURES_SCHEMA_VERSION)
        for name, v in zip(names, vec):
            cols[name].append(float(v))
    return pa.table({k: pa.array(v, type=FEATURE_ROW.field(k).type) for k, v in cols.items()},
                    schema=FEATURE_ROW)


def vectors(table: pa.Table) -> np.ndarray:
    """(rows, features) matrix in schema order."""
    names = FeatureExtractor.names()
    if table.num_rows == 0:
        return np.zeros((0, len(names)))
    return np.column_stack([table.column(n).to_numpy() for n in names])

