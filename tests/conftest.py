"""Shared fixtures: the CIFAR-10 copy from ../shared/data and the one tiny encoder trained per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SIMCLR_TEST_CACHE", REPO / ".cache"))

# The tiny encoder of the test session: ResNet-18 at 1/8 width on 2,000 CIFAR-10 training images.
TINY_TRAIN_ARGS = ["--width", "0.125", "--batch-size", "128", "--epochs", "8", "--warmup-epochs", "1",
                   "--base-lr", "1.0", "--log-every", "3", "--workers", "2", "--seed", "0"]


# Test tiers (`make test-fast` leaves out all five; `pytest -m triton` runs one): `slow` is marked on each test that
# takes 3 s or more here; the others follow from what a test uses.
SHARED_DATA_FIXTURES = {"cifar_root", "cifar_folders", "tinyimagenet_folder", "tinyimagenet_probe", "tiny_run",
                        "learned_repo"}
TRITON_MODULES = {"test_server", "test_launcher", "test_fleet", "test_demo"}
CLUSTER_MODULES = {"test_distributed", "test_gpu_run"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__
        if "triton" in item.fixturenames or "triton" in item.name or module in TRITON_MODULES:
            item.add_marker(pytest.mark.triton)
        if module == "test_search_page":
            item.add_marker(pytest.mark.browser)
        if SHARED_DATA_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.shared_data)
        if module in CLUSTER_MODULES or "torchrun" in item.name or "gloo" in item.name:
            item.add_marker(pytest.mark.cluster)


def _from_shared(script: str, *args: str) -> None:
    """Materialise part of a ../shared/data copy, or skip the test with the reason."""
    from simclr.data.shared import write_from_shared

    try:
        write_from_shared(script, *args)
    except FileNotFoundError as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """A folder holding cifar-10-batches-py/ (torchvision's layout), written once and reused."""
    root = CACHE / "data"
    _from_shared("cifar10.py", "batches", str(root))
    return root


@pytest.fixture(scope="session")
def cifar_folders() -> Path:
    """CIFAR-10 as image folders: train/<class>/ (200 per class) and test/<class>/ (50 per class)."""
    root = CACHE / "folders"
    for split, per_class in (("train", "200"), ("test", "50")):
        _from_shared("cifar10.py", "folders", str(root), "--split", split, "--per-class", per_class)
    return root


@pytest.fixture(scope="session")
def tinyimagenet_folder() -> Path:
    """200 Tiny ImageNet photos (64 px), one of each class, from pre-training shard 0."""
    root = CACHE / "tinyimagenet" / "photos"
    _from_shared("tinyimagenet/tinyimagenet.py", "folders", str(root), "--shards", "0", "--per-class", "1")
    return root


@pytest.fixture(scope="session")
def tinyimagenet_probe() -> Path:
    """Tiny ImageNet as a labelled set, as `tinyimagenet.py probe` writes it: train/ (shard 6) and test/ (shard 7),
    3 photos of each of the 200 classes in each."""
    root = CACHE / "tinyimagenet" / "probe"
    _from_shared("tinyimagenet/tinyimagenet.py", "probe", str(root), "--per-class", "3")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 small real image files (JPEG and PNG, mixed sizes) in nested folders."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(24):
        folder = root / f"group{index % 3}"
        folder.mkdir(exist_ok=True)
        size = (20 + index % 5 * 4, 18 + index % 3 * 6)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:02d}.{'jpg' if index % 2 else 'png'}")
    return root


def _shared_photos() -> list[Path]:
    """Four CIFAR-10 test images and four Tiny ImageNet photos when ../shared has them, else none."""
    from simclr.data.images import find_images
    from simclr.data.shared import write_from_shared

    found = []
    for script, args, folder in (
            ("cifar10.py", ("folders", str(CACHE / "folders"), "--split", "test", "--per-class", "50"),
             CACHE / "folders" / "test"),
            ("tinyimagenet/tinyimagenet.py", ("folders", str(CACHE / "tinyimagenet" / "photos"), "--shards", "0",
                                              "--per-class", "1"), CACHE / "tinyimagenet" / "photos")):
        try:
            write_from_shared(script, *args)
        except FileNotFoundError:
            continue
        found += find_images(folder)[::97][:4]
    return found


@pytest.fixture(scope="session")
def real_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos in many sizes, modes and formats: scikit-image's sample photos as shipped; each also upscaled to
    a side of 256-1,100 px in JPEG, PNG, WebP, GIF, TIFF or BMP; and a JPEG with an EXIF rotation, an RGBA PNG, a
    16-bit greyscale PNG and a CMYK JPEG. With ../shared, CIFAR-10 and Tiny ImageNet photos upscaled the same way."""
    from simclr.demo import gather_photos, upscaled_copies

    root = tmp_path_factory.mktemp("photos")
    photos = gather_photos(root / "sample")
    upscaled_copies(photos + _shared_photos(), root / "upscaled")
    sources = [Image.open(path).convert("RGB") for path in photos[:4]]
    (root / "modes").mkdir()
    rotated = sources[0].copy()
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    rotated.save(root / "modes" / "exif_rotated.jpg", exif=exif)
    transparent = sources[1].convert("RGBA")
    transparent.putalpha(Image.linear_gradient("L").resize(transparent.size))
    transparent.save(root / "modes" / "rgba.png")
    grey16 = np.asarray(sources[2].convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey16).save(root / "modes" / "grey16.png")
    sources[3].convert("CMYK").save(root / "modes" / "cmyk.jpg")
    return root


@pytest.fixture(scope="session")
def photo_collection(tiny_repo: Path, real_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`real_photos` embedded with the tiny model: feats.npy + feats.jsonl (no index yet), for the search service."""
    from simclr.embed.onnx_encoder import OnnxEncoder
    from simclr.embed.runner import embed_images

    out = tmp_path_factory.mktemp("collection") / "feats.npy"
    embed_images([real_photos], out, OnnxEncoder(tiny_repo / "tiny"), workers=0, progress=False)
    return out


COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


@pytest.fixture(scope="session")
def labelled_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled set as `simclr finetune --data DIR` takes it: DIR/train/<colour>/ (16 each) and
    DIR/test/<colour>/ (6 each), noisy 40 px pictures dominated by one colour (no ../shared needed)."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 6)):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{index:02d}.png")
    return root


@pytest.fixture(scope="session")
def finetuned_run(contract_run: Path, labelled_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`contract_run` fine-tuned on `labelled_folder` for 3 epochs (one layer of g kept)."""
    from typer.testing import CliRunner

    from simclr.cli.app import app

    out = tmp_path_factory.mktemp("finetuned") / "run"
    result = CliRunner().invoke(app, ["finetune", str(contract_run), "--data", str(labelled_folder), "--epochs", "3",
                                      "--batch-size", "8", "--workers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def train_cli(*args: str) -> Path:
    """Run `simclr train` in-process; fail the test with its output when it fails."""
    from typer.testing import CliRunner

    from simclr.cli.app import app

    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    return Path(args[args.index("--out") + 1])


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 generated pictures (48 px, JPEG and PNG): shapes of random colours on shaded backgrounds. Training data
    for the contract tests, which need a trained, exported encoder but no particular accuracy (no ../shared)."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for index in range(256):
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        shade = np.linspace(0, 1, 48)[:, None, None]
        image = Image.fromarray(np.broadcast_to(top + (bottom - top) * shade, (48, 48, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.integers(0, 36, 2)
            box = (int(x0), int(y0), int(x0 + rng.integers(8, 24)), int(y0 + rng.integers(8, 24)))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        image.save(root / f"{index:03d}.{'jpg' if index % 2 else 'png'}")
    return root


CONTRACT_TRAIN_ARGS = [*TINY_TRAIN_ARGS, "--batch-size", "64", "--epochs", "1", "--workers", "0"]


@pytest.fixture(scope="session")
def contract_run(shapes_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny encoder's run directory (4 steps on `shapes_folder`), for the export and serving contracts."""
    return train_cli("--data", str(shapes_folder), *CONTRACT_TRAIN_ARGS,
                     "--out", str(tmp_path_factory.mktemp("contract") / "run"))


@pytest.fixture(scope="session")
def tiny_repo(contract_run: Path, shapes_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding `contract_run` as `tiny` version 1, and a 1-step run of another seed as
    version 2 (different weights), with max_batch_size 8 so that clients must split batches."""
    from simclr.export.repository import ServingOptions, export_to_repository

    repo = tmp_path_factory.mktemp("repo")
    other = train_cli("--data", str(shapes_folder), *CONTRACT_TRAIN_ARGS, "--seed", "1", "--max-steps", "1",
                      "--out", str(tmp_path_factory.mktemp("other") / "run"))
    options = ServingOptions(max_batch_size=8, preferred_batch_sizes=(4, 8), instances=1)
    export_to_repository(contract_run, repo, "tiny", options)
    export_to_repository(other, repo, "tiny", options)
    return repo


@pytest.fixture(scope="session")
def tiny_run(cifar_folders: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run directory of the session's learning encoder: 8 epochs on 2,000 CIFAR-10 images through the real CLI
    (well under a minute). For the tests about learning and accuracy."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    return train_cli("--data", str(cifar_folders / "train"), "--out", str(out), *TINY_TRAIN_ARGS)


@pytest.fixture(scope="session")
def learned_repo(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_run` exported as `tiny` version 1."""
    from simclr.export.repository import export_to_repository

    repo = tmp_path_factory.mktemp("learned")
    export_to_repository(tiny_run, repo, "tiny")
    return repo


def serve(repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real Triton Inference Server on free ports serving `repo` (a context manager)."""
    from simclr.ports import free_port
    from simclr.server.launcher import ServerOptions, TritonServer

    return TritonServer(ServerOptions(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                                      log_file=tmp_path_factory.mktemp("triton") / "triton.log",
                                      onnxruntime_threads=1))


@pytest.fixture(scope="session")
def triton(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real Triton Inference Server serving `tiny_repo`, for the whole session."""
    with serve(tiny_repo, tmp_path_factory) as server:
        yield server
