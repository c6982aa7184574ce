"""The search service over real HTTP (uvicorn on a free port, FAISS, ONNX Runtime, real photos): the JSON API, the
images and thumbnails, health, metrics, the token, bad requests, reloading, and the command's lifecycle."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.data.images import find_images
from simclr.embed.encoder import EncoderSpec
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.runner import embed_images
from simclr.ports import free_port
from simclr.search.api import ServiceOptions
from simclr.search.server import SearchServer
from simclr.search.service import SearchService

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def service(photo_collection: Path, tiny_repo: Path):
    spec = EncoderSpec(model=str(tiny_repo / "tiny"))
    options = ServiceOptions(max_upload_bytes=3 * 2**20)
    with SearchServer(SearchService(photo_collection, spec), port=free_port(), options=options) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _upload(client: httpx.Client, data: bytes, k: int | str = 5, name: str = "query.jpg") -> httpx.Response:
    return client.post("/search", files={"file": (name, data, "application/octet-stream")}, data={"k": str(k)})


def test_an_uploaded_photo_finds_itself_with_timings_and_its_embedding(service: httpx.Client,
                                                                        real_photos: Path) -> None:
    photo = find_images(real_photos / "sample")[3]
    answer = _upload(service, photo.read_bytes(), k=5)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    (result,) = body["results"]
    assert result["query"] == "upload" and result["row"] is None and len(result["neighbours"]) == 5
    best = result["neighbours"][0]
    assert Path(best["path"]).name == photo.name and best["score"] == pytest.approx(1.0, abs=1e-5)
    assert [n["rank"] for n in result["neighbours"]] == [1, 2, 3, 4, 5]
    assert len(body["embedding"]) == 64 and set(body["timing_ms"]) == {"decode", "embed", "search", "total"}


def test_row_and_path_queries_use_the_stored_embedding(service: httpx.Client, photo_collection: Path) -> None:
    by_row = service.post("/search", json={"row": 7})
    assert by_row.status_code == 200, by_row.text
    result = by_row.json()["results"][0]
    assert len(result["neighbours"]) == 10  # k defaults to 10
    assert result["neighbours"][0]["row"] == 7 and result["neighbours"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    stored = np.load(photo_collection, mmap_mode="r")[7]
    assert np.allclose(by_row.json()["embedding"], stored)
    by_path = service.post("/search", json={"path": result["query"], "k": 3}).json()["results"][0]
    assert by_path["query"] == result["query"] and by_path["neighbours"] == result["neighbours"][:3]
    assert result["row"] == by_path["row"] == 7


def test_exclude_query_leaves_the_query_out_and_still_returns_k(service: httpx.Client) -> None:
    kept = service.post("/search", json={"row": 7, "k": 6}).json()["results"][0]
    others = [{**neighbour, "rank": rank} for rank, neighbour in enumerate(kept["neighbours"][1:], start=1)]
    for query in ({"row": 7}, {"path": kept["query"]}):
        left_out = service.post("/search", json={**query, "k": 5, "exclude_query": True})
        assert left_out.status_code == 200, left_out.text
        result = left_out.json()["results"][0]
        assert result["query"] == kept["query"] and result["row"] == 7 and result["neighbours"] == others
    images = service.get("/info").json()["images"]
    everything = service.post("/search", json={"row": 7, "k": images, "exclude_query": True}).json()
    rows = [neighbour["row"] for neighbour in everything["results"][0]["neighbours"]]
    assert sorted(rows) == [row for row in range(images) if row != 7]  # k past the others: all of them, once


@pytest.mark.parametrize("request_kwargs, status, message", [
    ({"json": {"row": 0, "k": 0}}, 400, "k 0: must be between 1 and 1000"),
    ({"json": {"row": 0, "k": 1001}}, 400, "k 1001: must be between 1 and 1000"),
    ({"json": {"row": 10_000}}, 404, "row 10000: the index has rows 0 to"),
    ({"json": {"row": -1}}, 404, "row -1"),
    ({"json": {"path": "/etc/passwd"}}, 404, "is not in the index"),
    ({"json": {"k": 3}}, 400, "give either \"row\" or \"path\""),
    ({"json": {"row": 0, "exclude_query": "maybe"}}, 400,
     "JSON body: exclude_query: Input should be a valid boolean"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "JSON body: Invalid JSON"),
    ({"files": {"file": ("x.jpg", b"not an image", "image/jpeg")}}, 400, "not an image file"),
    ({"files": {"other": ("x.jpg", b"data", "image/jpeg")}}, 400, "without a file field named 'file'"),
    ({"files": {"file": ("big.bin", bytes(4 * 2**20), "image/jpeg")}}, 413, "over the limit of 3,145,728"),
])
def test_bad_requests_get_a_one_line_error_and_the_service_stays_up(service: httpx.Client, request_kwargs: dict,
                                                                     status: int, message: str) -> None:
    answer = service.post("/search", **request_kwargs)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert message in error and "\n" not in error
    assert service.get("/healthz").status_code == 200


def test_a_decompression_bomb_is_refused(service: httpx.Client) -> None:
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")  # 400 M pixels in a few KB
    answer = _upload(service, bomb.getvalue())
    assert answer.status_code == 400 and "DecompressionBomb" in answer.json()["error"]


def test_images_and_thumbnails_are_served_by_row_only(service: httpx.Client, photo_collection: Path) -> None:
    path = service.post("/search", json={"row": 2, "k": 1}).json()["results"][0]["query"]
    image = service.get("/images/2")
    assert image.status_code == 200 and image.content == Path(path).read_bytes()
    thumbnail = service.get("/thumbs/2", params={"size": 64})
    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) == 64
    assert service.get("/thumbs/2", params={"size": 5000}).status_code == 400
    assert service.get("/images/99999").status_code == 404
    assert service.get("/images/..%2F..%2Fetc%2Fpasswd").status_code in (400, 404)


def test_info_health_metrics_and_the_page(service: httpx.Client, tiny_repo: Path) -> None:
    info = service.get("/info").json()
    assert info["model"]["sha256"] == OnnxEncoder(tiny_repo / "tiny").identity.sha256
    assert info["index"]["kind"] == "flat" and info["index"]["recall_at_10"] == 1.0
    assert info["images"] == info["index"]["vectors"] >= 30  # 34 without ../shared, more with it
    assert service.get("/healthz").json() == {"status": "ready"}
    service.post("/search", json={"row": 0})
    metrics = service.get("/metrics").text
    assert 'simclr_search_requests_total{route="/search",status="200"}' in metrics
    assert 'simclr_search_request_seconds_bucket{le="0.05",route="/search"}' in metrics
    page = service.get("/")
    assert page.status_code == 200 and "simclr search" in page.text
    assert service.get("/docs").status_code == 200
    search_body = service.get("/openapi.json").json()["paths"]["/search"]["post"]["requestBody"]["content"]
    assert "exclude_query" in search_body["application/json"]["schema"]["properties"]
    assert "file" in search_body["multipart/form-data"]["schema"]["properties"]


def test_the_token_guards_every_route_but_health(photo_collection: Path, tiny_repo: Path) -> None:
    spec = EncoderSpec(model=str(tiny_repo / "tiny"))
    guarded = SearchServer(SearchService(photo_collection, spec), port=free_port(), options=ServiceOptions(token=TOKEN))
    with guarded as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/healthz").status_code == 200
        for route in ("/info", "/", "/images/0", "/metrics"):
            refused = client.get(route)
            assert refused.status_code == 401 and "bearer token" in refused.json()["error"]
        assert client.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/thumbs/0", params={"token": TOKEN}).status_code == 200


def test_reload_swaps_the_index_without_dropping_requests(photo_collection: Path, tiny_repo: Path, real_photos: Path,
                                                           tmp_path: Path) -> None:
    features = tmp_path / "feats.npy"
    encoder = OnnxEncoder(tiny_repo / "tiny")
    embed_images([real_photos / "sample"], features, encoder, workers=0, progress=False)
    spec = EncoderSpec(model=str(tiny_repo / "tiny"))
    with SearchServer(SearchService(features, spec), port=free_port()) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        before = client.get("/info").json()["images"]
        embed_images([real_photos], features, encoder, workers=0, progress=False)  # a larger collection
        with ThreadPoolExecutor(4) as pool:
            searches = [pool.submit(client.post, "/search", json={"row": 0, "k": 5}) for _ in range(40)]
            reloaded = client.post("/reload")
            statuses = [future.result().status_code for future in searches]
        assert reloaded.status_code == 200 and reloaded.json()["images"] > before
        assert statuses == [200] * 40
        other = OnnxEncoder(tiny_repo / "tiny" / "1")  # another model's features are refused; the old index stays
        embed_images([real_photos / "sample"], features, other, workers=0, progress=False)
        refused = client.post("/reload")
        assert refused.status_code == 409 and "still serving the previous index" in refused.json()["error"]
        assert client.get("/info").json()["images"] == reloaded.json()["images"]


def test_the_service_serves_an_index_of_shards_and_follows_add_and_remove(tiny_repo: Path, real_photos: Path,
                                                                           tmp_path: Path) -> None:
    from simclr.search.indexing import add_index_files, remove_index_paths

    encoder = OnnxEncoder(tiny_repo / "tiny")
    for job in range(2):
        embed_images([real_photos / "sample"], tmp_path / "feats.npy", encoder, workers=0, progress=False,
                     shard=(job, 2))
    embed_images([real_photos / "modes"], tmp_path / "new.npy", encoder, workers=0, progress=False)
    parts = [tmp_path / "feats-0-of-2.npy", tmp_path / "feats-1-of-2.npy"]
    assert CliRunner().invoke(app, ["index", *map(str, parts), "--kind", "flat"]).exit_code == 0
    spec = EncoderSpec(model=str(tiny_repo / "tiny"))
    with SearchServer(SearchService(tmp_path / "feats-of-2.faiss", spec), port=free_port()) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        info = client.get("/info").json()
        assert info["index"]["kind"] == "flat" and info["images"] == len(find_images(real_photos / "sample"))
        add_index_files(tmp_path / "feats-of-2.faiss", [tmp_path / "new.npy"])
        grown = client.post("/reload").json()["images"]
        assert grown == info["images"] + len(find_images(real_photos / "modes"))
        gone = client.post("/search", json={"row": 3, "k": 1}).json()["results"][0]["query"]
        remove_index_paths(tmp_path / "feats-of-2.faiss", [gone])
        assert client.post("/reload").status_code == 200
        assert client.get("/info").json()["index"]["removed"] == 1
        for request in ({"row": 3}, {"path": gone}):
            refused = client.post("/search", json=request)
            assert refused.status_code == 404, refused.text
        answer = client.post("/search", json={"row": 0, "k": grown}).json()
        rows = [neighbour["row"] for neighbour in answer["results"][0]["neighbours"]]
        assert 3 not in rows and len(rows) == grown - 1


def _start_command(*args: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "simclr", "search-server", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    return process, line


def test_the_command_serves_reloads_on_sighup_and_stops_on_sigterm(photo_collection: Path, tiny_repo: Path) -> None:
    port = free_port()
    process, line = _start_command("--index", str(photo_collection), "--model", str(tiny_repo / "tiny"), "--port",
                                   str(port))
    try:
        assert f"http://127.0.0.1:{port}/" in line, line + process.stderr.read()
        loaded = httpx.get(f"http://127.0.0.1:{port}/info").json()["loaded_at"]
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while httpx.get(f"http://127.0.0.1:{port}/info").json()["loaded_at"] == loaded:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()


def test_the_command_warns_when_every_interface_is_served_without_a_token(photo_collection: Path,
                                                                          tiny_repo: Path) -> None:
    process, line = _start_command("--index", str(photo_collection), "--model", str(tiny_repo / "tiny"), "--host",
                                   "0.0.0.0", "--port", str(free_port()))
    try:
        assert "searching" in line
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert "there is no authentication" in process.stderr.read()
    finally:
        process.kill()


def _one_line_failure(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "simclr", "search-server", *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_a_missing_index_or_a_busy_port_is_one_line(photo_collection: Path, tmp_path: Path) -> None:
    assert "none.npy" in _one_line_failure("--index", str(tmp_path / "none.npy"), "--port", str(free_port()))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert f"--port {port} on 127.0.0.1 is in use" in _one_line_failure("--index", str(photo_collection), "--port",
                                                                            str(port))
