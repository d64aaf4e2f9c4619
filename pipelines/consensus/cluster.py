"""Building blocks for simulations, tests and benchmarks: a cheap deterministic predictor,
synthetic requests, and a cluster of replicas (honest or Byzantine) on the simulated network."""

from __future__ import annotations

import numpy as np

from pipelines.consensus.byzantine import byzantine
from pipelines.consensus.crypto import digest_arrays, make_committee
from pipelines.consensus.messages import Request, Verdict
from pipelines.consensus.network import NetConfig, Network
from pipelines.consensus.replica import ProtocolConfig, Replica
from pipelines.consensus.validator import RiskBands, Validator

BANDS, NET, PROTOCOL = RiskBands(), NetConfig(), ProtocolConfig()


class LinearPredictor:
    """A logistic model of the window inputs: fast and deterministic (protocol tests and
    benchmarks; the pipeline's validators run the real ONNX model)."""

    def __init__(self, n_features: int = 4, seed: int = 0):
        self.seed = seed
        self.w = np.random.default_rng(seed).normal(size=n_features).astype(np.float32)

    def load_model(self):
        return self

    def run_inference(self, features: np.ndarray, dt: np.ndarray, model=None) -> np.ndarray:
        if self.w.shape[0] != features.shape[-1]:  # weights for this feature count, from the seed
            self.w = np.random.default_rng(self.seed).normal(size=features.shape[-1]).astype(np.float32)
        z = features[:, -1, :] @ self.w + 0.01 * dt.mean(axis=1)
        return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))

    def describe(self) -> str:
        return "linear (test)"


def make_requests(n: int, predictor, bands: RiskBands = BANDS, seed: int = 0, t: int = 4,
                  n_features: int = 4, wrong: set[int] = frozenset(), tenant: str = "acme",
                  start_ms: int = 0) -> list[Request]:
    """n requests whose proposed verdicts are the predictor's; indices in ``wrong`` carry a
    broken proposal (probability flipped), as from a faulty model server."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, n_features)).astype(np.float32)
    dt = np.full((n, t), 10.0, dtype=np.float32)
    probs = predictor.run_inference(x, dt)
    out = []
    for i in range(n):
        p = float(probs[i]) if i not in wrong else 1.0 - float(probs[i])
        ws = start_ms + 10_000 * i
        v = Verdict(tenant, ws, ws + 10_000, 0, p, bands.band(p), digest_arrays(x[i], dt[i]))
        out.append(Request(v, x[i], dt[i]))
    return out


def build_cluster(n: int = 4, byz: dict[int, str] | None = None, net: NetConfig = NET,
                  cfg: ProtocolConfig = PROTOCOL, predictor=None, epsilon: float = 1e-6,
                  seed: bytes = b"sim", observer=None) -> Network:
    """n replicas named "0".."n-1" on a simulated network; ``byz`` maps replica id -> kind."""
    committee, signers = make_committee(n, seed)
    predictor = predictor or LinearPredictor()
    nodes = {}
    for i in range(n):
        r = Replica(i, committee, signers[i], Validator(predictor, epsilon=epsilon), "sim", cfg)
        nodes[str(i)] = byzantine(byz[i], r) if byz and i in byz else r
    return Network(nodes, net, observer=observer)
