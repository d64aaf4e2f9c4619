"""The prediction stage's runtime: predictors behind one small interface.

Shaped like Beam's ``apache_beam.ml.inference`` ``ModelHandler``: ``load_model``,
``run_inference`` on a batch, and batch-size hints; each backend is a thin class behind
it. The in-process ONNX Runtime predictor is the embedded default (a Triton predictor
over tritonclient comes with the serving work). No torch here.
"""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from pipelines.calibration import OK, Baseline, Calibration
from schemas import FEATURES_SCHEMA_VERSION

DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
                                 "cascade_cfc")


@dataclass(frozen=True)
class ModelInfo:
    """What the predictor needs from the model's metadata file."""

    seq_len: int
    n_features: int  # of the model's input (the calibrated inputs when it is calibrated)
    horizon_s: float
    feature_schema_version: int
    calibration: Calibration | None = None  # per-tenant input calibration (model.json)

    @staticmethod
    def load(model_dir: str) -> ModelInfo:
        path = os.path.join(model_dir, "model.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no model metadata at {path}; run `aura train` or `aura export`")
        with open(path) as fh:
            meta = json.load(fh)
        cal = Calibration.from_dict(meta["calibration"]) if meta.get("calibration") else None
        info = ModelInfo(int(meta["seq_len"]), int(meta["inputs"]["features"]["shape"][2]),
                         float(meta["horizon_s"]), int(meta["feature_schema_version"]), cal)
        if info.feature_schema_version != FEATURES_SCHEMA_VERSION:
            raise ValueError(f"model {model_dir} was trained on feature schema "
                             f"v{info.feature_schema_version}, the pipeline computes "
                             f"v{FEATURES_SCHEMA_VERSION}: retrain or export a match")
        return info


def sequence_at(features: np.ndarray, ends: np.ndarray, i: int, idx: np.ndarray | None = None,
                t: int = 8, nominal_dt: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """(T, F) features and (T,) elapsed seconds ending at window ``i``; ``idx`` lists the
    windows still available (a subset, when windows went missing). Short histories are
    left-padded with the earliest window and zero elapsed time."""
    avail = np.arange(i + 1) if idx is None else idx[idx <= i]
    real = avail[-t:]
    pad = t - len(real)
    dt = np.concatenate([np.zeros(pad), np.diff(ends[real], prepend=ends[real[0]] - nominal_dt)])
    return features[np.concatenate([np.full(pad, real[0]), real])], dt


class ModelHandler(ABC):
    """One small interface for every backend."""

    @abstractmethod
    def load_model(self):
        """Load (or connect to) the model; called once per worker."""

    @abstractmethod
    def run_inference(self, features: np.ndarray, dt: np.ndarray, model=None) -> np.ndarray:
        """(B, T, F) features and (B, T) elapsed seconds -> (B,) probabilities."""

    def batch_elements_kwargs(self) -> dict:
        """Batch-size hints for the engine's batching transform."""
        return {"min_batch_size": 1, "max_batch_size": 1024}

    @abstractmethod
    def describe(self) -> str:
        """Which backend, model and device, for logs and summaries."""

    def close(self) -> None:  # noqa: B027 - optional hook: in-process backends hold no connection
        """Release connections; a later call reconnects."""


class OnnxPredictor(ModelHandler):
    """onnxruntime in-process: CUDA when onnxruntime-gpu and a GPU are present, else CPU."""

    def __init__(self, model_dir: str = DEFAULT_MODEL_DIR, providers: list[str] | None = None):
        self.model_dir = model_dir
        self.info = ModelInfo.load(model_dir)
        self._providers = providers
        self._session = None
        self.provider = None

    def load_model(self):
        import onnxruntime as ort

        path = os.path.join(self.model_dir, "model.onnx")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no ONNX model at {path}")
        wanted = self._providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                                     if p in ort.get_available_providers()]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self._session = ort.InferenceSession(path, sess_options=opts, providers=wanted)
        self.provider = self._session.get_providers()[0]
        return self._session

    def run_inference(self, features: np.ndarray, dt: np.ndarray, model=None) -> np.ndarray:
        session = model or self._session or self.load_model()
        if features.ndim != 3 or features.shape[1:] != (self.info.seq_len, self.info.n_features):
            raise ValueError(f"features must be (batch, {self.info.seq_len}, {self.info.n_features}), "
                             f"got {features.shape}")
        out = session.run(["probability"], {"features": features.astype(np.float32, copy=False),
                                            "dt": dt.astype(np.float32, copy=False)})[0]
        return out[:, 0]

    def describe(self) -> str:
        return f"onnxruntime in-process ({self.provider or 'not loaded'}), {self.model_dir}"


@dataclass
class TenantHistory:
    """A tenant's keyed state in the prediction stage: recent windows (start ms -> (end
    seconds, raw feature vector)) and its calibration baseline."""

    recent: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)
    baseline: Baseline = field(default_factory=Baseline)


def history_step(state: TenantHistory | None, start_ms: int, end_s: float, vector: np.ndarray,
                 seq_len: int, calibration: Calibration | None = None, keep: int = 32
                 ) -> tuple[np.ndarray, np.ndarray, TenantHistory, str]:
    """The model input for a window given the tenant's state: (T, F) features (calibrated
    when the model is), (T,) elapsed seconds, the updated state (a later pane replaces the
    earlier one; only windows up to this one feed its sequence) and the verdict status
    (``pipelines.calibration``: ok, calibrating, out_of_distribution)."""
    state = state or TenantHistory()
    updated = dict(state.recent)
    updated[start_ms] = (end_s, vector)
    for k in sorted(updated)[:-keep]:
        del updated[k]
    upto = [k for k in sorted(updated) if k <= start_ms]
    ends = np.array([updated[k][0] for k in upto])
    feats = np.stack([updated[k][1] for k in upto])
    x, dt = sequence_at(feats, ends, len(upto) - 1, t=seq_len)
    if calibration is None:
        return x, dt, TenantHistory(updated, state.baseline), OK
    base = calibration.observe(state.baseline, start_ms, vector)
    x = calibration.transform(x, base)
    return x, dt, TenantHistory(updated, base), calibration.status(base, x)


class TritonError(RuntimeError):
    """A Triton call that failed: names the server, the model and Triton's own error."""

    def __init__(self, message: str, *, url: str, model: str, status: str | None, transient: bool,
                 attempts: int, elapsed_s: float):
        super().__init__(message)
        self.url, self.model, self.status, self.transient = url, model, status, transient
        self.attempts, self.elapsed_s = attempts, elapsed_s


# Triton answers that another attempt may cure (server restarting, overloaded, timed out);
# anything else it answered (no such model, bad input, the model raised) is final.
_TRANSIENT_STATUS = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED",
                     "StatusCode.RESOURCE_EXHAUSTED", "StatusCode.ABORTED", "429", "502", "503", "504"}


class TritonPredictor(ModelHandler):
    """tritonclient over gRPC or HTTP, bounded in time: ``timeout_s`` per request, retries
    with backoff only for transient failures (unreachable, timed out, overloaded) and none
    that could end past ``give_up_s``. Failures raise ``TritonError`` naming the server URL,
    the model and Triton's error; after a transient one the next call reconnects."""

    def __init__(self, url: str, protocol: str = "grpc", model_name: str = "cascade_cfc",
                 model_dir: str = DEFAULT_MODEL_DIR, timeout_s: float = 5.0, retries: int = 3,
                 backoff_s: float = 0.1, give_up_s: float = 12.0):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.url, self.protocol, self.model_name = url, protocol, model_name
        self.info = ModelInfo.load(model_dir)
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.give_up_s = give_up_s
        self._client = None

    def _module(self):
        if self.protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
        return mod

    def _connect(self):
        mod = self._module()
        if self.protocol == "grpc":
            return mod.InferenceServerClient(self.url)
        return mod.InferenceServerClient(self.url, connection_timeout=self.timeout_s,
                                         network_timeout=self.timeout_s)

    def _kw(self) -> dict:
        """Per-call timeout (gRPC; the HTTP client has it built in)."""
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    def load_model(self):
        """Connect and check the model is ready; a clear error when server or model is missing
        (within ``timeout_s`` per check when the server does not answer)."""
        client = self._connect()
        try:
            live = client.is_server_live(**self._kw())
        except Exception as err:  # noqa: BLE001 - any transport error means the same to the user
            client.close()
            raise ConnectionError(f"no Triton server at {self.url} ({self.protocol}): "
                                  f"{_triton_text(err)}") from err
        if not live:
            client.close()
            raise ConnectionError(f"Triton server at {self.url} is not live")
        try:
            ready = client.is_model_ready(self.model_name, **self._kw())
        except Exception as err:  # noqa: BLE001
            client.close()
            raise ConnectionError(f"Triton at {self.url} ({self.protocol}) did not say whether model "
                                  f"{self.model_name!r} is ready: {_triton_text(err)}") from err
        if not ready:
            client.close()
            raise LookupError(f"Triton at {self.url} has no ready model {self.model_name!r}")
        self._client = client
        return client

    def close(self) -> None:
        """Close the connection: an open HTTP connection holds up the server's clean shutdown."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def run_inference(self, features: np.ndarray, dt: np.ndarray, model=None) -> np.ndarray:
        mod = self._module()
        x = np.ascontiguousarray(features, dtype=np.float32)
        d = np.ascontiguousarray(dt, dtype=np.float32)
        inputs = [mod.InferInput("features", list(x.shape), "FP32"),
                  mod.InferInput("dt", list(d.shape), "FP32")]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(d)
        outputs = [mod.InferRequestedOutput("probability")]
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            client = model or self._client
            try:
                if client is None:
                    client = self._client = self._connect()
                result = client.infer(self.model_name, inputs, outputs=outputs, **self._kw())
                return result.as_numpy("probability")[:, 0]
            except Exception as err:  # noqa: BLE001 - classified, retried or raised below
                status = _triton_status(err)
                transient = status in _TRANSIENT_STATUS if status else isinstance(err, OSError | TimeoutError)
                if transient and model is None:
                    self.close()  # reconnect: a gRPC channel would wait out its own reconnect backoff
                pause = self.backoff_s * 2 ** (attempt - 1)
                ends = time.monotonic() - start + pause + self.timeout_s  # the next attempt, at worst
                if transient and attempt <= self.retries and ends <= self.give_up_s:
                    time.sleep(pause)
                    continue
                raise self._error(err, status, transient, attempt, time.monotonic() - start) from err

    def _error(self, err: BaseException, status: str | None, transient: bool, attempts: int,
               elapsed: float) -> TritonError:
        timed_out = (status == "StatusCode.DEADLINE_EXCEEDED"
                     or (status is None and isinstance(err, TimeoutError)))
        what = (f"no answer within {self.timeout_s:g} s (timeout_s)" if timed_out
                else "unreachable" if transient and status in (None, "StatusCode.UNAVAILABLE")
                else "inference failed")
        return TritonError(f"Triton {self.protocol} at {self.url}, model {self.model_name!r}: {what} "
                           f"({attempts} attempt(s) in {elapsed:.1f} s): {_triton_text(err)}",
                           url=self.url, model=self.model_name, status=status, transient=transient,
                           attempts=attempts, elapsed_s=elapsed)

    def describe(self) -> str:
        return f"Triton {self.protocol} at {self.url}, model {self.model_name}"


def _triton_status(err: BaseException) -> str | None:
    """Triton's status of a failed call (gRPC code or HTTP status), None for transport errors."""
    status = getattr(err, "status", None)
    return str(status()) if callable(status) and status() is not None else None


def _triton_text(err: BaseException) -> str:
    text = str(err) or "(no message)"
    return text if type(err).__name__ in text else f"{type(err).__name__}: {text}"


@dataclass(frozen=True)
class PredictorSpec:
    """Which predictor the pipeline builds (picklable; built once per worker)."""

    kind: str = "onnx"  # onnx (in-process, the embedded default) | triton
    model_dir: str = DEFAULT_MODEL_DIR
    triton_url: str = "127.0.0.1:8001"
    triton_protocol: str = "grpc"

    def build(self) -> ModelHandler:
        if self.kind == "onnx":
            return OnnxPredictor(self.model_dir)
        if self.kind == "triton":
            return TritonPredictor(self.triton_url, self.triton_protocol, model_dir=self.model_dir)
        raise ValueError(f"predictor must be 'onnx' or 'triton', got {self.kind!r}")


def score_tenant(predictor: ModelHandler, starts_s: np.ndarray, ends_s: np.ndarray, features: np.ndarray
                 ) -> tuple[np.ndarray, list[str]]:
    """One tenant's windows in order (one pane each) through ``history_step`` and the
    model, as the streaming job scores them: (W,) probabilities and (W,) statuses."""
    state, xs, dts, statuses = None, [], [], []
    info = predictor.info
    for start, end, vec in zip(starts_s, ends_s, features):
        x, dt, state, status = history_step(state, int(round(start * 1000)), float(end), vec, info.seq_len,
                                            info.calibration)
        xs.append(x)
        dts.append(dt)
        statuses.append(status)
    if not xs:
        return np.zeros(0), []
    return predictor.run_inference(np.stack(xs), np.stack(dts)), statuses
