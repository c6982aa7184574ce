"""The Triton model repository: <repo>/<name>/config.pbtxt and <repo>/<name>/<version>/model.onnx."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from simclr.atomic import atomic_write_text, default_mode
from simclr.errors import first_line
from simclr.export.bytes_model import BYTES_MODEL_DEFAULTS, BytesModelOptions, write_bytes_models
from simclr.export.layout import (
    CONFIG_FILE,
    INPUT_NAME,
    LABELS_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    ModelMetadata,
    sha256_of,
    sha256_parameter,
    versions,
)
from simclr.export.onnx_export import ExportedModel, export_onnx
from simclr.lifetime import remove_orphaned
from simclr.locks import output_lock
from simclr.train.checkpoint import resolve_checkpoint

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ServingOptions:
    """How Triton batches and runs the model (written to config.pbtxt)."""

    max_batch_size: int = 256
    preferred_batch_sizes: tuple[int, ...] = (64, 128, 256)
    max_queue_delay_microseconds: int = 1000
    instances: int = 1
    dynamic_batching: bool = True


@dataclass(frozen=True)
class RepositoryModel:
    name: str
    version: int
    model_path: Path
    config_path: Path
    export: ExportedModel


def check_model_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"--name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
    return name


def run_model_name(run: Path) -> str:
    """The name an export of training or fine-tuning run `run` gets by default: its run folder's name
    (`runs/mydogs` and `runs/mydogs/last.pt` -> `mydogs`). ValueError, asking for --name, when that name is not a
    model name; FileNotFoundError when `run` holds no checkpoint."""
    folder = Path(os.path.abspath(resolve_checkpoint(run))).parent
    if not NAME_PATTERN.fullmatch(folder.name):
        raise ValueError(f"{run}: the run folder's name {folder.name!r} is not a model name (letters, digits, '_', "
                         "'-' and '.', starting with a letter or digit); name the model with --name")
    return folder.name


def triton_config(name: str, metadata: ModelMetadata, options: ServingOptions, hashes: dict[str, str],
                  backend: str = "onnxruntime", classes: tuple[str, ...] = ()) -> str:
    """config.pbtxt text for the official Triton container, serving every version (older ones on request).

    Built as Triton's ModelConfig protobuf; `metadata` becomes string parameters, with `hashes` (each version's
    onnx_sha256_v<N>). A classifier (`classes`) also has the outputs logits and probabilities, labelled by
    labels.txt for Triton's classification extension.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    config = pb.ModelConfig(name=name, backend=backend, max_batch_size=options.max_batch_size,
                            version_policy=pb.ModelVersionPolicy(all=pb.ModelVersionPolicy.All()))
    config.input.add(name=INPUT_NAME, data_type=pb.TYPE_UINT8, dims=[metadata.image_size, metadata.image_size, 3])
    config.output.add(name=OUTPUT_NAME, data_type=pb.TYPE_FP32, dims=[metadata.embedding_dim])
    for output in ("logits", "probabilities") if classes else ():
        config.output.add(name=output, data_type=pb.TYPE_FP32, dims=[len(classes)], label_filename=LABELS_FILE)
    if options.dynamic_batching:
        preferred = [b for b in options.preferred_batch_sizes if b <= options.max_batch_size] or \
            [options.max_batch_size]
        config.dynamic_batching.preferred_batch_size.extend(preferred)
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_microseconds
    config.instance_group.add(count=options.instances, kind=pb.ModelInstanceGroup.KIND_AUTO)
    extra = {"classes": json.dumps(list(classes))} if classes else {}
    for key, value in sorted({**metadata.to_props(), **hashes, **extra}.items()):
        config.parameters[key].string_value = value
    return text_format.MessageToString(config)


def export_to_repository(source: Path, repo: Path, name: str, options: ServingOptions = ServingOptions(),
                         fp16: bool = False, weights: str = "fp32",
                         bytes_model: BytesModelOptions | None = BYTES_MODEL_DEFAULTS,
                         image_size: int | None = None) -> RepositoryModel:
    """Export `source` (a training checkpoint or run directory, or an exported model to re-export) as the next
    version of model `name` in `repo`, `image_size` pixels square (default: the source's size), and (re)write its
    config.pbtxt; with `bytes_model`, then write NAME_preprocess and NAME_bytes for that version (None: leave them
    as they are).

    The ONNX file is built and checked in a scratch directory inside the model folder and only then renamed to
    the new version directory, so a failed export leaves the repository as it was; an existing version is never
    touched. Refuses a model whose image size or embedding dimension differs from the served versions.
    """
    model = add_version(repo, name, options, lambda model_file: export_onnx(
        source, model_file, fp16=fp16, weights=weights, image_size=image_size))
    if bytes_model is not None:
        write_bytes_models(repo, name, bytes_model)
    return model


def add_version(repo: Path, name: str, options: ServingOptions, write: Callable[[Path], ExportedModel],
                classes: tuple[str, ...] = ()) -> RepositoryModel:
    """The next version of model `name` in `repo`: `write(path)` writes and checks its model.onnx in a scratch
    folder inside the model folder, which only then becomes the version folder; config.pbtxt is (re)written (and a
    classifier's labels.txt, `classes`)."""
    check_model_name(name)
    if options.max_batch_size < 1 or options.instances < 1:
        raise ValueError("--max-batch-size and --instances must be at least 1")
    with output_lock(Path(repo) / name):  # two exports of one name would both take the next version
        return _add_version(Path(repo) / name, name, options, write, classes)


def _add_version(model_dir: Path, name: str, options: ServingOptions, write: Callable[[Path], ExportedModel],
                 classes: tuple[str, ...]) -> RepositoryModel:
    created_dir = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_orphaned(model_dir.glob(".export-*-*"))  # scratch folders of exports killed midway
    scratch = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".export-{os.getpid()}-"))
    try:
        scratch.chmod(default_mode(directory=True))
        exported = write(scratch / MODEL_FILE)
        _check_compatible(model_dir, exported.metadata, classes)
        version = (versions(model_dir) or [0])[-1] + 1
        target = model_dir / str(version)
        scratch.rename(target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        if created_dir and not any(model_dir.iterdir()):
            model_dir.rmdir()
        raise
    config_path = model_dir / CONFIG_FILE
    hashes = {sha256_parameter(v): sha256_of(model_dir / str(v) / MODEL_FILE) for v in versions(model_dir)}
    if classes:
        atomic_write_text(model_dir / LABELS_FILE, "".join(f"{name}\n" for name in classes))
    atomic_write_text(config_path, triton_config(name, exported.metadata, options, hashes, classes=classes))
    return RepositoryModel(name=name, version=version, model_path=target / MODEL_FILE, config_path=config_path,
                           export=dataclasses.replace(exported, path=target / MODEL_FILE))


def _check_compatible(model_dir: Path, metadata: ModelMetadata, classes: tuple[str, ...] = ()) -> None:
    """All versions of one Triton model share config.pbtxt, so their input and output shapes (and a classifier's
    classes) must agree."""
    import onnx

    existing = versions(model_dir)
    if not existing:
        return
    labels = model_dir / LABELS_FILE
    served_classes = tuple(labels.read_text().splitlines()) if labels.is_file() else ()
    if served_classes != classes:
        raise ValueError(f"{model_dir.name} version {existing[-1]} has the classes {list(served_classes) or 'none'}, "
                         f"this model {list(classes) or 'none'}; all versions share one config.pbtxt: export under "
                         "another --name")
    served_path = model_dir / str(existing[-1]) / MODEL_FILE
    try:
        served_model = onnx.load(str(served_path), load_external_data=False)
    except Exception as error:  # onnx raises protobuf's DecodeError and others for a damaged file
        raise ValueError(f"{served_path}: the served version is not a readable ONNX model ({first_line(error)}); "
                         "restore it or export under another --name") from None
    served = ModelMetadata.from_props({prop.key: prop.value for prop in served_model.metadata_props}, served_path)
    for key in ("image_size", "embedding_dim"):
        if getattr(served, key) != getattr(metadata, key):
            raise ValueError(f"{model_dir.name} version {existing[-1]} has {key} {getattr(served, key)}, this "
                             f"model {getattr(metadata, key)}; all versions share one config.pbtxt: export "
                             "under another --name")
