"""Inference-time folding of BatchNorm into the convolution before it (what mobile runtimes do).

In torch eager an eval-mode BatchNorm is a separate kernel over the whole map, and with
channels-last tensors it costs about as much as the convolution it follows. Folding it into the
conv's weight and bias removes that pass; the outputs are unchanged up to float rounding.
"""

from __future__ import annotations

import timm.layers
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from search_spaces.tracing.tracer import ReceptiveFieldTracer


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm fed only by a conv into that conv, in place (a timm BatchNormAct2d
    becomes its activation, a plain BatchNorm2d an Identity). Returns the number folded."""
    tracer = ReceptiveFieldTracer(module)  # its graph keeps norms and activations as leaves
    calls: dict[str, int] = {}
    for node in tracer.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in tracer.graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        conv, user = module.get_submodule(node.target), next(iter(node.users))
        if not isinstance(conv, nn.Conv2d) or calls[node.target] != 1 or user.op != "call_module":
            continue
        norm = module.get_submodule(user.target)
        if type(norm) not in (nn.BatchNorm2d, timm.layers.BatchNormAct2d) or norm.training \
                or norm.running_mean is None or calls[user.target] != 1:
            continue
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
                                            norm.weight, norm.bias)
        conv.weight, conv.bias = weight, bias
        replacement = norm.act if isinstance(norm, timm.layers.BatchNormAct2d) else nn.Identity()
        module.set_submodule(user.target, replacement)
        folded += 1
    return folded


@torch.no_grad()
def optimise_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """Eval mode, BatchNorm folded into the trunk's convs and, on CPU, channels-last weights."""
    model.eval()
    fold_batchnorm(model.trunk)
    model.__dict__.pop("tracer", None)  # the cached tracer saw the unfolded graph
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model
