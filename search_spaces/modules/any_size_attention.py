"""EfficientFormerV2's attention at any input size.

timm sizes the relative-position bias table of `Attention2d` / `Attention2dDownsample` for one grid
(14 x 14 and 7 x 7 at 224 px) and reshapes with that grid, so the model fails at any other input
size. A tap-to-segment student sees every image shape and crop, so `adapt_attention` rebinds their
`forward` to use the grid of the input it gets, with the bias table resampled to that grid
(bilinear, corners aligned: offset 0 stays 0 and the largest offset maps to the largest). On the
native grid the result equals timm's forward exactly (tested).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from timm.models.efficientformer_v2 import Attention2d, Attention2dDownsample
from torch import nn

GLOBAL_ATTENTION = (Attention2d, Attention2dDownsample)


def relative_bias(table: torch.Tensor, resolution: tuple[int, int], grid: tuple[int, int],
                  query_step: int) -> torch.Tensor:
    """(heads, queries, keys) bias for keys on `grid` and queries every `query_step` cells of it."""
    heads = table.shape[0]
    h, w = grid
    offsets = table.reshape(heads, *resolution)
    if tuple(resolution) != (h, w):
        offsets = F.interpolate(offsets[None], size=(h, w), mode="bilinear", align_corners=True)[0]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    qy, qx = torch.meshgrid(torch.arange(0, h, query_step), torch.arange(0, w, query_step), indexing="ij")
    rel = (qy.reshape(-1, 1) - ys.reshape(1, -1)).abs() * w + (qx.reshape(-1, 1) - xs.reshape(1, -1)).abs()
    return offsets.reshape(heads, -1)[:, rel.to(table.device)]


def _attention_forward(self: Attention2d, x: torch.Tensor) -> torch.Tensor:
    size = x.shape[-2:]
    if self.stride_conv is not None:
        x = self.stride_conv(x)
    b, _, h, w = x.shape
    q = self.q(x).reshape(b, self.num_heads, -1, h * w).permute(0, 1, 3, 2)
    k = self.k(x).reshape(b, self.num_heads, -1, h * w)
    v = self.v(x)
    v_local = self.v_local(v)
    v = v.reshape(b, self.num_heads, -1, h * w).permute(0, 1, 3, 2)
    attn = (q @ k) * self.scale + relative_bias(self.attention_biases, self.resolution, (h, w), 1)
    attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
    x = (attn @ v).transpose(2, 3).reshape(b, self.dh, h, w) + v_local
    if self.upsample is not None:  # back to the input size, also when it is odd
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return self.proj(self.act(x))


def _downsample_forward(self: Attention2dDownsample, x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    q = self.q(x)
    h2, w2 = q.shape[-2:]
    q = q.reshape(b, self.num_heads, -1, h2 * w2).permute(0, 1, 3, 2)
    k = self.k(x).reshape(b, self.num_heads, -1, h * w)
    v = self.v(x)
    v_local = self.v_local(v)
    v = v.reshape(b, self.num_heads, -1, h * w).permute(0, 1, 3, 2)
    attn = ((q @ k) * self.scale + relative_bias(self.attention_biases, self.resolution, (h, w), 2)).softmax(dim=-1)
    x = (attn @ v).transpose(2, 3).reshape(b, self.dh, h2, w2) + v_local
    return self.proj(self.act(x))


def _train(self: nn.Module, mode: bool = True) -> nn.Module:
    type(self).train(self, mode)
    return self  # timm's returns None, which breaks `module.eval()` chains (exporters use them)


def adapt_attention(model: nn.Module) -> nn.Module:
    """Make every EfficientFormerV2 attention of `model` run at any input size (in place)."""
    for module in model.modules():
        if isinstance(module, GLOBAL_ATTENTION):
            forward = _downsample_forward if isinstance(module, Attention2dDownsample) else _attention_forward
            module.forward = types.MethodType(forward, module)
            module.train = types.MethodType(_train, module)
    return model
