"""Tap-conditioned mask head in the style of CondInst, and the click encodings it relies on.

A controller reads the P5 feature under the tap and emits the weights of a few dynamic 1x1 convs;
they run on the mask branch's features concatenated with coordinates relative to the tap. Every
operation is per pixel, so any window of the output needs only the same window of mask features.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.tracing.box import Box

POSITIVE, NEGATIVE, PADDING = 1.0, 0.0, -1.0
CLICK_RADIUS = 5  # pixels at network resolution; RITM's disk encoding
COORD_SCALE = 64.0  # pixels; CondInst normalises P3 relative coordinates by its size of interest


class TapOutput(NamedTuple):
    logits: torch.Tensor  # (B, 1, h, w) mask logits at the mask stride, for the cells of `box`
    iou: torch.Tensor  # (B,) predicted IoU logit
    box: Box  # the cells (at the mask stride) that `logits` covers


def encode_clicks(clicks: torch.Tensor, region: Box, radius: float = CLICK_RADIUS) -> torch.Tensor:
    """Positive and negative disk maps (B, 2, h, w) of `clicks` (B, N, [x, y, label]) over a pixel region."""
    ys = torch.arange(region.y0, region.y1, device=clicks.device, dtype=clicks.dtype)
    xs = torch.arange(region.x0, region.x1, device=clicks.device, dtype=clicks.dtype)
    dy = ys.view(1, 1, -1, 1) - clicks[..., 1].view(*clicks.shape[:2], 1, 1)
    dx = xs.view(1, 1, 1, -1) - clicks[..., 0].view(*clicks.shape[:2], 1, 1)
    # float masks and amax rather than boolean &/any: every exporter (ONNX, ExecuTorch, Core ML) takes them
    inside = ((dy * dy + dx * dx) <= radius * radius).to(clicks.dtype)  # (B, N, h, w)
    label = clicks[..., 2].view(*clicks.shape[:2], 1, 1)
    positive = (inside * (label == POSITIVE).to(clicks.dtype)).amax(dim=1)
    negative = (inside * (label == NEGATIVE).to(clicks.dtype)).amax(dim=1)
    return torch.stack([positive, negative], dim=1)


def relative_coords(taps: torch.Tensor, cells: Box, stride: int) -> torch.Tensor:
    """(B, 2, h, w) offsets of each cell centre from the tap (B, [x, y]), in units of COORD_SCALE pixels."""
    ys = (torch.arange(cells.y0, cells.y1, device=taps.device, dtype=taps.dtype) + 0.5) * stride
    xs = (torch.arange(cells.x0, cells.x1, device=taps.device, dtype=taps.dtype) + 0.5) * stride
    rel_x = (xs.view(1, 1, -1) - taps[:, 0].view(-1, 1, 1)).expand(-1, cells.h, -1)
    rel_y = (ys.view(1, -1, 1) - taps[:, 1].view(-1, 1, 1)).expand(-1, -1, cells.w)
    return torch.stack([rel_x, rel_y], dim=1) / COORD_SCALE


class TapHead(nn.Module):
    """Controller + dynamic 1x1 convs (hidden width `hidden`, last layer 1 channel) + IoU prediction.

    Generator tensors keep input channels in the order [coords, mask features] so that a smaller
    head is a prefix slice of a larger one (the supernet shares them).
    """

    def __init__(self, feature_channels: int, mask_channels: int, layers: int, hidden: int):
        super().__init__()
        self.weight_gen, self.weight_bias = nn.ParameterList(), nn.ParameterList()
        self.bias_gen, self.bias_bias = nn.ParameterList(), nn.ParameterList()
        for layer in range(layers):
            fan_in = 2 + mask_channels if layer == 0 else hidden
            fan_out = 1 if layer == layers - 1 else hidden
            bound = fan_in**-0.5
            self.weight_gen.append(nn.Parameter(torch.randn(fan_out, fan_in, feature_channels) * 0.01))
            self.weight_bias.append(nn.Parameter(torch.empty(fan_out, fan_in).uniform_(-bound, bound)))
            self.bias_gen.append(nn.Parameter(torch.randn(fan_out, feature_channels) * 0.01))
            self.bias_bias.append(nn.Parameter(torch.zeros(fan_out)))
        self.iou = nn.Linear(feature_channels, 1)

    def forward(self, mask_features: torch.Tensor, tap_feature: torch.Tensor,
                coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([coords, mask_features], dim=1)
        last = len(self.weight_gen) - 1
        for layer in range(last + 1):
            weight = torch.einsum("oif,bf->boi", self.weight_gen[layer], tap_feature) + self.weight_bias[layer]
            bias = torch.einsum("of,bf->bo", self.bias_gen[layer], tap_feature) + self.bias_bias[layer]
            x = torch.einsum("boi,bihw->bohw", weight, x) + bias[:, :, None, None]
            if layer < last:
                x = F.relu(x)
        return x, self.iou(tap_feature).squeeze(1)
