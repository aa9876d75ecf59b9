"""A timm backbone as a student's trunk (the `fixed:NAME` spaces)."""

from __future__ import annotations

import timm
import torch
from torch import nn

from search_spaces.modules.any_size_attention import adapt_attention
from search_spaces.space import IN_CHANNELS
from search_spaces.space.fixed import feature_indices


class TimmBackbone(nn.Module):
    """timm's feature extractor returning the stride-8/16/32 maps, like the searchable `Backbone`."""

    def __init__(self, name: str):
        super().__init__()
        self.body = adapt_attention(timm.create_model(name, pretrained=False, features_only=True,
                                                      in_chans=IN_CHANNELS, out_indices=feature_indices(name)))
        self.out_channels = list(self.body.feature_info.channels())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))
