"""`simclr quantize`: an exported encoder to an INT8 model for CPUs, beside it in the repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simclr.cli.common import print_json, setup_logging, user_errors

Option = typer.Option


def quantize_command(
    model: Annotated[Path, typer.Argument(help="The FP32 encoder: a model directory (newest version), a version "
                                               "directory or its model.onnx, inside a model repository.")],
    calibration: Annotated[Path, Option(help="Folder of images like the ones the model will embed (searched "
                                             "recursively); decoded as simclr-embed decodes them.")],
    images: Annotated[int, Option(min=16, help="Images to calibrate on; the next 128 are held out for the "
                                               "accuracy gate and recall@10.")] = 512,
    min_cosine: Annotated[float, Option(min=0.0, max=1.0, help="Refuse the INT8 model unless its embeddings' "
                                                               "mean cosine similarity to FP32's on the held-out "
                                                               "images reaches this.")] = 0.99,
    json_output: Annotated[bool, Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Quantize an encoder to INT8 (ONNX Runtime static quantization: QDQ, per-channel int8 weights, uint8
    activations, batch norm folded first, the first convolution and the pooling kept in float) and add it to the
    repository as NAME_int8; FP16-stored weights are upcast first.

    Reports, on the held-out images, the mean (and least) cosine similarity of INT8 to FP32 embeddings, which
    gates the export, and recall@10: for each held-out image, the share of its 10 nearest neighbours among all
    the decoded images (by FP32) that INT8 finds too. Progress bars go to stderr."""
    from simclr.embed.onnx_encoder import resolve_model
    from simclr.export.quantize import QuantizationError, quantize_to_repository

    setup_logging()
    with user_errors(QuantizationError):
        report = quantize_to_repository(resolve_model(model), calibration, images, min_cosine)
    exported = report.model
    summary = {"name": exported.name, "version": exported.version, "model": str(exported.model_path),
               "config": str(exported.config_path), "calibration_images": report.calibration_images,
               "held_out_images": report.held_out_images, "mean_cosine": report.mean_cosine,
               "min_cosine": report.min_cosine, "recall_at_10": report.recall_at_10,
               "bytes": exported.model_path.stat().st_size}
    if json_output:
        print_json(summary)
    else:
        typer.echo(f"quantized to {exported.name} version {exported.version} -> {exported.model_path} "
                   f"({summary['bytes'] / 1e6:.1f} MB; on {report.held_out_images} held-out images: mean cosine "
                   f"to FP32 {report.mean_cosine:.4f} (min {report.min_cosine:.4f}), recall@10 against FP32 "
                   f"{report.recall_at_10:.3f})")
