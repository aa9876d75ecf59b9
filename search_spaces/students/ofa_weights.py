"""Once-for-All's ImageNet MobileNetV3 supernets as the start of a TraceNAS supernet.

`OFAMobileNetV3` (`ofa_mbv3_d234_e346_k357_w1.0` / `_w1.2`) and `tracenet_mbv3` share their block
structure: a 3x3 stride-2 h-swish stem, a 3x3 depthwise-separable block, five stages of up to four
inverted residuals (24, 40, 80, 112, 160 channels at width 1.0) with kernels 3/5/7, expand ratios
3/4/6 and the same activations, elastic kernels made by centre crops through learned 7to5 / 5to3
matrices, and narrower expansions that keep the leading (importance-sorted) channels. Every OFA
tensor is copied into the leading slice of the TraceNAS tensor it maps to:

- stem: the RGB filters; the two click channels start at zero, so step 0 sees only the image;
- channels that exist in TraceNAS but not in the checkpoint (a wider width) keep their random
  initialisation, and every weight that reads them from a checkpoint channel starts at zero, so
  the checkpoint's channels compute exactly OFA's features;
- squeeze-excitation: OFA has it in stages 2, 4 and 5 only; where a TraceNAS block has SE and OFA
  does not, the gate starts at exactly 1 (expand weights 0, bias 3 under the hard sigmoid), so the
  block computes OFA's block without SE;
- the classifier, final expand and feature-mix layers have no TraceNAS counterpart and are dropped.

What each width choice gets: importing `w1.0`, width 1.0 subnets are OFA's subnets exactly (at
strides 8/16/32); width 1.25 subnets hold them in their leading channels plus new channels;
width 0.75 subnets are leading-channel slices of OFA's (not an OFA network: they need training).
Importing `w1.2` (stem 24, stages 32/48/96/136/192), width 1.25 (32/48/104/144/200) starts from it:
with expand ratio 6 its subnets hold OFA's w1.2 subnets in their leading channels exactly; with a
smaller ratio a block's slice takes a few more of OFA's sorted expanded channels than OFA's own
subnet does (close, not equal); widths 1.0 and 0.75 are slices of it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from search_spaces.modules.timm_backbone import PretrainedError
from search_spaces.students.supernet import TraceNetSupernet, transform_key

OFA_NETS = ("ofa_mbv3_d234_e346_k357_w1.0", "ofa_mbv3_d234_e346_k357_w1.2")
BLOCKS_PER_STAGE = 4  # OFA's MobileNetV3 supernets have depths 2/3/4
SE_GATE_OPEN = 3.0  # hard_sigmoid(3) = relu6(6) / 6 = 1


def read_ofa_state(source: str) -> dict[str, torch.Tensor]:
    """The state dict of an OFA MobileNetV3 supernet: a checkpoint file (`{'state_dict': ...}` as OFA
    releases them, or a bare state dict) or a model-zoo name fetched through the `ofa` package."""
    path = Path(source)
    if path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for truncated or foreign files
            raise PretrainedError(f"{path}: not a readable checkpoint ({type(err).__name__}; only tensors and "
                                  "plain data are read)") from None
        state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
        if not isinstance(state, dict) or "first_conv.conv.weight" not in state:
            raise PretrainedError(f"{path}: not a Once-for-All MobileNetV3 checkpoint (no first_conv.conv.weight)")
        return state
    if source not in OFA_NETS:
        raise PretrainedError(f"pretrained {source!r}: no such file, and not an OFA supernet name "
                              f"({', '.join(OFA_NETS)})")
    try:
        from ofa.model_zoo import ofa_net
    except ImportError:
        raise PretrainedError(f"pretrained {source!r} is fetched by the ofa package: pip install 'tracenas[ofa]', "
                              "or pass the checkpoint file") from None
    try:
        return ofa_net(source, pretrained=True).state_dict()
    except OSError as err:  # no network: urllib's URLError is an OSError
        raise PretrainedError(f"pretrained {source!r}: cannot download it ({err}); pass the checkpoint file") from None


def _ofa_to_tracenas(supernet: TraceNetSupernet) -> dict[str, str]:
    """OFA module prefix -> TraceNAS module prefix (inside `largest.trunk.backbone.`)."""
    mapping = {"first_conv.conv": "stem.conv", "first_conv.bn": "stem.bn",
               "blocks.0.conv.depth_conv.conv": "first.conv_dw", "blocks.0.conv.depth_conv.bn": "first.bn1",
               "blocks.0.conv.point_linear.conv": "first.conv_pw", "blocks.0.conv.point_linear.bn": "first.bn2"}
    for s in range(len(supernet.spec.stages)):
        for b in range(BLOCKS_PER_STAGE):
            ofa, ours = f"blocks.{1 + s * BLOCKS_PER_STAGE + b}.conv", f"stages.{s}.{b}"
            mapping |= {f"{ofa}.inverted_bottleneck.conv.conv": f"{ours}.conv_pw",
                        f"{ofa}.inverted_bottleneck.bn.bn": f"{ours}.bn1",
                        f"{ofa}.depth_conv.conv.conv": f"{ours}.conv_dw", f"{ofa}.depth_conv.bn.bn": f"{ours}.bn2",
                        f"{ofa}.depth_conv.se.fc.reduce": f"{ours}.se.conv_reduce",
                        f"{ofa}.depth_conv.se.fc.expand": f"{ours}.se.conv_expand",
                        f"{ofa}.point_linear.conv.conv": f"{ours}.conv_pwl", f"{ofa}.point_linear.bn.bn": f"{ours}.bn3"}
    return mapping


def _check_space(supernet: TraceNetSupernet, source: str) -> None:
    spec = supernet.spec
    if (spec.backbone is not None or tuple(s.channels for s in spec.stages) != (24, 40, 80, 112, 160)
            or spec.kernels != (3, 5, 7) or spec.expands != (3, 4, 6) or spec.max_depth != BLOCKS_PER_STAGE
            or spec.stem_channels != 16):
        raise PretrainedError(f"{source}: Once-for-All MobileNetV3 weights fit the tracenet_mbv3 structure, not "
                              f"space {spec.name!r}")


@torch.no_grad()
def import_ofa(supernet: TraceNetSupernet, state: dict[str, torch.Tensor], source: str) -> TraceNetSupernet:
    """Copy an OFA MobileNetV3 supernet's weights into `supernet` (module docstring); all or nothing."""
    _check_space(supernet, source)
    ours = supernet.state_dict()
    new = {k: v.clone() for k, v in ours.items()}
    prefix = "largest.trunk.backbone."
    mapping = _ofa_to_tracenas(supernet)
    used = set()
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        if module.endswith("depth_conv.conv") and leaf.endswith("_matrix"):  # kernel transforms: 7to5_matrix
            target = "kernel_transforms." + transform_key(
                f"trunk.backbone.{mapping[module + '.conv']}.weight", *map(int, leaf[:-7].split("to")))
        elif module in mapping:
            target = f"{prefix}{mapping[module]}.{leaf}"
        else:
            continue  # final expand, feature mix and classifier: no counterpart
        if target not in new:
            raise PretrainedError(f"{source}: {key} has no place in the {supernet.spec.name} supernet")
        _place(new[target], tensor, key, source)
        used.add(target)
    missing = [k for k in (f"{prefix}stem.conv.weight", f"{prefix}stages.4.3.conv_pwl.weight") if k not in used]
    if missing:
        raise PretrainedError(f"{source}: not a complete OFA MobileNetV3 supernet ({missing[0]} has no weights)")
    for name in ours:
        if name.endswith("se.conv_expand.bias") and name not in used:  # OFA has no SE here: an open gate
            new[name.replace(".bias", ".weight")].zero_()
            new[name].fill_(SE_GATE_OPEN)
    supernet.load_state_dict(new)
    return supernet


def _place(target: torch.Tensor, tensor: torch.Tensor, key: str, source: str) -> None:
    """Copy `tensor` into the leading slice of `target`; zero what reads channels beyond it."""
    if target.dim() != tensor.dim() or any(t < s for t, s in zip(target.shape, tensor.shape, strict=True)):
        raise PretrainedError(f"{source}: {key} of shape {tuple(tensor.shape)} does not fit TraceNAS's "
                              f"{tuple(target.shape)} (another width or space)")
    if target.dim() == 4 and target.shape[-1] != tensor.shape[-1]:
        raise PretrainedError(f"{source}: {key} has {tensor.shape[-1]}x{tensor.shape[-1]} kernels where TraceNAS "
                              f"has {target.shape[-1]}x{target.shape[-1]}")
    if target.dim() == 4 and target.shape[1] > 1:  # a dense conv: its outputs must not read the new inputs
        target[: tensor.shape[0], tensor.shape[1]:] = 0
    target[tuple(slice(0, n) for n in tensor.shape)] = tensor.to(target.dtype)
