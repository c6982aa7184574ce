"""Triton python-backend model that serves an ONNX encoder with ONNX Runtime.

The launcher copies this file as model.py next to a link to model.onnx when the only Triton at hand is the one
in the nvidia-pytriton wheel (python backend only). Clients see the same names, inputs and outputs as with
Triton's onnxruntime backend. It runs inside Triton's python stub, so it imports only numpy and onnxruntime.
"""

import json
import os

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_names = [output["name"] for output in config["output"]]
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = onnxruntime.SessionOptions()
        threads = config.get("parameters", {}).get("onnxruntime_threads", {}).get("string_value")
        if threads:
            options.intra_op_num_threads = int(threads)
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in onnxruntime.get_available_providers()]
        self.session = onnxruntime.InferenceSession(os.path.join(folder, "model.onnx"), options, providers=providers)

    def execute(self, requests):
        # Dynamic batching hands over several requests at once: one ONNX Runtime call for all of them.
        batches = [pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy() for request in requests]
        outputs = self.session.run(self.output_names, {self.input_name: np.concatenate(batches)})
        responses, start = [], 0
        for batch in batches:
            tensors = [pb_utils.Tensor(name, output[start:start + len(batch)])
                       for name, output in zip(self.output_names, outputs, strict=True)]
            start += len(batch)
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
