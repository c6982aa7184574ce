"""Encoder f read back from an exported ONNX model into the PyTorch architecture its metadata names.

An unfolded export (batch norm kept as nodes, the default since part 1/7) names its weights as the checkpoint did.
A folded one (batch norm merged into the convolutions, each convolution with a bias) is read convolution by
convolution in the order the network runs them; each batch norm then starts as the identity plus that bias, and
`calibrate_folded_batch_norm` gives it statistics from real images so that train mode starts from the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from simclr.embed.onnx_encoder import resolve_model
from simclr.embed.torch_encoder import model_config_from_metadata
from simclr.export.layout import ModelMetadata, sha256_of
from simclr.train.config import ModelConfig
from simclr.train.model import ResNetEncoder

PARITY_TOLERANCE = 1e-4  # max abs difference of the embeddings, ONNX Runtime vs the read-back encoder


class OnnxWeightsError(ValueError):
    """An ONNX model whose weights do not fit the architecture its metadata names."""


@dataclass(frozen=True)
class OnnxEncoderWeights:
    encoder: ResNetEncoder  # eval mode
    model_config: ModelConfig
    metadata: ModelMetadata
    path: Path
    sha256: str
    folded: bool  # batch norm was folded into the convolutions: calibrate before training in train mode


def read_onnx_encoder(model: Path) -> OnnxEncoderWeights:
    """f from `model` (a .onnx file, a version directory or a model directory)."""
    import onnx
    from onnx import numpy_helper

    path = resolve_model(model).resolve()
    graph_model = onnx.load(str(path))
    props = {prop.key: prop.value for prop in graph_model.metadata_props}
    metadata = ModelMetadata.from_props(props, path)
    if metadata.precision == "int8":
        raise OnnxWeightsError(f"{path}: an INT8 model; fine-tune from the FP32 model it was quantized from")
    config = model_config_from_metadata(metadata)
    encoder = ResNetEncoder(config)
    weights = _float_initializers(graph_model.graph, numpy_helper)
    state = encoder.state_dict()
    named = {key.removeprefix("encoder."): value for key, value in weights.items() if key.startswith("encoder.")}
    folded = not all(key in named for key in state if not key.endswith("num_batches_tracked"))
    try:
        if folded:
            _load_folded(encoder, graph_model.graph, weights)
        else:
            encoder.load_state_dict({key: torch.from_numpy(named[key].copy()) if key in named else value
                                     for key, value in state.items()})
    except (RuntimeError, ValueError) as error:
        raise OnnxWeightsError(f"{path}: its weights do not fit a {metadata.architecture} (width "
                               f"{metadata.width:g}, stem {metadata.stem}): {str(error).splitlines()[0]}") from None
    return OnnxEncoderWeights(encoder.eval(), config, metadata, path, sha256_of(path), folded)


def _float_initializers(graph, numpy_helper) -> dict[str, np.ndarray]:
    """Every floating-point initializer as float32, by the name the graph uses it under (FP16-stored weights are
    read through their Cast node's output name)."""
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in arrays:
            arrays[node.output[0]] = arrays[node.input[0]]
        if node.op_type == "Constant":  # small tensors may be stored as Constant nodes
            for attribute in node.attribute:
                if attribute.name == "value":
                    arrays[node.output[0]] = numpy_helper.to_array(attribute.t)
    return {name: array.astype(np.float32) for name, array in arrays.items() if array.dtype.kind == "f"}


def _load_folded(encoder: ResNetEncoder, graph, weights: dict[str, np.ndarray]) -> None:
    """Conv nodes in graph order onto the encoder's convolutions in the order they run; each batch norm after a
    convolution becomes (identity + the folded bias) in eval mode."""
    convs = [node for node in graph.node if node.op_type == "Conv"]
    order = _convolutions_in_run_order(encoder)
    if len(convs) != len(order):
        raise ValueError(f"the graph has {len(convs)} convolutions, the architecture {len(order)}")
    with torch.no_grad():
        for node, (conv, norm) in zip(convs, order, strict=True):
            weight = torch.from_numpy(weights[node.input[1]].copy())
            if weight.shape != conv.weight.shape:
                raise ValueError(f"convolution {node.name}: {tuple(weight.shape)} where the architecture has "
                                 f"{tuple(conv.weight.shape)}")
            bias = torch.from_numpy(weights[node.input[2]].copy()) if len(node.input) > 2 else torch.zeros(
                weight.shape[0])
            conv.weight.copy_(weight)
            norm.weight.fill_(1.0)
            norm.bias.copy_(bias)
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)  # eval mode: (x - 0) / sqrt(1 - eps + eps) = x exactly


def _convolutions_in_run_order(encoder: ResNetEncoder) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(convolution, the batch norm that follows it) in the order a forward pass runs them (the exporter's order)."""
    following = {}
    modules = list(encoder.modules())
    for first, second in zip(modules, modules[1:], strict=False):
        if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d):
            following[first] = second
    order: list[nn.Conv2d] = []
    hooks = [conv.register_forward_pre_hook(lambda module, _: order.append(module)) for conv in following]
    try:
        with torch.no_grad():
            encoder.eval()(torch.zeros(1, 3, 32, 32))
    finally:
        for hook in hooks:
            hook.remove()
    return [(conv, following[conv]) for conv in order]


@torch.no_grad()
def calibrate_folded_batch_norm(encoder: ResNetEncoder, images: torch.Tensor) -> None:
    """Give a folded model's batch norms the statistics of `images` (float [N, 3, S, S] in [0, 1]) while keeping
    the function. First each filter is scaled to unit norm (the norm after it undoes any positive per-channel
    scale): folding left filters whose batch norm had a tiny weight with tiny norms, and gradient descent through a
    batch norm moves a filter's direction by lr / norm^2, so those would be thrown about. Then each norm's input x
    has batch mean m and variance v on `images`; with running stats (m, v), weight sqrt(v + eps) and bias (folded
    bias + m), eval mode still computes x + folded bias, and train mode on these images computes the same."""
    for conv, norm in _convolutions_in_run_order(encoder):
        scale = conv.weight.flatten(1).norm(dim=1).clamp_min(1e-12)
        conv.weight.div_(scale.view(-1, 1, 1, 1))
        norm.weight.mul_(scale)  # still in its folded form: eval mode is x * scale + bias, the same function
    norms = [module for module in encoder.modules() if isinstance(module, nn.BatchNorm2d)]
    moments: dict[nn.BatchNorm2d, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module: nn.BatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        values = inputs[0].double()
        moments[module] = (values.mean(dim=(0, 2, 3)), values.var(dim=(0, 2, 3), unbiased=False))

    hooks = [norm.register_forward_pre_hook(record) for norm in norms]
    was_training = encoder.training
    try:
        encoder.eval()(images)
    finally:
        for hook in hooks:
            hook.remove()
        encoder.train(was_training)
    for norm in norms:
        mean, variance = moments[norm]  # of x = (unit-norm filter) * input; the function adds: x * scale + bias
        scale = norm.weight.double()
        norm.running_mean.copy_(mean.float())
        norm.running_var.copy_(variance.float())
        norm.weight.copy_((scale * torch.sqrt(variance + norm.eps)).float())
        norm.bias.add_((scale * mean).float())
