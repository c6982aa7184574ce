"""Triton python-backend model NAME_preprocess: encoded image files in, the encoder's uint8 input out.

`simclr export` writes this file as model.py beside simclr_decode.py (a copy of simclr/data/decode.py), so the
server decodes exactly as simclr-embed does. It runs inside Triton's python stub without simclr installed: it
imports only the standard library, numpy, Pillow (through simclr_decode) and Triton's utilities.
"""

import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import UnidentifiedImageError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from simclr_decode import DECODE_ERRORS, MAX_QUERY_PIXELS, decode_image  # noqa: E402  (the copy beside this file)


class ItemError(ValueError):
    """Why one file of a request cannot become an image; the whole request fails with its message (INVALID_ARG:
    the client's file, not the server, is at fault)."""


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.image_size = int(parameters["image_size"])
        self.max_image_bytes = int(parameters["max_image_bytes"])
        self.max_pixels = int(parameters.get("max_pixels", MAX_QUERY_PIXELS))
        # Pillow lets go of the GIL while it decodes and resizes: threads spread one batch over the cores. The
        # instances share them (one thread per core in all), so that at most one decode per core holds memory.
        instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1
        self.pool = ThreadPoolExecutor(max(1, (os.cpu_count() or 1) // instances), thread_name_prefix="decode")

    def execute(self, requests):
        # Each request of a dynamic batch is answered on its own: one bad file fails its request only.
        files = [pb_utils.get_input_tensor_by_name(request, "image_bytes").as_numpy().reshape(-1)
                 for request in requests]
        decoded = iter(self.pool.map(self.decode, [(index, item) for items in files for index, item in
                                                   enumerate(items)]))
        responses = []
        for items in files:
            images = [next(decoded) for _ in items]
            refused = next((image for image in images if isinstance(image, ItemError)), None)
            if refused is not None:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                    str(refused), pb_utils.TritonError.INVALID_ARG)))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("image",
                                                                                            np.stack(images))]))
        return responses

    def decode(self, numbered_item):
        """uint8 [S, S, 3] for one file of a request, or the ItemError that says why it cannot be."""
        index, item = numbered_item
        if not isinstance(item, bytes):
            return ItemError(f"image_bytes[{index}]: expected the bytes of an image file, got {type(item).__name__}")
        if len(item) > self.max_image_bytes:  # refused before any decoding
            return ItemError(f"image_bytes[{index}]: {len(item):,} bytes, over this model's limit of "
                             f"{self.max_image_bytes:,} (max_image_bytes)")
        try:
            return decode_image(io.BytesIO(item), self.image_size, self.max_pixels)
        except UnidentifiedImageError:
            return ItemError(f"image_bytes[{index}]: {len(item):,} bytes that are not an image file in a format "
                             "Pillow reads (JPEG, PNG, WebP, GIF, TIFF, BMP, ...)")
        except DECODE_ERRORS as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
            return ItemError(f"image_bytes[{index}]: cannot decode {len(item):,} bytes ({type(error).__name__}: "
                             f"{reason})")

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
