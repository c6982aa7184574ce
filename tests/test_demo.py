"""simclr demo end to end with the session's tiny model (the default model's run is `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from simclr.demo import SAMPLE_PHOTOS, run_demo


@pytest.mark.slow
def test_demo_runs_every_stage_and_reports_where_outputs_are(learned_repo: Path, tmp_path: Path) -> None:
    pytest.importorskip("skimage", reason="the demo's photos come from scikit-image (the demo extra)")
    lines: list[str] = []
    report = run_demo(tmp_path / "demo", model=learned_repo / "tiny", say=lines.append)
    assert report.photos == len(SAMPLE_PHOTOS)
    # Each augmented view's line says whether its top-1 is the original; the fraction is the report's. The tiny
    # model finds 11 of 15 here (chance: 1 of 15).
    found = [line for line in lines if " top-1 " in line and " score " in line]
    assert len(found) == len(SAMPLE_PHOTOS)
    assert report.retrieval_top1 == sum(line.endswith("original") for line in found) / len(found)
    assert report.retrieval_top1 >= 0.4
    assert set(report.triton_max_abs_diff) == {"http uint8", "http bytes", "grpc uint8", "grpc bytes"}
    assert max(report.triton_max_abs_diff.values()) < 1e-5
    for output in report.outputs.values():
        assert Path(output).exists(), output
    assert Image.open(report.outputs["grid"]).size[1] == len(SAMPLE_PHOTOS) * 120
    text = "\n".join(lines)
    assert "top-1" in text and "by hand:" in text and "simclr serve --repo" in text
    assert "linear probe skipped" in text
    assert report.quantized["mean_cosine"] >= 0.99 and Path(report.quantized["model"]).is_relative_to(tmp_path)
    assert "8. search service" in text and report.search_service.startswith("http://127.0.0.1:")
    assert "7. simclr quantize ->" in text and not (learned_repo / "tiny_int8").exists()
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert saved["photos"] == len(SAMPLE_PHOTOS)
