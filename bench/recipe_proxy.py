"""The photo recipe's candidates ranked on a CPU proxy, before GPU time is spent on them.

Each candidate is `simclr train --preset photo` with one change, on the same proxy: a ResNet-18 at a quarter of the
width, 32 px views, one Tiny ImageNet shard (12,497 photos, read straight from its .tar.xz), batch 256, a few
epochs with a short warm-up, seed 0. The measure is the kNN monitor's top-1 at the end (k=200, T=0.1; 10,000 photos of
shard 6 as memory, 2,000 of shard 7 as queries, shrunk to 32 px): the evaluation protocol stays fixed, only the
recipe changes. `random` is the same monitor on f at initialisation (no training), for scale. A gain on the proxy
is what moves the photo preset's defaults; no gain, no change. With --out naming an earlier result of the same
proxy, the candidates not run again keep their rows.

    python bench/recipe_proxy.py --out bench/results/recipe_proxy.json        # about 8 minutes a candidate here
    python bench/recipe_proxy.py --only random,lr_sqrt --out bench/results/recipe_proxy.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, from_shared, machine, write_json

from simclr.data.shared import shared_data
from simclr.train.config import TrainConfig, build_config
from simclr.train.loop import train

log = logging.getLogger("bench.recipe_proxy")
PROBE_DATA = REPO / ".cache" / "tinyimagenet" / "probe-full"
PROXY = {"model.width": 0.25, "augment.image_size": 32, "batch_size": 256, "optim.warmup_epochs": 2,
         "knn_samples": 10000, "log_every": 10, "workers": 2, "device": "cpu", "seed": 0}
# name -> (what changes, the overrides). SimCLR's short-schedule rule is lr = 0.075 x sqrt(batch) = 1.2 x
# sqrt(batch/256); solo-learn's head is 2048 -> 256 and it clips LARS's layer rate with eta 0.02.
CANDIDATES = {
    "random": ("no training: f at initialisation", {}),
    "baseline": ("the photo preset as it is", {}),
    "lr_sqrt": ("lr = 0.075 x sqrt(batch) (--lr-scaling sqrt --base-lr 1.2)",
                {"optim.lr_scaling": "sqrt", "optim.base_lr": 1.2}),
    "blur_scaled": ("blur sigma scaled to the view size (--blur-scaled)", {"augment.blur_scaled": True}),
    "trust_clip": ("LARS clipped, eta 0.02 (--trust-clip --trust-coefficient 0.02)",
                   {"optim.trust_clip": True, "optim.trust_coefficient": 0.02}),
    "head_2048": ("head 2048 -> 256 (--head-hidden 2048 --head-out 256)",
                  {"model.head_hidden": 2048, "model.head_out": 256}),
}


def final_knn(run: Path) -> float:
    """The kNN monitor's last reading in a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return [row["knn_top1"] for row in rows if "knn_top1" in row][-1]


def random_row(config: TrainConfig) -> dict:
    """The kNN monitor on f with the run's initial weights (seed 0), untrained."""
    import torch

    from simclr.train.model import SimCLRModel
    from simclr.train.monitor import KnnMonitor

    torch.manual_seed(config.seed)
    started = time.perf_counter()
    knn = KnnMonitor(config, torch.device("cpu"))(SimCLRModel(config.model).encoder)
    return {"knn_top1": knn, "steps": 0, "seconds": time.perf_counter() - started}


def earlier_rows(out: Path | None, proxy: dict, names: list[str]) -> list[dict]:
    """The rows of an earlier result in `out` made with the same proxy, except those run again."""
    earlier = json.loads(out.read_text()) if out and out.is_file() else {}
    if earlier.get("proxy") != proxy:
        return []
    return [row for row in earlier["candidates"] if row["name"] not in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12, help="epochs of each proxy run (default 12)")
    parser.add_argument("--only", default=",".join(CANDIDATES),
                        help=f"candidates to run, comma-separated (default all: {','.join(CANDIDATES)})")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (after every candidate)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    names = args.only.split(",")
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        sys.exit(f"bench: --only {','.join(unknown)}: not a candidate ({', '.join(CANDIDATES)})")
    shard = shared_data() / "tinyimagenet" / "tinyimagenet-train-0.tar.xz"
    if not shard.is_file():
        sys.exit(f"bench: {shard}: no Tiny ImageNet shard here (../shared/data/tinyimagenet)")
    from_shared("tinyimagenet/tinyimagenet.py", "probe", str(PROBE_DATA))
    proxy = {**PROXY, "data": str(shard), "epochs": args.epochs, "knn_every": args.epochs,
             "knn_data": str(PROBE_DATA)}
    payload = {"benchmark": "recipe_proxy", "machine": machine(), "proxy": proxy,
               "candidates": earlier_rows(args.out, proxy, names)}
    with tempfile.TemporaryDirectory(prefix="recipe-proxy-") as work:
        for name in names:
            change, overrides = CANDIDATES[name]
            config = build_config("photo", {**proxy, **overrides})
            row = {"name": name, "change": change, "overrides": overrides}
            if name == "random":
                row |= random_row(config)
            else:
                started = time.perf_counter()
                result = train(config, Path(work) / name)
                row |= {"knn_top1": final_knn(Path(work) / name), "loss": result.loss,
                        "contrastive_accuracy": result.contrastive_accuracy, "steps": result.steps,
                        "seconds": time.perf_counter() - started, "pairs_per_second": result.images_per_second}
            payload["candidates"] = sorted([*payload["candidates"], row],
                                           key=lambda other: list(CANDIDATES).index(other["name"]))
            log.info("%s: kNN %.4f after %d steps (%.0f s)", name, row["knn_top1"], row["steps"], row["seconds"])
            baseline = next((c for c in payload["candidates"] if c["name"] == "baseline"), None)
            for candidate in payload["candidates"]:
                candidate["knn_gain"] = candidate["knn_top1"] - baseline["knn_top1"] if baseline else None
            write_json(payload, args.out)


if __name__ == "__main__":
    main()
