"""The sidecar header: a JSON round trip, damaged headers named, and what --resume counts as the same run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from simclr.embed.encoder import ModelIdentity
from simclr.embed.sidecar import FeaturesHeader, sidecar_path

HEADER = FeaturesHeader(model=ModelIdentity("m", "2", "ab" * 32, 32, 512), model_source="/models/m/2/model.onnx",
                        inputs=("photos",), cwd="/work", normalized=False, images=10)


def test_header_round_trips_through_json() -> None:
    record = json.loads(json.dumps(HEADER.to_json()))
    assert record["format"] == "simclr-embeddings" and record["model"]["source"] == "/models/m/2/model.onnx"
    assert FeaturesHeader.from_json(record, Path("feats.jsonl")) == HEADER


@pytest.mark.parametrize("record,message", [
    ({"format": "something-else"}, "not a simclr-embed sidecar"),
    ([1, 2, 3], "not a simclr-embed sidecar"),
    ({**HEADER.to_json(), "model": {"name": "m"}}, "damaged sidecar header"),
    ({**HEADER.to_json(), "images": "many"}, "damaged sidecar header"),
])
def test_damaged_headers_name_the_file(record, message: str) -> None:
    with pytest.raises(ValueError, match=f"feats.jsonl: {message}"):
        FeaturesHeader.from_json(record, Path("feats.jsonl"))


@pytest.mark.parametrize("change", [
    {"inputs": ("other",)}, {"cwd": "/elsewhere"}, {"normalized": True}, {"images": 11},
    {"model": ModelIdentity("m", "3", "cd" * 32, 32, 512)},
])
def test_a_run_with_other_inputs_model_or_settings_is_not_the_same_run(change: dict) -> None:
    assert HEADER.same_run(dataclasses.replace(HEADER))
    assert not HEADER.same_run(dataclasses.replace(HEADER, **change))


def test_sidecar_sits_beside_the_features() -> None:
    assert sidecar_path(Path("out/feats.npy")) == Path("out/feats.jsonl")
