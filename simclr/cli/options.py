"""Options several commands share: which model to run, locally or on a Triton server."""

from __future__ import annotations

from typing import Annotated

from typer import Option

ModelOption = Annotated[str | None, Option("--model", help="Exported model: a model directory (newest version), a "
                                                           "version directory or a .onnx file. [default: "
                                                           "$SIMCLR_MODEL, else the default model of the source tree]")]
ServerOption = Annotated[str | None, Option(help="Embed on a Triton server instead (host:port) with --model-name.")]
ProtocolOption = Annotated[str, Option(help="Triton protocol: http or grpc.")]
ModelNameOption = Annotated[str | None, Option(help="The model's name on the Triton server.")]
ModelVersionOption = Annotated[str, Option(help="Model version on the server. [default: the newest]")]
DeviceOption = Annotated[str, Option(help="ONNX Runtime device: auto (CUDA when onnxruntime-gpu has it), cpu, cuda.")]
ThreadsOption = Annotated[int | None, Option(help="ONNX Runtime threads. [default: all cores]")]
