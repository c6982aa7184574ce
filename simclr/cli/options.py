"""Options several commands share: which encoder to run (locally or on a Triton server), as one option group."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Literal

from typer import Option

from simclr.embed.encoder import DEVICES, PROTOCOLS, SENDS, EncoderSpec

_PARAMETERS = {
    "model": Annotated[str | None, Option("--model", help="Exported model: a model directory (newest version), a "
                                                          "version directory or a .onnx file. [default: "
                                                          "$SIMCLR_MODEL, else the default model of the source "
                                                          "tree]")],
    "server": Annotated[str | None, Option(help="Run the model on a Triton server instead (host:port), with "
                                                "--model-name.")],
    "protocol": Annotated[Literal[PROTOCOLS], Option(help="Triton protocol.")],
    "model_name": Annotated[str | None, Option(help="The model's name on the Triton server.")],
    "model_version": Annotated[str, Option(help="Model version on the server. [default: the newest]")],
    "send": Annotated[Literal[SENDS], Option(help="What goes to the Triton server: uint8 (images decoded and "
                                                  "resized here) or bytes (the files as they are, decoded by the "
                                                  "server exactly as here: needs the model's NAME_bytes ensemble, "
                                                  "which simclr export writes).")],
    "device": Annotated[Literal[DEVICES], Option(help="ONNX Runtime device (auto: CUDA when onnxruntime-gpu has "
                                                      "it).")],
    "threads": Annotated[int | None, Option(min=1, help="ONNX Runtime threads. [default: all cores]")],
}


def with_encoder_options(command: Callable) -> Callable:
    """Give `command` the encoder options: it declares a keyword `encoder: EncoderSpec` and receives them packed."""
    signature = inspect.signature(command, eval_str=True)
    defaults = EncoderSpec()
    own = [parameter for name, parameter in signature.parameters.items() if name != "encoder"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=getattr(defaults, name),
                               annotation=annotation) for name, annotation in _PARAMETERS.items()]

    @functools.wraps(command)
    def with_options(*args, **kwargs):
        spec = EncoderSpec(**{name: kwargs.pop(name) for name in _PARAMETERS})
        return command(*args, encoder=spec, **kwargs)

    with_options.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    return with_options
