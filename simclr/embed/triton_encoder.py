"""The remote encoder: a model served by Triton, over HTTP or gRPC (tritonclient)."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from simclr.embed.encoder import PROTOCOLS, SENDS, EncoderError, ModelIdentity, check_batch
from simclr.errors import first_line
from simclr.export.bytes_model import BYTES_INPUT, bytes_name
from simclr.export.layout import INPUT_NAME, OUTPUT_NAME, ModelMetadata, sha256_parameter

T = TypeVar("T")


def _unreachable(error: Exception) -> bool:
    """A refused or dropped connection (worth retrying), as opposed to an answer from the server."""
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    status = getattr(error, "status", None)
    return callable(status) and "UNAVAILABLE" in str(status())


# Encoded files per request, at most: the Python gRPC client's CPU per byte triples for messages over 32 MiB
# (measured in bench/serve_throughput.py), and Triton's HTTP limit on a request is 64 MiB.
MAX_REQUEST_BYTES = 8 << 20


class ServerUnreachable(EncoderError):
    """The server did not answer within the retry window (as opposed to an answer that refuses the request)."""


class FileRefused(ValueError):
    """The server's preprocessing model could not turn a file of the request into an image."""


def joined_requests(results: list[tuple[np.ndarray, list[str | None]]], embedding_dim: int
                    ) -> tuple[np.ndarray, list[str | None]]:
    """The (rows, errors) of consecutive requests as one: float32 [total, D] and the errors in the same order."""
    rows = [request_rows for request_rows, _ in results]
    errors = [error for _, request_errors in results for error in request_errors]
    return (np.concatenate(rows) if rows else np.zeros((0, embedding_dim), np.float32)), errors


class TritonEncoder:
    """Encoder over a Triton model. Splits batches to the model's max_batch_size and keeps at most
    `max_in_flight` requests in flight (one client per worker thread: the HTTP client is not thread-safe).
    A refused connection is retried with exponential backoff for up to `retry_seconds`.

    With `send="bytes"`, `embed_files` sends image files as they are to the ensemble NAME_bytes (the server decodes
    them exactly as simclr-embed does), up to `files_per_request` files per request. Its embeddings are NAME's (the
    version the ensemble runs), so features made either way carry the same identity. Its rows line up with the
    paths given: row i is path i's embedding, or NaN where errors[i] says why that file failed.
    """

    def __init__(self, url: str, model_name: str, version: str = "", protocol: str = "http", max_in_flight: int = 4,
                 retry_seconds: float = 10.0, send: str = "uint8", files_per_request: int = 16,
                 output: str = OUTPUT_NAME) -> None:
        if protocol not in PROTOCOLS:
            raise EncoderError(f"--protocol {protocol!r}: http or grpc")
        if send not in SENDS:
            raise EncoderError(f"--send {send!r}: {' or '.join(SENDS)}")
        self.url, self.model_name, self.protocol, self.send, self.output = url, model_name, protocol, send, output
        self.source = f"{protocol}://{url}"
        self.retry_seconds = retry_seconds
        self.max_in_flight = max(1, max_in_flight)
        if protocol == "grpc":
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        self._module = client_module
        self._local = threading.local()
        self._clients: list[Any] = []  # every thread's, closed by close(): an open connection delays a server's stop
        self._clients_lock = threading.Lock()
        config, versions = self._with_retry(lambda: self._read_model(model_name))
        if send == "bytes":
            version, self.max_image_bytes = self._bytes_model(version)
            self.files_per_request = max(1, min(files_per_request, int(config.get("max_batch_size", 0)) or 1))
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
        outputs = {tensor["name"]: int(tensor["dims"][0]) for tensor in config["output"]}
        if output not in outputs:
            raise EncoderError(f"model {model_name} on {url} has no output {output!r} (outputs: "
                               f"{', '.join(outputs)})")
        self.classes: tuple[str, ...] = tuple(json.loads(parameters["classes"])) if "classes" in parameters else ()
        self.identity = ModelIdentity(model_name, self.version, parameters.get(sha256_parameter(self.version), ""),
                                      dims[0], outputs[output])
        self._pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="triton-request")

    def _client(self):
        """This thread's client."""
        if not hasattr(self._local, "client"):
            self._local.client = self._module.InferenceServerClient(self.url)
            with self._clients_lock:
                self._clients.append(self._local.client)
        return self._local.client

    def _read_model(self, name: str, hint: str = "") -> tuple[dict[str, Any], list[str]]:
        """The config (as a dict) and served versions of model `name`; EncoderError (with `hint`) if not served."""
        client = self._client()
        from tritonclient.utils import InferenceServerException

        try:
            metadata = client.get_model_metadata(name)
        except InferenceServerException as error:
            if _unreachable(error):
                raise
            try:
                available = sorted(model["name"] for model in self._repository_index(client))
            except Exception:  # the index is only for the message
                available = []
            raise EncoderError(f"model {name!r} is not served by Triton at {self.url}"
                               + (f" (models: {', '.join(available)})" if available else "") + hint) from None
        config = client.get_model_config(name)
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            metadata = MessageToDict(metadata, preserving_proto_field_name=True)
            config = MessageToDict(config.config, preserving_proto_field_name=True)
        return config, [str(v) for v in metadata["versions"]]

    def _bytes_model(self, version: str) -> tuple[str, int]:
        """The version of NAME that the ensemble NAME_bytes runs, and its preprocessing model's file size limit."""
        hint = (f"; export with its bytes model (on by default: simclr export RUN --name {self.model_name}, or "
                f"simclr export REPO/{self.model_name} to add it), or use --send uint8")
        ensemble, _ = self._with_retry(lambda: self._read_model(bytes_name(self.model_name), hint))
        steps = ensemble.get("ensemble_scheduling", {}).get("step", [])
        pinned = next((str(step.get("model_version", "")) for step in steps
                       if step.get("model_name") == self.model_name), "")
        preprocess = next((step["model_name"] for step in steps if step.get("model_name") != self.model_name), None)
        if not pinned or preprocess is None:
            raise EncoderError(f"model {bytes_name(self.model_name)} on {self.url} is not an ensemble of a "
                               f"preprocessing model and {self.model_name}")
        if version and version != pinned:
            raise EncoderError(f"--model-version {version}: {bytes_name(self.model_name)} runs version {pinned} of "
                               f"{self.model_name}; use --send uint8 for other versions")
        config, _ = self._with_retry(lambda: self._read_model(preprocess))
        limit = config.get("parameters", {}).get("max_image_bytes", {}).get("string_value", "")
        return pinned, int(limit) if limit.isdigit() else MAX_REQUEST_BYTES

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
            except (EncoderError, FileRefused):
                raise
            except Exception as error:
                if not _unreachable(error):
                    raise EncoderError(f"Triton at {self.url}: {first_line(error)}") from None
                if time.monotonic() >= deadline:
                    raise ServerUnreachable(f"Triton at {self.url} is not reachable ({self.protocol}); is "
                                            "`simclr serve` running there?") from None
                time.sleep(delay)
                delay = min(2 * delay, 2.0)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """One request: embeddings of at most max_batch_size checked images."""
        def request() -> np.ndarray:
            client = self._client()
            image = self._module.InferInput(INPUT_NAME, list(images.shape), "UINT8")
            image.set_data_from_numpy(images)
            output = self._module.InferRequestedOutput(self.output)
            result = client.infer(self.model_name, [image], model_version=self.version, outputs=[output])
            return result.as_numpy(self.output)

        return self._checked(self._with_retry(request), len(images))

    def _checked(self, embeddings: np.ndarray | None, count: int) -> np.ndarray:
        if embeddings is None or embeddings.shape != (count, self.identity.embedding_dim):
            raise EncoderError(f"Triton at {self.url} returned embeddings of shape "
                               f"{None if embeddings is None else embeddings.shape} for {count} images")
        return embeddings

    def embed(self, images: np.ndarray) -> np.ndarray:
        images = check_batch(images, self.identity)
        chunks = [images[start:start + self.max_batch_size] for start in range(0, len(images), self.max_batch_size)]
        if len(chunks) == 1:
            return self.infer(chunks[0])
        return np.concatenate(list(self._pool.map(self.infer, chunks)))

    def embed_files(self, paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, list[str | None]]:
        """Embed image files without decoding them here (send="bytes"). Returns float32 [len(paths), D], row i the
        embedding of paths[i] or all NaN when that file failed, and per path the reason it failed, or None."""
        if self.send != "bytes":
            raise EncoderError("embed_files needs send='bytes' (the ensemble NAME_bytes decodes the files)")
        requests = self.group_files([str(path) for path in paths])
        results = list(self._pool.map(self.embed_request, requests)) if len(requests) > 1 else \
            [self.embed_request(request) for request in requests]
        return joined_requests(results, self.identity.embedding_dim)

    def group_files(self, paths: list[str]) -> list[list[str]]:
        """Requests of up to `files_per_request` files and MAX_REQUEST_BYTES (a larger file goes alone)."""
        requests: list[list[str]] = []
        size_of_last = 0
        for path in paths:
            try:
                size = os.stat(path).st_size
            except OSError:
                size = 0  # reported when read
            if not requests or len(requests[-1]) >= self.files_per_request or size_of_last + size > MAX_REQUEST_BYTES:
                requests.append([])
                size_of_last = 0
            requests[-1].append(path)
            size_of_last += size
        return requests

    def _read_file(self, path: str) -> bytes:
        """The file's bytes; OSError or ValueError (without reading it) for what the server would refuse."""
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):  # a FIFO or device named *.jpg would block or never end
            raise OSError(f"{path}: not a regular file")
        if status.st_size > self.max_image_bytes:
            raise ValueError(f"{status.st_size:,} bytes, over the server's limit of {self.max_image_bytes:,} "
                             "(max_image_bytes)")
        with open(path, "rb") as file:
            return file.read()

    def embed_request(self, paths: list[str]) -> tuple[np.ndarray, list[str | None]]:
        """One request for the readable files of `paths`: float32 [len(paths), D] (NaN rows for the files that
        failed) and per path the reason, or None. When the server refuses a file of it, each file goes again alone,
        so that every file gets its own embedding or reason."""
        contents: list[bytes] = []
        errors: list[str | None] = []
        for path in paths:
            try:
                contents.append(self._read_file(path))
                errors.append(None)
            except (OSError, ValueError) as error:
                errors.append(f"{type(error).__name__}: {getattr(error, 'strerror', None) or error}")
        rows = np.full((len(paths), self.identity.embedding_dim), np.nan, np.float32)
        readable = [index for index, error in enumerate(errors) if error is None]
        if not readable:
            return rows, errors
        try:
            rows[readable] = self._with_retry(lambda: self._infer_files(contents))
            return rows, errors
        except FileRefused as refused:
            if len(readable) == 1:
                errors[readable[0]] = str(refused)
                return rows, errors
        for index in readable:
            alone, (errors[index],) = self.embed_request([paths[index]])
            rows[index] = alone[0]
        return rows, errors

    def _infer_files(self, contents: list[bytes]) -> np.ndarray:
        from tritonclient.utils import InferenceServerException

        files = np.array(contents, dtype=object).reshape(-1, 1)
        tensor = self._module.InferInput(BYTES_INPUT, list(files.shape), "BYTES")
        tensor.set_data_from_numpy(files)
        output = self._module.InferRequestedOutput(self.output)
        try:
            result = self._client().infer(bytes_name(self.model_name), [tensor], outputs=[output])
        except InferenceServerException as error:
            message = first_line(error)
            if f"{BYTES_INPUT}[" in message and not _unreachable(error):  # the preprocessing model's refusal
                raise FileRefused(message[message.index(f"{BYTES_INPUT}["):].split("]: ", 1)[-1]) from None
            raise
        return self._checked(result.as_numpy(self.output), len(contents))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._clients_lock:
            for client in self._clients:
                client.close()
            self._clients.clear()

    def __enter__(self) -> TritonEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
