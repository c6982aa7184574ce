"""The remote encoder: a model served by Triton, over HTTP or gRPC (tritonclient)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from simclr.embed.encoder import PROTOCOLS, EncoderError, ModelIdentity, check_batch
from simclr.errors import first_line
from simclr.export.layout import INPUT_NAME, OUTPUT_NAME, ModelMetadata, sha256_parameter

T = TypeVar("T")


def _unreachable(error: Exception) -> bool:
    """A refused or dropped connection (worth retrying), as opposed to an answer from the server."""
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    status = getattr(error, "status", None)
    return callable(status) and "UNAVAILABLE" in str(status())


class TritonEncoder:
    """Encoder over a Triton model. Splits batches to the model's max_batch_size and keeps at most
    `max_in_flight` requests in flight (one client per worker thread: the HTTP client is not thread-safe).
    A refused connection is retried with exponential backoff for up to `retry_seconds`."""

    def __init__(self, url: str, model_name: str, version: str = "", protocol: str = "http", max_in_flight: int = 4,
                 retry_seconds: float = 10.0) -> None:
        if protocol not in PROTOCOLS:
            raise EncoderError(f"--protocol {protocol!r}: http or grpc")
        self.url, self.model_name, self.protocol = url, model_name, protocol
        self.source = f"{protocol}://{url}"
        self.retry_seconds = retry_seconds
        self.max_in_flight = max(1, max_in_flight)
        if protocol == "grpc":
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        self._module = client_module
        self._local = threading.local()
        config, versions = self._with_retry(self._read_model)
        self.version = version or str(max(int(v) for v in versions))
        if self.version not in versions:
            raise EncoderError(f"model {model_name} has no version {self.version} on {url} "
                               f"(versions: {', '.join(sorted(versions, key=int))})")
        self.max_batch_size = int(config.get("max_batch_size", 0)) or 1
        dims = [int(d) for d in config["input"][0]["dims"]]
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        try:
            self.metadata: ModelMetadata | None = ModelMetadata.from_props(parameters, f"{self.source}/{model_name}")
        except ValueError:  # a model not exported by simclr: no architecture to tell
            self.metadata = None
        self.identity = ModelIdentity(model_name, self.version, parameters.get(sha256_parameter(self.version), ""),
                                      dims[0], int(config["output"][0]["dims"][0]))
        self._pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="triton-request")

    def _client(self):
        """This thread's client."""
        if not hasattr(self._local, "client"):
            self._local.client = self._module.InferenceServerClient(self.url)
        return self._local.client

    def _read_model(self) -> tuple[dict[str, Any], list[str]]:
        client = self._client()
        from tritonclient.utils import InferenceServerException

        try:
            metadata = client.get_model_metadata(self.model_name)
        except InferenceServerException as error:
            if _unreachable(error):
                raise
            try:
                available = sorted(model["name"] for model in self._repository_index(client))
            except Exception:  # the index is only for the message
                available = []
            raise EncoderError(f"model {self.model_name!r} is not served by Triton at {self.url}"
                               + (f" (models: {', '.join(available)})" if available else "")) from None
        config = client.get_model_config(self.model_name)
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            metadata = MessageToDict(metadata, preserving_proto_field_name=True)
            config = MessageToDict(config.config, preserving_proto_field_name=True)
        return config, [str(v) for v in metadata["versions"]]

    def _repository_index(self, client) -> list[dict]:
        index = client.get_model_repository_index()
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            return MessageToDict(index, preserving_proto_field_name=True).get("models", [])
        return index

    def _with_retry(self, call: Callable[[], T]) -> T:
        delay, deadline = 0.1, time.monotonic() + self.retry_seconds
        while True:
            try:
                return call()
            except EncoderError:
                raise
            except Exception as error:
                if not _unreachable(error):
                    raise EncoderError(f"Triton at {self.url}: {first_line(error)}") from None
                if time.monotonic() >= deadline:
                    raise EncoderError(f"Triton at {self.url} is not reachable ({self.protocol}); is `simclr serve` "
                                       "running there?") from None
                time.sleep(delay)
                delay = min(2 * delay, 2.0)

    def _infer(self, images: np.ndarray) -> np.ndarray:
        def request() -> np.ndarray:
            client = self._client()
            image = self._module.InferInput(INPUT_NAME, list(images.shape), "UINT8")
            image.set_data_from_numpy(images)
            output = self._module.InferRequestedOutput(OUTPUT_NAME)
            result = client.infer(self.model_name, [image], model_version=self.version, outputs=[output])
            return result.as_numpy(OUTPUT_NAME)

        embeddings = self._with_retry(request)
        if embeddings is None or embeddings.shape != (len(images), self.identity.embedding_dim):
            raise EncoderError(f"Triton at {self.url} returned embeddings of shape "
                               f"{None if embeddings is None else embeddings.shape} for {len(images)} images")
        return embeddings

    def embed(self, images: np.ndarray) -> np.ndarray:
        images = check_batch(images, self.identity)
        chunks = [images[start:start + self.max_batch_size] for start in range(0, len(images), self.max_batch_size)]
        if len(chunks) == 1:
            return self._infer(chunks[0])
        return np.concatenate(list(self._pool.map(self._infer, chunks)))

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> TritonEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
