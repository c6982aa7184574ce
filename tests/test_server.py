"""A real Triton Inference Server (the embedded one) against local ONNX Runtime, versions, bad requests, stopping."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from simclr.embed.encoder import EncoderError
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.triton_encoder import TritonEncoder
from simclr.ports import free_port


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_equals_local_onnx_runtime(triton, tiny_repo: Path, protocol: str) -> None:
    url = triton.http_url if protocol == "http" else triton.grpc_url
    images = _images(20)  # over max_batch_size 8: the client splits it into 3 requests
    with TritonEncoder(url, "tiny", protocol=protocol, max_in_flight=3) as remote:
        assert remote.identity.version == "2" and remote.max_batch_size == 8
        remote_embeddings = remote.embed(images)
    local = OnnxEncoder(tiny_repo / "tiny")
    assert local.identity == remote.identity
    np.testing.assert_allclose(remote_embeddings, local.embed(images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_older_version_answers_on_request(triton, tiny_repo: Path, protocol: str) -> None:
    url = triton.http_url if protocol == "http" else triton.grpc_url
    images = _images(4, seed=1)
    with TritonEncoder(url, "tiny", version="1", protocol=protocol) as old:
        old_embeddings = old.embed(images)
    np.testing.assert_allclose(old_embeddings, OnnxEncoder(tiny_repo / "tiny" / "1").embed(images), atol=1e-5,
                               rtol=0)
    assert np.abs(old_embeddings - OnnxEncoder(tiny_repo / "tiny").embed(images)).max() > 1e-3


def _raw_http_request(triton, name: str, array: np.ndarray, datatype: str):
    client = httpclient.InferenceServerClient(triton.http_url)
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return client.infer("tiny", [tensor])


@pytest.mark.parametrize("name,array,datatype", [
    ("image", np.zeros((2, 32, 32, 3), np.float32), "FP32"),  # wrong dtype
    ("image", np.zeros((2, 16, 16, 3), np.uint8), "UINT8"),  # wrong shape
    ("pixels", np.zeros((2, 32, 32, 3), np.uint8), "UINT8"),  # wrong input name
    ("image", np.zeros((9, 32, 32, 3), np.uint8), "UINT8"),  # over max_batch_size 8
])
def test_bad_requests_get_errors_and_the_server_keeps_serving(triton, name, array, datatype) -> None:
    with pytest.raises(InferenceServerException):
        _raw_http_request(triton, name, array, datatype)
    grpc = grpcclient.InferenceServerClient(triton.grpc_url)
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    with pytest.raises(InferenceServerException):
        grpc.infer("tiny", [tensor])
    good = _raw_http_request(triton, "image", _images(2), "UINT8").as_numpy("embedding")
    assert good.shape == (2, 64)
    triton.check_inference()


def test_client_errors_are_clear(triton) -> None:
    with pytest.raises(EncoderError, match="not reachable"):
        TritonEncoder(f"127.0.0.1:{free_port()}", "tiny", retry_seconds=0.5)
    with pytest.raises(EncoderError, match=r"'missing' is not served.*models: tiny"):
        TritonEncoder(triton.http_url, "missing")
    with pytest.raises(EncoderError, match="no version 7"):
        TritonEncoder(triton.grpc_url, "tiny", version="7", protocol="grpc")
    with TritonEncoder(triton.http_url, "tiny") as remote, pytest.raises(EncoderError, match=r"\[N, 32, 32, 3\]"):
        remote.embed(np.zeros((2, 24, 24, 3), np.uint8))


def _stub_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"triton_python_backend_stub" in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_serve_stops_on_sigterm_and_frees_its_ports(tiny_repo: Path, tmp_path: Path) -> None:
    ports = [free_port(), free_port(), free_port()]
    stubs_before = _stub_pids()
    command = [sys.executable, "-m", "simclr", "serve", "--repo", str(tiny_repo), "--http-port", str(ports[0]),
               "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--log-file", str(tmp_path / "log")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first_line = process.stdout.readline()  # printed once every model is ready
    assert f"http://127.0.0.1:{ports[0]}" in first_line, process.stderr.read() if process.poll() else first_line
    with TritonEncoder(f"127.0.0.1:{ports[1]}", "tiny", protocol="grpc") as remote:
        assert remote.embed(_images(1)).shape == (1, 64)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert all(_port_free(port) for port in ports)
    deadline = time.monotonic() + 10
    while _stub_pids() - stubs_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _stub_pids() - stubs_before
    assert "stopped" in process.stderr.read()


def test_serve_refuses_a_missing_repository(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "simclr", "serve", "--repo", str(tmp_path / "none")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip() == f"error: --repo {tmp_path / 'none'}: no such folder"


def _serve(repo: Path, ports: list[int], *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "simclr", "serve", "--repo", str(repo), "--http-port", str(ports[0]),
               "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _work_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("simclr-triton-*-*"))


def _server_leftovers() -> set[str]:
    """Shared-memory regions and environments of Triton's python backend."""
    return {*(str(p) for p in Path("/dev/shm").glob("triton_python_backend_shm_region_*")),
            *(str(p) for p in Path(tempfile.gettempdir()).glob("python_env_*"))}


@pytest.mark.slow
def test_kill_9_of_serve_takes_the_server_down_and_a_new_serve_starts(tiny_repo: Path) -> None:
    ports = [free_port(), free_port(), free_port()]
    folders_before, leftovers_before = _work_folders(), _server_leftovers()
    process = _serve(tiny_repo, ports)
    assert "http://" in process.stdout.readline(), process.stderr.read()
    process.kill()  # SIGKILL: the launcher cleans nothing up itself
    process.wait()
    deadline = time.monotonic() + 30
    while not all(_port_free(port) for port in ports) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(_port_free(port) for port in ports), "the server outlived its launcher"
    while _server_leftovers() - leftovers_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _server_leftovers() - leftovers_before  # it shut down cleanly: no shared memory left behind
    again = _serve(tiny_repo, ports)
    assert "http://" in again.stdout.readline(), again.stderr.read()
    assert len(_work_folders() - folders_before) == 1  # the live server's: the dead launcher's is gone
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=60) == 0
    assert _work_folders() <= folders_before  # the dead launcher's folder went with the next start


def test_a_busy_port_is_refused_before_anything_starts(tiny_repo: Path) -> None:
    ports = [free_port(), free_port(), free_port()]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports[1]))
        squatter.listen()
        result = _serve(tiny_repo, ports)
        _, stderr = result.communicate(timeout=60)
    assert result.returncode == 1
    assert stderr.strip().splitlines()[-1] == (f"error: --grpc-port {ports[1]} on 127.0.0.1 is in use (Address "
                                               "already in use): stop what listens there or choose another port")


def test_a_garbage_config_is_one_line_and_leaves_nothing(tiny_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    (repo / "tiny" / "config.pbtxt").write_text("this is { not protobuf")
    folders_before = _work_folders()
    result = _serve(repo, [free_port(), free_port(), free_port()])
    _, stderr = result.communicate(timeout=60)
    assert result.returncode == 1 and "config.pbtxt: not a Triton model configuration" in stderr.splitlines()[-1]
    assert _work_folders() <= folders_before


def test_the_log_never_follows_a_planted_link(tiny_repo: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "triton.log").symlink_to(victim)
    result = _serve(tiny_repo, [free_port(), free_port(), free_port()], "--log-file", str(tmp_path / "triton.log"))
    _, stderr = result.communicate(timeout=60)
    assert result.returncode == 1 and "--log-file" in stderr.splitlines()[-1]
    assert victim.read_text() == "precious"


def test_sigterm_while_starting_stops_at_once_and_leaves_nothing(tiny_repo: Path) -> None:
    ports = [free_port(), free_port(), free_port()]
    folders_before = _work_folders()
    process = _serve(tiny_repo, ports)
    deadline = time.monotonic() + 30
    while not _work_folders() - folders_before and time.monotonic() < deadline:  # inside start(), not yet ready
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and "stopped by signal while starting" in stderr
    deadline = time.monotonic() + 20
    while not all(_port_free(port) for port in ports) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(_port_free(port) for port in ports) and _work_folders() <= folders_before
