"""Options several commands share: which encoder to run (locally or on a Triton server), as one option group; a
recipe's fields (TrainConfig, FinetuneConfig) as options."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Literal

from typer import Option

from simclr.embed.encoder import DEVICES, PROTOCOLS, SENDS, EncoderSpec
from simclr.train.config import RecipeOption

_PARAMETERS = {
    "model": Annotated[str | None, Option("--model", help="Exported model: a model directory (newest version), a "
                                                          "version directory or a .onnx file. [default: "
                                                          "$SIMCLR_MODEL, else the default model of the source "
                                                          "tree]")],
    "server": Annotated[str | None, Option(help="Run the model on a Triton server instead (host:port), with "
                                                "--model-name; several servers of the same model as "
                                                "host1:8001,host2:8001 (requests spread over them; one that stops "
                                                "answering is left out and its requests go to the others).")],
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


def recipe_parameter(option: RecipeOption) -> inspect.Parameter:
    """The option of one recipe field: None when not given, so that the preset (or the resumed run) decides."""
    kind = Literal[option.choices] if option.choices else option.type
    declaration = f"{option.flag}/--no-{option.flag[2:]}" if option.type is bool else option.flag
    help_text = option.help
    if "[default:" not in help_text and option.default is not None and option.key != "data":
        shown = ("on" if option.default else "off") if option.type is bool else option.default
        help_text += f" [default: {shown}]"
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[typing.Optional[kind], Option(declaration, help=help_text)])  # noqa: UP045


def with_recipe_options(recipe: list[RecipeOption]) -> Callable[[Callable], Callable]:
    """Give a command that takes `**recipe` one option per recipe field, after its own (Typer reads a command's
    options from its signature)."""

    def decorate(command: Callable) -> Callable:
        fixed = [parameter for parameter in inspect.signature(command, eval_str=True).parameters.values()
                 if parameter.kind is not inspect.Parameter.VAR_KEYWORD]
        command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [*fixed, *(recipe_parameter(option) for option in recipe)])
        return command

    return decorate
