"""The training recipe as frozen dataclasses, with the paper's presets and a JSON round trip.

Each field a user may set carries its command-line help (and choices) here, the one place a setting is defined:
`simclr train` builds its options from `recipe_options()`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
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
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TRAIN_STEPS = ("fast", "reference")
PRECISION_HELP = ("auto: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX), fp32 on other CPUs; fp16 "
                  "uses a gradient scaler.")
SAVE_EVERY_HELP = ("Save last.pt on this timer, at the run's end and on SIGINT/SIGTERM (0: at every epoch's end "
                   "instead).")
LR_SCALINGS = ("linear", "sqrt")


RESUME_RULES = (False, True, "longer", "same images")


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None, resumable: bool | str = False) -> Any:
    """A recipe field that `simclr train` exposes as an option. `resumable`: whether --resume may change it: True
    (it drives the run without changing what it computes), "longer" (only to a larger value: the schedule is
    re-planned), "same images" (a new location of the same images: the trainer checks them) or False."""
    if resumable not in RESUME_RULES:
        raise ValueError(f"resumable={resumable!r}: one of {RESUME_RULES}")
    return field(default=default, metadata={"help": help, "choices": choices, "resumable": resumable})


@dataclass(frozen=True)
class AugmentConfig:
    """The two-view augmentation of the paper (appendix A)."""

    image_size: int = setting(32, "Side of the augmented views in pixels. [default: 32 cifar, 64 photo, 224 "
                                  "imagenet]")
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    color_strength: float = setting(0.5, "Colour distortion strength s. [default: 0.5 cifar, 1.0 photo and "
                                         "imagenet]")
    color_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = setting(0.0, "Gaussian blur probability (kernel 10% of the side). [default: 0 cifar, 0.5 photo "
                                 "and imagenet]")
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_scaled: bool = setting(False, "Scale the blur's sigma range (0.1-2 px, the paper's for 224 px views) by image "
                                       "size / 224, so that a 64 px view is blurred as much as a 224 px one "
                                       "relative to its size (sigma 0.03-0.57 px).")


@dataclass(frozen=True)
class ModelConfig:
    """Encoder f (ResNet) and projection head g (MLP)."""

    arch: str = setting("resnet18", "Encoder f.", ARCHITECTURES)
    stem: str = setting("cifar", "First layer of f. cifar: 3x3 conv, stride 1, no max-pool (32 px images). small: "
                                 "3x3 conv, stride 2, no max-pool (64 px photos: 32x32 maps). imagenet: 7x7 conv, "
                                 "stride 2, max-pool (224 px). [default: cifar; small for photo; imagenet for "
                                 "imagenet]", STEMS)
    width: float = setting(1.0, "Channel width multiplier of f (0.25 = a quarter of the channels).")
    head_hidden: int = setting(0, "Hidden width of g (0: the encoder's dimension D, as the paper; solo-learn uses "
                                  "2048).")
    head_out: int = setting(128, "Output dimension of g (solo-learn uses 256).")
    head_layers: int = setting(2, "Linear layers in g.")
    head_batch_norm: bool = setting(True, "Batch norm in g's hidden layers.")
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule; lr = base_lr x batch/256 (or x sqrt(batch/256))."""

    optimizer: str = setting("lars", "Optimiser (LARS as the paper; biases and norm parameters are excluded from "
                                      "weight decay and adaptation).", OPTIMIZERS)
    base_lr: float = setting(0.3, "Learning rate per 256 images: lr = base x batch/256 (or x sqrt(batch/256) with "
                                  "--lr-scaling sqrt).")
    lr_scaling: str = setting("linear", "How the learning rate grows with the batch.", LR_SCALINGS)
    weight_decay: float = setting(1e-4, "Weight decay (not on biases and norm parameters). [default: 1e-4 cifar and "
                                        "photo, 1e-6 imagenet; see --preset]")
    momentum: float = 0.9
    nesterov: bool = False  # SGD only (fine-tuning uses it, as SimCLR v1)
    trust_coefficient: float = setting(0.001, "LARS trust coefficient eta: a layer's rate is eta x ||w|| / "
                                              "||update|| (x the learning rate, unless --trust-clip). solo-learn "
                                              "uses 0.02 with --trust-clip.")
    trust_clip: bool = setting(False, "Clip LARS's layer rate at the learning rate (LARC's clip mode, as "
                                      "solo-learn): a layer steps at min(eta x ||w|| / ||update||, lr).")
    warmup_epochs: float = setting(10.0, "Linear warm-up epochs before the cosine decay.")


@dataclass(frozen=True)
class SchedulePlan:
    """The length of the learning-rate schedule when something other than --epochs fixed it: --time-budget, or a
    resumed run given a longer --epochs. Written by the trainer into config.json and the checkpoint."""

    total_steps: int | None = None  # None: epochs x steps per epoch
    warmup_steps: int | None = None  # None: warmup_epochs x steps per epoch
    pairs_per_second: float | None = None  # the rate --time-budget measured
    events: tuple[str, ...] = ()  # each re-planning, one line each, in order


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved as config.json beside every checkpoint."""

    data: str = setting("cifar10", "Training images: cifar10, cifar100, stl10 (from --data-root), a folder of "
                                   "images, searched recursively, or tar shards read without unpacking (a .tar, "
                                   ".tar.gz or .tar.xz file, a folder of them, or a comma-separated list); labels "
                                   "are not used. Required for a new run; a "
                                   "resumed run reads it from its config, or from here when its images moved (the "
                                   "same images: their count and relative paths are checked).",
                        resumable="same images")
    data_root: str | None = setting(None, "Folder holding torchvision's files for --data cifar10/cifar100/stl10 "
                                          "(e.g. what ../shared/data/cifar10.py batches DIR writes).",
                                    resumable="same images")
    init: str | None = setting(None, "Start a new run from the weights of another: a run directory, a checkpoint "
                                     "(last.pt, a slim one, or its parts) or an exported model (f read back from "
                                     "its ONNX; g is new unless the source has a head of the same shape). f's "
                                     "architecture, width, stem and mean/std come from it. The schedule is new, "
                                     "with a short warm-up. [default: random weights]")
    preset: str = setting("cifar", "Recipe defaults. cifar: 32 px, CIFAR stem, colour strength 0.5, no blur, tau "
                                   "0.5, weight decay 1e-4 (the paper's CIFAR recipe; decay as google-research/"
                                   "simclr's CIFAR command and solo-learn). imagenet: 224 px, standard stem, strength "
                                   "1.0, blur p=0.5, tau 0.1, decay 1e-6 (the paper's ImageNet recipe at batch "
                                   "4096). photo: 64 px, small stem, the ImageNet augmentation and mean/std, tau 0.2, "
                                   "decay 1e-4 (for small photos such as Tiny ImageNet; tau and decay as solo-learn). "
                                   "[default: cifar when --image-size <= 64, else imagenet]", PRESETS)
    decode_size: int = setting(32, "Folder images are decoded (shorter side + centre crop) to this square before "
                                   "cropping. [default: image size, or x256/224 above 64 px]")
    batch_size: int = setting(512, "Global batch (all processes together); the paper uses 4096.")
    epochs: int = setting(100, "Epochs; sets the length of the cosine schedule. With --time-budget, whichever ends "
                               "first. --resume may give a longer one (the cosine is re-planned to the new end, "
                               "from the current step).", resumable="longer")
    time_budget: float | None = setting(None, "Seconds the whole schedule may take, counted from the start of "
                                              "training (data loading included): the rate of the first steps sets "
                                              "the number of steps so that warm-up and the whole cosine end before "
                                              "it, leaving a reserve for the last save. [default: none: --epochs]")
    max_steps: int | None = setting(None, "Stop after this many optimiser steps, saving a resumable checkpoint "
                                          "(smoke runs, benchmarks); a resume goes on to the planned end unless "
                                          "given it again. [default: no limit]", resumable=True)
    temperature: float = setting(0.5, "NT-Xent temperature tau (solo-learn uses 0.2 on short schedules). [default: "
                                      "0.5 cifar, 0.2 photo, 0.1 imagenet]")
    seed: int = setting(0, "Seed for weights, shuffling and augmentation.")
    workers: int = setting(2, "Decoding processes for folder data.", resumable=True)
    in_memory: bool | None = setting(None, "Decode folder data once into memory (uint8) instead of every epoch. "
                                           "[default: when it fits in half the free memory]")
    precision: str = setting("auto", PRECISION_HELP, PRECISIONS)
    channels_last: bool | None = setting(None, "channels_last memory format. [default: on for CUDA]")
    compile: bool | None = setting(None, "torch.compile f, g and the loss (a slower first step; Inductor's cache is "
                                         "kept for the next run). [default: on for CUDA]", resumable=True)
    compile_mode: str = setting("default", "torch.compile mode; reduce-overhead adds CUDA graphs.", COMPILE_MODES,
                                resumable=True)
    train_step: str = setting("fast", "fast: both views in one pass, no host sync per step, multi-tensor LARS; "
                                      "reference: the earlier step (per view, a sync per step, LARS per tensor), "
                                      "kept for A/B.", TRAIN_STEPS, resumable=True)
    sync_batch_norm: bool = setting(True, "Global batch norm across processes under torchrun.")
    save_every_minutes: float = setting(10.0, SAVE_EVERY_HELP, resumable=True)
    log_every: int = setting(10, "Steps between metrics.jsonl lines.", resumable=True)
    knn_every: int = setting(0, "Measure kNN top-1 every N epochs (0: never).", resumable=True)
    knn_data: str | None = setting(None, "Labelled set for the kNN monitor: cifar10, cifar100, stl10 or a folder "
                                         "with train/ and test/ class folders. [default: --data]")
    knn_samples: int = setting(10000, "Train images in the kNN memory (a fifth as many queries).")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.", resumable=True)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    plan: SchedulePlan = field(default_factory=SchedulePlan)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return dataclass_from_dict(cls, _upgrade(values))


@dataclass(frozen=True)
class RecipeOption:
    """One recipe field as a command-line option."""

    key: str  # dotted path in TrainConfig: "optim.base_lr"
    name: str  # the field's name, and the option's with "-" for "_": base_lr, --base-lr
    type: type  # int, float, str or bool
    default: Any
    help: str
    choices: tuple[str, ...] | None
    resumable: bool | str  # see setting()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def recipe_options(cls: type = TrainConfig, prefix: str = "") -> list[RecipeOption]:
    """Every field that carries help text, in declaration order (nested configs in place)."""
    hints = typing.get_type_hints(cls)
    options = []
    for item in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[item.name]):
            options += recipe_options(hints[item.name], f"{prefix}{item.name}.")
        elif "help" in item.metadata:
            kinds = [kind for kind in typing.get_args(hints[item.name]) if kind is not type(None)]
            options.append(RecipeOption(f"{prefix}{item.name}", item.name, kinds[0] if kinds else hints[item.name],
                                        item.default, item.metadata["help"], item.metadata["choices"],
                                        item.metadata["resumable"]))
    return options


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


INIT_WARMUP_EPOCHS = 2.0  # --init: the encoder is trained already, only momentum (and a new head) start from zero


def build_config(preset: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a preset plus dotted overrides ("optim.base_lr": 0.5); None values are ignored.

    Without a preset, images of at most 64 px get `cifar` and larger ones `imagenet`. With `init`, the warm-up is
    short (INIT_WARMUP_EPOCHS) unless given.
    """
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if preset is None:
        preset = "cifar" if overrides.get("augment.image_size", 32) <= 64 else "imagenet"
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    values = {**PRESET_VALUES[preset], **overrides, "preset": preset}
    if values.get("init") is not None:
        values.setdefault("optim.warmup_epochs", INIT_WARMUP_EPOCHS)
    image_size = values["augment.image_size"]
    # Larger images are decoded a little bigger than the crop, as ImageNet pipelines resize to 256 for 224.
    values.setdefault("decode_size", image_size if image_size <= 64 else round(image_size * 256 / 224))
    config = dataclass_from_dict(TrainConfig, _nest(values))
    validate(config)
    return config


def replace(config, overrides: dict[str, Any]):
    """A copy of `config` (a TrainConfig or any recipe of the same kind) with dotted overrides applied (None values
    ignored)."""
    merged = _flatten(dataclasses.asdict(config))
    merged.update({key: value for key, value in overrides.items() if value is not None})
    return dataclass_from_dict(type(config), _nest(merged))


def resumed(saved, overrides: dict[str, Any]):
    """The config a resumed run continues with: `saved`, plus the dotted overrides --resume allows (those whose
    setting is `resumable`: a "longer" one only to a larger value). --max-steps applies to one call: a resume
    without it goes on to the planned end. Any other override must equal the saved value, else ValueError names
    the option; None values are ignored."""
    current = _flatten(dataclasses.asdict(saved))
    options = {option.key: option for option in recipe_options(type(saved))}
    changes: dict[str, Any] = {"max_steps": None} if "max_steps" in current else {}
    for key, value in overrides.items():
        option = options[key]
        if value is None or (value == current[key] and option.resumable is not True):
            continue
        if option.resumable == "longer" and value < current[key]:
            raise ValueError(f"--resume: {option.flag} {value} is shorter than the run's {current[key]}; a resumed "
                             f"run may only be extended")
        if option.resumable:
            changes[key] = value
        else:
            allowed = ", ".join(o.flag for o in options.values() if o.resumable)
            raise ValueError(f"--resume: {option.flag} {value} differs from the run's {current[key]}; a resumed run "
                             f"keeps its recipe (only {allowed} may change): start a new run with another --out")
    return dataclass_from_dict(type(saved), _nest({**current, **changes}))


def validate(config: TrainConfig) -> None:
    """Raise ValueError naming the option for values no run can use."""
    checks = [
        (config.model.arch in ARCHITECTURES, f"--arch {config.model.arch!r}: choose one of {', '.join(ARCHITECTURES)}"),
        (config.model.stem in STEMS, f"--stem {config.model.stem!r}: choose one of {', '.join(STEMS)}"),
        (config.optim.optimizer in OPTIMIZERS,
         f"--optimizer {config.optim.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"),
        (config.optim.lr_scaling in LR_SCALINGS,
         f"--lr-scaling {config.optim.lr_scaling!r}: choose one of {', '.join(LR_SCALINGS)}"),
        (config.precision in PRECISIONS, f"--precision {config.precision!r}: choose one of {', '.join(PRECISIONS)}"),
        (config.compile_mode in COMPILE_MODES,
         f"--compile-mode {config.compile_mode!r}: choose one of {', '.join(COMPILE_MODES)}"),
        (config.train_step in TRAIN_STEPS,
         f"--train-step {config.train_step!r}: choose one of {', '.join(TRAIN_STEPS)}"),
        (config.save_every_minutes >= 0, f"--save-every-minutes {config.save_every_minutes}: must be 0 or more"),
        (config.batch_size >= 2, f"--batch-size {config.batch_size}: needs at least 2 images for negatives"),
        (config.epochs >= 1, f"--epochs {config.epochs}: must be at least 1"),
        (config.max_steps is None or config.max_steps >= 1, f"--max-steps {config.max_steps}: must be at least 1"),
        (config.time_budget is None or config.time_budget > 0,
         f"--time-budget {config.time_budget}: must be a positive number of seconds"),
        (config.optim.trust_coefficient > 0, f"--trust-coefficient {config.optim.trust_coefficient}: must be positive"),
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


def dataclass_from_dict(cls: type, values: dict[str, Any]):
    """Build a (nested) frozen dataclass from plain JSON values; lists become tuples; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if default is not None and dataclasses.is_dataclass(default):
            value = dataclass_from_dict(default, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
