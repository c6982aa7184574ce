"""The figures of one GPU window (bench/gpu_run.sh), gathered into one JSON: the card, the run's plan against the
time it took, pairs/s and MFU, the probe of shard 6 -> 7 at each input size probed, and whether the run beats the
default photo model on both of that probe's figures (linear and kNN) at every one of those sizes
(bench/results/input_size.json holds the default's).

    python bench/gpu_figures.py --work /tmp/simclr-gpu --out figures.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import REPO, machine, write_json

DEFAULT_FIGURES = REPO / "bench" / "results" / "input_size.json"
PROBE_FIGURES = ("linear_top1", "linear_top5", "knn_top1", "n_train", "n_test")


def read_json(path: Path) -> dict | None:
    """A JSON file's object, or None where the step that writes it did not finish (a training run stopped by the
    call's limit prints no summary)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def default_at(image_size: int) -> dict | None:
    """The default photo model's measured probe at `image_size` (bench/input_size.py's table)."""
    table = read_json(DEFAULT_FIGURES) or {"sizes": []}
    row = next((row for row in table["sizes"] if row["image_size"] == image_size), None)
    return row and {"model": table["model"]["name"], "sha256": table["model"]["sha256"], "image_size": image_size,
                    "linear_top1": row["linear_top1"], "knn_top1": row["knn_top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="gpu_run.sh's work folder (run/, *.json)")
    parser.add_argument("--profile", type=Path, required=True, help="profile_step.py's JSON")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    work = args.work
    config = read_json(work / "run" / "config.json") or {}
    steps = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines() if line]
    # Each logged window's rate but the first (which includes start-up and, with --compile, compilation).
    rates = [row["images_per_second"] for row in steps if row.get("event") == "step"][1:]
    pairs_per_second = statistics.median(rates) if rates else None
    profile = read_json(args.profile) or {}
    peak, flops = profile.get("peak_flops"), profile.get("flops_per_pair")
    probes = {}  # input size -> the run's probe there, beside the default's
    for path in sorted(work.glob("probe-*.json")):
        report = read_json(path)
        if report:
            size = report["model"]["image_size"]
            probes[str(size)] = {"run": {key: report[key] for key in PROBE_FIGURES}, "default": default_at(size)}
    figures = {
        "benchmark": "gpu_window", "machine": machine(), "card": profile.get("machine", {}).get("gpu"),
        "init": config.get("init"), "train": read_json(work / "train.json"),
        "plan": {**config.get("plan", {}), "epochs": config.get("epochs"), "time_budget": config.get("time_budget")},
        "pairs_per_second": pairs_per_second, "flops_per_pair": flops, "peak_flops": peak,
        "peak_basis": profile.get("peak_basis"),
        "mfu": pairs_per_second * flops / peak if pairs_per_second and flops and peak else None,
        "probe": probes, "export": read_json(work / "export.json"),
        # The rule for a new default: better on both figures at every size both were measured at.
        "beats_default": bool(probes) and all(
            probe["default"] is not None and probe["run"]["linear_top1"] > probe["default"]["linear_top1"]
            and probe["run"]["knn_top1"] > probe["default"]["knn_top1"] for probe in probes.values()),
    }
    write_json(figures, args.out)


if __name__ == "__main__":
    main()
