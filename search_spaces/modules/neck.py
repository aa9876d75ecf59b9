"""FPN over the backbone's stride-8/16/32 features, plus the mask branch on P3."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn


class FPN(nn.Module):
    """Top-down FPN with nearest-neighbour upsampling (exact under receptive-field cropping).

    Returns P3 (stride 8, the mask branch's input) and P5 (stride 32, read at the tap by the controller).
    """

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(ConvNormAct(c, channels, 1, apply_act=False) for c in in_channels)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        c3, c4, c5 = features
        p5 = self.lateral[2](c5)
        p4 = self.lateral[1](c4) + F.interpolate(p5, scale_factor=2.0, mode="nearest")
        p3 = self.lateral[0](c3) + F.interpolate(p4, scale_factor=2.0, mode="nearest")
        return p3, p5


class MaskBranch(nn.Sequential):
    """CondInst's mask branch: a 3x3 conv tower on P3, projected to a few mask channels."""

    def __init__(self, in_channels: int, mask_channels: int):
        super().__init__(ConvNormAct(in_channels, in_channels, 3, act_layer=nn.ReLU),
                         nn.Conv2d(in_channels, mask_channels, 1))
