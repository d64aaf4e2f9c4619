"""A real tritonserver on 127.0.0.1 serving the committed model (``aura serve``).

The binary comes from PyPI's nvidia-pytriton, installed in its own venv (``.venv-triton``,
numpy<2). It has the python backend only, so the local repository serves ``model.onnx``
through ``triton_repo/local/model.py`` (onnxruntime). Started and stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.request
from dataclasses import dataclass, field

from pipelines.inference import DEFAULT_MODEL_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_VENV = os.path.join(ROOT, ".venv-triton")
MODEL_NAME = "cascade_cfc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _install(src: str, dst: str) -> None:
    """Copy ``src`` over ``dst`` by rename: a stub still running from a killed server keeps its
    old inode (writing into a busy executable fails with ETXTBSY)."""
    tmp = f"{dst}.{os.getpid()}.tmp"
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


@dataclass
class TritonServer:
    workdir: str
    model_dir: str = DEFAULT_MODEL_DIR
    server_venv: str = SERVER_VENV
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    model_py: str | None = None  # a python-backend model.py instead of triton_repo/local/model.py
    process: subprocess.Popen | None = None

    def _pytriton(self) -> str:
        found = [os.path.join(root, "pytriton")
                 for root, dirs, _ in os.walk(os.path.join(self.server_venv, "lib"))
                 if "pytriton" in dirs and root.endswith("site-packages")]
        if not found:
            raise FileNotFoundError(f"no nvidia-pytriton in {self.server_venv}: run `make triton-venv` "
                                    "(pins in triton_repo/server-requirements.txt)")
        return found[0]

    def prepare(self) -> tuple[str, str]:
        """The local model repository and backend folder under ``workdir``."""
        pt = self._pytriton()
        repo = os.path.join(self.workdir, "repo")
        version = os.path.join(repo, MODEL_NAME, "1")
        os.makedirs(version, exist_ok=True)
        local = os.path.join(ROOT, "triton_repo", "local")
        with open(os.path.join(local, "config.pbtxt")) as fh:
            config = fh.read()
        with open(os.path.join(self.model_dir, "model.json")) as fh:  # the served model's own shapes
            _, seq_len, n_features = json.load(fh)["inputs"]["features"]["shape"]
        config = re.sub(r"dims: \[ \d+, \d+ \]", f"dims: [ {seq_len}, {n_features} ]", config, count=1)
        config = re.sub(r'(name: "dt"\s+data_type: TYPE_FP32\s+dims: \[ )\d+( \])', rf"\g<1>{seq_len}\g<2>",
                        config)
        with open(os.path.join(repo, MODEL_NAME, "config.pbtxt"), "w") as fh:
            fh.write(config)
        shutil.copyfile(self.model_py or os.path.join(local, "model.py"), os.path.join(version, "model.py"))
        shutil.copyfile(os.path.join(self.model_dir, "model.onnx"), os.path.join(version, "model.onnx"))
        backend = os.path.join(self.workdir, "backends", "python")
        os.makedirs(backend, exist_ok=True)
        src = os.path.join(pt, "tritonserver")
        for f in (os.path.join(src, "backends", "python", "libtriton_python.so"),
                  os.path.join(src, "backends", "python", "triton_python_backend_utils.py"),
                  os.path.join(src, "python_backend_stubs", "3.11", "triton_python_backend_stub")):
            _install(f, os.path.join(backend, os.path.basename(f)))
        return repo, os.path.dirname(backend)

    def start(self, timeout_s: float = 60.0) -> TritonServer:
        repo, backends = self.prepare()
        pt = self._pytriton()
        libs = os.path.join(os.path.dirname(pt), "nvidia_pytriton.libs")
        site = os.path.dirname(pt)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [sysconfig.get_config_var("LIBDIR"), libs, env.get("LD_LIBRARY_PATH", "")])
        env["PATH"] = os.pathsep.join([os.path.join(self.server_venv, "bin"), env.get("PATH", "")])
        env["PYTHONPATH"] = site
        cmd = [os.path.join(pt, "tritonserver", "bin", "tritonserver"), f"--model-repository={repo}",
               f"--backend-directory={backends}", "--model-control-mode=explicit",
               f"--load-model={MODEL_NAME}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
               f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", "--metrics-port=0",
               "--allow-metrics=false", "--exit-timeout-secs=5"]
        log = open(os.path.join(self.workdir, "tritonserver.log"), "wb")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL_NAME}/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({self.process.returncode}); "
                                   f"see {os.path.join(self.workdir, 'tritonserver.log')}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"tritonserver not ready after {timeout_s} s")

    def stop(self) -> int | None:
        """SIGTERM to the server's PID, then wait; returns its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of the failure path)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
