"""`simclr export`: a training checkpoint (or an exported model, re-exported) to a new version in a Triton model
repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from simclr.cli.common import fail, print_json, setup_logging, user_errors
from simclr.export.layout import WEIGHT_PRECISIONS

Option = typer.Option


def export_command(
    source: Annotated[Path, typer.Argument(metavar="SOURCE",
                                           help="A training checkpoint (last.pt) or a run directory holding one "
                                                "(of simclr train, or of simclr finetune with --classifier); or "
                                                "an exported model (REPO/NAME, a version directory or a .onnx) to "
                                                "re-export with --name and/or --image-size; an exported model "
                                                "directory alone adds its NAME_preprocess and NAME_bytes.")],
    repo: Annotated[Path, Option(help="Triton model repository to add the model to.")] = Path("model_repository"),
    name: Annotated[str | None, Option(help="Model name in the repository (letters, digits, _ - .). [default: "
                                            "the run folder's name: runs/mydogs or runs/mydogs/last.pt -> "
                                            "mydogs]")] = None,
    classifier: Annotated[bool, Option(help="Export a fine-tuned classifier (a simclr finetune run): one ONNX with "
                                            "the outputs embedding, logits and probabilities, and labels.txt named "
                                            "by label_filename, so that Triton's classification extension answers "
                                            "class_count=k requests with class names.")] = False,
    max_batch_size: Annotated[int, Option(min=1, help="Largest batch Triton accepts (config.pbtxt max_batch_size).")
                              ] = 256,
    instances: Annotated[int, Option(min=1, help="Model instances Triton runs (instance_group count).")] = 1,
    queue_delay_us: Annotated[int, Option(min=0, help="Dynamic batching: longest wait to fill a batch, microseconds.")
                              ] = 1000,
    dynamic_batching: Annotated[bool, Option("--dynamic-batching/--no-dynamic-batching",
                                             help="Let Triton merge concurrent requests into larger batches.")
                                ] = True,
    image_size: Annotated[int | None, Option(help="Input side in pixels (H = W) of the exported model; the same "
                                                  "weights run at any size. A model trained on random resized "
                                                  "crops often embeds whole photos better somewhat larger than "
                                                  "it was trained at (FixRes). [default: the checkpoint's "
                                                  "training size, or the exported model's input size]")] = None,
    weights: Annotated[Literal[WEIGHT_PRECISIONS], Option(help="How weights are stored: fp16 halves the file; each "
                                                               "weight is cast back to float32, so compute stays "
                                                               "float32 on every runtime (parity 1e-3 of the largest "
                                                               "embedding value).")] = "fp32",
    fp16: Annotated[bool, Option(help="Compute in float16 (weights and activations; inputs and outputs stay "
                                      "uint8/float32), for GPUs; parity tolerance 2e-2 of the largest embedding "
                                      "value instead of 1e-4 absolute.")] = False,
    bytes_model: Annotated[bool, Option("--bytes-model/--no-bytes-model",
                                        help="Also write NAME_preprocess (decodes image files on the server, as "
                                             "simclr-embed does) and the ensemble NAME_bytes (image file in, "
                                             "embedding out) for this version.")] = True,
    max_image_bytes: Annotated[int, Option(min=1, help="NAME_preprocess refuses a file larger than this, before "
                                                       "decoding it (bytes).")] = 20_000_000,
    max_image_mpx: Annotated[float, Option(min=0.001, help="NAME_preprocess refuses a file of more pixels than "
                                                           "this (megapixels; a JPEG counts at the reduced scale "
                                                           "it is decoded at), before decoding it: one such "
                                                           "decode costs up to ~16 bytes a pixel.")] = 25.0,
    preprocess_instances: Annotated[int | None, Option(min=1, help="NAME_preprocess instances: each decodes one "
                                                                   "batch at a time. [default: this machine's CPU "
                                                                   "cores]")] = None,
    json_output: Annotated[bool, Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Export encoder f (without the projection head) to ONNX as the next version of NAME in the repository, and
    the models that let clients send image files (NAME_preprocess, NAME_bytes); with --classifier, a fine-tuned
    classifier.

    Checks ONNX Runtime against PyTorch on the same uint8 batch before anything is written; an existing version is
    never overwritten. Given an exported model with --name (e.g. `simclr export model_repository/old --image-size
    80 --name new`), re-exports its f read back from the ONNX, keeping its recipe and training size
    (train_image_size in the metadata). Given an exported model directory (REPO/NAME) alone, writes only its
    NAME_preprocess and NAME_bytes, for its newest version.
    """
    from simclr.export.bytes_model import BytesModelOptions, write_bytes_models
    from simclr.export.classifier import export_classifier
    from simclr.export.layout import CONFIG_FILE
    from simclr.export.onnx_export import ExportError, check_export_options, is_exported_model
    from simclr.export.repository import ServingOptions, export_to_repository, run_model_name
    from simclr.train.checkpoint import CheckpointError

    setup_logging()
    options = ServingOptions(max_batch_size=max_batch_size, instances=instances,
                             max_queue_delay_microseconds=queue_delay_us, dynamic_batching=dynamic_batching)
    preprocess = BytesModelOptions(max_image_bytes=max_image_bytes, max_pixels=round(max_image_mpx * 1e6),
                                   instances=preprocess_instances)
    if (source / CONFIG_FILE).is_file() and name is None and image_size is None:
        if not bytes_model:
            raise fail(f"{source} is an exported model: with --no-bytes-model there is nothing to write")
        with user_errors():
            written = write_bytes_models(source.parent, source.name, preprocess)
        _report({"preprocess": str(written.preprocess), "bytes": str(written.ensemble), "version": written.version},
                f"wrote {written.preprocess.name} and {written.ensemble.name} for {source.name} version "
                f"{written.version}", json_output)
        return
    reexport = is_exported_model(source)
    if reexport and name is None:
        raise fail(f"{source} is an exported model: name its re-export with --name (all versions of one model "
                   "share one input size)")
    with user_errors(CheckpointError, ExportError):
        check_export_options(weights, image_size)
        if classifier:
            if reexport:
                raise ValueError(f"--classifier takes a simclr finetune run, not an exported model ({source})")
            if fp16 or weights != "fp32" or image_size is not None:
                raise ValueError("--classifier exports FP32 weights and compute at the training size: leave out "
                                 "--fp16, --weights and --image-size")
            model = export_classifier(source, repo, name or run_model_name(source), options,
                                      bytes_model=preprocess if bytes_model else None)
        else:
            model = export_to_repository(source, repo, name or run_model_name(source), options, fp16=fp16,
                                         weights=weights, bytes_model=preprocess if bytes_model else None,
                                         image_size=image_size)
    summary = {"name": model.name, "version": model.version, "model": str(model.model_path),
               "config": str(model.config_path), "max_abs_diff": model.export.max_abs_diff,
               "tolerance": model.export.tolerance, "metadata": model.export.metadata.to_props(),
               "bytes_model": f"{model.name}_bytes" if bytes_model else None}
    _report(summary, f"exported {model.name} version {model.version} -> {model.model_path} (parity: max abs diff "
                     f"{model.export.max_abs_diff:.2g} <= {model.export.tolerance:.2g})"
                     + (f"; image files in: {model.name}_bytes" if bytes_model else ""), json_output)


def _report(summary: dict, line: str, json_output: bool) -> None:
    if json_output:
        print_json(summary)
    else:
        typer.echo(line)
