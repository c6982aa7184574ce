"""The recipe: presets and their sources, overrides, validation, and configs saved by earlier versions."""

from __future__ import annotations

import dataclasses
import json

import pytest

from simclr.train.config import IMAGENET_MEAN, IMAGENET_STD, TrainConfig, build_config


@pytest.mark.parametrize("preset,weight_decay,stem,image_size,temperature", [
    ("cifar", 1e-4, "cifar", 32, 0.5),
    ("imagenet", 1e-6, "imagenet", 224, 0.1),
    ("photo", 1e-4, "small", 64, 0.2),
])
def test_each_preset_sets_its_recipe(preset: str, weight_decay: float, stem: str, image_size: int,
                                     temperature: float) -> None:
    config = build_config(preset, {})
    assert config.optim.weight_decay == weight_decay and config.model.stem == stem
    assert config.augment.image_size == image_size and config.temperature == temperature


def test_photo_preset_is_the_paper_imagenet_augmentation_at_64_px() -> None:
    config = build_config("photo", {})
    assert config.augment.color_strength == 1.0 and config.augment.blur_p == 0.5
    assert config.augment.crop_scale == (0.08, 1.0) and config.decode_size == 64
    assert config.model.mean == IMAGENET_MEAN and config.model.std == IMAGENET_STD


def test_options_win_over_the_preset() -> None:
    config = build_config("photo", {"optim.weight_decay": 5e-4, "augment.image_size": 96, "model.stem": "imagenet",
                                    "model.head_hidden": 2048, "model.head_out": 256})
    assert config.optim.weight_decay == 5e-4 and config.augment.image_size == 96 and config.model.stem == "imagenet"
    assert (config.model.head_hidden, config.model.head_out) == (2048, 256)


@pytest.mark.parametrize("override,message", [
    ({"model.stem": "tiny"}, "--stem 'tiny'"),
    ({"optim.weight_decay": -1.0}, "--weight-decay -1.0"),
    ({"model.head_hidden": -5}, "--head-hidden -5"),
])
def test_bad_values_name_the_option(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_config("cifar", override)


@pytest.mark.parametrize("cifar_stem,stem", [(True, "cifar"), (False, "imagenet")])
def test_configs_saved_before_stem_existed_still_load(cifar_stem: bool, stem: str) -> None:
    saved = json.loads(build_config("cifar", {}).to_json())
    del saved["model"]["stem"]
    saved["model"]["cifar_stem"] = cifar_stem
    assert TrainConfig.from_dict(saved).model.stem == stem


def test_json_round_trip_keeps_every_field() -> None:
    config = build_config("photo", {"in_memory": False, "model.head_hidden": 2048})
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config
    assert dataclasses.asdict(config)["in_memory"] is False
