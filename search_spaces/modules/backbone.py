"""Static MobileNetV3-style backbone for one `ArchConfig`, built from timm's mobile blocks."""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import ConvNormAct, make_divisible
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual, SqueezeExcite
from torch import nn

from search_spaces.space import ArchConfig

IN_CHANNELS = 5  # RGB + positive and negative click maps
ACT_LAYERS = {"relu": nn.ReLU, "hswish": nn.Hardswish}
# MobileNetV3's squeeze-excitation: ReLU bottleneck of a quarter of the expanded width, hard-sigmoid gate.
SE_LAYER = partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_round_fn=make_divisible)


def stage_channels(cfg: ArchConfig) -> list[int]:
    return [make_divisible(stage.channels * cfg.width_mult) for stage in cfg.spec.stages]


class Backbone(nn.Module):
    """Stem (stride 2) + fixed depthwise block + searchable stages; returns the FPN's C3, C4, C5."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        spec = cfg.spec
        stem = make_divisible(spec.stem_channels * cfg.width_mult)
        self.feature_stages = spec.feature_stages
        self.stem = ConvNormAct(IN_CHANNELS, stem, 3, stride=2, act_layer=ACT_LAYERS[spec.stem_act])
        self.first = DepthwiseSeparableConv(stem, stem, dw_kernel_size=3, act_layer=nn.ReLU)
        stages, in_ch = [], stem
        for s, (stage, out_ch) in enumerate(zip(spec.stages, stage_channels(cfg), strict=True)):
            blocks = []
            for b in range(cfg.depths[s]):
                blocks.append(InvertedResidual(
                    in_ch, out_ch, dw_kernel_size=cfg.kernels[s][b], stride=stage.stride if b == 0 else 1,
                    exp_ratio=cfg.expands[s][b], act_layer=ACT_LAYERS[stage.act],
                    se_layer=SE_LAYER if cfg.se[s] else None))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels = [stage_channels(cfg)[i] for i in self.feature_stages]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.first(self.stem(x))
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.feature_stages:
                features.append(x)
        return features
