"""One encoder over several Triton servers that serve the same model (`--server host1:8001,host2:8001`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from simclr.embed.encoder import EncoderError, check_batch
from simclr.embed.triton_encoder import ServerUnreachable, TritonEncoder, joined_requests

log = logging.getLogger("simclr")
T = TypeVar("T")


class TritonFleet:
    """Requests spread round-robin over the servers of a fleet, `max_in_flight` per server. A request whose server
    stops answering goes to another server at once, and that server rests for `rest_seconds` before it is tried
    again; only when no server answers for `retry_seconds` does a request fail. Every server must serve the very
    same model (same identity), so that rows made on any of them mix. A server that cannot be reached when the
    fleet opens is left out with a warning, as long as one can."""

    def __init__(self, urls: Sequence[str], model_name: str, version: str = "", protocol: str = "http",
                 max_in_flight: int = 4, retry_seconds: float = 10.0, rest_seconds: float = 30.0, send: str = "uint8",
                 output: str = "embedding") -> None:
        if len(set(urls)) != len(urls) or not urls:
            raise EncoderError(f"--server {','.join(urls)}: name each server once")
        self.retry_seconds, self.rest_seconds = retry_seconds, rest_seconds
        self.source = f"{protocol}://{','.join(urls)}"
        self.send = send

        def open_member(url: str) -> TritonEncoder | ServerUnreachable:
            try:
                return TritonEncoder(url, model_name, version, protocol, max_in_flight, retry_seconds, send,
                                     output=output)
            except ServerUnreachable as error:
                return error

        with ThreadPoolExecutor(len(urls)) as opening:
            opened = list(opening.map(open_member, urls))
        self.members = [member for member in opened if isinstance(member, TritonEncoder)]
        for error in opened:
            if isinstance(error, ServerUnreachable):
                log.warning("%s; left out of the fleet", error)
        if not self.members:
            raise EncoderError(f"no server of {self.source} is reachable; is `simclr serve` running there?")
        first = self.members[0]
        for member in self.members[1:]:
            if member.identity != first.identity:
                self.close()
                raise EncoderError(f"Triton at {member.url} serves {member.identity.name} v{member.identity.version} "
                                   f"(sha256 {member.identity.sha256[:12]}), Triton at {first.url} "
                                   f"{first.identity.name} v{first.identity.version} (sha256 "
                                   f"{first.identity.sha256[:12]}): a fleet serves one model")
        for member in self.members:
            member.retry_seconds = 0.0  # a server that does not answer at once: the fleet tries another
        self.identity, self.metadata, self.classes = first.identity, first.metadata, first.classes
        self.max_batch_size = min(member.max_batch_size for member in self.members)
        if send == "bytes":
            self.max_image_bytes = min(member.max_image_bytes for member in self.members)
        self._resting_until = [0.0] * len(self.members)
        self._turn = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, max_in_flight) * len(self.members), thread_name_prefix="fleet")

    def _next_member(self) -> int | None:
        """The next server in turn that is not resting, or None."""
        with self._lock:
            now = time.monotonic()
            for step in range(len(self.members)):
                candidate = (self._turn + step) % len(self.members)
                if self._resting_until[candidate] <= now:
                    self._turn = candidate + 1
                    return candidate
            return None

    def _on_a_server(self, call: Callable[[TritonEncoder], T]) -> T:
        """`call` on the next server that answers."""
        delay, deadline = 0.1, time.monotonic() + self.retry_seconds
        while True:
            number = self._next_member()
            if number is None:
                if time.monotonic() >= deadline:
                    raise ServerUnreachable(f"no server of {self.source} answered for {self.retry_seconds:g} s")
                time.sleep(delay)
                delay = min(2 * delay, 2.0)
                with self._lock:  # every server is resting: wake the one that rested longest
                    self._resting_until[self._resting_until.index(min(self._resting_until))] = 0.0
                continue
            member = self.members[number]
            try:
                return call(member)
            except ServerUnreachable:
                with self._lock:
                    if self._resting_until[number] <= time.monotonic():
                        log.warning("Triton at %s stopped answering; its requests go to the other servers for "
                                    "%g s", member.url, self.rest_seconds)
                    self._resting_until[number] = time.monotonic() + self.rest_seconds

    def embed(self, images: np.ndarray) -> np.ndarray:
        images = check_batch(images, self.identity)
        chunks = [images[start:start + self.max_batch_size] for start in range(0, len(images), self.max_batch_size)]
        return np.concatenate(list(self._pool.map(
            lambda chunk: self._on_a_server(lambda member: member.infer(chunk)), chunks)))

    def embed_files(self, paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, list[str | None]]:
        """As TritonEncoder.embed_files (row i is paths[i]'s embedding, or NaN where errors[i] says why it failed),
        the requests spread over the fleet."""
        if self.send != "bytes":
            raise EncoderError("embed_files needs send='bytes' (the ensemble NAME_bytes decodes the files)")
        requests = self.members[0].group_files([str(path) for path in paths])
        results = list(self._pool.map(
            lambda request: self._on_a_server(lambda member: member.embed_request(request)), requests))
        return joined_requests(results, self.identity.embedding_dim)

    def close(self) -> None:
        if hasattr(self, "_pool"):
            self._pool.shutdown(wait=True)
        for member in self.members:
            member.close()

    def __enter__(self) -> TritonFleet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
