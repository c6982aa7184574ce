"""The Triton models that take encoded image files: NAME_preprocess (python backend: file bytes -> the encoder's
uint8 input, decoded by a copy of simclr/data/decode.py) and the ensemble NAME_bytes (image_bytes ->
NAME_preprocess -> NAME -> embedding).

Their version numbers follow NAME's: written for NAME's newest version v, both get version v, pin NAME version v in
the ensemble, and serve only their newest version (older versions of NAME stay servable through the uint8 input).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from simclr.atomic import atomic_write_bytes, atomic_write_text
from simclr.data.decode import MAX_QUERY_PIXELS
from simclr.export.layout import CONFIG_FILE, INPUT_NAME, LABELS_FILE, read_config, versions

BYTES_INPUT = "image_bytes"
DECODE_SOURCE = Path(__file__).parents[1] / "data" / "decode.py"
PREPROCESS_SOURCE = Path(__file__).with_name("preprocess_model.py")
DECODE_MODULE = "simclr_decode.py"  # the name preprocess_model.py imports its copy of decode.py by
ENSEMBLE_NOTE = "An ensemble has no model file: config.pbtxt routes image_bytes through {steps}.\n"


@dataclass(frozen=True)
class BytesModelOptions:
    """How the preprocessing model decodes: the largest file it accepts, the most pixels it decodes from one file,
    and how many instances decode at once (each decodes one batch at a time; None: this machine's CPU cores)."""

    max_image_bytes: int = 20_000_000
    max_pixels: int = MAX_QUERY_PIXELS
    instances: int | None = None


BYTES_MODEL_DEFAULTS = BytesModelOptions()


@dataclass(frozen=True)
class BytesModels:
    preprocess: Path  # NAME_preprocess/
    ensemble: Path  # NAME_bytes/
    version: int


def preprocess_name(name: str) -> str:
    return f"{name}_preprocess"


def bytes_name(name: str) -> str:
    return f"{name}_bytes"


def preprocess_files() -> dict[str, bytes]:
    """The files of a NAME_preprocess version folder, as export writes them now."""
    return {"model.py": PREPROCESS_SOURCE.read_bytes(), DECODE_MODULE: DECODE_SOURCE.read_bytes()}


def write_bytes_models(repo: Path, name: str, options: BytesModelOptions = BYTES_MODEL_DEFAULTS) -> BytesModels:
    """Write (or rewrite) NAME_preprocess and NAME_bytes for the newest version of model `name` in `repo`.

    Written in an order that leaves a servable repository at every step: the preprocessing code, its config, then
    the ensemble's version folder and config.
    """
    if options.max_image_bytes < 1:
        raise ValueError(f"--max-image-bytes {options.max_image_bytes}: must be at least 1")
    if options.max_pixels < 1:
        raise ValueError(f"--max-image-mpx {options.max_pixels / 1e6:g}: must be above 0")
    instances = options.instances or os.cpu_count() or 1
    encoder_dir = Path(repo) / name
    served = versions(encoder_dir)
    if not served:
        raise ValueError(f"{encoder_dir}: no exported model (expected {name}/{CONFIG_FILE} and {name}/1/)")
    version = served[-1]
    encoder = read_config(encoder_dir)
    image_dims = next(list(tensor.dims) for tensor in encoder.input if tensor.name == INPUT_NAME)

    preprocess = Path(repo) / preprocess_name(name)
    (preprocess / str(version)).mkdir(parents=True, exist_ok=True)
    for file_name, content in preprocess_files().items():
        atomic_write_bytes(preprocess / str(version) / file_name, lambda file, data=content: file.write(data))
    atomic_write_text(preprocess / CONFIG_FILE, _preprocess_config(
        preprocess.name, encoder.max_batch_size, image_dims, options, instances))

    ensemble = Path(repo) / bytes_name(name)
    (ensemble / str(version)).mkdir(parents=True, exist_ok=True)
    atomic_write_text(ensemble / str(version) / "README.md",
                      ENSEMBLE_NOTE.format(steps=f"{preprocess.name} and {name} (version {version})"))
    if (encoder_dir / LABELS_FILE).is_file():  # a classifier: its outputs keep their class names
        atomic_write_text(ensemble / LABELS_FILE, (encoder_dir / LABELS_FILE).read_text())
    atomic_write_text(ensemble / CONFIG_FILE, _ensemble_config(
        ensemble.name, name, preprocess.name, version, encoder.max_batch_size, encoder.output))
    return BytesModels(preprocess=preprocess, ensemble=ensemble, version=version)


def _newest_only(config) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    config.version_policy.CopyFrom(pb.ModelVersionPolicy(latest=pb.ModelVersionPolicy.Latest(num_versions=1)))


def _preprocess_config(name: str, max_batch_size: int, image_dims: list[int], options: BytesModelOptions,
                       instances: int) -> str:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    config = pb.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    _newest_only(config)
    config.input.add(name=BYTES_INPUT, data_type=pb.TYPE_STRING, dims=[1])
    config.output.add(name=INPUT_NAME, data_type=pb.TYPE_UINT8, dims=image_dims)
    config.dynamic_batching.SetInParent()  # no waiting: a free instance takes whatever requests are queued
    config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    config.parameters["image_size"].string_value = str(image_dims[0])
    config.parameters["max_image_bytes"].string_value = str(options.max_image_bytes)
    config.parameters["max_pixels"].string_value = str(options.max_pixels)
    return text_format.MessageToString(config)


def _ensemble_config(name: str, encoder: str, preprocess: str, version: int, max_batch_size: int,
                     outputs) -> str:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    config = pb.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size)
    _newest_only(config)
    config.input.add(name=BYTES_INPUT, data_type=pb.TYPE_STRING, dims=[1])
    for output in outputs:  # the encoder's outputs, as they are (a classifier's keep their label_filename)
        config.output.add().CopyFrom(output)
    decode = config.ensemble_scheduling.step.add(model_name=preprocess, model_version=version)
    decode.input_map[BYTES_INPUT] = BYTES_INPUT
    decode.output_map[INPUT_NAME] = INPUT_NAME
    embed = config.ensemble_scheduling.step.add(model_name=encoder, model_version=version)
    embed.input_map[INPUT_NAME] = INPUT_NAME
    for output in outputs:
        embed.output_map[output.name] = output.name
    return text_format.MessageToString(config)
