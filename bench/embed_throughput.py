"""Embedding throughput: images/s of simclr-embed against a naive loop, on >= 5,000 photo-sized JPEGs, in one run.

The folder: CIFAR-10 training images scaled to 256-512 px a side (bicubic) and saved as JPEG (quality 90), written
once to .cache/bench_photos. The model: a ResNet-18 (CIFAR stem, 32 px, full width) exported by `simclr export`.
  simclr-embed: decoding in worker processes (JPEG draft mode), ONNX Runtime, rows streamed to feats.npy;
  naive loop:   PIL open + torchvision Resize/CenterCrop/ToTensor, the torch encoder in eval mode, batch 256.

    python bench/embed_throughput.py --out bench/results/embed_throughput.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import REPO, cifar_root, machine, median_rate, reference_model, write_json
from PIL import Image
from torchvision import transforms

from simclr.data.datasets import torchvision_split
from simclr.data.images import find_images
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.runner import embed_images
from simclr.train.checkpoint import load_encoder


def photo_folder(count: int, folder: Path = REPO / ".cache" / "bench_photos") -> Path:
    """`count` CIFAR-10 images scaled to 256-512 px, as JPEG files (made once)."""
    if folder.is_dir() and len(list(folder.rglob("*.jpg"))) >= count:
        return folder
    train = torchvision_split("cifar10", cifar_root(), train=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        label = train.classes[int(train.labels[index])]
        size = tuple(int(s) for s in rng.integers(256, 513, 2))
        image = Image.fromarray(train.images[index].permute(1, 2, 0).numpy()).resize(size, Image.BICUBIC)
        (folder / label).mkdir(parents=True, exist_ok=True)
        image.save(folder / label / f"{index:05d}.jpg", quality=90)
    return folder


def naive_loop(paths: list[Path], checkpoint: Path, batch_size: int = 256) -> int:
    encoder, _ = load_encoder(checkpoint)
    transform = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start:start + batch_size]])
            encoder(batch)  # normalisation is inside the encoder, as in the exported model
    return len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="JPEG files (default 5000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="simclr-embed decoding processes (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    folder = photo_folder(args.images)
    paths = find_images(folder)[: args.images]
    with tempfile.TemporaryDirectory(prefix="simclr-bench-") as scratch:
        work = Path(scratch)
        repo = reference_model(work)
        encoder = OnnxEncoder(repo / "dynamic")

        def simclr_embed() -> int:
            result = embed_images(paths, work / "feats.npy", encoder, batch_size=256, workers=args.workers,
                                  progress=False)
            return result.rows

        baseline = median_rate(lambda: naive_loop(paths, work / "run" / "last.pt"), args.repeats)
        simclr = median_rate(simclr_embed, args.repeats)
    write_json({"benchmark": "embed_throughput", "machine": machine(), "images": len(paths),
                "photo_sizes": "256-512 px JPEG (q90) from CIFAR-10", "model": "resnet18 (CIFAR stem, 32 px, D=512)",
                "unit": "images/s", "naive_loop": baseline, "simclr_embed": simclr,
                "workers": args.workers, "ratio": simclr["median"] / baseline["median"]}, args.out)


if __name__ == "__main__":
    main()
