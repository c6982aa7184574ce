"""`simclr demo`: the whole tool, end to end, on real photos and the default model.

photos (scikit-image's sample images) -> simclr-embed -> simclr index -> search with augmented views -> grid PNG
-> the same photos through Triton (HTTP and gRPC) against local ONNX Runtime -> (with CIFAR-10) the linear probe.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from simclr.data.images import load_image
from simclr.embed.encoder import ModelIdentity
from simclr.embed.features import load_features
from simclr.embed.onnx_encoder import OnnxEncoder, resolve_model
from simclr.embed.runner import embed_images
from simclr.search.grid import neighbour_grid
from simclr.search.index import build_index
from simclr.search.query import search_images
from simclr.search.store import index_path, save_index

# Photographs and scans among scikit-image's sample images (skimage/data, shipped in its wheel).
SAMPLE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
                 "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "page.png",
                 "retina.jpg", "rocket.jpg")


@dataclass
class DemoReport:
    out: Path
    photos: int = 0
    retrieval_top1: float = 0.0
    triton_max_abs_diff: dict[str, float] = field(default_factory=dict)
    probe: dict | None = None
    quantized: dict | None = None
    search_service: str = ""  # the URL it served on
    outputs: dict[str, str] = field(default_factory=dict)


def gather_photos(folder: Path) -> list[Path]:
    """Copy scikit-image's sample photos into `folder` (needs the `demo` extra: pip install 'simclr[demo]')."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the demo's photos come from scikit-image: pip install 'simclr[demo]' "
                                "(or run `make demo`)")
    source = Path(spec.origin).parent / "data"
    folder.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in SAMPLE_PHOTOS:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
            copied.append(folder / name)
    if not copied:
        raise FileNotFoundError(f"{source}: none of scikit-image's sample photos found")
    return copied


PHOTO_FORMATS = (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"), ("TIFF", "tif"), ("BMP", "bmp"))


def upscaled_copies(photos: list[Path], folder: Path, smallest: int = 256, largest: int = 1100) -> list[Path]:
    """Each photo resized so that its shorter side runs from `smallest` to `largest` px across the list, saved in
    JPEG, PNG, WebP, GIF, TIFF and BMP in turn: camera-sized files in every format simclr reads."""
    folder.mkdir(parents=True, exist_ok=True)
    sides = np.linspace(smallest, largest, len(photos)).round().astype(int)
    written = []
    for index, (path, side) in enumerate(zip(photos, sides, strict=True)):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        scale = side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        kind, suffix = PHOTO_FORMATS[index % len(PHOTO_FORMATS)]
        written.append(folder / f"{index:03d}.{suffix}")
        image.save(written[-1], format=kind)
    return written


def augmented_view(path: Path, rng: np.random.Generator) -> Image.Image:
    """A view a user might search with: a crop keeping 70-90% of each side, mirrored, a little brighter or darker."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    side = rng.uniform(0.7, 0.9)
    crop_w, crop_h = int(width * side), int(height * side)
    left, top = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
    view = image.crop((left, top, left + crop_w, top + crop_h)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return ImageEnhance.Brightness(view).enhance(rng.uniform(0.85, 1.15))



def compare_with_triton(model_dir: Path, photos: list[Path], identity: ModelIdentity, local: np.ndarray,
                        log_file: Path) -> dict[str, float]:
    """Serve `model_dir` on a real Triton, embed `photos` over HTTP and gRPC, sending decoded images (uint8) and,
    when the repository has the model's NAME_bytes ensemble, the files as they are (bytes); max abs difference to
    `local` for each."""
    from simclr.embed.triton_encoder import TritonEncoder
    from simclr.export.bytes_model import bytes_name
    from simclr.ports import free_port
    from simclr.server.launcher import ServerOptions, TritonServer, model_names

    images = np.stack([load_image(path, identity.image_size) for path in photos])
    repo = model_dir.parent
    options = ServerOptions(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            log_file=log_file)
    sends = ("uint8", "bytes") if bytes_name(model_dir.name) in model_names(repo) else ("uint8",)
    differences = {}
    with TritonServer(options) as server:
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            for send in sends:
                with TritonEncoder(url, model_dir.name, identity.version, protocol, send=send) as remote:
                    embeddings = remote.embed_files(photos)[0] if send == "bytes" else remote.embed(images)
                    differences[f"{protocol} {send}"] = float(np.abs(embeddings - local).max())
    return differences


def run_demo(out: Path, model: Path | None = None, data_root: Path | None = None, probe_train: int = 5_000,
             say: Callable[[str], None] = print, keep_serving: bool = False) -> DemoReport:
    """Run every stage once and report what it did; `say` prints progress lines for a person. Ends by starting the
    search service on the photos and printing its URL; it stops again unless `keep_serving` (then: at Ctrl-C)."""
    out = Path(out)
    report = DemoReport(out)
    model_file = resolve_model(model)
    model_dir = model_file.parent.parent
    encoder = OnnxEncoder(model_file)
    identity = encoder.identity
    say(f"model: {identity.name} v{identity.version} ({identity.image_size} px -> {identity.embedding_dim} dims), "
        f"{model_file}")

    photos = gather_photos(out / "photos")
    report.photos = len(photos)
    say(f"\n1. {len(photos)} photos from scikit-image -> {out / 'photos'}")

    features_path = out / "feats.npy"
    embedded = embed_images([out / "photos"], features_path, encoder, workers=0, progress=False)
    say(f"2. embedded {embedded.rows} photos -> {features_path} (+ {embedded.sidecar.name})")

    features = load_features(features_path)
    index, built = build_index(features.vectors, "auto")
    save_index(index, features_path, built)
    say(f"3. {built.kind} index of {built.vectors} vectors -> {index_path(features_path)}")

    queries = out / "queries"
    queries.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for path in photos:
        augmented_view(path, rng).save(queries / f"{path.stem}.png")
    results = search_images([queries], features, index, encoder, k=4)
    say("4. search with an augmented view (crop 70-90%, mirrored, brightness +-15%) of each photo:")
    hits = 0
    for result in results:
        top = result.neighbours[0]
        found = Path(top.path).stem == Path(result.query).stem
        hits += found
        say(f"   {Path(result.query).name:<24} top-1 {Path(top.path).name:<24} score {top.score:.3f}  "
            f"{'original' if found else 'other photo'}")
    report.retrieval_top1 = hits / len(results)
    grid = neighbour_grid(results, out / "neighbours.png")
    say(f"   original found at rank 1 for {hits}/{len(results)}; neighbour grid -> {grid}")

    if model_file.parent.name.isdigit():
        local = np.load(features_path)
        report.triton_max_abs_diff = compare_with_triton(model_dir, photos, identity, local, out / "triton.log")
        say("5. the same photos through Triton (embedded server, started and stopped; images decoded here: uint8, "
            "files sent as they are: bytes): max abs difference to local "
            + ", ".join(f"{k} {v:.1e}" for k, v in report.triton_max_abs_diff.items()))
    else:
        say(f"5. Triton skipped: {model_file} is not inside a model repository (<repo>/<name>/<version>/)")

    if data_root is not None:
        report.probe = _probe(encoder, data_root, probe_train)
        probe = report.probe
        say(f"6. linear probe on CIFAR-10 ({probe['n_train']} train, {probe['n_test']} test): top-1 "
            f"{100 * probe['linear_top1']:.1f}%, top-5 {100 * probe['linear_top5']:.1f}%, kNN top-1 "
            f"{100 * probe['knn_top1']:.1f}%")
    else:
        say("6. linear probe skipped (pass --data-root DIR holding cifar-10-batches-py to run it)")

    if model_file.parent.name.isdigit():
        report.quantized = quantize_copy(model_file, out, photos, say)

    report.outputs = {"photos": str(out / "photos"), "features": str(features_path),
                      "sidecar": str(embedded.sidecar), "index": str(index_path(features_path)),
                      "queries": str(queries), "grid": str(grid)}
    if report.triton_max_abs_diff:
        report.outputs["triton_log"] = str(out / "triton.log")
    if report.quantized:
        report.outputs["int8_model"] = report.quantized["model"]
    (out / "report.json").write_text(json.dumps({**report.__dict__, "out": str(out)}, indent=2, default=str))
    say(f"\noutputs in {out}: " + ", ".join(Path(path).name for path in report.outputs.values()) + ", report.json")
    say("by hand:\n"
        f"  simclr-embed {out / 'photos'} --model {model_dir} --out {features_path}\n"
        f"  simclr index {features_path}\n"
        f"  simclr-search {queries / photos[0].stem}.png --index {features_path} -k 4 --grid neighbours.png\n"
        f"  simclr serve --repo {model_dir.parent}\n"
        f"  simclr-embed {out / 'photos'} --server 127.0.0.1:8001 --protocol grpc --model-name {model_dir.name} "
        f"--send bytes --out remote.npy\n"
        f"  simclr probe --data cifar10 --data-root DIR --model {model_dir}\n"
        f"  simclr search-server --index {features_path}   # then open http://127.0.0.1:8600/\n"
        f"  simclr quantize {out / 'model_repository' / model_dir.name} --calibration {out}")
    report.search_service = serve_search(features_path, model_file, keep_serving, say)
    return report


def serve_search(features_path: Path, model_file: Path, keep_serving: bool, say: Callable[[str], None]) -> str:
    """Start the search service on the demo's features (port 8600, or a free one when taken), answer one query
    through it, print its URL; stop it again unless `keep_serving` (then at Ctrl-C). Returns the URL."""
    import urllib.request

    from simclr.embed.encoder import EncoderSpec
    from simclr.ports import PortInUseError, check_port_free, free_port
    from simclr.search.server import SearchServer
    from simclr.search.service import SearchService

    try:
        check_port_free("127.0.0.1", 8600)
        port = 8600
    except PortInUseError:
        port = free_port()
    service = SearchService(features_path, EncoderSpec(model=str(model_file)))
    with SearchServer(service, port=port) as server:
        request = urllib.request.Request(f"{server.url}/search", data=json.dumps({"row": 0, "k": 4}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            took = json.load(answer)["timing_ms"]["total"]
        say(f"\n8. search service (simclr search-server --index {features_path}): {server.url}/ answered a query "
            f"by row in {took:.1f} ms")
        if keep_serving:
            say("   serving until Ctrl-C")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
        else:
            say("   stopped (simclr demo --keep-serving keeps it up: open the URL in a browser)")
    return server.url


def quantize_copy(model_file: Path, out: Path, photos: list[Path], say: Callable[[str], None]) -> dict | None:
    """`simclr quantize` on a copy of the model in out/model_repository (never the source tree), calibrated on the
    demo's photos and their views; reports the INT8 model's agreement with FP32 and its speed-up here."""
    import time

    from simclr.export.quantize import QuantizationError, quantize_to_repository

    copy = out / "model_repository" / model_file.parent.parent.name / "1" / "model.onnx"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, copy)
    calibration = len(photos) * 2 - 8  # photos and their augmented views, 8 held out for the gate
    try:
        quantized = quantize_to_repository(copy, out, images=calibration)
    except QuantizationError as refused:
        say(f"7. simclr quantize refused the INT8 model: {refused}")
        return None
    images = np.stack([load_image(path, OnnxEncoder(copy).identity.image_size) for path in photos])
    rates = []
    for encoder in (OnnxEncoder(copy), OnnxEncoder(quantized.model.model_path)):
        encoder.embed(images)  # warm-up
        started = time.perf_counter()
        for _ in range(8):
            encoder.embed(images)
        rates.append(8 * len(images) / (time.perf_counter() - started))
    path = quantized.model.model_path
    say(f"7. simclr quantize -> {path} ({path.stat().st_size / 1e6:.1f} MB, FP32 {copy.stat().st_size / 1e6:.1f} MB): "
        f"mean cosine to FP32 {quantized.mean_cosine:.4f} and recall@10 {quantized.recall_at_10:.3f} on "
        f"{quantized.held_out_images} held-out images, {rates[1] / rates[0]:.1f}x the FP32 images/s on this CPU")
    return {"model": str(path), "mean_cosine": quantized.mean_cosine, "recall_at_10": quantized.recall_at_10,
            "speedup": rates[1] / rates[0]}


def _probe(encoder: OnnxEncoder, data_root: Path, train_images: int) -> dict:
    from simclr.embed.labelled import labelled_sets
    from simclr.evaluate.probe import evaluate_features

    train, test = labelled_sets(encoder, data="cifar10", data_root=data_root, limit_train=train_images,
                                limit_test=train_images // 2)
    report = evaluate_features(train.features, train.labels, test.features, test.labels, len(train.classes))
    return {"linear_top1": report.linear_top1, "linear_top5": report.linear_top5, "knn_top1": report.knn_top1,
            "n_train": report.n_train, "n_test": report.n_test, "l2": report.l2}
