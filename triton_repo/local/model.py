"""Triton python-backend model: runs the committed ONNX file with onnxruntime on CPU.

Used by `aura serve` where the official Triton container (onnxruntime backend, GPU) is not
available: PyPI's nvidia-pytriton ships tritonserver with the python backend only. Every
request of a dynamic batch goes through one onnxruntime call.
"""

import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        feats = [pb_utils.get_input_tensor_by_name(r, "features").as_numpy() for r in requests]
        dts = [pb_utils.get_input_tensor_by_name(r, "dt").as_numpy() for r in requests]
        out = self.session.run(["probability"], {"features": np.concatenate(feats).astype(np.float32),
                                                 "dt": np.concatenate(dts).astype(np.float32)})[0]
        responses, k = [], 0
        for f in feats:
            n = len(f)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("probability", out[k:k + n])]))
            k += n
        return responses
