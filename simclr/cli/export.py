"""`simclr export`: a training checkpoint to a new version in a Triton model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from simclr.cli.common import print_json, setup_logging, user_errors
from simclr.export.layout import WEIGHT_PRECISIONS

Option = typer.Option


def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="A training checkpoint (last.pt) or a run directory holding one.")],
    repo: Annotated[Path, Option(help="Triton model repository to add the model to.")] = Path("model_repository"),
    name: Annotated[str, Option(help="Model name in the repository (letters, digits, _ - .).")] = "simclr_resnet18",
    max_batch_size: Annotated[int, Option(min=1, help="Largest batch Triton accepts (config.pbtxt max_batch_size).")
                              ] = 256,
    instances: Annotated[int, Option(min=1, help="Model instances Triton runs (instance_group count).")] = 1,
    queue_delay_us: Annotated[int, Option(min=0, help="Dynamic batching: longest wait to fill a batch, microseconds.")
                              ] = 1000,
    dynamic_batching: Annotated[bool, Option("--dynamic-batching/--no-dynamic-batching",
                                             help="Let Triton merge concurrent requests into larger batches.")
                                ] = True,
    weights: Annotated[Literal[WEIGHT_PRECISIONS], Option(help="How weights are stored: fp16 halves the file; each "
                                                               "weight is cast back to float32, so compute stays "
                                                               "float32 on every runtime (parity 1e-3 of the largest "
                                                               "embedding value).")] = "fp32",
    fp16: Annotated[bool, Option(help="Compute in float16 (weights and activations; inputs and outputs stay "
                                      "uint8/float32), for GPUs; parity tolerance 2e-2 of the largest embedding "
                                      "value instead of 1e-4 absolute.")] = False,
    json_output: Annotated[bool, Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Export encoder f (without the projection head) to ONNX as the next version of NAME in the repository.

    Checks ONNX Runtime against PyTorch on the same uint8 batch before anything is written; an existing version is
    never overwritten.
    """
    from simclr.export.onnx_export import ExportError
    from simclr.export.repository import ServingOptions, export_to_repository
    from simclr.train.checkpoint import CheckpointError

    setup_logging()
    options = ServingOptions(max_batch_size=max_batch_size, instances=instances,
                             max_queue_delay_microseconds=queue_delay_us, dynamic_batching=dynamic_batching)
    with user_errors(CheckpointError, ExportError):
        model = export_to_repository(checkpoint, repo, name, options, fp16=fp16, weights=weights)
    summary = {"name": model.name, "version": model.version, "model": str(model.model_path),
               "config": str(model.config_path), "max_abs_diff": model.export.max_abs_diff,
               "tolerance": model.export.tolerance, "metadata": model.export.metadata.to_props()}
    if json_output:
        print_json(summary)
    else:
        typer.echo(f"exported {model.name} version {model.version} -> {model.model_path} (parity: max abs diff "
                   f"{model.export.max_abs_diff:.2g} <= {model.export.tolerance:.2g})")
