"""Start and stop a real Triton Inference Server on a model repository.

A `tritonserver` on PATH with the onnxruntime backend (the official container) serves the repository as it is.
Otherwise the server binary of the nvidia-pytriton wheel is used; it has only the python backend, so each ONNX
model is served through `onnx_python_model.py` from a generated repository in a work directory (the user's
repository is never written), with the same model names, versions, inputs and outputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from simclr.errors import first_line
from simclr.export.layout import CONFIG_FILE, LABELS_FILE, MODEL_FILE, read_config, versions
from simclr.lifetime import die_with_parent, remove_orphaned
from simclr.ports import PortInUseError, check_port_free

log = logging.getLogger("simclr")

PYTHON_MODEL = Path(__file__).with_name("onnx_python_model.py")
# On SIGTERM, requests in flight get this long to finish (Triton waits 30 s by default, also for a client that
# only holds an idle keep-alive connection).
EXIT_TIMEOUT_SECONDS = 5


class ServerError(RuntimeError):
    """Triton did not start, or stopped serving."""


class StartCancelled(Exception):
    """A stop was asked for while the server started; what start() launched is already stopped."""


@dataclass(frozen=True)
class ServerOptions:
    repo: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    instances: int | None = None  # None: as each config.pbtxt says
    log_file: Path | None = None  # None: triton.log in the server's private work folder, removed when it stops
    ready_timeout: float = 120.0
    onnxruntime_threads: int | None = None  # per instance, embedded server only


@dataclass(frozen=True)
class TritonBinary:
    path: Path
    embedded: bool  # the nvidia-pytriton build: python backend only


def find_triton() -> TritonBinary:
    """A tritonserver on PATH that has the onnxruntime backend, else the one in the nvidia-pytriton wheel."""
    on_path = shutil.which("tritonserver")
    if on_path:
        root = Path(on_path).resolve().parent.parent
        if (root / "backends" / "onnxruntime").is_dir():
            return TritonBinary(Path(on_path), embedded=False)
    try:
        import pytriton
    except ImportError:
        raise ServerError("no Triton found: install nvidia-pytriton, or put a tritonserver with the onnxruntime "
                          "backend on PATH") from None
    binary = Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServerError(f"{binary}: missing from the nvidia-pytriton install")
    return TritonBinary(binary, embedded=True)


def model_names(repo: Path) -> list[str]:
    """Models of a repository: folders holding config.pbtxt and at least one numeric version."""
    repo = Path(repo)
    if not repo.is_dir():
        raise FileNotFoundError(f"--repo {repo}: no such folder")
    names = sorted(child.name for child in repo.iterdir() if (child / CONFIG_FILE).is_file() and versions(child))
    if not names:
        raise FileNotFoundError(f"--repo {repo}: no models (expected <name>/config.pbtxt and <name>/1/model.onnx)")
    return names


def _python_backend_repository(repo: Path, work: Path, options: ServerOptions) -> Path:
    """A repository the python-backend-only server can serve: each ONNX model of `repo` becomes a python-backend
    model running ONNX Runtime (a link to its model.onnx, not a copy); python-backend models and ensembles are
    copied as they are."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    generated = work / "models"
    for name in model_names(repo):
        source = repo / name
        try:
            config = read_config(source)
        except ValueError as error:
            raise ServerError(str(error)) from None
        if config.platform == "ensemble" or config.backend == "python":
            shutil.copytree(source, generated / name, ignore=shutil.ignore_patterns("__pycache__"))
            continue
        config.name = name
        config.backend = "python"
        config.ClearField("platform")
        if options.instances is not None or not config.instance_group:
            del config.instance_group[:]
            config.instance_group.add(count=options.instances or 1)
        for group in config.instance_group:
            group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
        if options.onnxruntime_threads:
            config.parameters["onnxruntime_threads"].string_value = str(options.onnxruntime_threads)
        (generated / name).mkdir(parents=True)
        (generated / name / CONFIG_FILE).write_text(text_format.MessageToString(config))
        if (source / LABELS_FILE).is_file():  # a classifier's class names, for the classification extension
            shutil.copy(source / LABELS_FILE, generated / name / LABELS_FILE)
        for version in versions(source):
            folder = generated / name / str(version)
            folder.mkdir()
            shutil.copy(PYTHON_MODEL, folder / "model.py")
            (folder / MODEL_FILE).symlink_to((source / str(version) / MODEL_FILE).resolve())
    return generated


def _sample_png() -> bytes:
    """A small grey PNG: the health check's input for models that take encoded image files."""
    import io

    from PIL import Image

    encoded = io.BytesIO()
    Image.new("L", (8, 8), 128).save(encoded, format="PNG")
    return encoded.getvalue()


def _check_ports_free(options: ServerOptions) -> None:
    """ServerError naming the first port something already listens on (an orphaned server, another service)."""
    for option, port in (("--http-port", options.http_port), ("--grpc-port", options.grpc_port),
                         ("--metrics-port", options.metrics_port)):
        try:
            check_port_free(options.host, port, option)
        except PortInUseError as error:
            raise ServerError(str(error)) from None


def _open_log(path: Path):
    """The server log, opened for writing without following a link planted at its name (a link to a terminal, such
    as /dev/stderr, is followed); owner-only when new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    terminal = path.is_symlink() and path.resolve().is_char_device()  # --log-file /dev/stderr
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if terminal else os.O_NOFOLLOW), 0o600)
    except OSError as error:
        raise ServerError(f"--log-file {path}: cannot write it ({error.strerror})") from None
    return os.fdopen(handle, "wb")


def _python_backend_dir(binary: TritonBinary, work: Path) -> Path:
    """backends/python/ as links into the wheel, with the stub built for this Python version."""
    tritonserver = binary.path.parent.parent
    stub = tritonserver / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the nvidia-pytriton wheel has no python backend stub for Python "
                          f"{sys.version_info.major}.{sys.version_info.minor} ({stub})")
    backend = work / "backends" / "python"
    backend.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (backend / name).symlink_to(tritonserver / "backends" / "python" / name)
    (backend / "triton_python_backend_stub").symlink_to(stub)
    return backend.parent


def _embedded_environment(binary: TritonBinary) -> dict[str, str]:
    """The python stub takes the environment of the first python3 on PATH and needs that interpreter's libpython."""
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise ServerError(f"numpy {numpy.__version__} is installed; Triton's python backend returns broken outputs "
                          "with numpy 2: install 'numpy<2' in this environment")
    environment = dict(os.environ)
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "")])
    wheel_libs = binary.path.parents[3] / "nvidia_pytriton.libs"
    library_dirs = [sysconfig.get_config_var("LIBDIR") or "", str(wheel_libs), environment.get("LD_LIBRARY_PATH", "")]
    environment["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in library_dirs if d)
    return environment


class TritonServer:
    """A running tritonserver process. Use as a context manager, or call start() and stop()."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.names = model_names(options.repo)
        self.binary = find_triton()
        self.process: subprocess.Popen | None = None
        self.work: Path | None = None
        self.log_file: Path | None = options.log_file  # None until start(): then triton.log in the private folder

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.options.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.options.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.options.host in ("0.0.0.0", "") else self.options.host

    def start(self, cancelled: Callable[[], bool] = lambda: False) -> TritonServer:
        """Launch tritonserver and wait until every model is ready; ServerError (with the log's tail) otherwise.

        `cancelled` is polled while waiting (a signal handler sets it: an exception raised from a handler can land
        inside a lock release and be swallowed); once it is true, start() stops the server and raises StartCancelled.

        Refuses ports something already listens on. The work folder (generated repository, and the log unless
        --log-file names one) is private (0700) and removed by stop(); the server gets SIGTERM when this process
        dies, however it dies, and a later start removes work folders that dead launchers left.
        """
        options = self.options
        _check_ports_free(options)
        remove_orphaned(Path(tempfile.gettempdir()).glob("simclr-triton-*-*"))  # of launchers killed with SIGKILL
        self.work = Path(tempfile.mkdtemp(prefix=f"simclr-triton-{os.getpid()}-"))
        try:
            self.log_file = options.log_file or self.work / "triton.log"
            command = [str(self.binary.path), "--http-address", options.host, "--http-port", str(options.http_port),
                       "--grpc-address", options.host, "--grpc-port", str(options.grpc_port),
                       "--metrics-address", options.host, "--metrics-port", str(options.metrics_port),
                       "--model-control-mode", "none", "--strict-readiness", "true", "--exit-on-error", "true",
                       "--exit-timeout-secs", str(EXIT_TIMEOUT_SECONDS)]
            environment = dict(os.environ)
            if self.binary.embedded:
                repository = _python_backend_repository(Path(options.repo), self.work, options)
                command += ["--model-repository", str(repository),
                            "--backend-directory", str(_python_backend_dir(self.binary, self.work))]
                environment = _embedded_environment(self.binary)
            else:
                command += ["--model-repository", str(Path(options.repo).resolve())]
            with _open_log(self.log_file) as log_output:
                # A new session: the server gets signals from stop() (or from the kernel when this process dies)
                # only, and its children can be stopped together.
                self.process = subprocess.Popen(command, stdout=log_output, stderr=subprocess.STDOUT, env=environment,
                                                start_new_session=True, preexec_fn=die_with_parent)
            self._wait_until_ready(cancelled)
            self.check_inference()
            if cancelled():
                raise StartCancelled
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, cancelled: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.options.ready_timeout
        pending = list(self.names)
        while pending:
            if cancelled():
                raise StartCancelled
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with status {self.process.returncode} while starting; "
                                  f"log {self.log_file}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"models {', '.join(pending)} not ready after {self.options.ready_timeout:.0f} s; "
                                  f"log {self.log_file}:\n{self.log_tail()}")
            pending = [name for name in pending if not self._model_ready(name)]
            if pending:
                time.sleep(0.2)

    def _client(self):
        import tritonclient.http

        return tritonclient.http.InferenceServerClient(self.http_url, connection_timeout=2.0, network_timeout=30.0)

    def _model_ready(self, name: str) -> bool:
        try:
            return self._client().is_model_ready(name)
        except Exception:  # refused or reset while the server starts: tritonclient raises several kinds
            return False

    def check_inference(self) -> None:
        """Run one real inference per model (a model can report ready while its backend is dead); ServerError
        names the model that failed."""
        import numpy as np
        import tritonclient.http
        from tritonclient.utils import triton_to_np_dtype

        client = self._client()
        for name in self.names:
            try:
                spec = client.get_model_metadata(name)["inputs"][0]
                shape = [1, *spec["shape"][1:]]
                request = tritonclient.http.InferInput(spec["name"], shape, spec["datatype"])
                if spec["datatype"] == "BYTES":  # an encoded image file
                    request.set_data_from_numpy(np.full(shape, _sample_png(), dtype=object))
                else:
                    request.set_data_from_numpy(np.zeros(shape, triton_to_np_dtype(spec["datatype"])))
                client.infer(name, [request])
            except Exception as error:  # connection or server errors alike mean the model does not serve
                raise ServerError(f"model {name} is loaded but inference fails ({first_line(error)}); log "
                                  f"{self.log_file}:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the server (it unloads models and exits), SIGKILL to its whole process group if it hangs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop within %.0f s; killing it", timeout)
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # stray python stubs, if any
            self.process.wait()
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
