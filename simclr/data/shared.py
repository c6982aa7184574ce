"""Development copies of CIFAR-10 and Tiny ImageNet that carry their own writer scripts: this project's
../shared/data beside a clone, or $SIMCLR_SHARED_DATA. Tests and benchmarks materialise what they need from them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SHARED_DATA_ENVIRONMENT = "SIMCLR_SHARED_DATA"
SOURCE_TREE = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    """Where the copies are: $SIMCLR_SHARED_DATA, else ../shared/data beside the source tree."""
    return Path(os.environ.get(SHARED_DATA_ENVIRONMENT, SOURCE_TREE.parent / "shared" / "data"))


def write_from_shared(script: str, *args: str) -> None:
    """Run a copy's writer script (e.g. "cifar10.py", "batches", DEST); the scripts keep complete output, so a
    second call costs little. FileNotFoundError says where the script was looked for."""
    path = shared_data() / script
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (set ${SHARED_DATA_ENVIRONMENT} to the folder holding "
                                f"{Path(script).parts[0]})")
    subprocess.run([sys.executable, str(path), *args], check=True, capture_output=True)
