"""Hostile and careless inputs through the real commands, in fresh processes: each must end in a recorded failure or
one clear line, never a traceback, a hang or a lost file."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adversarial import needle_png, png_with_a_bad_chunk


def _simclr(*args: str, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "simclr", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def hostile_folder(tiny_repo: Path) -> Path:
    """Good pictures beside a damaged PNG, a 1 x 1,000,000 strip and a FIFO named like a JPEG, in a folder every
    user can read (so that a non-root user can be denied a subfolder)."""
    root = Path(tempfile.mkdtemp(prefix="simclr-hostile-"))
    root.chmod(0o755)
    for index in range(3):
        Image.fromarray(np.full((20, 20, 3), 50 * index, np.uint8)).save(root / f"good{index}.png")
    png_with_a_bad_chunk(root / "damaged.png")
    needle_png(root / "needle.png")
    os.mkfifo(root / "pipe.jpg")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _peak_rss_kb(*args: str) -> tuple[subprocess.CompletedProcess, int]:
    """A command and its peak resident memory (kB), as GNU time reports it."""
    report = Path(tempfile.mkstemp(suffix=".rss")[1])
    result = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(report), sys.executable, "-m", "simclr", *args],
                            capture_output=True, text=True, timeout=60)
    peak = int(report.read_text().split()[-1])
    report.unlink()
    return result, peak


@pytest.mark.skipif(not Path("/usr/bin/time").is_file(), reason="needs GNU time to read peak memory")
@pytest.mark.slow
def test_embed_records_every_bad_file_and_stays_small(hostile_folder: Path, tiny_repo: Path, tmp_path: Path) -> None:
    result, peak_kb = _peak_rss_kb("embed", str(hostile_folder), "--model", str(tiny_repo / "tiny"), "--out",
                                   str(tmp_path / "feats.npy"), "--workers", "0", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    errors = {Path(item["path"]).name: item["error"] for item in summary["failures"]}
    assert summary["rows"] == 3 and set(errors) == {"damaged.png", "needle.png", "pipe.jpg"}
    assert "broken PNG file" in errors["damaged.png"] and "aspect ratio" in errors["needle.png"]
    assert "not a regular file" in errors["pipe.jpg"]
    assert peak_kb < 1_000_000  # under 1 GB in all: no torch, and the strip is refused before it is decoded


@pytest.mark.slow
def test_search_and_train_survive_the_same_folder(hostile_folder: Path, tiny_repo: Path, tmp_path: Path) -> None:
    index = tmp_path / "feats.npy"
    assert _simclr("embed", str(hostile_folder), "--model", str(tiny_repo / "tiny"), "--out", str(index),
                   "--workers", "0").returncode == 0
    search = _simclr("search", str(hostile_folder), "--index", str(index), "-k", "1", "--json", timeout=60)
    assert search.returncode == 0, search.stderr
    unreadable = {Path(r["query"]).name for r in json.loads(search.stdout)["results"] if r["error"]}
    assert unreadable == {"damaged.png", "needle.png", "pipe.jpg"}
    train = _simclr("train", "--data", str(hostile_folder), "--out", str(tmp_path / "run"), "--width", "0.0625",
                    "--image-size", "16", "--batch-size", "2", "--max-steps", "1", "--workers", "0", timeout=120)
    assert train.returncode == 0, train.stderr
    assert "damaged.png" in train.stderr and "Traceback" not in train.stderr


def _unlistable_folder(parent: Path) -> Path:
    """A subfolder this process cannot list: mode 000 for a normal user; for root (whom modes do not stop), a link
    to /proc/1/map_files, which needs a capability containers do not grant."""
    folder = parent / "secret"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0)
        return folder
    try:
        os.listdir("/proc/1/map_files")
    except PermissionError:
        folder.symlink_to("/proc/1/map_files")
        return folder
    pytest.skip("running as root with CAP_SYS_ADMIN: no folder here is unlistable")


def test_an_unreadable_subfolder_is_recorded_and_fails_strict(hostile_folder: Path, tiny_repo: Path,
                                                              tmp_path: Path) -> None:
    (hostile_folder / "pipe.jpg").unlink()
    secret = _unlistable_folder(hostile_folder)
    try:
        result = _simclr("embed", str(hostile_folder), "--model", str(tiny_repo / "tiny"), "--out",
                         str(tmp_path / "feats.npy"), "--workers", "0", "--strict")
    finally:
        if not secret.is_symlink():
            secret.chmod(0o755)
    assert result.returncode == 1, result.stderr
    assert "--strict" in result.stderr.strip().splitlines()[-1]
    records = [json.loads(line) for line in (tmp_path / "feats.jsonl").read_text().splitlines()[1:-1]]
    failed = {Path(record["path"]).name: record["error"] for record in records if record["row"] is None}
    # as root the unlistable folder is a link out of the folder: not followed, and recorded as that
    assert "PermissionError" in failed["secret"] or "a symbolic link out of" in failed["secret"]


def _limited_file_size(limit_bytes: int):
    """For a child process: writes past `limit_bytes` fail with EFBIG, as on a full disk."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def test_a_failed_final_write_keeps_the_previous_pair(shapes_folder: Path, tiny_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.npy"
    first = _simclr("embed", str(shapes_folder / "000.png"), "--model", str(tiny_repo / "tiny"), "--out", str(out))
    assert first.returncode == 0, first.stderr
    before = out.read_bytes(), out.with_suffix(".jsonl").read_bytes()
    second = subprocess.run([sys.executable, "-m", "simclr", "embed", str(shapes_folder), "--model",
                             str(tiny_repo / "tiny"), "--out", str(out), "--workers", "0"],
                            capture_output=True, text=True, timeout=120,
                            # the 256 x 64 float32 rows (65,536 bytes) fit, the .npy with its header does not:
                            # the run fails in its final write
                            preexec_fn=_limited_file_size(65_600))
    assert second.returncode == 1 and second.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in second.stderr
    assert (out.read_bytes(), out.with_suffix(".jsonl").read_bytes()) == before
    assert not list(tmp_path.glob(".*.tmp")) and Path(f"{out}.partial").stat().st_size == 65_536


@pytest.mark.parametrize("option", ["--out", "--grid"])
def test_an_output_that_is_a_folder_is_one_line(option: str, shapes_folder: Path, tiny_repo: Path,
                                                tmp_path: Path) -> None:
    index = tmp_path / "feats.npy"
    assert _simclr("embed", str(shapes_folder / "000.png"), "--model", str(tiny_repo / "tiny"), "--out",
                   str(index)).returncode == 0
    (tmp_path / "folder").mkdir()
    if option == "--out":
        result = _simclr("embed", str(shapes_folder / "000.png"), "--model", str(tiny_repo / "tiny"), "--out",
                         str(tmp_path / "folder"))
    else:
        result = _simclr("search", str(shapes_folder / "000.png"), "--index", str(index), "--grid",
                         str(tmp_path / "folder"))
    assert result.returncode == 1 and "folder" in result.stderr.strip().splitlines()[-1], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args,option", [
    (["serve", "--http-port", "70000"], "--http-port"),
    (["serve", "--instances", "0"], "--instances"),
    (["export", "RUN", "--queue-delay-us", "-5"], "--queue-delay-us"),
    (["export", "RUN", "--instances", "0"], "--instances"),
    (["export", "RUN", "--max-batch-size", "0"], "--max-batch-size"),
    (["embed", "x.png", "--workers", "-1"], "--workers"),
    (["embed", "x.png", "--threads", "-3"], "--threads"),
    (["search", "x.png", "-k", "0"], "-k"),
    (["index", "feats.npy", "--nlist", "-4"], "--nlist"),
    (["probe", "--data", "cifar10", "--knn-k", "0"], "--knn-k"),
    (["probe", "--data", "cifar10", "--limit-train", "0"], "--limit-train"),
    (["train", "--data", "x", "--out", "run", "--preset", "mnist"], "--preset"),
])
@pytest.mark.slow
def test_out_of_range_arguments_are_refused_by_the_parser(args: list[str], option: str, contract_run: Path) -> None:
    result = _simclr(*[str(contract_run) if arg == "RUN" else arg for arg in args])
    assert result.returncode == 2 and f"'{option}'" in result.stderr, result.stderr


@pytest.mark.slow
def test_a_model_name_with_a_newline_is_refused(contract_run: Path, tmp_path: Path) -> None:
    result = _simclr("export", str(contract_run), "--repo", str(tmp_path / "repo"), "--name", "abc\n")
    assert result.returncode == 1 and "--name" in result.stderr and not (tmp_path / "repo").exists()


def test_resume_refuses_a_changed_file_list(shapes_folder: Path, tiny_repo: Path, tmp_path: Path) -> None:
    from simclr.embed.onnx_encoder import OnnxEncoder
    from simclr.embed.runner import embed_images

    folder = tmp_path / "images"
    shutil.copytree(shapes_folder, folder)
    out = tmp_path / "feats.npy"

    class StopAfterTwo(OnnxEncoder):
        calls = 0

        def embed(self, images):
            StopAfterTwo.calls += 1
            if StopAfterTwo.calls > 2:
                raise KeyboardInterrupt
            return super().embed(images)

    with pytest.raises(KeyboardInterrupt):
        embed_images([folder], out, StopAfterTwo(tiny_repo / "tiny"), batch_size=32, workers=0, progress=False)
    (folder / "000.png").rename(folder / "zzz.png")  # the same number of files, another list
    result = _simclr("embed", str(folder), "--model", str(tiny_repo / "tiny"), "--out", str(out), "--resume")
    assert result.returncode == 1 and "other image files" in result.stderr, result.stderr


def test_search_from_another_folder_finds_the_recorded_files(shapes_folder: Path, tiny_repo: Path,
                                                              tmp_path: Path) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(shapes_folder, work / "images")
    elsewhere.mkdir()
    assert subprocess.run([sys.executable, "-m", "simclr", "embed", "images", "--model", str(tiny_repo / "tiny"),
                           "--out", "feats.npy"], cwd=work, capture_output=True).returncode == 0
    result = subprocess.run([sys.executable, "-m", "simclr", "search", str(work / "images" / "005.jpg"), "--index",
                             str(work / "feats.npy"), "-k", "1", "--json", "--grid", "grid.png"], cwd=elsewhere,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    found = Path(json.loads(result.stdout)["results"][0]["neighbours"][0]["path"])
    assert found.is_file() and found.resolve() == (work / "images" / "005.jpg").resolve()
    grid = np.asarray(Image.open(elsewhere / "grid.png").convert("L"), dtype=float)
    assert grid.std() > 10  # real thumbnails, not grey placeholders


def _children(pid: int) -> set[int]:
    try:
        return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_kill_9_of_embed_takes_its_decoding_workers_down(shapes_folder: Path, tiny_repo: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    for copy in range(12):  # a few thousand files: long enough to catch the workers at work
        shutil.copytree(shapes_folder, images / str(copy))
    process = subprocess.Popen([sys.executable, "-m", "simclr", "embed", str(images), "--model",
                                str(tiny_repo / "tiny"), "--out", str(tmp_path / "feats.npy"), "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_children(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(process.pid)
    assert len(workers) >= 2, "the decoding workers never started"
    process.kill()
    process.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


@pytest.mark.slow
def test_export_into_a_model_whose_served_file_is_truncated_is_one_line(contract_run: Path, tmp_path: Path) -> None:
    from simclr.export.repository import export_to_repository

    model = export_to_repository(contract_run, tmp_path / "repo", "m").model_path
    model.write_bytes(model.read_bytes()[:1000])
    result = _simclr("export", str(contract_run), "--repo", str(tmp_path / "repo"), "--name", "m")
    assert result.returncode == 1 and "not a readable ONNX model" in result.stderr.strip().splitlines()[-1]
    assert sorted(p.name for p in (tmp_path / "repo" / "m").iterdir()) == ["1", "config.pbtxt"]


@pytest.mark.slow
def test_an_export_killed_midway_leaves_a_folder_the_next_export_removes(contract_run: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    process = subprocess.Popen([sys.executable, "-m", "simclr", "export", str(contract_run), "--repo", str(repo),
                                "--name", "m"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list((repo / "m").glob(".export-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()
    process.wait()
    if not list((repo / "m").glob(".export-*")):
        pytest.skip("the export finished before it could be killed")
    assert _simclr("export", str(contract_run), "--repo", str(repo), "--name", "m").returncode == 0
    assert not list((repo / "m").glob(".export-*"))


@pytest.mark.slow
def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_one_line(contract_run: Path, tmp_path: Path) -> None:
    import torch

    from simclr.train.checkpoint import save_checkpoint

    state = torch.load(contract_run / "last.pt", weights_only=True)
    state["config"]["model"]["width"] = 0.25  # the weights are of width 0.125
    save_checkpoint(tmp_path / "last.pt", state)
    result = _simclr("export", str(tmp_path / "last.pt"), "--repo", str(tmp_path / "repo"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "weights do not fit its recorded config" in result.stderr


@pytest.mark.slow
def test_probe_features_of_two_dimensions_are_one_line(tmp_path: Path) -> None:
    from simclr.embed.encoder import ModelIdentity
    from simclr.embed.sidecar import FeaturesHeader
    from simclr.embed.writer import FeatureWriter

    for name, dim in (("train", 8), ("test", 16)):
        header = FeaturesHeader(model=ModelIdentity(name, "1", "", 32, dim), model_source="", inputs=(name,),
                                cwd=os.getcwd(), normalized=False, images=4)
        with FeatureWriter(tmp_path / f"{name}.npy", dim, header, resume=False) as writer:
            writer.write([f"{c}/{i}.png" for c in "ab" for i in range(2)], ["a", "a", "b", "b"],
                         np.ones((4, dim), np.float32), [None] * 4)
            writer.finish()
    result = _simclr("probe", "--train-features", str(tmp_path / "train.npy"), "--test-features",
                     str(tmp_path / "test.npy"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "train features have 8 dimensions, test features 16" in result.stderr


@pytest.mark.slow
def test_a_negative_l2_strength_is_one_line(tmp_path: Path) -> None:
    result = _simclr("probe", "--train-features", "a.npy", "--test-features", "b.npy", "--l2", "-1")
    assert result.returncode == 1 and result.stderr.strip() == "error: --l2 -1: must be 0 or more"


@pytest.mark.slow
def test_probe_checks_its_data_options_before_opening_a_model(tmp_path: Path) -> None:
    result = _simclr("probe", "--train", str(tmp_path), "--model", str(tmp_path / "no-such-model"))
    assert result.returncode == 1 and result.stderr.strip() == "error: --train and --test go together"


def test_embed_refuses_a_link_planted_as_its_partial_file_in_one_line(tiny_repo: Path, image_folder: Path,
                                                                     tmp_path: Path) -> None:
    victim = tmp_path / "thesis.tex"
    victim.write_text("another user's work\n")
    (tmp_path / "feats.npy.partial").symlink_to(victim)
    result = _simclr("embed", str(image_folder), "--model", str(tiny_repo / "tiny"), "--out",
                     str(tmp_path / "feats.npy"), "--workers", "0")
    last = result.stderr.strip().splitlines()[-1]  # after the listing's progress bar
    assert result.returncode == 1 and "feats.npy.partial: a symbolic link where simclr writes its own file" in last
    assert victim.read_text() == "another user's work\n"


def _slow_embed(tiny_repo: Path, folder: Path) -> tuple[list[str], subprocess.Popen]:
    """A `simclr embed` of 600 photos 4 at a time (arguments, process), returned once its first rows are on disk."""
    photos = folder / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for number in range(600):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photos / f"{number:03d}.jpg")
    command = ["embed", str(photos), "--model", str(tiny_repo / "tiny"), "--out", str(folder / "feats.npy"),
               "--workers", "0", "--batch-size", "4"]
    running = subprocess.Popen([sys.executable, "-m", "simclr", *command], stderr=subprocess.PIPE, text=True)
    partial = folder / "feats.npy.partial"
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > 0):
        assert running.poll() is None and time.monotonic() < deadline, running.stderr.read()
        time.sleep(0.02)
    return command, running


def test_a_second_writer_of_one_output_is_refused_naming_the_first(tiny_repo: Path, tmp_path: Path) -> None:
    command, first = _slow_embed(tiny_repo, tmp_path)
    try:
        second = _simclr(*command, "--resume")
        last = second.stderr.strip().splitlines()[-1]
        assert second.returncode == 1 and f"being written by process {first.pid}" in last, second.stderr
    finally:
        first.kill()  # kill -9: its lock goes with it
        first.wait()
    resumed = _simclr(*command, "--resume", "--json")
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["rows"] == 600, resumed.stderr
    assert not (tmp_path / "feats.npy.lock").exists()


def test_a_sigterm_stops_embed_in_one_line_and_resume_finishes_it(tiny_repo: Path, tmp_path: Path) -> None:
    command, running = _slow_embed(tiny_repo, tmp_path)
    partial = tmp_path / "feats.npy.partial"
    running.send_signal(signal.SIGTERM)
    assert running.wait(timeout=30) == 128 + signal.SIGTERM
    last = running.stderr.read().strip().splitlines()[-1]
    assert "stopped by SIGTERM" in last and "feats.npy.partial" in last and "--resume" in last, last
    resumed = _simclr(*command, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["rows"] == 600 and not partial.exists()
