"""Which modules and functions the receptive-field tracer knows, and how each maps space.

A `TracingRules` is immutable and passed to `ReceptiveFieldTracer(module, rules)`: extending it
(`DEFAULT_RULES.with_pointwise(MyNorm)`) gives a new rule set and changes no other tracer.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, replace

import timm.layers
import torch
import torch.nn.functional as F
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models.efficientformer_v2 import Attention2d, Attention2dDownsample
from torch import nn

OutHw = Callable[[nn.Module, tuple[int, int]], tuple[int, int]]
OutChannels = Callable[[nn.Module, int], int]


@dataclass(frozen=True)
class GlobalRule:
    """A module whose output anywhere depends on its whole input map (e.g. attention)."""

    module_type: type
    out_hw: OutHw  # output size for an input size
    out_channels: OutChannels  # output channels for input channels


@dataclass(frozen=True)
class TracingRules:
    pointwise_modules: tuple[type, ...]  # per pixel: norms, activations, identities
    local_pool_modules: tuple[type, ...]  # squeeze-excitation-like: pool over the region they are given
    global_modules: tuple[GlobalRule, ...]
    pointwise_functions: frozenset
    pointwise_methods: frozenset[str]

    def with_pointwise(self, *module_types: type) -> TracingRules:
        """Declare modules per-pixel (a pixel's output depends on its inputs at that pixel only)."""
        return replace(self, pointwise_modules=self.pointwise_modules + module_types)

    def with_local_pool(self, *module_types: type) -> TracingRules:
        """Declare modules squeeze-excitation-like: they pool over whatever region they are given."""
        return replace(self, local_pool_modules=self.local_pool_modules + module_types)

    def with_global(self, module_type: type, out_hw: OutHw, out_channels: OutChannels) -> TracingRules:
        """Declare a module global: its output anywhere depends on its whole input."""
        return replace(self, global_modules=self.global_modules + (GlobalRule(module_type, out_hw, out_channels),))

    def global_rule(self, module: nn.Module) -> GlobalRule | None:
        return next((rule for rule in self.global_modules if isinstance(module, rule.module_type)), None)

    @property
    def leaf_types(self) -> tuple[type, ...]:
        """Modules kept whole in the traced graph, so it shows their spatial role, not their internals."""
        return self.pointwise_modules + self.local_pool_modules + tuple(r.module_type for r in self.global_modules)


def _attention_out_hw(module: nn.Module, hw: tuple[int, int]) -> tuple[int, int]:
    return ((hw[0] + 1) // 2, (hw[1] + 1) // 2) if isinstance(module, Attention2dDownsample) else tuple(hw)


def _attention_out_channels(module: nn.Module, channels: int) -> int:
    return module.out_dim if isinstance(module, Attention2dDownsample) else channels


DEFAULT_RULES = TracingRules(
    pointwise_modules=(nn.BatchNorm2d, timm.layers.BatchNormAct2d, nn.Identity, nn.Dropout, timm.layers.DropPath,
                       nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
                       nn.LeakyReLU),
    local_pool_modules=(SqueezeExcite, timm.layers.SEModule),
    # EfficientFormerV2's attention (made to run at any size by `adapt_attention`)
    global_modules=tuple(GlobalRule(kind, _attention_out_hw, _attention_out_channels)
                         for kind in (Attention2d, Attention2dDownsample)),
    pointwise_functions=frozenset({
        operator.add, operator.mul, operator.sub, operator.truediv, torch.add, torch.mul, torch.sub,
        torch.relu, torch.sigmoid, torch.tanh, F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu,
        F.sigmoid, torch.cat}),
    pointwise_methods=frozenset({"add", "mul", "sub", "relu", "sigmoid", "tanh", "clamp", "contiguous"}),
)
