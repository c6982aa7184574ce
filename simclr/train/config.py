"""The training recipe as frozen dataclasses, with the paper's presets and a JSON round trip."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ARCHITECTURES = ("resnet18", "resnet34", "resnet50")
OPTIMIZERS = ("lars", "sgd", "adamw")
PRESETS = ("cifar", "imagenet", "photo")
STEMS = ("cifar", "imagenet", "small")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class AugmentConfig:
    """The two-view augmentation of the paper (appendix A)."""

    image_size: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    color_strength: float = 0.5
    color_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)


@dataclass(frozen=True)
class ModelConfig:
    """Encoder f (ResNet) and projection head g (MLP)."""

    arch: str = "resnet18"
    stem: str = "cifar"  # cifar: 3x3 stride 1; imagenet: 7x7 stride 2 + max-pool; small: 3x3 stride 2
    width: float = 1.0
    head_hidden: int = 0  # 0: the encoder's feature dimension
    head_out: int = 128
    head_layers: int = 2
    head_batch_norm: bool = True
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule; lr = base_lr x batch/256 (or x sqrt(batch/256))."""

    optimizer: str = "lars"
    base_lr: float = 0.3
    lr_scaling: str = "linear"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    trust_coefficient: float = 0.001
    warmup_epochs: float = 10.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved as config.json beside every checkpoint."""

    data: str = "cifar10"
    data_root: str | None = None
    preset: str = "cifar"
    decode_size: int = 32  # images are decoded to this square, then randomly cropped to augment.image_size
    batch_size: int = 512  # global, across all processes
    epochs: int = 100
    max_steps: int | None = None
    temperature: float = 0.5
    seed: int = 0
    workers: int = 2
    in_memory: bool | None = None  # folder data decoded once into memory; None: when it fits in half the free memory
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    channels_last: bool | None = None  # None: on for CUDA
    compile: bool = False
    sync_batch_norm: bool = True
    save_every_minutes: float = 0.0
    log_every: int = 10
    knn_every: int = 0
    knn_data: str | None = None
    knn_samples: int = 10000
    device: str = "auto"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, _upgrade(values))

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


# The fields each preset sets; anything the user passes overrides them. Where the values come from:
# cifar: the paper's CIFAR-10 recipe (appendix B.9: colour strength 0.5, no blur, tau 0.5) with weight decay 1e-4,
#   as google-research/simclr's CIFAR command (changed there from 1e-6) and solo-learn's LARS recipe use.
# imagenet: the paper's ImageNet recipe (224 px, strength 1.0, blur p=0.5, tau 0.1, weight decay 1e-6 at batch 4096).
# photo: the ImageNet augmentation at 64 px for small photos (Tiny ImageNet), the `small` stem (one 3x3 stride-2
#   convolution: 32x32 maps, the per-image cost of the CIFAR model), tau 0.2 and weight decay 1e-4 as solo-learn's
#   short-schedule recipes (ImageNet-100, CIFAR), ImageNet mean/std.
PRESET_VALUES: dict[str, dict[str, Any]] = {
    "cifar": {
        "temperature": 0.5,
        "augment.image_size": 32,
        "augment.color_strength": 0.5,
        "augment.blur_p": 0.0,
        "model.stem": "cifar",
        "model.mean": CIFAR_MEAN,
        "model.std": CIFAR_STD,
        "optim.weight_decay": 1e-4,
    },
    "imagenet": {
        "temperature": 0.1,
        "augment.image_size": 224,
        "augment.color_strength": 1.0,
        "augment.blur_p": 0.5,
        "model.stem": "imagenet",
        "model.mean": IMAGENET_MEAN,
        "model.std": IMAGENET_STD,
        "optim.weight_decay": 1e-6,
    },
    "photo": {
        "temperature": 0.2,
        "augment.image_size": 64,
        "augment.color_strength": 1.0,
        "augment.blur_p": 0.5,
        "model.stem": "small",
        "model.mean": IMAGENET_MEAN,
        "model.std": IMAGENET_STD,
        "optim.weight_decay": 1e-4,
    },
}


def build_config(preset: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a preset plus dotted overrides ("optim.base_lr": 0.5); None values are ignored.

    Without a preset, images of at most 64 px get `cifar` and larger ones `imagenet`.
    """
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if preset is None:
        preset = "cifar" if overrides.get("augment.image_size", 32) <= 64 else "imagenet"
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    values = {**PRESET_VALUES[preset], **overrides, "preset": preset}
    image_size = values["augment.image_size"]
    # Larger images are decoded a little bigger than the crop, as ImageNet pipelines resize to 256 for 224.
    values.setdefault("decode_size", image_size if image_size <= 64 else round(image_size * 256 / 224))
    config = _from_dict(TrainConfig, _nest(values))
    validate(config)
    return config


def replace(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of `config` with dotted overrides applied (None values ignored)."""
    merged = _flatten(dataclasses.asdict(config))
    merged.update({key: value for key, value in overrides.items() if value is not None})
    return _from_dict(TrainConfig, _nest(merged))


def validate(config: TrainConfig) -> None:
    """Raise ValueError naming the option for values no run can use."""
    checks = [
        (config.model.arch in ARCHITECTURES, f"--arch {config.model.arch!r}: choose one of {', '.join(ARCHITECTURES)}"),
        (config.model.stem in STEMS, f"--stem {config.model.stem!r}: choose one of {', '.join(STEMS)}"),
        (config.optim.optimizer in OPTIMIZERS,
         f"--optimizer {config.optim.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"),
        (config.optim.lr_scaling in ("linear", "sqrt"), f"--lr-scaling {config.optim.lr_scaling!r}: linear or sqrt"),
        (config.precision in PRECISIONS, f"--precision {config.precision!r}: choose one of {', '.join(PRECISIONS)}"),
        (config.batch_size >= 2, f"--batch-size {config.batch_size}: needs at least 2 images for negatives"),
        (config.epochs >= 1, f"--epochs {config.epochs}: must be at least 1"),
        (config.max_steps is None or config.max_steps >= 1, f"--max-steps {config.max_steps}: must be at least 1"),
        (config.temperature > 0, f"--temperature {config.temperature}: must be positive"),
        (config.model.width > 0, f"--width {config.model.width}: must be positive"),
        (config.model.head_hidden >= 0, f"--head-hidden {config.model.head_hidden}: must be 0 (= D) or more"),
        (config.optim.weight_decay >= 0, f"--weight-decay {config.optim.weight_decay}: must be 0 or more"),
        (8 <= config.augment.image_size <= 1024, f"--image-size {config.augment.image_size}: must be 8..1024"),
        (config.decode_size >= config.augment.image_size,
         f"--decode-size {config.decode_size}: must be at least --image-size {config.augment.image_size}"),
        (config.workers >= 0, f"--workers {config.workers}: must be 0 or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """Configs saved before `--stem` existed record `model.cifar_stem` (a bool): read it as the stem it names."""
    model = values.get("model")
    if not isinstance(model, dict) or "cifar_stem" not in model:
        return values
    model = {key: value for key, value in model.items() if key != "cifar_stem"}
    model.setdefault("stem", "cifar" if values["model"]["cifar_stem"] else "imagenet")
    return {**values, "model": model}


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return nested


def _flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _from_dict(cls: type, values: dict[str, Any]):
    """Build a (nested) frozen dataclass from plain JSON values; lists become tuples; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if default is not None and dataclasses.is_dataclass(default):
            value = _from_dict(default, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
