"""The features writer: a finished run publishes feats.npy and its sidecar; an unfinished one leaves only partial
files, and --resume keeps exactly the complete records and their rows."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from simclr.embed.encoder import ModelIdentity
from simclr.embed.features import load_features
from simclr.embed.sidecar import FeaturesHeader
from simclr.embed.writer import FeatureWriter

HEADER = FeaturesHeader(model=ModelIdentity("m", "1", "ab" * 32, 8, 4), model_source="m.onnx", inputs=("in",),
                        cwd=os.getcwd(), normalized=False, images=5)


def _rows(count: int, start: int = 0) -> np.ndarray:
    return np.arange(start * 4, (start + count) * 4, dtype=np.float32).reshape(count, 4)


def test_finished_run_publishes_rows_and_records(tmp_path: Path) -> None:
    out = tmp_path / "feats.npy"
    with FeatureWriter(out, 4, HEADER, resume=False) as writer:
        writer.write(["a", "b", "c"], ["x", None, "y"], _rows(2), [None, "OSError: broken", None])
        writer.write(["d", "e"], [None, None], _rows(2, 2), [None, None])
        writer.finish()
    features = load_features(out)
    np.testing.assert_array_equal(np.load(out), _rows(4))
    assert features.paths == ["a", "c", "d", "e"] and features.labels == ["x", "y", None, None]
    assert features.failures[0]["path"] == "b" and features.header == HEADER
    assert not list(tmp_path.glob("*.partial"))


def test_unfinished_run_leaves_no_valid_looking_file(tmp_path: Path) -> None:
    out = tmp_path / "feats.npy"
    with FeatureWriter(out, 4, HEADER, resume=False) as writer:
        writer.write(["a"], [None], _rows(1), [None])
    assert not out.exists() and not out.with_suffix(".jsonl").exists()
    assert Path(f"{out}.partial").stat().st_size == 16


def test_resume_keeps_complete_records_and_exactly_their_rows(tmp_path: Path) -> None:
    out = tmp_path / "feats.npy"
    with FeatureWriter(out, 4, HEADER, resume=False) as writer:
        writer.write(["a", "b"], [None, None], _rows(2), [None, None])
        writer.write(["c"], [None], _rows(1, 2), [None])
    records = Path(f"{out.with_suffix('.jsonl')}.partial")
    records.write_text(records.read_text()[:-10])  # the last record cut short, its row on disk
    with FeatureWriter(out, 4, HEADER, resume=True) as writer:
        assert (writer.done, writer.rows) == (2, 2)
        writer.write(["c", "d", "e"], [None] * 3, _rows(3, 2), [None] * 3)
        writer.finish()
    np.testing.assert_array_equal(np.load(out), _rows(5))
    assert load_features(out).paths == ["a", "b", "c", "d", "e"]


def test_resume_of_another_run_is_refused_and_keeps_its_files(tmp_path: Path) -> None:
    out = tmp_path / "feats.npy"
    with FeatureWriter(out, 4, HEADER, resume=False) as writer:
        writer.write(["a"], [None], _rows(1), [None])
    before = Path(f"{out}.partial").read_bytes()
    with pytest.raises(ValueError, match="other inputs, model or settings"):
        FeatureWriter(out, 4, dataclasses.replace(HEADER, inputs=("elsewhere",)), resume=True)
    assert Path(f"{out}.partial").read_bytes() == before
    header = json.loads(Path(f"{out.with_suffix('.jsonl')}.partial").read_text().splitlines()[0])
    assert header["inputs"] == ["in"]


def test_out_must_be_a_npy_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must name a .npy file"):
        FeatureWriter(tmp_path / "feats.bin", 4, HEADER, resume=False)


def test_rows_lost_to_a_power_cut_are_embedded_again_not_zero_filled(tmp_path: Path) -> None:
    out = tmp_path / "feats.npy"
    with FeatureWriter(out, 4, HEADER, resume=False) as writer:
        writer.write(["a", "b"], [None, None], _rows(2), [None, None])
        writer.write(["c"], [None], _rows(1, 2), [None])
    rows = Path(f"{out}.partial")
    rows.write_bytes(rows.read_bytes()[:-16])  # the records name row 2, the disk never got it
    with FeatureWriter(out, 4, HEADER, resume=True) as writer:
        assert (writer.done, writer.rows) == (2, 2)
        writer.write(["c", "d", "e"], [None] * 3, _rows(3, 2), [None] * 3)
        writer.finish()
    np.testing.assert_array_equal(np.load(out), _rows(5))


def _finished(tmp_path: Path) -> Path:
    out = tmp_path / "feats.npy"
    with FeatureWriter(out, 4, HEADER, resume=False) as writer:
        writer.write(["a", "b", "c"], [None] * 3, _rows(3), [None] * 3)
        writer.finish()
    return out


@pytest.mark.parametrize("edit,message", [
    (lambda lines: [lines[0], lines[2], lines[1], *lines[3:]], "line 2: .*row 1 where row 0 comes next"),
    (lambda lines: [*lines[:2], "{not json", *lines[3:]], "line 3: not a simclr-embed record"),
    (lambda lines: [*lines[:2], '{"row": 1}', *lines[3:]], "line 3: .*missing 'path'"),
    (lambda lines: ["[]", *lines[1:]], "line 1: .*not a simclr-embed sidecar"),
], ids=["swapped-rows", "bad-json", "missing-field", "bad-header"])
def test_a_damaged_sidecar_names_its_line(tmp_path: Path, edit, message: str) -> None:
    out = _finished(tmp_path)
    sidecar = out.with_suffix(".jsonl")
    sidecar.write_text("\n".join(edit(sidecar.read_text().splitlines())) + "\n")
    with pytest.raises(ValueError, match=f"feats.jsonl, {message}"):
        load_features(out)


@pytest.mark.parametrize("planted", ["feats.npy.partial", "feats.jsonl.partial"])
@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.slow
def test_a_link_planted_as_a_partial_file_is_refused_and_its_target_untouched(tmp_path: Path, planted: str,
                                                                              resume: bool) -> None:
    victim = tmp_path / "thesis.tex"
    victim.write_text("another user's work\n")
    if resume:  # an interrupted run's partial files, one of them then swapped for a link
        with FeatureWriter(tmp_path / "feats.npy", 4, HEADER, resume=False) as writer:
            writer.write(["a"], [None], _rows(1), [None])
        (tmp_path / planted).unlink()
    (tmp_path / planted).symlink_to(victim)
    with pytest.raises(ValueError, match=f"{planted}: a symbolic link where simclr writes its own file"):
        FeatureWriter(tmp_path / "feats.npy", 4, HEADER, resume=resume)
    assert victim.read_text() == "another user's work\n" and (tmp_path / planted).is_symlink()
