"""Hand-designed timm backbones as fixed students (`fixed:NAME` spaces): the backbone is timm's
multi-scale feature extractor (`features_only`, random initialisation, 5 input channels for the
image and the click maps); the FPN and the tap-conditioned head stay searchable."""

from __future__ import annotations

from functools import cache

import timm
import torch
from torch import nn

from search_spaces.any_size_attention import adapt_attention
from search_spaces.backbone import IN_CHANNELS
from search_spaces.space import FIXED_PREFIX, SpaceSpec, UnknownSpaceError

# the published mobile backbones a searched student is compared with (any timm model with features works)
FIXED_BACKBONES = ("mobilenetv2_100", "mobilenetv2_140", "mobilenetv3_large_100", "mobilenetv3_small_100",
                   "mnasnet_100", "ghostnet_100", "efficientnet_lite0", "repvit_m0_9", "mobileone_s0", "fastvit_t8",
                   "efficientformerv2_s0")
FEATURE_STRIDES = (8, 16, 32)


@cache
def feature_indices(name: str) -> tuple[int, ...]:
    """timm `out_indices` of the last feature map at strides 8, 16 and 32."""
    try:
        info = timm.create_model(name, pretrained=False, features_only=True, in_chans=IN_CHANNELS,
                                 device="meta").feature_info
    except (RuntimeError, ValueError, TypeError) as err:
        raise UnknownSpaceError(f"timm model {name!r} offers no multi-scale features ({err})") from None
    last = {r: i for i, r in enumerate(info.reduction())}
    missing = [s for s in FEATURE_STRIDES if s not in last]
    if missing:
        raise UnknownSpaceError(f"timm model {name!r} has no feature map at stride(s) {missing}")
    return tuple(last[s] for s in FEATURE_STRIDES)


def fixed_space(name: str) -> SpaceSpec:
    if not timm.is_model(name):
        raise UnknownSpaceError(f"unknown space '{FIXED_PREFIX}{name}': {name!r} is not a timm model; listed "
                                f"backbones: {', '.join(FIXED_BACKBONES)}")
    feature_indices(name)
    # single-choice backbone fields: the stage choices do not apply to a fixed backbone
    return SpaceSpec(name=f"{FIXED_PREFIX}{name}", stages=(), resolutions=(512, 640, 768, 896, 1024),
                     width_mults=(1.0,), depths=(1,), kernels=(3,), expands=(1,), se=(False,),
                     fpn_channels=(32, 48, 64, 96), mask_channels=(8, 16, 32), dyn_layers=(1, 2, 3), backbone=name,
                     description=f"timm {name} (fixed, random init) + FPN (P3-P5) + tap-conditioned head")


def describe_fixed(name: str, flops: bool = False) -> dict:
    """A listed backbone's status: parameters of its smallest student, how tracing crops it and, with
    `flops`, the FLOPs of one centre tap full-frame and traced (`arch_complexity`)."""
    from search_spaces.arch_config import ArchConfig
    from search_spaces.complexity import arch_complexity
    from search_spaces.student import DEFAULT_WINDOW_FRACTION, TraceNetStudent, output_cells
    from search_spaces.tracing import TracingError

    try:
        arch = ArchConfig.smallest(f"{FIXED_PREFIX}{name}")
        model = TraceNetStudent(arch).eval()
        with torch.no_grad():  # a tap-to-segment student must run at any input size, not only its native one
            model(torch.zeros(1, 3, 96, 128), torch.tensor([[[60.0, 40.0, 1.0]]]))
    except (UnknownSpaceError, RuntimeError) as err:
        return {"name": f"{FIXED_PREFIX}{name}", "supported": False,
                "reason": f"fails at other input sizes ({str(err).splitlines()[0][:120]})"}
    info = {"name": f"{FIXED_PREFIX}{name}", "supported": True,
            "backbone_params": sum(p.numel() for p in model.trunk.backbone.parameters())}
    r = arch.resolution
    try:
        plan = model.plan((r, r), (r / 2, r / 2), output_cells((r, r), (r / 2, r / 2),
                                                              round(DEFAULT_WINDOW_FRACTION * r)))
    except TracingError as err:
        info["tracing"] = f"disabled: {str(err).splitlines()[0][:120]}"
        return info
    if plan.global_ops:
        info["tracing"] = (f"partial: {len(plan.global_ops)} attention blocks read their whole input map (the "
                           f"first is {plan.global_ops[0]}), so the stages feeding them run full-frame; what "
                           f"follows them is cropped (exact)")
    else:
        info["tracing"] = "cropped to the tap's receptive field"
    if flops:
        info |= {k: v for k, v in arch_complexity(model).items() if k != "params"}
    return info


class TimmBackbone(nn.Module):
    """timm's feature extractor returning the stride-8/16/32 maps, like the searchable `Backbone`."""

    def __init__(self, name: str):
        super().__init__()
        self.body = adapt_attention(timm.create_model(name, pretrained=False, features_only=True,
                                                      in_chans=IN_CHANNELS, out_indices=feature_indices(name)))
        self.out_channels = list(self.body.feature_info.channels())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))
