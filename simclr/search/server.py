"""Running the search service: uvicorn on a host and port, the index and model loaded in the background (the port
answers /healthz at once), SIGHUP or POST /reload to swap in a new index, SIGINT/SIGTERM to stop."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable

from simclr.errors import first_line
from simclr.ports import check_port_free
from simclr.search.api import ServiceOptions, create_app
from simclr.search.connections import connection_cap, guarded_protocol
from simclr.search.service import SearchService

log = logging.getLogger("simclr")


class SearchServer:
    """The service on uvicorn. `run()` serves in the foreground until a signal (the CLI); `start()`/`stop()` serve
    from a background thread (tests, the demo)."""

    def __init__(self, service: SearchService, host: str = "127.0.0.1", port: int = 8600,
                 options: ServiceOptions | None = None) -> None:
        import uvicorn

        self.service = service
        self.host, self.port = host, port
        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # run() stops it on SIGINT/SIGTERM (uvicorn would re-raise them at exit)
                yield

        options = options or ServiceOptions()
        protocol = guarded_protocol(options.head_timeout, options.body_idle_timeout,
                                    options.max_connections or connection_cap())
        config = uvicorn.Config(create_app(service, options), host=host, port=port, http=protocol,
                                log_level="warning", access_log=False, lifespan="off")
        self.server = Server(config)
        self.load_error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def _load(self, on_ready: Callable[[], None] | None) -> None:
        try:
            self.service.load()
        except BaseException as error:  # reported by run()/start(); the server stops
            self.load_error = error
            self.server.should_exit = True
            return
        if on_ready:
            on_ready()

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM; re-raises what stopped the index or the model from loading. PortInUseError
        before anything starts when the port is taken."""
        check_port_free(self.host, self.port)
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=self._reload, daemon=True).start())
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, lambda *_: setattr(self.server, "should_exit", True))
        threading.Thread(target=self._load, args=(on_ready,), daemon=True).start()
        self.server.run()
        if self.load_error is not None:
            raise self.load_error

    def _reload(self) -> None:
        try:
            self.service.reload()
        except ValueError as error:
            log.error("SIGHUP: reload failed, still serving the previous index: %s", first_line(error))

    def start(self, timeout: float = 120.0) -> SearchServer:
        """Serve from a background thread; return once the index and the model are loaded."""
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        self._load(None)
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.load_error is not None or not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise self.load_error or RuntimeError(f"the search service did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> SearchServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
