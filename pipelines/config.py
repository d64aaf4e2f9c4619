"""One typed configuration object per job, loadable from a TOML file and overridden by flags."""

from __future__ import annotations

import tomllib
import types
import typing
from dataclasses import dataclass, fields

from pipelines.inference import DEFAULT_MODEL_DIR, PredictorSpec
from pipelines.telemetry import TimestampGuard
from pipelines.topology.features import FeatureExtractor
from pipelines.topology.filtrations import CoMovementCloud, StressFiltration
from pipelines.windowing import WindowSpec


@dataclass
class RunConfig:
    """Configuration of ``aura run`` (times in seconds)."""

    input: str | None = None  # a file, a directory or a glob, read once
    landing: str | None = None  # a directory watched for new files
    out: str = "output/run"
    mode: str = "streaming"  # streaming | batch (batch needs --input)
    window_size_s: float = 10.0
    window_slide_s: float | None = None  # None: tumbling windows
    allowed_lateness_s: float = 30.0
    max_out_of_orderness_s: float = 5.0  # watermark = largest event time seen - this
    max_ahead_s: float = 3600.0  # timestamps this far ahead of the watermark are absurd
    max_behind_s: float = 86400.0  # ... and this far behind
    poll_interval_s: float = 0.2
    idle_timeout_s: float | None = None  # landing: stop after this long without new files
    max_runtime_s: float | None = None
    features: bool = True  # the topology feature stage after windowing
    ph_backend: str = "giotto"  # giotto (giotto-ph, faster) | ripser: the same diagrams
    comove_max_points: int = 100  # larger co-movement clouds are subsampled (greedy permutation)
    timeout_ms: float = 1000.0  # calls slower than this count as failed (stress = 1)
    latency_ref_ms: float = 50.0  # link latency with no stress
    predict: bool = True  # the prediction stage after the features (in-process ONNX Runtime)
    model_dir: str | None = None  # None: the committed models/cascade_cfc
    predictor: str = "onnx"  # onnx (in-process ONNX Runtime) | triton (tritonclient)
    triton_url: str = "127.0.0.1:8001"
    triton_protocol: str = "grpc"  # grpc | http
    consensus: bool = True  # n validators must agree on each prediction (BFT) before it goes on
    validators: int = 4  # n = 3f + 1 (4, 7, 10, ...)
    consensus_epsilon: float = 1e-4  # a validator agrees when |p - p'| <= this and the risk band matches
    risk_bands: str = "0.3,0.7"  # probability cut points of the bands low | elevated | high
    max_block: int = 256  # verdicts per consensus block
    validator_backends: str = "onnx"  # one kind for all validators, or one per validator: onnx,triton,...
    validator_keys: str | None = None  # directory from `aura audit keygen`; None: fresh keys each run
    graph: bool = True  # write predictions plus topology to the graph (Neo4j / embedded Bolt server)
    graph_uri: str | None = None  # bolt:// or neo4j:// URI; None: NEO4J_URI, else the embedded server
    graph_user: str | None = None  # None: NEO4J_USER (or NEO4J_USERNAME), else "neo4j"
    graph_password: str | None = None  # None: NEO4J_PASSWORD
    graph_database: str | None = None  # None: NEO4J_DATABASE, else "neo4j"
    graph_epsilon: float = 0.05  # agent/CALLS values that moved less than this are not rewritten
    graph_refresh_windows: int = 10  # ... but every row is rewritten at least this often (0: never)
    graph_batch_size: int = 5000  # rows per transaction
    graph_top_k: int = 5  # implicated agents per prediction
    engine: str = "beam"  # beam (DirectRunner) | flink (PyFlink job, pipelines/flink)
    parallelism: int = 1  # flink: parallelism of the job (tenants spread over subtasks by key group)
    checkpoint_dir: str | None = None  # flink: file:// (or path) for checkpoints; None: in memory
    checkpoint_interval_s: float = 10.0  # flink
    state_backend: str = "hashmap"  # flink: hashmap | rocksdb
    restore_from: str | None = None  # flink: a chk-*/savepoint dir; "latest": newest in checkpoint_dir

    def validate(self) -> RunConfig:
        if (self.input is None) == (self.landing is None):
            raise ValueError("give exactly one of --input (file, directory or glob) or --landing DIR")
        if self.mode not in ("streaming", "batch"):
            raise ValueError(f"mode must be 'streaming' or 'batch', got {self.mode!r}")
        if self.mode == "batch" and self.landing is not None:
            raise ValueError("a landing directory is read by the streaming job; use --input for batch")
        self.window_spec()  # raises on a bad window
        if self.ph_backend not in ("ripser", "giotto"):
            raise ValueError(f"ph_backend must be 'ripser' or 'giotto', got {self.ph_backend!r}")
        self.extractor()  # raises on bad feature parameters
        if self.graph_epsilon < 0 or self.graph_batch_size < 1 or self.graph_top_k < 0:
            raise ValueError("graph_epsilon must be >= 0, graph_batch_size >= 1, graph_top_k >= 0")
        if self.engine not in ("beam", "flink"):
            raise ValueError(f"engine must be 'beam' or 'flink', got {self.engine!r}")
        if self.engine == "flink" and (self.mode != "streaming" or self.parallelism < 1
                                       or self.state_backend not in ("hashmap", "rocksdb")):
            raise ValueError("the flink engine runs streaming with parallelism >= 1 and "
                             "state_backend hashmap or rocksdb")
        if self.predict and not self.features:
            raise ValueError("the prediction stage needs the feature stage "
                             "(drop --no-features or add --no-predict)")
        return self

    def consensus_spec(self):
        """The consensus stage's settings, or None without prediction or with ``consensus = false``."""
        from pipelines.beam.consensus import ConsensusSpec
        from pipelines.consensus.validator import RiskBands

        if not (self.predict and self.consensus):
            return None
        if self.validators < 4 or (self.validators - 1) % 3:
            raise ValueError(f"validators must be 3f+1 with f >= 1 (4, 7, 10, ...), got {self.validators}")
        kinds = [k.strip() for k in self.validator_backends.split(",") if k.strip()]
        if len(kinds) == 1:
            kinds *= self.validators
        if len(kinds) != self.validators or not set(kinds) <= {"onnx", "triton"}:
            raise ValueError(f"validator_backends: one of onnx|triton, or {self.validators} of them "
                             f"comma-separated; got {self.validator_backends!r}")
        cuts = tuple(float(c) for c in self.risk_bands.split(",") if c.strip())
        names = ("low", "elevated", "high")\
            if len(cuts) == 2 else tuple(f"band{i}" for i in range(len(cuts) + 1))
        if self.consensus_epsilon < 0 or self.max_block < 1:
            raise ValueError("consensus_epsilon must be >= 0 and max_block >= 1")
        model_dir = self.model_dir or DEFAULT_MODEL_DIR
        specs = tuple(PredictorSpec(k, model_dir, self.triton_url, self.triton_protocol) for k in kinds)
        if self.validator_keys is not None:  # a clear error now, not inside the pipeline
            from pipelines.consensus.keys import load_keys

            load_keys(self.validator_keys, self.validators)
        return ConsensusSpec(specs, self.consensus_epsilon, RiskBands(cuts, names), self.max_block,
                             self.validator_keys)

    def predictor_spec(self) -> PredictorSpec | None:
        """The predictor when predicting (its model checked to load), else None."""
        if not self.predict:
            return None
        spec = PredictorSpec(self.predictor, self.model_dir or DEFAULT_MODEL_DIR, self.triton_url,
                             self.triton_protocol)
        spec.build()  # a clear error now (no model, bad kind) rather than inside the pipeline
        return spec

    def window_spec(self) -> WindowSpec:
        return WindowSpec(self.window_size_s, self.window_slide_s, self.allowed_lateness_s)

    def extractor(self) -> FeatureExtractor | None:
        if not self.features:
            return None
        return FeatureExtractor(
            stress=StressFiltration(self.latency_ref_ms, self.timeout_ms, self.ph_backend),
            comove=CoMovementCloud(max_points=self.comove_max_points, backend=self.ph_backend),
            timeout_ms=self.timeout_ms)

    def graph_settings(self):
        """The graph sink's settings, or None with ``graph = false``."""
        from pipelines.graph.target import GraphSettings

        if not self.graph:
            return None
        slide = self.window_slide_s or self.window_size_s
        return GraphSettings(self.graph_uri, self.graph_user, self.graph_password, self.graph_database,
                             self.graph_epsilon, self.graph_refresh_windows, self.graph_batch_size,
                             self.graph_top_k, int(round(slide * 1000)), self.latency_ref_ms, self.timeout_ms)

    def guard(self) -> TimestampGuard:
        return TimestampGuard(self.max_ahead_s, self.max_behind_s)


def _coerce(value, hint):
    """Coerce a TOML/flag value to a dataclass field's annotated type."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint):
        raise TypeError(f"expected {hint.__name__}, got {value!r}")
    return value


def load_run_config(path: str | None = None, **overrides) -> RunConfig:
    """RunConfig from the ``[run]`` table of a TOML file, then non-None overrides."""
    values: dict = {}
    if path:
        with open(path, "rb") as fh:
            values = tomllib.load(fh).get("run", {})
    known = {f.name for f in fields(RunConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown [run] settings in {path}: {sorted(unknown)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    hints = typing.get_type_hints(RunConfig)
    try:
        typed = {k: _coerce(v, hints[k]) for k, v in values.items()}
    except TypeError as err:
        raise ValueError(f"bad configuration value: {err}") from err
    return RunConfig(**typed).validate()
