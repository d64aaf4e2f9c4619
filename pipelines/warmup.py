"""Warm a streaming job's stages before its first window, so that the first window after a
start or a restart is not seconds slower than the rest (imports, ONNX Runtime's first run,
the persistent-homology backends' first call, the graph's constraints and first queries).
Nothing is written: the features and the prediction are computed and dropped, the graph
only gets its (idempotent) constraints and a read."""

from __future__ import annotations

import time

import numpy as np

from pipelines.inference import PredictorSpec
from pipelines.topology.features import FeatureExtractor


def warm_up(extractor: FeatureExtractor | None, predictor: PredictorSpec | None, graph=None) -> float:
    """Exercise each configured stage once; the seconds it took."""
    t0 = time.perf_counter()
    if extractor is not None:
        from pipelines.topology.synthetic import ring_lattice, snapshot_from_edges

        rng = np.random.default_rng(0)
        snaps = [snapshot_from_edges(ring_lattice(12, 4), 12, rng, start=10.0 * i) for i in range(2)]
        extractor.transform(snaps)
    if predictor is not None:
        handler = predictor.build()
        info = handler.info
        handler.run_inference(np.zeros((1, info.seq_len, info.n_features), np.float32),
                              np.ones((1, info.seq_len), np.float32))
    if graph is not None:
        from pipelines.graph.sink import GraphSink

        sink = GraphSink(graph).open()
        try:
            sink.driver.execute_query("MATCH (w:Window) RETURN count(w) AS n", database_=graph.database)
        except Exception:  # noqa: BLE001 - a warm-up; the sink reports real failures itself
            pass
        finally:
            sink.close()
    return time.perf_counter() - t0
