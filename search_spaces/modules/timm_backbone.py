"""A timm backbone as a student's trunk (the `fixed:NAME` spaces)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from search_spaces.common.errors import TraceNASError
from search_spaces.modules.any_size_attention import adapt_attention
from search_spaces.space import IN_CHANNELS
from search_spaces.space.fixed import feature_indices

RGB = 3


class PretrainedError(TraceNASError, ValueError):
    """Pretrained weights that cannot be read or do not fit the model they are loaded into."""


class TimmBackbone(nn.Module):
    """timm's feature extractor returning the stride-8/16/32 maps, like the searchable `Backbone`."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.body = adapt_attention(self._features(IN_CHANNELS))
        self.out_channels = list(self.body.feature_info.channels())

    def _features(self, in_chans: int, pretrained: str | None = None) -> nn.Module:
        overlay = {"file": pretrained} if pretrained not in (None, "timm") else None
        return timm.create_model(self.name, pretrained=pretrained is not None, pretrained_cfg_overlay=overlay,
                                 features_only=True, in_chans=in_chans, out_indices=feature_indices(self.name))

    @torch.no_grad()
    def load_pretrained(self, source: str) -> None:
        """timm's ImageNet weights (`source="timm"`: by name through the hub; or a local file through timm's
        `pretrained_cfg_overlay=dict(file=...)`), with the first conv widened from RGB to RGB + click maps:
        the RGB filters kept, the click channels at zero, so the features are timm's at step 0."""
        if source != "timm" and not Path(source).is_file():
            raise PretrainedError(f"pretrained {source!r}: no such file (or 'timm' for timm's own weights)")
        try:
            rgb = self._features(RGB, source).state_dict()
        except Exception as err:  # timm built this model without weights: what fails is reading or fitting them
            reason = " ".join(str(err).split())[:240] or type(err).__name__  # one line, with the first mismatch
            raise PretrainedError(f"pretrained {source!r} for {self.name}: {reason}") from None
        state = {}
        for key, ours in self.body.state_dict().items():
            theirs = rgb[key]
            if theirs.shape != ours.shape:  # the input conv: (out, 3, k, k) -> (out, 5, k, k)
                theirs = torch.cat([theirs, theirs.new_zeros(theirs.shape[0], ours.shape[1] - RGB, *theirs.shape[2:])],
                                   dim=1)
            state[key] = theirs
        self.body.load_state_dict(state)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))
