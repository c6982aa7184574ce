"""Start-up: wall time and peak memory of `simclr --help`, one `simclr-search` query on a 300-image index, and
`simclr-embed` of one image, each against the same command in a process that imports torch first (what every
command paid before the commands imported only what their path uses), in one run; median of several runs.

    python bench/startup.py --out bench/results/startup.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, write_json
from PIL import Image

COMMANDS = {
    "simclr --help": ("main", ["--help"]),
    "simclr-search one query, 300-image index": ("search_main", ["images/0.png", "--index", "feats.npy"]),
    "simclr-embed one image": ("embed_main", ["images/1.png", "--out", "one.npy"]),
}


def run(entry: str, args: list[str], eager_torch: bool, work: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one command in a fresh Python process."""
    prelude = "import torch; " if eager_torch else ""
    code = (f"import sys; {prelude}from simclr.cli.app import {entry}; sys.argv = ['simclr'] + {args!r}; "
            f"{entry}()")
    script = ["/usr/bin/time", "-f", "%M", sys.executable, "-c", code]
    started = time.perf_counter()
    result = subprocess.run(script, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"bench: {code} failed:\n{result.stderr}")
    return wall, int(result.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command; the median is reported")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="simclr-startup-") as scratch:
        work = Path(scratch)
        (work / "images").mkdir()
        rng = np.random.default_rng(0)
        for index in range(300):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(work / "images" / f"{index}.png")
        subprocess.run([sys.executable, "-m", "simclr", "embed", "images", "--out", "feats.npy"], cwd=work,
                       check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "simclr", "index", "feats.npy"], cwd=work, check=True,
                       capture_output=True)
        rows = []
        for name, (entry, command_args) in COMMANDS.items():
            row = {"command": name}
            for label, eager in (("imports_torch_first", True), ("as_shipped", False)):
                runs = [run(entry, command_args, eager, work) for _ in range(args.repeats)]
                row[label] = {"median_seconds": statistics.median(wall for wall, _ in runs),
                              "median_peak_rss_mb": statistics.median(rss for _, rss in runs),
                              "seconds": [wall for wall, _ in runs]}
            row["speedup"] = row["imports_torch_first"]["median_seconds"] / row["as_shipped"]["median_seconds"]
            rows.append(row)
    write_json({"benchmark": "startup", "machine": machine(), "commands": rows}, args.out)


if __name__ == "__main__":
    main()
