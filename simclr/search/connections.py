"""What uvicorn's HTTP/1.1 protocol lacks against slow or half-open clients (slowloris): a request head must arrive
whole within a time, a body must keep arriving, and the number of connections is capped by dropping the one that
has waited longest for its head. Without these, a few hundred connections that send half a request head and stop
hold every file descriptor of the process."""

from __future__ import annotations

import resource

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def connection_cap() -> int:
    """Connections held at most: half the process's file descriptors (the rest are the index, the model, the
    photos being read), between 16 and 1,000."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(1000, (soft if soft != resource.RLIM_INFINITY else 2000) // 2))


def guarded_protocol(head_timeout: float, body_idle_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's H11Protocol with the limits above (pass it as uvicorn.Config(http=...))."""

    class GuardedProtocol(H11Protocol):
        waiting_since: float | None = None  # when it began waiting for a request head (None: not waiting)
        timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._await_head()
            if len(self.connections) > max_connections:
                self._drop_the_longest_waiting()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            state = self.conn.their_state
            if state is h11.SEND_BODY:  # a body in pieces: each must follow the last within the idle timeout
                self._arm(body_idle_timeout, h11.SEND_BODY)
                self.waiting_since = None
            elif state is not h11.IDLE:  # the request is whole: the app answers it
                self._disarm()
                self.waiting_since = None
            # IDLE: the head is still incomplete; its deadline stands (trickling bytes does not extend it)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._await_head()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            self.waiting_since = self.loop.time()
            self._arm(head_timeout, h11.IDLE)

        def _arm(self, seconds: float, state) -> None:
            self._disarm()
            self.timer = self.loop.call_later(seconds, self._expire, state)

        def _disarm(self) -> None:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

        def _expire(self, state) -> None:
            if self.conn.their_state is state and not self.transport.is_closing():
                self.transport.close()

        def _drop_the_longest_waiting(self) -> None:
            waiting = [connection for connection in self.connections
                       if getattr(connection, "waiting_since", None) is not None and connection is not self]
            oldest = min(waiting, key=lambda connection: connection.waiting_since, default=self)
            oldest.transport.close()

    return GuardedProtocol
