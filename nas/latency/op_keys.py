"""Traced op keys: the units a mobile runtime executes for one tap, with the shapes AutoCropping gives.

A unit is what a runtime runs as one kernel (nn-Meter's finding: runtimes fuse, so per-op sums are
wrong): a conv with the BatchNorm and activation that follow it, a squeeze-excitation block, an
elementwise add, a nearest upsample, the click encoding and the tap-conditioned head. Each key is
the unit's kind, its hyper-parameters (sorted by name) and its output height x width, e.g.

    conv[act=hswish,cin=5,cout=16,d=1,g=1,k=3,s=2]@96x128

Shapes are those of the *cropped* forward pass for the given image size, tap and output window:
the receptive-field plan's region of every node and the graph's channel counts (no arithmetic is
done, so a student built on the meta device is enough).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import timm.layers
import torch
import torch.fx
from torch import nn

from search_spaces.common.errors import TraceNASError
from search_spaces.modules.any_size_attention import Attention2dDownsample
from search_spaces.space import IN_CHANNELS, ArchConfig
from search_spaces.students.student import TraceNetStudent, output_cells
from search_spaces.tracing.tracer import ReceptiveFieldTracer, TracePlan

Attr = str | int
UnitAttrs = Callable[[nn.Module, int], dict[str, Attr]]  # (module, output channels) -> its key's attributes

_ZERO_COST = (nn.Identity, nn.Dropout, timm.layers.DropPath)  # identities at inference
# activations a conv's unit absorbs, and that `act` units price; any other per-pixel module needs an op kind
ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.GELU, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.Tanh,
                    nn.LeakyReLU)
_ACTIVATION_NAMES = {cls.__name__.lower() for cls in ACTIVATION_TYPES}
# modules traced as units of their own kind (`register_op_kind` with a module_type): type -> (kind, attributes)
UNIT_MODULES: dict[type, tuple[str, UnitAttrs]] = {}
_KEY_RE = re.compile(r"^(?P<kind>[a-z_][a-z0-9_]*)\[(?P<attrs>[^\]]*)\]@(?P<h>\d+)x(?P<w>\d+)$")


class OpKeyError(TraceNASError, ValueError):
    """A malformed op key string."""


@dataclass(frozen=True)
class OpKey:
    kind: str
    attrs: tuple[tuple[str, Attr], ...]
    out_hw: tuple[int, int]

    @classmethod
    def make(cls, kind: str, out_hw: tuple[int, int], **attrs: Attr) -> OpKey:
        return cls(kind, tuple(sorted(attrs.items())), (int(out_hw[0]), int(out_hw[1])))

    @property
    def config(self) -> str:
        """The key without its shape: one op configuration, measured at many shapes."""
        return f"{self.kind}[{','.join(f'{k}={v}' for k, v in self.attrs)}]"

    def attr(self, name: str) -> Attr:
        return dict(self.attrs)[name]

    def __str__(self) -> str:
        return f"{self.config}@{self.out_hw[0]}x{self.out_hw[1]}"

    @classmethod
    def parse(cls, text: str) -> OpKey:
        match = _KEY_RE.match(text)
        if not match:
            raise OpKeyError(f"malformed op key {text!r}; expected kind[name=value,...]@HxW")
        attrs = {}
        for item in filter(None, match["attrs"].split(",")):
            name, _, value = item.partition("=")
            if not name or not value:
                raise OpKeyError(f"malformed attribute {item!r} in op key {text!r}")
            attrs[name] = int(value) if value.lstrip("-").isdigit() else value
        if int(match["h"]) < 1 or int(match["w"]) < 1:
            raise OpKeyError(f"op key {text!r} has an empty output shape")
        key = cls.make(match["kind"], (int(match["h"]), int(match["w"])), **attrs)
        if str(key) != text:
            raise OpKeyError(f"op key {text!r} is not canonical; write it as {str(key)!r}")
        return key


def _act_name(module: nn.Module) -> str | None:
    """Name of the activation a pointwise leaf applies (None for BN-only or identity leaves)."""
    act = getattr(module, "act", module)  # timm's BatchNormAct2d carries its activation as .act
    if isinstance(act, _ZERO_COST) or isinstance(act, nn.modules.batchnorm._BatchNorm):
        return None
    if type(act).__name__.lower() not in _ACTIVATION_NAMES:  # by name: timm has its own GELU, ...
        raise OpKeyError(f"{type(act).__name__} is traced per pixel but is not an activation a table prices; give "
                         "it a unit of its own with register_op_kind(OpKind(..., module_type=...))")
    return type(act).__name__.lower()


def _group_attr(conv: nn.Conv2d) -> Attr:
    if conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels:
        return "dw"
    return conv.groups


def trunk_op_keys(tracer: ReceptiveFieldTracer, plan: TracePlan, in_channels: int) -> list[OpKey]:
    """Fused units of a traced module, in execution order, at the plan's cropped shapes."""
    module = tracer.module
    channels = tracer.channels(in_channels)
    # every planned node computes exactly its box (see ReceptiveFieldTracer.run)
    shapes = {node: (1, channels[node], box.h, box.w) for node, box in plan.boxes.items()}

    keys, fused = [], set()
    for node, op in tracer.ops.items():
        if node in fused or node not in plan.boxes or op.kind in ("input", "const", "output"):
            continue
        out = shapes[node]
        unit = module.get_submodule(node.target) if node.op == "call_module" else None
        if type(unit) in UNIT_MODULES:
            kind, attrs = UNIT_MODULES[type(unit)]
            keys.append(OpKey.make(kind, out[-2:], **attrs(unit, out[1])))
        elif op.kind == "window":
            m = module.get_submodule(node.target)
            act, tail = "none", node
            # fold the BN / activation chain that only this conv feeds, as runtimes do
            while len(tail.users) == 1:
                user = next(iter(tail.users))
                if (user.op != "call_module" or tracer.ops[user].kind != "pointwise"
                        or type(module.get_submodule(user.target)) in UNIT_MODULES):
                    break
                leaf = module.get_submodule(user.target)
                if not isinstance(leaf, (*_ZERO_COST, nn.modules.batchnorm._BatchNorm)) and _act_name(leaf) is None:
                    break
                act = _act_name(leaf) or act
                fused.add(user)
                tail, out = user, shapes[user]
            if isinstance(m, nn.Conv2d):
                keys.append(OpKey.make("conv", out[-2:], cin=m.in_channels, cout=m.out_channels,
                                       k=m.kernel_size[0], s=m.stride[0], d=m.dilation[0], g=_group_attr(m),
                                       act=act))
            else:
                keys.append(OpKey.make(f"{type(m).__name__.lower()}", out[-2:], c=out[1], k=op.window.kernel[0],
                                       s=op.window.stride[0], act=act))
        elif op.kind == "local_pool":
            m = module.get_submodule(node.target)
            convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
            keys.append(OpKey.make("se", out[-2:], c=out[1], rd=convs[0].out_channels if convs else 0))
        elif op.kind == "upsample":
            keys.append(OpKey.make("upsample", out[-2:], c=out[1], scale=op.scale))
        elif op.kind == "global":  # attention: one unit over its whole input map
            m = module.get_submodule(node.target)
            down = int(isinstance(m, Attention2dDownsample))
            keys.append(OpKey.make("attention", out[-2:], cin=channels[node.args[0]], cout=out[1], heads=m.num_heads,
                                   kd=m.key_dim, ratio=m.attn_ratio, down=down,
                                   s=1 if down or m.stride_conv is None else m.stride_conv.conv.stride[0]))
        elif node.op == "call_module":
            leaf = module.get_submodule(node.target)
            if isinstance(leaf, _ZERO_COST) or (_act_name(leaf) is None and not isinstance(
                    leaf, nn.modules.batchnorm._BatchNorm)):
                continue
            kind = "bn" if _act_name(leaf) is None else "act"
            keys.append(OpKey.make(kind, out[-2:], c=out[1], fn=_act_name(leaf) or "bn"))
        elif node.target is not operator.getitem:  # a channel slice is a view: no kernel runs
            name = node.target if isinstance(node.target, str) else node.target.__name__
            keys.append(OpKey.make("eltwise", out[-2:], c=out[1], fn=name.strip("_")))
    return keys


def arch_op_keys(arch: ArchConfig, image_hw: tuple[int, int], tap_xy: tuple[float, float],
                 window_px: int | None) -> list[OpKey]:
    """All units one tap runs on a student: click encoding, traced trunk, tap head."""
    with torch.device("meta"):
        model = TraceNetStudent(arch).eval()
    cells = output_cells(image_hw, tap_xy, window_px)
    plan = model.plan(image_hw, tap_xy, cells)
    box = plan.input_box
    keys = [OpKey.make("clicks", (box.h, box.w), c=IN_CHANNELS)]
    keys += trunk_op_keys(model.tracer, plan, IN_CHANNELS)
    keys.append(OpKey.make("tap_head", (cells.h, cells.w), f=arch.fpn_channels, cm=arch.mask_channels,
                           layers=arch.dyn_layers, hidden=arch.spec.dyn_hidden))
    return keys
