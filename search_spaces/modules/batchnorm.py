"""Per-subnet BatchNorm recalibration (Once-for-All): a subnet's activation statistics differ from
the supernet's, so its running statistics are re-estimated from a few batches before it is scored."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]) -> int:
    """Reset every BatchNorm's running statistics to their average over `model(*batch)` for each batch.

    Returns the number of batches seen; the model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    model.train()
    seen = 0
    try:
        for batch in batches:
            model(*batch)
            seen += 1
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.eval()
    return seen
