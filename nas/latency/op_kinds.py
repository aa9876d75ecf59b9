"""The op kinds a latency table prices, in one registry every latency module reads.

An `OpKind` says everything TraceNAS knows about one kind of unit (`OpKey.kind`): the
hyper-parameters its keys carry, the coarse class a calibration scales it by, how profiling builds
a module that runs exactly that unit, whether one exported program serves every shape, and how
in-context profiling finds its nodes in an exported ONNX graph. Adding a kind is one
`register_op_kind(OpKind(...))`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nas.latency.op_keys import ACTIVATION_TYPES, UNIT_MODULES, OpKey, OpKeyError, UnitAttrs
from search_spaces.common.errors import TraceNASError
from search_spaces.modules.backbone import SE_LAYER
from search_spaces.modules.head import TapHead, encode_clicks, relative_coords
from search_spaces.students.student import MASK_STRIDE
from search_spaces.tracing.box import Box
from search_spaces.tracing.rules import DEFAULT_RULES, TracingRules

Builder = Callable[[OpKey], tuple[nn.Module, tuple[torch.Tensor, ...]]]


@dataclass(frozen=True)
class Activation:
    """An activation as op keys name it (the class name, lower-cased), its module and its ONNX nodes."""

    module: type[nn.Module]
    onnx_nodes: tuple[str, ...] | None  # what the TorchScript exporter (opset 18) writes, in order; None: no rule
    qdq_nodes: tuple[str, ...] | None = None  # the same in an int8 (QDQ) program; None: no rule


# a fused activation's ONNX nodes must follow its anchor in order: a GELU is five nodes
_ONNX_ACTIVATION_NODES = {nn.ReLU: ("Relu",), nn.ReLU6: ("Clip",), nn.Hardswish: ("HardSwish",),
                          nn.GELU: ("Div", "Erf", "Add", "Mul", "Mul")}
# where quantization changes them (`quantized.quantize_onnx`): quantize_static folds a ReLU that feeds a
# QuantizeLinear into the quantization range
_QDQ_ACTIVATION_NODES = {nn.ReLU: (), nn.Hardswish: ("HardSwish",)}
ACTIVATIONS = {"none": Activation(nn.Identity, (), ()),
               **{cls.__name__.lower(): Activation(cls, _ONNX_ACTIVATION_NODES.get(cls), _QDQ_ACTIVATION_NODES.get(cls))
                  for cls in ACTIVATION_TYPES}}
ELTWISE_ONNX = {"add": "Add", "mul": "Mul", "sub": "Sub", "cat": "Concat"}


class ContextProfileError(TraceNASError, ValueError):
    """A program whose exported graph cannot be matched to its op keys (or a unit with no ONNX rule)."""


@dataclass(frozen=True)
class OpKind:
    name: str
    attrs: tuple[str, ...]  # the hyper-parameters in its keys
    build: Builder  # a module that runs exactly the unit, with example inputs of the right shape
    shape_free: bool = True  # its module does not depend on the shape, so one program serves a shape ladder
    calibration_class: Callable[[OpKey], str] | None = None  # the class a calibration scales; None: the kind
    onnx_anchor: Callable[[OpKey], str | None] | None = None  # the ONNX op type its unit starts with
    onnx_activation: str | None = None  # the attribute naming the activation whose nodes follow the anchor
    onnx_closer: str = ""  # the unit owns every node up to this op type (an SE runs to its gate's Mul)
    module_type: type | None = None  # a module traced as one unit of this kind (not fused into a conv)
    key_attrs: UnitAttrs | None = None  # the attributes of that module's key, from it and its output channels
    tracing: str = "pointwise"  # how the tracer maps that module's space: "pointwise" or "local_pool"

    def calibration_class_of(self, key: OpKey) -> str:
        return self.calibration_class(key) if self.calibration_class else self.name

    def onnx_nodes(self, key: OpKey, precision: str = "fp32") -> tuple[str, ...]:
        """The ONNX op types the unit starts with in an exported program of `precision` (quantize and
        dequantize nodes aside): its anchor, then the nodes of its activation."""
        anchor = self.onnx_anchor(key) if self.onnx_anchor else None
        if anchor is None and self.onnx_activation is None:
            what = f"eltwise {key.attr('fn')!r} units" if self.name == "eltwise" else f"{self.name!r} units"
            raise ContextProfileError(f"in-context profiling has no rule for {what} (op key {key})")
        nodes: tuple[str, ...] | None = ()
        if self.onnx_activation is not None:
            fn = str(key.attr(self.onnx_activation))
            activation = ACTIVATIONS.get(fn)
            if activation is not None:
                nodes = activation.qdq_nodes if precision == "int8" else activation.onnx_nodes
            else:
                nodes = None
            if nodes is None:
                raise ContextProfileError(f"in-context profiling has no rule for the activation {fn!r} in {precision} "
                                          f"programs (op key {key})")
        unit = ((anchor,) if anchor else ()) + nodes
        if not unit:
            raise ContextProfileError(f"{key} has no node of its own in a {precision} program")
        return unit


def _act(name: object) -> nn.Module:
    if str(name) not in ACTIVATIONS:
        raise OpKeyError(f"no activation {name!r} to profile (known: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[str(name)].module()


# ---------------------------------------------------------------- builders
def _conv(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    a, (h, w) = dict(key.attrs), key.out_hw
    k, s, d, cin, cout = int(a["k"]), int(a["s"]), int(a["d"]), int(a["cin"]), int(a["cout"])
    groups = cin if a["g"] == "dw" else int(a["g"])
    span = d * (k - 1) + 1  # the cropped forward runs convs unpadded on a padded crop
    module = nn.Sequential(nn.Conv2d(cin, cout, k, s, 0, d, groups, bias=True), _act(a["act"]))
    return module, (torch.randn(1, cin, (h - 1) * s + span, (w - 1) * s + span),)


def _pool(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    a, (h, w) = dict(key.attrs), key.out_hw
    k, s = int(a["k"]), int(a["s"])
    pool = nn.MaxPool2d(k, s) if key.kind == "maxpool2d" else nn.AvgPool2d(k, s)
    return nn.Sequential(pool, _act(a["act"])), (torch.randn(1, int(a["c"]), (h - 1) * s + k, (w - 1) * s + k),)


def _se(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    c, rd = int(key.attr("c")), int(key.attr("rd"))
    return SE_LAYER(c, rd_channels=rd), (torch.randn(1, c, *key.out_hw),)


class _Eltwise(nn.Module):
    """One two-input elementwise unit, each `fn` computed as itself (`cat` joins two halves of `c` channels)."""

    def __init__(self, fn: str):
        super().__init__()
        self.fn = fn

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.fn == "add":
            return a + b
        if self.fn == "sub":
            return a - b
        if self.fn == "mul":
            return a * b
        return torch.cat([a, b], dim=1)


def _eltwise(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    c, fn = int(key.attr("c")), str(key.attr("fn"))
    if fn not in ELTWISE_ONNX:
        raise OpKeyError(f"op key {key}: no profiling builder for eltwise fn={fn!r} (known: {', '.join(ELTWISE_ONNX)})")
    inputs = (c // 2, c - c // 2) if fn == "cat" else (c, c)
    return _Eltwise(fn), tuple(torch.randn(1, n, *key.out_hw) for n in inputs)


class _Upsample(nn.Module):
    """Nearest upsampling cut to the output size, as the cropped forward does."""

    def __init__(self, scale: int, h: int, w: int):
        super().__init__()
        self.scale, self.h, self.w = scale, h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=float(self.scale), mode="nearest")[..., : self.h, : self.w]


def _upsample(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    (h, w), s = key.out_hw, int(key.attr("scale"))
    return _Upsample(s, h, w), (torch.randn(1, int(key.attr("c")), math.ceil(h / s), math.ceil(w / s)),)


class _Clicks(nn.Module):
    """Click maps over the image crop, concatenated to it (the student's input stage). The region is
    the crop's own size, so one exported program serves every size."""

    def forward(self, image: torch.Tensor, clicks: torch.Tensor) -> torch.Tensor:
        return torch.cat([image, encode_clicks(clicks, Box.full(*image.shape[-2:]))], dim=1)


def _clicks(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    h, w = key.out_hw
    clicks = torch.tensor([[[w / 2, h / 2, 1.0], [w / 4, h / 4, 0.0]]])
    return _Clicks(), (torch.randn(1, int(key.attr("c")) - 2, h, w), clicks)


class _Head(nn.Module):
    """Relative coordinates + the tap-conditioned head over the window of cells `mask_features` covers."""

    def __init__(self, f: int, cm: int, layers: int, hidden: int):
        super().__init__()
        self.head = TapHead(f, cm, layers, hidden)

    def forward(self, mask_features: torch.Tensor, tap_feature: torch.Tensor, tap: torch.Tensor) -> torch.Tensor:
        coords = relative_coords(tap, Box.full(*mask_features.shape[-2:]), MASK_STRIDE)
        return self.head(mask_features, tap_feature, coords)[0]


def _tap_head(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    a, (h, w) = dict(key.attrs), key.out_hw
    f, cm = int(a["f"]), int(a["cm"])
    module = _Head(f, cm, int(a["layers"]), int(a["hidden"]))
    return module, (torch.randn(1, cm, h, w), torch.randn(1, f), torch.tensor([[w * 4.0, h * 4.0]]))


def _gpool(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    ih, iw = (int(v) for v in str(key.attr("in")).split("x"))
    return nn.AdaptiveAvgPool2d(1), (torch.randn(1, int(key.attr("c")), ih, iw),)


def _linear(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return nn.Linear(int(key.attr("cin")), int(key.attr("cout"))), (torch.randn(1, int(key.attr("cin"))),)


def _attention(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """EfficientFormerV2's attention, made to run at any size."""
    from timm.models.efficientformer_v2 import Attention2d, Attention2dDownsample

    from search_spaces.modules.any_size_attention import adapt_attention

    a, (h, w) = dict(key.attrs), key.out_hw
    cin, kd, heads, ratio, s = (int(a[n]) for n in ("cin", "kd", "heads", "ratio", "s"))
    down = bool(int(a["down"]))
    module = adapt_attention(Attention2dDownsample(cin, kd, heads, ratio, out_dim=int(a["cout"])) if down
                             else Attention2d(cin, kd, heads, ratio, stride=s if s > 1 else None)).eval()
    return module, (torch.randn(1, cin, 2 * h if down else h, 2 * w if down else w),)


def _norm_or_act(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    c = int(key.attr("c"))
    layer = nn.BatchNorm2d(c).eval() if key.kind == "bn" else _act(key.attr("fn"))
    return layer, (torch.randn(1, c, *key.out_hw),)


def _conv_class(key: OpKey) -> str:
    """Depthwise, pointwise and spatial convs scale differently between devices, and depthwise convs of
    each kernel size differently again (ExecuTorch-XNNPACK runs them 4-27x slower than ONNX Runtime
    on this host, depending on the kernel)."""
    if key.attr("g") == "dw":
        return f"conv_dw_k{key.attr('k')}"
    return "conv_1x1" if key.attr("k") == 1 else "conv_kxk"


OP_KINDS: dict[str, OpKind] = {kind.name: kind for kind in (
    OpKind("conv", ("act", "cin", "cout", "d", "g", "k", "s"), _conv, calibration_class=_conv_class,
           onnx_anchor=lambda key: "Conv", onnx_activation="act"),
    OpKind("maxpool2d", ("act", "c", "k", "s"), _pool),
    OpKind("avgpool2d", ("act", "c", "k", "s"), _pool),
    OpKind("se", ("c", "rd"), _se, onnx_anchor=lambda key: "ReduceMean", onnx_closer="Mul"),
    OpKind("eltwise", ("c", "fn"), _eltwise, onnx_anchor=lambda key: ELTWISE_ONNX.get(str(key.attr("fn")))),
    OpKind("upsample", ("c", "scale"), _upsample, shape_free=False, onnx_anchor=lambda key: "Resize"),
    OpKind("clicks", ("c",), _clicks),
    # its dynamic 1x1 convs reshape over height and width, which XNNPACK cannot make dynamic
    OpKind("tap_head", ("cm", "f", "hidden", "layers"), _tap_head, shape_free=False),
    OpKind("act", ("c", "fn"), _norm_or_act, onnx_activation="fn"),
    OpKind("bn", ("c", "fn"), _norm_or_act, onnx_anchor=lambda key: "BatchNormalization"),
    OpKind("attention", ("cin", "cout", "down", "heads", "kd", "ratio", "s"), _attention, shape_free=False),
    OpKind("gpool", ("c", "in"), _gpool, shape_free=False),  # global average pooling (classifier tails)
    OpKind("linear", ("cin", "cout"), _linear, shape_free=False),
)}


def register_op_kind(kind: OpKind) -> OpKind:
    """Add (or replace) an op kind; profiling, calibration, features and in-context matching then know it.
    With a `module_type`, op keys trace every such module as one unit of this kind, and
    `tracing_rules()` declares it to the tracer."""
    if kind.tracing not in ("pointwise", "local_pool"):
        raise OpKeyError(f"op kind {kind.name!r}: tracing must be 'pointwise' or 'local_pool', not {kind.tracing!r}")
    if (kind.module_type is None) != (kind.key_attrs is None):
        raise OpKeyError(f"op kind {kind.name!r}: module_type and key_attrs go together")
    OP_KINDS[kind.name] = kind
    if kind.module_type is not None:
        UNIT_MODULES[kind.module_type] = (kind.name, kind.key_attrs)
    return kind


def tracing_rules(rules: TracingRules = DEFAULT_RULES) -> TracingRules:
    """`rules` extended with the module of every registered op kind that has one, so a tracer built with
    them traces networks that use those modules."""
    for kind in OP_KINDS.values():
        if kind.module_type is not None and kind.module_type not in rules.leaf_types:
            rules = (rules.with_pointwise(kind.module_type) if kind.tracing == "pointwise"
                     else rules.with_local_pool(kind.module_type))
    return rules


def op_kind(key: OpKey) -> OpKind:
    """The registered kind of `key`; a key of an unknown kind or with other hyper-parameters is an error."""
    kind = OP_KINDS.get(key.kind)
    if kind is None:
        raise OpKeyError(f"no op kind '{key.kind}' is registered ({key}); known: {', '.join(sorted(OP_KINDS))}")
    if tuple(name for name, _ in key.attrs) != tuple(sorted(kind.attrs)):
        raise OpKeyError(f"op key {key} does not carry the attributes of '{kind.name}': {sorted(kind.attrs)}")
    return kind


def op_module(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A module that runs exactly the unit `key`, with example inputs of the right shape."""
    return op_kind(key).build(key)
