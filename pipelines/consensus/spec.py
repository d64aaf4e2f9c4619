"""What an engine's consensus stage is built from (``ConsensusSpec``) and how a prediction
row becomes the validators' request (``request``), the same for every engine."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

from pipelines.consensus.audit import AUDIT_DIR
from pipelines.consensus.crypto import digest_arrays
from pipelines.consensus.keys import load_keys
from pipelines.consensus.messages import Request, Verdict
from pipelines.consensus.remote import RemoteValidators
from pipelines.consensus.stage import ConsensusConfig
from pipelines.consensus.stage import ConsensusStage as Validators
from pipelines.consensus.validator import RiskBands
from pipelines.inference import PredictorSpec

INPUTS = "inputs"  # the row key that carries (x, dt) from the prediction stage


@dataclass(frozen=True)
class ConsensusSpec:
    """What the consensus stage builds (picklable): one predictor spec per validator."""

    backends: tuple[PredictorSpec, ...] = field(default_factory=lambda: (PredictorSpec(),) * 4)
    epsilon: float = 1e-4
    bands: RiskBands = RiskBands()
    max_block: int = 256
    key_dir: str | None = None  # persistent validator keys (aura audit keygen); None: fresh per run
    # validator processes (pipelines/consensus/tcp.py) described by this config file; None: in process
    remote_config: str | None = None
    remote_timeout_s: float | None = None  # commit timeout with remote_config (None: the file's)

    def config(self) -> ConsensusConfig:
        return ConsensusConfig(len(self.backends), self.epsilon, self.bands, self.max_block)

    def build(self, out_dir: str) -> Validators | RemoteValidators:
        """The validators of one new chain, each with its own loaded predictor, signing with
        the keys in ``key_dir`` (fresh ones without it); audit log in ``<out_dir>/audit/``.
        With ``remote_config``: a client of those validator processes (their chain continues
        across runs; audit log ``<out_dir>/audit/chain-<its chain id>.ndjson``)."""
        if self.remote_config is not None:
            return RemoteValidators(self.remote_config, out_dir, timeout_s=self.remote_timeout_s)
        predictors = []
        for s in self.backends:
            p = s.build()
            p.load_model()
            predictors.append(p)
        chain = uuid.uuid4().hex
        path = os.path.join(out_dir, AUDIT_DIR, f"chain-{chain}.ndjson")
        keys = load_keys(self.key_dir, len(predictors)) if self.key_dir else None
        return Validators(predictors, self.config(), audit_path=path, chain_id=chain, keys=keys)


def request(row: dict, bands: RiskBands) -> Request:
    """A prediction row (with its model inputs under ``INPUTS``) -> the validators' request."""
    x, dt = row[INPUTS]
    p = float(row["probability"])
    v = Verdict(row["tenant"], int(row["window_start"]), int(row["window_end"]), int(row["pane_index"]), p,
                bands.band(p), digest_arrays(x, dt))
    return Request(v, x, dt)
