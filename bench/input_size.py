"""Input size at embedding time (FixRes, Touvron et al. 2019): the photo model re-exported at several input sizes,
each measured with the linear probe and kNN of `simclr probe` on Tiny ImageNet shard 6 (train) -> shard 7 (test).

A model trained on random resized crops sees objects larger than a whole photo shrunk to the same size shows them,
so it may do better when embedding at a larger size than it was trained at. The encoder is convolutional with
global pooling: `simclr export MODEL --image-size N` re-exports the same weights for N px inputs (done here into a
temporary repository). The decoder resizes the shorter side to N and crops the centre square; Tiny ImageNet photos
are square 64 px, so size N upsamples the whole photo to N x N.

Per size: linear top-1/top-5 (logistic regression, L2 chosen on a held-out 20% of train) and weighted kNN top-1
(k=200, T=0.1), exactly as `simclr probe --train TRAIN --test TEST --model M --json`; and the embedding rate
(decode + ONNX Runtime, both splits), as a ratio against the size it was trained at, measured in the same run.
`--random-baseline` adds the same architecture with random weights at the given model's input size.

    python bench/input_size.py --random-baseline --out bench/results/input_size.json    # the default model
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, from_shared, machine, write_json

from simclr.embed.encoder import EncoderSpec
from simclr.embed.labelled import evaluation_encoder, folder_classes, labelled_sets
from simclr.embed.onnx_encoder import DEFAULT_MODEL
from simclr.evaluate.linear import L2_GRID
from simclr.evaluate.probe import evaluate_features
from simclr.export.layout import ModelMetadata
from simclr.export.repository import export_to_repository

log = logging.getLogger("bench.input_size")
PROBE_DATA = REPO / ".cache" / "tinyimagenet" / "probe-full"
DECODER = ("simclr.data.decode.resize_center_crop: the shorter side is resized to the model's size (bilinear, "
           "antialiased when shrinking) and the centre square is cropped; a non-square photo is never squashed")
NON_SQUARE = ("not measured: no labelled set of non-square photos exists here (../shared holds square CIFAR-10 "
              "and Tiny ImageNet; scikit-image's sample photos are single unlabelled images)")


def probe(spec: EncoderSpec, data: Path, baseline: str | None = None) -> dict:
    """`simclr probe --train data/train --test data/test` of one model (or baseline), with the embedding time."""
    encoder = evaluation_encoder(spec, baseline=baseline)
    started = time.perf_counter()
    train, test = labelled_sets(encoder, train=data / "train", test=data / "test")
    embed_seconds = time.perf_counter() - started
    report = evaluate_features(train.features, train.labels, test.features, test.labels, len(train.classes),
                               L2_GRID, 200, 0.1, 0, "cpu")
    images = len(train.labels) + len(test.labels)
    return {"image_size": encoder.identity.image_size, "linear_top1": report.linear_top1,
            "linear_top5": report.linear_top5, "knn_top1": report.knn_top1, "l2": report.l2,
            "n_train": report.n_train, "n_test": report.n_test, "embed_seconds": embed_seconds,
            "images_per_second": images / embed_seconds, "fit_seconds": report.seconds}


def best(rows: list[dict], key: str) -> int:
    return max(rows, key=lambda row: row[key])["image_size"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=f"the exported model to re-export (default: {DEFAULT_MODEL.name}, the default model)")
    parser.add_argument("--sizes", default="64,72,80,96",
                        help="input sizes, comma-separated, measured in this order (default 64,72,80,96)")
    parser.add_argument("--data", type=Path, default=PROBE_DATA,
                        help="a labelled train/ and test/ (default: Tiny ImageNet shards 6 -> 7, written once by "
                             "../shared/data/tinyimagenet/tinyimagenet.py probe)")
    parser.add_argument("--random-baseline", action="store_true",
                        help="also probe random weights of the same architecture at the model's own size")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (after every size)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if not args.model.exists():
        sys.exit(f"bench: --model {args.model}: no such model")
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.data == PROBE_DATA:
        from_shared("tinyimagenet/tinyimagenet.py", "probe", str(PROBE_DATA))
    source = evaluation_encoder(EncoderSpec(model=str(args.model)))
    metadata: ModelMetadata = source.metadata
    payload = {"benchmark": "input_size", "machine": machine(),
               "model": {"path": str(args.model), "name": source.identity.name, "sha256": source.identity.sha256,
                         "image_size": metadata.image_size, "train_image_size": metadata.train_image_size},
               "data": {"train": str(args.data / "train"), "test": str(args.data / "test"),
                        "classes": len(folder_classes(args.data / "train"))},
               "protocol": "simclr probe: logistic regression on standardised frozen features, L2 from "
                           f"{list(L2_GRID)} on a held-out 20% of train (seed 0); weighted kNN, cosine, k=200, T=0.1",
               "decoder": DECODER, "non_square": NON_SQUARE,
               "timing": "embed_seconds: decode + ONNX Runtime (CPU, default threads) of train and test, one run "
                         "per size; other work shared the machine, so rates are noisy",
               "sizes": []}
    with tempfile.TemporaryDirectory(prefix="input-size-") as work:
        for size in sizes:
            name = f"size{size}"
            exported = export_to_repository(args.model, Path(work), name, image_size=size, bytes_model=None)
            log.info("exported %s at %d px (parity %.2g); probing", name, size, exported.export.max_abs_diff)
            row = {**probe(EncoderSpec(model=str(exported.model_path)), args.data),
                   "export_max_abs_diff": exported.export.max_abs_diff}
            payload["sizes"] = sorted([*payload["sizes"], row], key=lambda r: r["image_size"])
            log.info("%d px: linear %.4f / %.4f, kNN %.4f, %.0f images/s", size, row["linear_top1"],
                     row["linear_top5"], row["knn_top1"], row["images_per_second"])
            summarise(payload, metadata.train_image_size)
            write_json(payload, args.out)
    if args.random_baseline:
        log.info("random weights at %d px", metadata.image_size)
        payload["random_baseline"] = probe(EncoderSpec(model=str(args.model)), args.data, "random")
    write_json(payload, args.out)


def summarise(payload: dict, training_size: int) -> None:
    """The best size on each measure, and each size's embedding rate against the size the model was trained at."""
    rows = payload["sizes"]
    trained = next((row for row in rows if row["image_size"] == training_size), None)
    for row in rows:
        row["images_per_second_vs_training_size"] = (row["images_per_second"] / trained["images_per_second"]
                                                     if trained else None)
    payload["best"] = {"linear_top1": best(rows, "linear_top1"), "knn_top1": best(rows, "knn_top1")}


if __name__ == "__main__":
    main()
