"""Triton python-backend model NAME_preprocess: encoded image files in, the encoder's uint8 input out.

`simclr export` writes this file as model.py beside simclr_decode.py (a copy of simclr/data/decode.py), so the
server decodes exactly as simclr-embed does. It runs inside Triton's python stub without simclr installed: it
imports only the standard library, numpy, Pillow (through simclr_decode) and Triton's utilities.
"""

import io
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import UnidentifiedImageError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from simclr_decode import DECODE_ERRORS, decode_image  # noqa: E402  (the copy beside this file)


class ItemError(ValueError):
    """One file of a request that cannot become an image; the whole request fails with its message."""


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.image_size = int(parameters["image_size"])
        self.max_image_bytes = int(parameters["max_image_bytes"])

    def execute(self, requests):
        # Each request of a dynamic batch is answered on its own: one bad file fails its request only.
        return [self.respond(request) for request in requests]

    def respond(self, request):
        items = pb_utils.get_input_tensor_by_name(request, "image_bytes").as_numpy().reshape(-1)
        try:
            images = np.stack([self.decode(index, item) for index, item in enumerate(items)])
        except ItemError as error:
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error)))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("image", images)])

    def decode(self, index, item):
        if not isinstance(item, bytes):
            raise ItemError(f"image_bytes[{index}]: expected the bytes of an image file, got {type(item).__name__}")
        if len(item) > self.max_image_bytes:  # refused before any decoding
            raise ItemError(f"image_bytes[{index}]: {len(item):,} bytes, over this model's limit of "
                            f"{self.max_image_bytes:,} (max_image_bytes)")
        try:
            return decode_image(io.BytesIO(item), self.image_size)
        except UnidentifiedImageError:
            raise ItemError(f"image_bytes[{index}]: {len(item):,} bytes that are not an image file in a format "
                            "Pillow reads (JPEG, PNG, WebP, GIF, TIFF, BMP, ...)") from None
        except DECODE_ERRORS as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
            raise ItemError(f"image_bytes[{index}]: cannot decode {len(item):,} bytes ({type(error).__name__}: "
                            f"{reason})") from None
