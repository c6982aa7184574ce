"""The search service under attack (part 3/7), over real HTTP with real files: links and changed files never leak
bytes, a polyglot never runs, other sites and rebound names are refused, and no single request (a crafted image, a
huge one, a slow client, a chunked body, a file cut short, a missing file on reload) takes it down."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from simclr.data.images import find_images
from simclr.embed.encoder import EncoderSpec
from simclr.embed.features import load_features
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.runner import embed_images
from simclr.ports import free_port
from simclr.search.api import ServiceOptions
from simclr.search.server import SearchServer
from simclr.search.service import SearchService

from adversarial import dds_of_an_unknown_pixel_format, gif_html_polyglot, huge_png

LATIN1_NAME = os.fsdecode(b"caf\xe9.png")  # a file name that is not UTF-8


@pytest.fixture(scope="module")
def collection(tiny_repo: Path, real_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photos/ (real photos, a subfolder, a DDS file named .png, a Latin-1 file name, a link to a folder outside
    it and one to a subfolder inside it), a GIF/HTML polyglot named page.html given by name, and SECRET beside."""
    root = tmp_path_factory.mktemp("attacked")
    photos, outside = root / "photos", root / "outside"
    (photos / "sub").mkdir(parents=True)
    outside.mkdir()
    sample = find_images(real_photos / "sample")
    for number, photo in enumerate(sample[:6]):
        shutil.copy2(photo, photos / f"{number:02d}{photo.suffix}")
    for number, photo in enumerate(sample[6:8]):
        shutil.copy2(photo, photos / "sub" / f"s{number}{photo.suffix}")
    shutil.copy2(sample[0], photos / LATIN1_NAME)
    shutil.copy2(sample[8], outside / "pulled_in.jpg")
    dds_of_an_unknown_pixel_format(photos / "x.png")
    (photos / "elsewhere").symlink_to(outside, target_is_directory=True)
    (photos / "inside").symlink_to(photos / "sub", target_is_directory=True)
    (root / "SECRET").write_text("the service account's private key\n")
    polyglot = gif_html_polyglot(root / "page.html")
    embed_images([photos, polyglot], root / "feats.npy", OnnxEncoder(tiny_repo / "tiny"), workers=0,
                 progress=False)
    return root


@pytest.fixture(scope="module")
def client(collection: Path, tiny_repo: Path):
    options = ServiceOptions(max_upload_bytes=2**20, head_timeout=1.0, body_idle_timeout=1.0, max_connections=32)
    service = SearchService(collection / "feats.npy", EncoderSpec(model=str(tiny_repo / "tiny")))
    with SearchServer(service, port=free_port(), options=options) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _row(collection: Path, name: str) -> int:
    features = load_features(collection / "feats.npy")
    return next(row for row, path in enumerate(features.paths) if path.endswith(os.sep + name))


def _refused(answer: httpx.Response, status: int, words: str) -> str:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert words in error and "\n" not in error, error
    return error


def test_embed_records_each_file_and_follows_links_only_inside_the_folder(collection: Path) -> None:
    features = load_features(collection / "feats.npy")
    names = sorted(Path(path).name for path in features.paths)
    assert "pulled_in.jpg" not in names and "page.html" in names and LATIN1_NAME in names
    assert names.count("s0" + Path(find_images(collection / "photos" / "sub")[0]).suffix) == 1  # once, not twice
    failures = {Path(failure["path"]).name: failure["error"] for failure in features.failures}
    assert "a symbolic link out of" in failures["elsewhere"] and "NotImplementedError" in failures["x.png"]
    assert all(file is not None and file["size"] == os.stat(path).st_size
               for path, file in zip(features.paths, features.files, strict=True))


def test_a_link_or_a_changed_file_in_place_of_a_photo_answers_409_and_never_its_bytes(client: httpx.Client,
                                                                                      collection: Path) -> None:
    photos = collection / "photos"
    untouched = next(photos.glob("00.*"))
    served = client.get(f"/images/{_row(collection, untouched.name)}")
    assert served.status_code == 200 and served.content == untouched.read_bytes()
    assert served.headers["content-security-policy"] == "sandbox"
    secret = (collection / "SECRET").read_bytes()
    victims = [next(photos.glob(f"{number:02d}.*")).name for number in (1, 2, 3)]
    (photos / victims[0]).unlink()
    (photos / victims[0]).symlink_to(collection / "SECRET")  # ln -s ~/.ssh/id_rsa photos/01.png
    (photos / victims[1]).unlink()
    (photos / victims[1]).symlink_to(photos / victims[2])  # another photo of the collection
    with open(photos / victims[2], "ab") as rewritten:
        rewritten.write(b"more")
    for name, words in ((victims[0], "leads out of the embedded folders"), (victims[1], "changed since"),
                        (victims[2], "changed since")):
        row = _row(collection, name)
        for route in (f"/images/{row}", f"/thumbs/{row}"):
            answer = client.get(route)
            _refused(answer, 409, words)
            assert secret not in answer.content


def test_a_folder_swapped_for_a_link_with_the_same_files_is_not_followed(client: httpx.Client,
                                                                          collection: Path) -> None:
    sub = collection / "photos" / "sub"  # its photos are recorded by the link to it (photos/inside), walked first
    row = _row(collection, f"inside{os.sep}" + sorted(path.name for path in sub.iterdir())[0])
    copy = collection / "copy_of_sub"
    shutil.copytree(sub, copy)  # same names, sizes and times: only confinement tells them apart
    sub.rename(collection / "sub_moved")
    sub.symlink_to(copy, target_is_directory=True)
    _refused(client.get(f"/images/{row}"), 409, "leads out of the embedded folders")


def test_a_polyglot_is_served_as_the_image_it_decodes_as(client: httpx.Client, collection: Path) -> None:
    answer = client.get(f"/images/{_row(collection, 'page.html')}")
    assert answer.status_code == 200 and b"<script>" in answer.content
    assert answer.headers["content-type"] == "image/gif"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["content-security-policy"] == "sandbox"
    page = client.get("/")
    assert "script-src 'sha256-" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_other_names_other_sites_and_form_bodies_are_refused(client: httpx.Client) -> None:
    _refused(client.get("/info", headers={"Host": "evil.example"}), 400, "is not a name this service answers to")
    assert client.get("/info", headers={"Host": f"localhost:{client.base_url.port}"}).status_code == 200
    _refused(client.post("/search", json={"row": 0}, headers={"Origin": "http://evil.example"}), 403,
             "cross-site request refused")
    same_site = client.post("/search", json={"row": 0, "k": 1},
                            headers={"Origin": f"http://127.0.0.1:{client.base_url.port}"})
    assert same_site.status_code == 200
    for route in ("/search", "/reload"):  # what a cross-site <form> or a no-cors fetch can send without asking
        _refused(client.post(route, content=b'{"row": 0}', headers={"Content-Type": "text/plain"}), 415,
                 "send application/json")


def test_the_token_is_read_with_any_case_of_its_scheme_and_never_without_one(collection: Path,
                                                                             tiny_repo: Path) -> None:
    service = SearchService(collection / "feats.npy", EncoderSpec(model=str(tiny_repo / "tiny")))
    with SearchServer(service, port=free_port(), options=ServiceOptions(token="t0ken")) as server, \
            httpx.Client(base_url=server.url) as client:
        for given, status in (("bearer t0ken", 200), ("BEARER t0ken", 200), ("Bearer t0ken", 200),
                              ("t0ken", 401), ("Basic t0ken", 401), ("bearer", 401)):
            assert client.get("/info", headers={"Authorization": given}).status_code == status, given


def test_a_crafted_or_huge_upload_is_one_line_and_decodes_nothing(client: httpx.Client, collection: Path) -> None:
    dds = (collection / "photos" / "x.png").read_bytes()
    error = _refused(client.post("/search", files={"file": ("x.png", dds)}), 400, "cannot be decoded")
    assert "NotImplementedError" in error
    huge = huge_png(collection / "huge.png").read_bytes()  # 13,000 x 13,000 RGBA: ~4 GB and ~25 s to decode
    started = time.perf_counter()
    _refused(client.post("/search", files={"file": ("huge.png", huge)}), 400, "over the limit of 25 Mpx")
    assert time.perf_counter() - started < 5  # refused from its header, not decoded
    assert client.get("/healthz").status_code == 200


def test_a_chunked_body_over_the_limit_is_413(client: httpx.Client) -> None:
    def chunks():
        for _ in range(40):
            yield bytes(64 * 1024)  # 2.5 MiB in all, no Content-Length

    _refused(client.post("/search", content=chunks(), headers={"Content-Type": "application/json"}), 413,
             "over the limit")
    assert client.get("/healthz").status_code == 200


def test_a_name_that_is_not_utf8_comes_back_escaped_and_recoverable(client: httpx.Client,
                                                                     collection: Path) -> None:
    row = _row(collection, LATIN1_NAME)
    answer = client.post("/search", json={"row": row, "k": 3})
    assert answer.status_code == 200 and b"caf\\udce9.png" in answer.content
    path = answer.json()["results"][0]["query"]
    assert os.fsencode(path).endswith(b"caf\xe9.png") and os.path.exists(path)
    result = subprocess.run([sys.executable, "-m", "simclr", "search", path, "--index",
                             str(collection / "feats.npy"), "-k", "2"], capture_output=True,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8"}, timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"caf\\udce9.png" in result.stdout


def test_slow_clients_are_timed_out_and_never_lock_others_out(client: httpx.Client) -> None:
    port = client.base_url.port
    slow = []
    try:
        for _ in range(100):  # half a request head each, then nothing: over the cap of 32 connections
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            connection.sendall(b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(connection)
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200  # a new client drops the longest-waiting one
        assert time.perf_counter() - started < 2
        body = socket.create_connection(("127.0.0.1", port), timeout=10)
        body.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"row\"")  # a body that stops
        slow.append(body)
        time.sleep(2.5)  # past the head and the body timeouts (1 s each here; 10 s and 30 s by default)
        for connection in slow:  # closed by the service, without an answer
            connection.settimeout(2)
            assert connection.recv(1024) == b""
    finally:
        for connection in slow:
            connection.close()
    assert client.get("/healthz").status_code == 200


def test_files_cut_short_or_missing_under_the_command_are_409_never_a_crash(collection: Path, tiny_repo: Path,
                                                                             real_photos: Path,
                                                                             tmp_path: Path) -> None:
    features = tmp_path / "feats.npy"
    shutil.copy2(collection / "feats.npy", features)
    shutil.copy2(collection / "feats.jsonl", tmp_path / "feats.jsonl")
    port = free_port()
    command = subprocess.Popen([sys.executable, "-m", "simclr", "search-server", "--index", str(features),
                                "--model", str(tiny_repo / "tiny"), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "searching" in command.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        last = len(np.load(features, mmap_mode="r")) - 1
        os.truncate(features, 256)  # truncate / cp of a smaller collection / rsync --inplace over it
        os.truncate(tmp_path / "feats.faiss", 64)
        _refused(httpx.post(f"{url}/search", json={"row": last}), 409, "rewritten in place")
        upload = find_images(real_photos / "sample")[0].read_bytes()  # the index is in memory: still answered
        assert httpx.post(f"{url}/search", files={"file": ("q.jpg", upload)}).status_code == 200
        features.unlink()
        _refused(httpx.post(f"{url}/reload"), 409, "still serving the previous index")
        features.mkdir()  # a folder in its place
        _refused(httpx.post(f"{url}/reload"), 409, "still serving the previous index")
        command.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert httpx.get(f"{url}/healthz").status_code == 200 and command.poll() is None
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=30) == 0
        log = command.stderr.read()
        reload_lines = [line for line in log.splitlines() if "SIGHUP" in line]
        assert len(reload_lines) == 1 and "still serving the previous index" in reload_lines[0], log
        assert "Traceback" not in log, log
    finally:
        command.kill()
        command.wait()
