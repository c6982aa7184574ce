"""The bytes path served by a real Triton (the embedded server): encoded files in, embeddings out, decoded on the
server exactly as simclr-embed decodes them; bad files fail their own request only."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from simclr.data.images import find_images, load_image
from simclr.embed.encoder import EncoderError, EncoderSpec
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.runner import embed_images
from simclr.embed.triton_encoder import TritonEncoder

from adversarial import dds_of_an_unknown_pixel_format, huge_png

REPO = Path(__file__).resolve().parents[1]


def _url(triton, protocol: str) -> str:
    return triton.http_url if protocol == "http" else triton.grpc_url


def _jpeg(size: tuple[int, int] = (300, 200), colour: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    encoded = io.BytesIO()
    Image.new("RGB", size, colour).save(encoded, format="JPEG")
    return encoded.getvalue()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_bytes_path_is_bit_identical_to_a_local_embed(triton, tiny_repo: Path, real_photos: Path,
                                                           tmp_path: Path, protocol: str) -> None:
    local = embed_images([real_photos], tmp_path / "local.npy", OnnxEncoder(tiny_repo / "tiny"), workers=0,
                         progress=False)
    with TritonEncoder(_url(triton, protocol), "tiny", protocol=protocol, send="bytes") as remote:
        assert remote.identity == OnnxEncoder(tiny_repo / "tiny").identity  # NAME's identity: features mix freely
        served = embed_images([real_photos], tmp_path / "served.npy", remote, batch_size=24, progress=False)
    assert local.rows == served.rows == len(find_images(real_photos)) >= 30 and served.failed == 0
    assert np.array_equal(np.load(tmp_path / "local.npy"), np.load(tmp_path / "served.npy"))
    lines = [(tmp_path / f"{name}.jsonl").read_text().splitlines()[1:] for name in ("local", "served")]
    assert lines[0] == lines[1]  # the same rows, paths and classes


def test_the_server_decodes_to_the_same_pixels(triton, real_photos: Path) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    for path in find_images(real_photos)[::5]:
        files = np.array([[path.read_bytes()]], dtype=object)
        tensor = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
        tensor.set_data_from_numpy(files)
        pixels = client.infer("tiny_preprocess", [tensor]).as_numpy("image")
        assert np.array_equal(pixels[0], load_image(path, 32)), path


def _as_file(data: bytes) -> Path:
    path = Path(tempfile.mkstemp(suffix=".jpg")[1])
    path.write_bytes(data)
    return path


def _preprocess_statistics(triton) -> dict:
    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        return client.get_inference_statistics("tiny_preprocess")["model_stats"][0]
    finally:
        client.close()


def _send(url: str, files: list[bytes], model: str = "tiny_bytes") -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("image_bytes", [len(files), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(files, dtype=object).reshape(-1, 1))
        return client.infer(model, [tensor]).as_numpy("embedding")
    finally:
        client.close()


def test_a_bad_file_fails_its_own_request_and_the_rest_of_the_batch_is_answered(triton, tiny_repo: Path) -> None:
    good = [_jpeg((1000 + 20 * i, 800), (25 * i, 90, 200 - 25 * i)) for i in range(8)]
    scratch = Path(tempfile.mkdtemp())
    bad = {"garbage": b"not an image at all",
           "truncated": good[0][: len(good[0]) // 3],
           "oversize": b"\xff\xd8" + bytes(20_000_000),  # over the default 20 MB: refused before decoding
           "dds": dds_of_an_unknown_pixel_format(scratch / "x.png").read_bytes(),  # NotImplementedError in PIL
           "pixels": huge_png(scratch / "big.png", 6_000).read_bytes()}  # 36 M pixels in 0.1 MB
    requests = [[file] for file in good] + [[good[1], bad[name]] for name in bad]
    for _ in range(3):  # all at once, so dynamic batches mix good and bad requests (a busy machine may not, once)
        before = _preprocess_statistics(triton)
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(_send, triton.grpc_url, request) for request in requests]
            outcomes = [future.exception() or future.result() for future in futures]
        after = _preprocess_statistics(triton)
        if after["execution_count"] - before["execution_count"] < len(requests):  # requests shared batches
            break
    local = OnnxEncoder(tiny_repo / "tiny")
    for file, outcome in zip(good, outcomes, strict=False):
        decoded = load_image(_as_file(file), 32)
        assert np.array_equal(outcome, local.embed(decoded[None]))
    messages = {name: str(outcome) for name, outcome in zip(bad, outcomes[len(good):], strict=True)}
    assert all(isinstance(outcome, InferenceServerException) for outcome in outcomes[len(good):])
    assert "image_bytes[1]" in messages["garbage"] and "not an image file" in messages["garbage"]
    assert "image_bytes[1]: cannot decode" in messages["truncated"]
    assert "20,000,002 bytes, over this model's limit of 20,000,000" in messages["oversize"]
    assert "image_bytes[1]: cannot decode" in messages["dds"] and "NotImplementedError" in messages["dds"]
    assert "36.0 Mpx): over the limit of 25 Mpx" in messages["pixels"]
    # the file's fault, not the server's: INVALID_ARG, never INTERNAL, and no traceback of the server's paths
    assert {outcome.status() for outcome in outcomes[len(good):]} == {"StatusCode.INVALID_ARGUMENT"}
    assert not any("Traceback" in message or "model.py" in message for message in messages.values())
    assert after["inference_count"] - before["inference_count"] == len(good) + 2 * len(bad)
    assert after["execution_count"] - before["execution_count"] < len(requests)
    assert triton.running() and np.array_equal(_send(triton.grpc_url, good[:1]), outcomes[0])


def test_the_client_reports_each_bad_file_in_rows_aligned_with_the_paths(triton, tiny_repo: Path, real_photos: Path,
                                                                          tmp_path: Path) -> None:
    photos = find_images(real_photos / "sample")[:3]
    (tmp_path / "garbage.jpg").write_bytes(b"not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    with open(tmp_path / "huge.jpg", "wb") as sparse:  # 20 MB + 1 byte, never read: the client refuses it
        sparse.truncate(20_000_001)
    os.mkfifo(tmp_path / "fifo.jpg")
    paths = [photos[0], tmp_path / "garbage.jpg", photos[1], tmp_path / "empty.png", tmp_path / "huge.jpg",
             tmp_path / "fifo.jpg", tmp_path / "missing.jpg", dds_of_an_unknown_pixel_format(tmp_path / "x.png"),
             photos[2]]
    with TritonEncoder(triton.http_url, "tiny", send="bytes", files_per_request=4) as remote:
        embeddings, errors = remote.embed_files(paths)
    assert [error is None for error in errors] == [True, False, True, False, False, False, False, False, True]
    assert "NotImplementedError" in errors[7]
    assert "not an image file" in errors[1] and "not an image file" in errors[3]
    assert "20,000,001 bytes, over the server's limit of 20,000,000" in errors[4]
    assert "not a regular file" in errors[5] and "No such file" in errors[6]
    local = OnnxEncoder(tiny_repo / "tiny").embed(np.stack([load_image(path, 32) for path in photos]))
    assert embeddings.shape == (len(paths), 64) and embeddings.dtype == np.float32
    assert np.array_equal(embeddings[[0, 2, 8]], local)  # row i is path i's, whatever failed around it
    failed = [index for index, error in enumerate(errors) if error is not None]
    assert np.isnan(embeddings[failed]).all()


def test_clear_errors_for_the_bytes_path(triton, tiny_repo: Path) -> None:
    with pytest.raises(EncoderError, match=r"'tiny_preprocess_bytes' is not served.*export with its bytes model"):
        TritonEncoder(triton.http_url, "tiny_preprocess", send="bytes")
    with pytest.raises(EncoderError, match="tiny_bytes runs version 2 of tiny; use --send uint8"):
        TritonEncoder(triton.grpc_url, "tiny", version="1", protocol="grpc", send="bytes")
    with pytest.raises(EncoderError, match="--send bytes needs --server"):
        EncoderSpec(model=str(tiny_repo / "tiny"), send="bytes").open()
    with pytest.raises(EncoderError, match="--send 'jpeg'"):
        TritonEncoder(triton.http_url, "tiny", send="jpeg")


def test_the_cli_sends_files_to_embed_and_to_search(triton, tiny_repo: Path, real_photos: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from simclr.cli.app import app

    monkeypatch.chdir(tmp_path)
    server = ["--server", triton.grpc_url, "--protocol", "grpc", "--model-name", "tiny", "--send", "bytes"]
    runner = CliRunner()
    embedded = runner.invoke(app, ["embed", str(real_photos / "sample"), "--json", *server])
    assert embedded.exit_code == 0, embedded.output
    assert json.loads(embedded.stdout)["rows"] == len(find_images(real_photos / "sample"))
    query = find_images(real_photos / "sample")[4]
    found = runner.invoke(app, ["search", str(query), "-k", "3", "--json", *server])
    assert found.exit_code == 0, found.output
    best = json.loads(found.stdout)["results"][0]["neighbours"][0]
    assert Path(best["path"]).name == query.name and best["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_curl_example_embeds_a_file(triton, tiny_repo: Path, real_photos: Path) -> None:
    photo = find_images(real_photos / "sample")[0]
    answer = subprocess.run([str(REPO / "examples" / "embed_with_curl.sh"), str(photo), triton.http_url,
                             "tiny_bytes"], capture_output=True, text=True, check=True)
    output = json.loads(answer.stdout)["outputs"][0]
    assert output["name"] == "embedding" and output["shape"] == [1, 64]
    expected = OnnxEncoder(tiny_repo / "tiny").embed(load_image(photo, 32)[None])[0]
    np.testing.assert_allclose(np.array(output["data"], np.float32), expected, rtol=1e-6, atol=1e-7)
