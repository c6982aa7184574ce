"""simclr-embed: every image kind, broken files, row order, --strict, interruption and --resume, Triton parity."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.data.images import load_image
from simclr.embed.features import load_features
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.runner import embed_images
from simclr.progress import significant

GOOD = ["big.jpg", "cmyk.jpg", "gray.png", "la.png", "nested/inner.webp", "palette.png", "rgb.jpg", "rotated.jpg",
        "sixteen.png"]
BROKEN = {"bomb.png": "DecompressionBombError", "empty.jpg": "cannot identify", "text.png": "cannot identify",
          "truncated.jpg": "truncated"}


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (no real pixel data): a decompression bomb for PIL."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def kinds_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kinds")
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    photo.save(root / "rgb.jpg", quality=90)
    photo.resize((1200, 800)).save(root / "big.jpg", quality=90)
    photo.convert("CMYK").save(root / "cmyk.jpg")
    photo.convert("L").save(root / "gray.png")
    photo.convert("LA").save(root / "la.png")
    photo.convert("P").save(root / "palette.png", transparency=0)
    Image.fromarray((rng.integers(0, 65535, (40, 50))).astype(np.uint16)).save(root / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(root / "rotated.jpg", exif=exif)
    (root / "nested").mkdir()
    photo.save(root / "nested" / "inner.webp")
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG")
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    (root / "bomb.png").write_bytes(_png_claiming(40_000, 40_000))
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


def _embed(*args: str):
    return CliRunner().invoke(app, ["embed", *args])


def test_every_kind_is_embedded_in_order_and_broken_files_are_recorded(kinds_folder: Path, tiny_repo: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "feats.npy"
    result = _embed(str(kinds_folder), "--model", str(tiny_repo / "tiny"), "--out", str(out), "--workers", "2",
                    "--batch-size", "4", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == len(GOOD) and summary["failed"] == len(BROKEN)
    features = load_features(out)
    assert features.paths == [str(kinds_folder / name) for name in GOOD]
    assert features.labels == [("nested" if name.startswith("nested/") else None) for name in GOOD]
    reasons = {Path(f["path"]).name: f["error"] for f in features.failures}
    assert set(reasons) == set(BROKEN)
    for name, fragment in BROKEN.items():
        assert fragment in reasons[name], reasons[name]
    # Row i is image i: each row equals that file embedded on its own.
    encoder = OnnxEncoder(tiny_repo / "tiny")
    for row, name in enumerate(GOOD):
        alone = encoder.embed(load_image(kinds_folder / name, 32)[None])[0]
        np.testing.assert_allclose(features.vectors[row], alone, atol=1e-5, rtol=0)


def test_the_summary_prints_the_rate_with_significant_digits(kinds_folder: Path, tiny_repo: Path,
                                                             tmp_path: Path) -> None:
    result = _embed(str(kinds_folder), "--model", str(tiny_repo / "tiny"), "--out", str(tmp_path / "feats.npy"),
                    "--workers", "0")
    assert result.exit_code == 0, result.output
    rate = re.search(r"\(([0-9.,]+) images/s\)", result.stdout)
    assert rate, result.stdout
    assert float(rate[1].replace(",", "")) > 0 and significant(float(rate[1].replace(",", ""))) == rate[1]


def test_strict_exits_1_but_still_writes(kinds_folder: Path, tiny_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.npy"
    result = _embed(str(kinds_folder), "--model", str(tiny_repo / "tiny"), "--out", str(out), "--strict",
                    "--workers", "0")
    assert result.exit_code == 1 and "--strict: 4 images" in result.output
    assert load_features(out).vectors.shape == (len(GOOD), 64)


class _StopAfter:
    """The real encoder, with a Ctrl-C after `batches` batches (how a user interrupts a long run)."""

    def __init__(self, encoder: OnnxEncoder, batches: int) -> None:
        self.encoder, self.left = encoder, batches
        self.identity, self.source = encoder.identity, encoder.source

    def embed(self, images: np.ndarray) -> np.ndarray:
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.encoder.embed(images)


def test_interrupted_run_leaves_no_valid_looking_file_and_resume_finishes_it(shapes_folder: Path, tiny_repo: Path,
                                                                             tmp_path: Path) -> None:
    encoder = OnnxEncoder(tiny_repo / "tiny")
    inputs = [shapes_folder]
    whole = embed_images(inputs, tmp_path / "whole.npy", encoder, batch_size=64, workers=0, progress=False)
    out = tmp_path / "feats.npy"
    with pytest.raises(KeyboardInterrupt):
        embed_images(inputs, out, _StopAfter(encoder, 3), batch_size=64, workers=0, progress=False)
    assert not out.exists() and not out.with_suffix(".jsonl").exists()
    assert Path(f"{out}.partial").stat().st_size == 3 * 64 * 64 * 4
    resumed = embed_images(inputs, out, encoder, batch_size=64, workers=2, resume=True, progress=False)
    assert resumed.rows == whole.rows == 256
    np.testing.assert_array_equal(np.load(out), np.load(whole.features))
    assert load_features(out).paths == load_features(whole.features).paths
    assert not Path(f"{out}.partial").exists()


def test_an_interrupted_rerun_keeps_the_previous_output(image_folder: Path, kinds_folder: Path, tiny_repo: Path,
                                                        tmp_path: Path) -> None:
    encoder = OnnxEncoder(tiny_repo / "tiny")
    out = tmp_path / "feats.npy"
    embed_images([kinds_folder], out, encoder, workers=0, progress=False)
    with pytest.raises(KeyboardInterrupt):
        embed_images([image_folder], out, _StopAfter(encoder, 1), batch_size=4, workers=0, progress=False)
    assert load_features(out).paths == [str(kinds_folder / name) for name in GOOD]


class _AddsAFileAfterTheFirstBatch:
    """The real encoder, while another program drops a new image into the folder being embedded."""

    def __init__(self, encoder: OnnxEncoder, new_file: Path) -> None:
        self.encoder, self.new_file = encoder, new_file
        self.identity, self.source = encoder.identity, encoder.source

    def embed(self, images: np.ndarray) -> np.ndarray:
        if not self.new_file.exists():
            Image.new("RGB", (8, 8)).save(self.new_file)
        return self.encoder.embed(images)


def test_files_that_change_during_a_run_are_caught_and_the_previous_output_kept(image_folder: Path, tmp_path: Path,
                                                                                tiny_repo: Path) -> None:
    folder = tmp_path / "photos"
    for index, path in enumerate(sorted(image_folder.rglob("*.png"))[:6]):
        (folder / "ab"[index % 2]).mkdir(parents=True, exist_ok=True)
        (folder / "ab"[index % 2] / path.name).write_bytes(path.read_bytes())
    encoder = OnnxEncoder(tiny_repo / "tiny")
    out = tmp_path / "feats.npy"
    before = embed_images([folder], out, encoder, workers=0, progress=False)
    with pytest.raises(ValueError, match="changed while they were embedded .6 when listed, 7 at the end"):
        embed_images([folder], out, _AddsAFileAfterTheFirstBatch(encoder, folder / "b" / "new.png"), batch_size=2,
                     workers=0, progress=False)
    assert len(load_features(out).paths) == before.rows == 6


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_embedding_through_triton_equals_local(triton, kinds_folder: Path, tiny_repo: Path, tmp_path: Path,
                                               protocol: str) -> None:
    url = triton.http_url if protocol == "http" else triton.grpc_url
    remote = _embed(str(kinds_folder), "--server", url, "--protocol", protocol, "--model-name", "tiny",
                    "--out", str(tmp_path / "remote.npy"), "--workers", "0")
    assert remote.exit_code == 0, remote.output
    local = _embed(str(kinds_folder), "--model", str(tiny_repo / "tiny"), "--out", str(tmp_path / "local.npy"),
                   "--workers", "0")
    assert local.exit_code == 0, local.output
    np.testing.assert_allclose(np.load(tmp_path / "remote.npy"), np.load(tmp_path / "local.npy"), atol=1e-5, rtol=0)
    remote_model = load_features(tmp_path / "remote.npy").model
    assert remote_model.sha256 == load_features(tmp_path / "local.npy").model.sha256


def test_normalize_gives_unit_rows(kinds_folder: Path, tiny_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.npy"
    assert _embed(str(kinds_folder), "--model", str(tiny_repo / "tiny"), "--out", str(out), "--normalize",
                  "--workers", "0").exit_code == 0
    np.testing.assert_allclose(np.linalg.norm(np.load(out), axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["missing-folder"], "missing-folder: no such file or folder"),
    (["--out", "feats.txt", "."], "must name a .npy file"),
    (["--model", "nowhere", "."], "--model nowhere"),
    (["--server", "127.0.0.1:1", "."], "--server needs --model-name"),
])
def test_bad_input_is_one_clear_line(args: list[str], message: str, tiny_repo: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    if "--model" not in args:
        args = ["--model", str(tiny_repo / "tiny"), *args]
    result = _embed(*args)
    assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1
    assert not list(tmp_path.glob("*.npy"))


def test_empty_folder_is_refused(tiny_repo: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = _embed(str(tmp_path / "empty"), "--model", str(tiny_repo / "tiny"), "--out", str(tmp_path / "f.npy"))
    assert result.exit_code == 1 and "no image files found" in result.output
