"""Start-up: each command imports what its path uses. Embedding with ONNX Runtime, indexing and searching never
import torch (checked in fresh processes through the real entry points, not by timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHECK = ("import sys; from simclr.cli.app import {entry}; sys.argv = ['simclr'] + {args!r}\n"
         "try:\n    {entry}()\nexcept SystemExit as stop:\n    assert not stop.code, stop.code\n"
         "loaded = sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'torchvision'))\n"
         "assert not loaded, 'imported ' + ', '.join(loaded[:5])")


def _run(entry: str, args: list[str], cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-c", CHECK.format(entry=entry, args=args)], cwd=cwd,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("startup")
    (work / "images").mkdir()
    for index in range(6):
        Image.fromarray(np.full((40, 40, 3), 40 * index, np.uint8)).save(work / "images" / f"{index}.png")
    return work


@pytest.mark.slow
def test_help_and_every_command_help_import_no_torch(work: Path) -> None:
    _run("main", ["--help"], work)
    for command in ("train", "export", "serve", "embed", "index", "search", "probe", "demo", "search-server",
                    "finetune", "classify", "quantize", "merge", "slim"):
        _run("main", [command, "--help"], work)


def test_embed_index_and_search_import_no_torch(work: Path) -> None:
    _run("embed_main", ["images", "--out", "feats.npy", "--workers", "0"], work)
    _run("main", ["index", "feats.npy"], work)
    _run("search_main", ["images/0.png", "--index", "feats.npy", "-k", "3"], work)
    assert (work / "feats.faiss").is_file()


@pytest.mark.slow
def test_sharded_embedding_merge_and_a_budgeted_index_import_no_torch(work: Path) -> None:
    for job in ("0/2", "1/2"):
        _run("embed_main", ["images", "--out", "parts/feats.npy", "--shard", job, "--workers", "0"], work)
    parts = ["parts/feats-0-of-2.npy", "parts/feats-1-of-2.npy"]
    _run("main", ["merge", *parts, "--out", "merged.npy"], work)
    _run("main", ["index", *parts, "--memory-budget", "1G"], work)
    _run("main", ["index", "merged.npy", "--kind", "ivf", "--nlist", "1"], work)
    _run("main", ["index", "merged.npy", "--remove", "images/0.png"], work)
    assert (work / "parts" / "feats-of-2.faiss").is_file() and (work / "merged.faiss").is_file()


def test_classify_with_onnx_runtime_imports_no_torch(work: Path, finetuned_run: Path) -> None:
    from simclr.export.classifier import export_classifier

    export_classifier(finetuned_run, work / "repo", "colours", bytes_model=None)
    _run("main", ["classify", "images", "--model", str(work / "repo" / "colours"), "--workers", "0"], work)
