"""Embedding against a fleet of Triton servers (`--server host1,host2`): requests spread over real embedded servers,
and a server that stops answering (or never did) leaves its requests to the others."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.data.images import find_images, load_image
from simclr.embed.encoder import EncoderError, EncoderSpec
from simclr.embed.features import load_features
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.triton_fleet import TritonFleet
from simclr.ports import free_port

from conftest import serve


@pytest.fixture()
def second_triton(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A second real Triton server of the same repository, to be stopped by the test."""
    with serve(tiny_repo, tmp_path_factory) as server:
        yield server


def _inferences(server) -> int:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        return sum(int(stats["inference_count"])
                   for stats in client.get_inference_statistics("tiny")["model_stats"])
    finally:
        client.close()


def _images(count: int) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.slow
def test_requests_spread_over_the_servers_and_survive_one_stopping(triton, second_triton, tiny_repo: Path,
                                                                   protocol: str, caplog) -> None:
    urls = [getattr(server, f"{protocol}_url") for server in (triton, second_triton)]
    images = _images(40)  # 5 requests of max_batch_size 8
    local = OnnxEncoder(tiny_repo / "tiny").embed(images)
    before = [_inferences(server) for server in (triton, second_triton)]
    with TritonFleet(urls, "tiny", protocol=protocol, retry_seconds=5) as fleet:
        assert fleet.identity == OnnxEncoder(tiny_repo / "tiny").identity
        np.testing.assert_allclose(fleet.embed(images), local, atol=1e-5, rtol=0)
        served = [_inferences(server) - count for server, count in zip((triton, second_triton), before, strict=True)]
        assert sum(served) == 40 and min(served) >= 8  # both servers answered
        second_triton.stop()
        with caplog.at_level(logging.WARNING, logger="simclr"):
            np.testing.assert_allclose(fleet.embed(images), local, atol=1e-5, rtol=0)
    assert f"Triton at {urls[1]} stopped answering" in caplog.text


def test_a_server_down_at_the_start_is_left_out_and_a_fleet_of_none_is_refused(triton, tiny_repo: Path,
                                                                                caplog) -> None:
    down = f"127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="simclr"), \
            TritonFleet([triton.http_url, down], "tiny", retry_seconds=0.5) as fleet:
        assert len(fleet.members) == 1
        np.testing.assert_allclose(fleet.embed(_images(3)), OnnxEncoder(tiny_repo / "tiny").embed(_images(3)),
                                   atol=1e-5, rtol=0)
    assert f"Triton at {down} is not reachable" in caplog.text and "left out of the fleet" in caplog.text
    with pytest.raises(EncoderError, match="no server of http://.* is reachable"):
        TritonFleet([down, f"127.0.0.1:{free_port()}"], "tiny", retry_seconds=0.2)
    with pytest.raises(EncoderError, match="name each server once"):
        TritonFleet([triton.http_url, triton.http_url], "tiny")


@pytest.mark.slow
def test_a_fleet_embeds_files_in_rows_aligned_with_the_paths(triton, tiny_repo: Path, real_photos: Path,
                                                            tmp_path: Path) -> None:
    photos = find_images(real_photos / "sample")[:3]
    (tmp_path / "garbage.jpg").write_bytes(b"not an image")
    paths = [tmp_path / "garbage.jpg", photos[0], tmp_path / "missing.jpg", photos[1], photos[2]]
    with TritonFleet([triton.grpc_url], "tiny", protocol="grpc", send="bytes") as fleet:
        embeddings, errors = fleet.embed_files(paths)
    assert [error is None for error in errors] == [False, True, False, True, True]
    assert embeddings.shape == (5, 64) and np.isnan(embeddings[[0, 2]]).all()
    local = OnnxEncoder(tiny_repo / "tiny").embed(np.stack([load_image(path, 32) for path in photos]))
    assert np.array_equal(embeddings[[1, 3, 4]], local)


@pytest.mark.slow
def test_simclr_embed_over_two_servers_sending_files_equals_one_local_run(triton, second_triton, tiny_repo: Path,
                                                                          image_folder: Path, tmp_path: Path) -> None:
    servers = f"{triton.grpc_url},{second_triton.grpc_url}"
    spec = EncoderSpec(server=servers, protocol="grpc", model_name="tiny", send="bytes")
    with spec.open() as fleet:
        assert isinstance(fleet, TritonFleet) and fleet.source == f"grpc://{servers}"
    runner = CliRunner()
    local = runner.invoke(app, ["embed", str(image_folder), "--model", str(tiny_repo / "tiny"), "--out",
                                str(tmp_path / "local.npy"), "--workers", "0", "--json"])
    remote = runner.invoke(app, ["embed", str(image_folder), "--server", servers, "--protocol", "grpc",
                                 "--model-name", "tiny", "--send", "bytes", "--batch-size", "4", "--out",
                                 str(tmp_path / "fleet.npy"), "--json"])
    assert local.exit_code == remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout)["rows"] == json.loads(local.stdout)["rows"] > 4
    np.testing.assert_allclose(np.load(tmp_path / "fleet.npy"), np.load(tmp_path / "local.npy"), atol=1e-5, rtol=0)
    assert load_features(tmp_path / "fleet.npy").paths == load_features(tmp_path / "local.npy").paths
