"""Hand-designed timm backbones as fixed students (`fixed:NAME` spaces): the backbone is timm's
multi-scale feature extractor (`features_only`, 5 input channels for the image and the click maps);
the FPN and the tap-conditioned head stay searchable. timm is imported only when such a space is
asked for."""

from __future__ import annotations

from functools import cache

from search_spaces.space.spec import IN_CHANNELS, SpaceSpec, UnknownSpaceError

FIXED_PREFIX = "fixed:"
# the published mobile backbones a searched student is compared with (any timm model with features works)
FIXED_BACKBONES = ("mobilenetv2_100", "mobilenetv2_140", "mobilenetv3_large_100", "mobilenetv3_small_100",
                   "mnasnet_100", "ghostnet_100", "efficientnet_lite0", "repvit_m0_9", "mobileone_s0", "fastvit_t8",
                   "efficientformerv2_s0")
FEATURE_STRIDES = (8, 16, 32)


@cache
def feature_indices(name: str) -> tuple[int, ...]:
    """timm `out_indices` of the last feature map at strides 8, 16 and 32."""
    import timm

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
    import timm

    if not timm.is_model(name):
        raise UnknownSpaceError(f"unknown space '{FIXED_PREFIX}{name}': {name!r} is not a timm model; listed "
                                f"backbones: {', '.join(FIXED_BACKBONES)}")
    feature_indices(name)
    # single-choice backbone fields: the stage choices do not apply to a fixed backbone
    return SpaceSpec(name=f"{FIXED_PREFIX}{name}", stages=(), resolutions=(512, 640, 768, 896, 1024),
                     width_mults=(1.0,), depths=(1,), kernels=(3,), expands=(1,), se=(False,),
                     fpn_channels=(32, 48, 64, 96), mask_channels=(8, 16, 32), dyn_layers=(1, 2, 3), backbone=name,
                     description=f"timm {name} (fixed, random init) + FPN (P3-P5) + tap-conditioned head")
