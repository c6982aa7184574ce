"""`simclr serve`: run Triton Inference Server on a model repository until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from simclr.cli.common import fail, setup_logging, user_errors
from simclr.server.launcher import ServerError, ServerOptions, StartCancelled, TritonServer

Option = typer.Option


def serve_command(
    repo: Annotated[Path, Option(help="Triton model repository.")] = Path("model_repository"),
    host: Annotated[str, Option(help="Address to bind (0.0.0.0 for every interface).")] = "127.0.0.1",
    http_port: Annotated[int, Option(min=1, max=65535, help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, Option(min=1, max=65535, help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, Option(min=1, max=65535, help="Prometheus metrics port.")] = 8002,
    instances: Annotated[int | None, Option(min=1, help="Instances of each ONNX model on the embedded server "
                                                    "(nvidia-pytriton). [default: as each config.pbtxt says]")
                         ] = None,
    log_file: Annotated[Path | None, Option(help="Server log, kept after the server stops. [default: a file in the "
                                                 "server's private work folder, removed when it stops]")] = None,
    ready_timeout: Annotated[float, Option(help="Seconds to wait for every model to be ready.")] = 120.0,
    health_every: Annotated[float, Option(help="Seconds between health checks, each a real inference per model; "
                                               "a failed check stops the server with status 1 (0: never).")] = 30.0,
) -> None:
    """Serve every model of the repository on Triton Inference Server (HTTP, gRPC, metrics) until stopped.

    Uses a tritonserver on PATH that has the onnxruntime backend, else the server of the nvidia-pytriton wheel
    (its python backend runs each ONNX model with ONNX Runtime; clients see the same models either way).
    """
    setup_logging()
    options = ServerOptions(repo=Path(repo), host=host, http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port, instances=instances, log_file=log_file,
                            ready_timeout=ready_timeout)
    # SIGINT/SIGTERM set `stop`: while the server starts, start() sees it and stops what it launched; once it
    # serves, the serving loop below ends.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with user_errors(ServerError):
        server = TritonServer(options)
        try:
            server.start(cancelled=stop.is_set)
        except StartCancelled:
            raise fail("stopped by signal while starting; nothing is left running", code=130) from None
    try:
        kind = "nvidia-pytriton's tritonserver (python backend + ONNX Runtime)" if server.binary.embedded else \
            f"{server.binary.path} (onnxruntime backend)"
        typer.echo(f"serving {', '.join(server.names)} from {repo} with {kind}", err=True)
        typer.echo(f"  HTTP    http://{server.http_url}\n  gRPC    {server.grpc_url}\n  metrics {server.metrics_url}\n"
                   f"  log     {server.log_file}\nstop with Ctrl-C or SIGTERM")
        checked = time.monotonic()
        while not stop.wait(0.5):
            if not server.running():
                last = " | ".join(server.log_tail(3).splitlines())  # the default log goes with the work folder
                raise fail(f"tritonserver exited with status {server.process.returncode}; its log ended: {last}")
            if time.monotonic() - checked > health_every > 0:
                with user_errors(ServerError):
                    server.check_inference()
                checked = time.monotonic()
    finally:
        server.stop()
    typer.echo("stopped", err=True)
