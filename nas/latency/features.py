"""Cheap architecture features of op keys, for devices a table cannot price well on its own.

Each feature is a sum over a network's units, so a model linear in them is still a lookup table (one
value per key). They carry signal across hardware where an isolated-unit table does not: compute
(FLOPs, counted by `torch.utils.flop_counter`), the depthwise share of it (depthwise convs run far
below a device's peak), memory traffic (input, output and weight bytes at float32) and the number of
units (a fixed dispatch cost per kernel). Each unit is built on the meta device by its op kind's
profiling builder, so every registered kind, custom ones included, has features without running.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from nas.latency.op_keys import OpKey
from nas.latency.op_kinds import op_module

ARCH_FEATURES = ("mflops", "dw_mflops", "memory_mb", "units")
BYTES_PER_VALUE = 4  # float32


@functools.cache
def unit_features(key: OpKey) -> tuple[float, ...]:
    """(MFLOPs, depthwise MFLOPs, memory traffic in MB, 1) of one unit, in `ARCH_FEATURES` order."""
    with torch.device("meta"), torch.no_grad():
        module, inputs = op_module(key)
        with FlopCounterMode(display=False) as counter:
            output = module(*inputs)
    mflops = counter.get_total_flops() / 1e6
    values = sum(t.numel() for t in inputs) + output.numel() + sum(p.numel() for p in module.parameters())
    depthwise = key.kind == "conv" and key.attr("g") == "dw"
    return mflops, mflops if depthwise else 0.0, values * BYTES_PER_VALUE / 1e6, 1.0


def network_features(keys: Sequence[OpKey]) -> np.ndarray:
    """(len(ARCH_FEATURES),) sums of `unit_features` over a network's units."""
    return np.sum([unit_features(key) for key in keys], axis=0) if keys else np.zeros(len(ARCH_FEATURES))
