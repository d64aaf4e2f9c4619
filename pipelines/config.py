"""One typed configuration object per job, loadable from a TOML file and overridden by flags."""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, fields

from pipelines.inference import DEFAULT_MODEL_DIR, PredictorSpec
from pipelines.telemetry import TimestampGuard
from pipelines.topology.features import FeatureExtractor
from pipelines.topology.filtrations import CoMovementCloud, StressFiltration
from pipelines.windowing import WindowSpec
from schemas import tenant_pattern


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
    max_out_of_orderness_s: float = 5.0  # a tenant's watermark = its largest event time seen - this
    # landing: a tenant without records for this long (wall clock) has its open windows closed.
    # 30 s: ~3 files of a tenant landing one 10 s window at a time, so a tenant that is merely
    # slow is not cut off, and an idle tenant's last windows still close within a minute
    # (the default allowed lateness, 30 s, is of the same order). None: only at the end.
    tenant_idle_timeout_s: float | None = 30.0
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
    # the validators run as processes (pipelines/consensus/tcp.py) described by this config file
    # (pipelines.service.validators.write_validator_config); None: in process
    validators_at: str | None = None
    validators_timeout_s: float | None = None  # with validators_at: commit timeout (None: the file's, 10 s)
    graph: bool = True  # write predictions plus topology to the graph (Neo4j / embedded Bolt server)
    graph_uri: str | None = None  # bolt:// or neo4j:// URI; None: NEO4J_URI, else the embedded server
    graph_user: str | None = None  # None: NEO4J_USER (or NEO4J_USERNAME), else "neo4j"
    graph_password: str | None = None  # None: NEO4J_PASSWORD
    graph_database: str | None = None  # None: NEO4J_DATABASE, else "neo4j"
    graph_epsilon: float = 0.05  # agent/CALLS values that moved less than this are not rewritten
    graph_refresh_windows: int = 10  # ... but every row is rewritten at least this often (0: never)
    graph_batch_size: int = 5000  # rows per transaction
    graph_parallel: int = 1  # concurrent transactions for the agent/CALLS updates of a window
    graph_top_k: int = 5  # implicated agents per prediction
    engine: str = "beam"  # beam (DirectRunner) | flink (PyFlink job, pipelines/flink)
    parallelism: int = 1  # flink: parallelism of the job (tenants spread over subtasks by key group)
    max_parallelism: int = 128  # flink: key groups; fixed for the life of the state (docs/SCALING.md)
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
        if self.tenant_idle_timeout_s is not None and not self.tenant_idle_timeout_s > 0:
            raise ValueError(f"tenant_idle_timeout_s must be > 0 seconds, got {self.tenant_idle_timeout_s}")
        if self.ph_backend not in ("ripser", "giotto"):
            raise ValueError(f"ph_backend must be 'ripser' or 'giotto', got {self.ph_backend!r}")
        self.extractor()  # raises on bad feature parameters
        if (self.graph_epsilon < 0 or self.graph_batch_size < 1 or self.graph_top_k < 0
                or self.graph_parallel < 1):
            raise ValueError("graph_epsilon must be >= 0, graph_batch_size >= 1, graph_top_k >= 0, "
                             "graph_parallel >= 1")
        if self.engine not in ("beam", "flink"):
            raise ValueError(f"engine must be 'beam' or 'flink', got {self.engine!r}")
        if self.engine == "flink" and (self.mode != "streaming" or self.parallelism < 1
                                       or self.state_backend not in ("hashmap", "rocksdb")):
            raise ValueError("the flink engine runs streaming with parallelism >= 1 and "
                             "state_backend hashmap or rocksdb")
        if not self.parallelism <= self.max_parallelism <= 32768:
            raise ValueError(f"max_parallelism must be in [parallelism, 32768], got {self.max_parallelism} "
                             f"with parallelism {self.parallelism}")
        if self.predict and not self.features:
            raise ValueError("the prediction stage needs the feature stage "
                             "(drop --no-features or add --no-predict)")
        return self

    def consensus_spec(self):
        """The consensus stage's settings, or None without prediction or with ``consensus = false``."""
        from pipelines.consensus.spec import ConsensusSpec

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
        if self.consensus_epsilon < 0 or self.max_block < 1:
            raise ValueError("consensus_epsilon must be >= 0 and max_block >= 1")
        if self.validators_at is not None:
            return self._remote_consensus_spec(ConsensusSpec)
        model_dir = self.model_dir or DEFAULT_MODEL_DIR
        specs = tuple(PredictorSpec(k, model_dir, self.triton_url, self.triton_protocol) for k in kinds)
        if self.validator_keys is not None:  # a clear error now, not inside the pipeline
            from pipelines.consensus.keys import load_keys

            load_keys(self.validator_keys, self.validators)
        return ConsensusSpec(specs, self.consensus_epsilon, self.bands(), self.max_block,
                             self.validator_keys)

    def _remote_consensus_spec(self, spec_cls):
        """Validator processes: their number and risk bands come from their config file."""
        from pipelines.consensus.tcp import bands_of, load_config

        path = os.path.abspath(self.validators_at)
        if self.validator_keys is not None:
            raise ValueError("validators_at: the validator processes sign with the keys their config names "
                             "(write it with key_dir=...); drop validator_keys")
        try:
            vcfg = load_config(path)
            n = len(vcfg["ports"])
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"validators_at: no validator config at {path}: {err}") from err
        if n < 4 or (n - 1) % 3:
            raise ValueError(f"validators_at: {path} names {n} validators, not 3f+1 (4, 7, 10, ...)")
        if bands_of(vcfg) != self.bands():
            raise ValueError(f"validators_at: the validators' risk bands {bands_of(vcfg)} differ from the "
                             f"run's ({self.risk_bands}): every verdict would be objected to")
        if self.validators_timeout_s is not None and self.validators_timeout_s <= 0:
            raise ValueError("validators_timeout_s must be > 0")
        model_dir = self.model_dir or DEFAULT_MODEL_DIR
        specs = (PredictorSpec("onnx", model_dir),) * n  # what the validators run is in their config
        return spec_cls(specs, self.consensus_epsilon, self.bands(), self.max_block, None, path,
                        self.validators_timeout_s)

    def bands(self):
        """The risk bands (low | elevated | high for two cut points)."""
        from pipelines.consensus.validator import RiskBands

        cuts = tuple(float(c) for c in self.risk_bands.split(",") if c.strip())
        names = ("low", "elevated", "high")\
            if len(cuts) == 2 else tuple(f"band{i}" for i in range(len(cuts) + 1))
        return RiskBands(cuts, names)

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
                             self.graph_top_k, int(round(slide * 1000)), self.latency_ref_ms, self.timeout_ms,
                             parallel=self.graph_parallel)

    def guard(self) -> TimestampGuard:
        return TimestampGuard(self.max_ahead_s, self.max_behind_s)


@dataclass
class ApiConfig:
    """Configuration of ``aura api`` (the service); the streaming job it starts is a ``RunConfig``."""

    host: str = "127.0.0.1"
    port: int = 4318  # the OTLP/HTTP port, so an exporter's default endpoint reaches AURA unchanged
    grpc_port: int | None = 4317  # OTLP/gRPC receiver; None: none (--no-grpc)
    data_dir: str = "output/api"  # spool/, landing/ and run/ (the streaming job's --out) live here
    default_tenant: str = "default"  # tenant of spans without X-Aura-Tenant or an aura.tenant attribute
    max_body_bytes: int = 16 * 1024 * 1024  # larger request bodies (after gzip, too) answer 413
    max_backlog_files: int = 2000  # spooled requests not yet aggregated; past this, 429 + Retry-After
    retry_after_s: int = 1
    # a second of a tenant's spans is sealed into records once spans this much later (event time) arrived;
    # it must cover the spread of the fleet's export delays (the SDK's BatchSpanProcessor: 5 s by default)
    grace_s: float = 6.0
    idle_flush_s: float = 5.0  # ... and every open second is sealed after this long (wall time) without spans
    start_job: bool = True  # start the streaming job (and the embedded graph server) with the service
    alertmanager_url: str | None = None  # e.g. http://127.0.0.1:9093; None: alerts kept local
    alert_webhook_url: str | None = None  # a generic webhook that also gets every alert
    external_url: str | None = None  # how people reach this service (links in alerts); None: host:port
    alert_resolve_windows: int = 3  # windows below the high band (fleet healthy) before an alert resolves
    alert_resend_s: float = 30.0  # active alerts are re-sent this often (Alertmanager resolves silent ones)
    actuator: str | None = None  # workflow's: dry-run[:PATH] | webhook:URL | off; None: dry-run into run/
    approve_above: float = 0.2  # the workflow's actions costing more (share of requests) wait for approval
    # the job's n consensus validators as processes of their own (supervised, over TCP), not in the job
    validator_processes: bool = False
    drain_timeout_s: float = 600.0  # on shutdown: time for the spool and the job to finish what was accepted
    metrics_top_agents: int = 10  # per-agent series on /metrics: this many agents per tenant (worst first)
    # a closed-loop backtest's metrics.json (aura backtest --closed-loop --out DIR): its headline on /metrics
    backtest_report: str | None = None

    def validate(self) -> ApiConfig:
        for name in ("port", "grpc_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 65536:
                raise ValueError(f"{name} must be in 0..65535, got {value}")
        if self.max_body_bytes < 1024 or self.max_backlog_files < 1 or self.retry_after_s < 1:
            raise ValueError("max_body_bytes must be >= 1024, max_backlog_files >= 1, retry_after_s >= 1")
        if self.grace_s < 0 or self.idle_flush_s <= 0:
            raise ValueError("grace_s must be >= 0 and idle_flush_s > 0")
        if self.drain_timeout_s <= 0:
            raise ValueError("drain_timeout_s must be > 0")
        if not 0 <= self.metrics_top_agents <= 1000:
            raise ValueError(f"metrics_top_agents must be in 0..1000, got {self.metrics_top_agents}")
        if self.alert_resolve_windows < 1 or self.alert_resend_s <= 0:
            raise ValueError("alert_resolve_windows must be >= 1 and alert_resend_s > 0")
        kind, _, arg = (self.actuator or "dry-run").partition(":")
        if kind not in ("off", "dry-run", "webhook") or (kind == "webhook" and not arg) \
                or (kind == "off" and arg):
            raise ValueError(f"actuator must be dry-run[:PATH], webhook:URL or off, got {self.actuator!r}")
        if not 0 <= self.approve_above <= 1:
            raise ValueError(f"approve_above must be in [0, 1], got {self.approve_above}")
        if not re.fullmatch(tenant_pattern(), self.default_tenant):
            raise ValueError(f"default_tenant {self.default_tenant!r} is not a valid tenant name")
        return self

    @property
    def url(self) -> str:
        return self.external_url or f"http://{self.host}:{self.port}"


def _coerce(value, hint):
    """Coerce a TOML/flag/environment value to a dataclass field's annotated type."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if isinstance(value, str) and hint is not str:  # from the environment
        value = _from_text(value, hint)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint):
        raise TypeError(f"expected {hint.__name__}, got {value!r}")
    return value


def _from_text(text: str, hint):
    if hint is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise TypeError(f"expected a boolean (true/false), got {text!r}")
    try:
        return hint(text)
    except ValueError as err:
        raise TypeError(f"expected {hint.__name__}, got {text!r}") from err


def _load(cls, table: str, path: str | None, env_prefix: str, overrides: dict):
    """``cls`` from the ``[table]`` of a TOML file, then ``<env_prefix><FIELD>`` environment
    variables, then non-None overrides (flags); each later source wins."""
    values: dict = {}
    if path:
        with open(path, "rb") as fh:
            values = tomllib.load(fh).get(table, {})
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown [{table}] settings in {path}: {sorted(unknown)}")
    values.update({name: os.environ[env_prefix + name.upper()] for name in known
                   if env_prefix + name.upper() in os.environ})
    values.update({k: v for k, v in overrides.items() if v is not None})
    hints = typing.get_type_hints(cls)
    try:
        typed = {k: _coerce(v, hints[k]) for k, v in values.items()}
    except TypeError as err:
        raise ValueError(f"bad configuration value: {err}") from err
    return cls(**typed).validate()


def load_run_config(path: str | None = None, **overrides) -> RunConfig:
    """RunConfig from the ``[run]`` table of a TOML file, ``AURA_RUN_<FIELD>`` variables, then
    non-None overrides."""
    return _load(RunConfig, "run", path, "AURA_RUN_", overrides)


def load_api_config(path: str | None = None, **overrides) -> ApiConfig:
    """ApiConfig from the ``[api]`` table of the same TOML file, ``AURA_API_<FIELD>``, then flags."""
    return _load(ApiConfig, "api", path, "AURA_API_", overrides)


def run_config_toml(cfg: RunConfig) -> str:
    """A ``[run]`` table that loads back into ``cfg`` (the service hands its job the exact config)."""
    lines = ["[run]"]
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if v is not None:
            lines.append(f"{f.name} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
