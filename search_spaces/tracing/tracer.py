"""Receptive-field tracing and AutoCropping (the TraceNet idea), derived from the module graph.

`ReceptiveFieldTracer(module)` symbolically traces any dense image-to-feature-maps module with
torch.fx and classifies each node by how it maps space: a *window* op (conv, pooling: kernel,
stride, padding, dilation), a *pointwise* op (norm, activation, add, channel concat), a nearest
*upsample*, a *local pool* (squeeze-excitation) or a *global* op (attention over the whole map).
Nothing is hard-coded per architecture, so it holds for every subnet and for user-defined modules
built from these ops.

`plan(input_hw, requests)` walks the graph backwards from the output windows and gives every node
the minimal region of its output that influences them. `run(plan, x)` executes the graph on those
regions only: each window op gets exactly the input rows/columns it reads, zero-padded only where
they fall outside the true map border, so the outputs inside the requested windows equal those of
the full forward pass. Squeeze-excitation pools over the traced region instead of the whole map;
`TracePlan.local_pools` names where that happens (the only source of deviation). A global op reads
its whole input map, so everything that feeds it runs full-frame and only what follows it (and the
branches that avoid it) is cropped; `TracePlan.global_ops` names them. Outputs stay exact.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from search_spaces.common.errors import TraceNASError
from search_spaces.tracing.box import Box
from search_spaces.tracing.rules import DEFAULT_RULES, TracingRules


class TracingError(TraceNASError, ValueError):
    """The module has an op whose receptive field cannot be derived (global, data-dependent, unknown)."""


class _LeafTracer(torch.fx.Tracer):
    """Keeps the rules' norm/activation/SE/attention modules whole in the graph."""

    def __init__(self, rules: TracingRules):
        super().__init__()
        self.leaf_types = rules.leaf_types

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaf_types) or super().is_leaf_module(m, qualname)


@dataclass(frozen=True)
class _Window:
    """Geometry of a sliding-window op along (rows, cols); `apply` runs it unpadded on a padded crop."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    pad_value: float
    apply: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]  # (crop, symmetric padding)

    def out_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                     for n, k, s, p, d in zip(hw, self.kernel, self.stride, self.padding, self.dilation, strict=True))

    def input_span(self, box: Box) -> Box:
        """Unclipped input rows/cols read by the output cells in `box` (may extend past the border)."""
        (ky, kx), (sy, sx), (py, px), (dy, dx) = self.kernel, self.stride, self.padding, self.dilation
        return Box(box.y0 * sy - py, (box.y1 - 1) * sy - py + dy * (ky - 1) + 1,
                   box.x0 * sx - px, (box.x1 - 1) * sx - px + dx * (kx - 1) + 1)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv_window(m: nn.Conv2d, name: str) -> _Window:
    if type(m).forward is not nn.Conv2d.forward or m.padding_mode != "zeros":
        raise TracingError(f"{name}: {type(m).__name__} pads dynamically or not with zeros; cannot crop exactly")
    kernel, dilation = _pair(m.kernel_size), _pair(m.dilation)
    if m.padding == "valid":
        padding = (0, 0)
    elif m.padding == "same":
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
        if any(d * (k - 1) % 2 for k, d in zip(kernel, dilation, strict=True)):
            raise TracingError(f"{name}: asymmetric 'same' padding is not supported")
    else:
        padding = _pair(m.padding)
    return _Window(kernel, _pair(m.stride), padding, dilation, 0.0,
                   lambda x, pad: F.conv2d(x, m.weight, m.bias, m.stride, pad, m.dilation, m.groups))


def _pool_window(m: nn.MaxPool2d | nn.AvgPool2d, name: str) -> _Window:
    if m.ceil_mode:
        raise TracingError(f"{name}: ceil_mode pooling is not supported")
    kernel, stride, padding = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
    if isinstance(m, nn.MaxPool2d):
        return _Window(kernel, stride, padding, _pair(m.dilation), float("-inf"),
                       lambda x, pad: F.max_pool2d(x, kernel, stride, pad, m.dilation))
    if not m.count_include_pad or m.divisor_override is not None:
        raise TracingError(f"{name}: average pooling must count padding (count_include_pad=True)")
    return _Window(kernel, stride, padding, (1, 1), 0.0, lambda x, pad: F.avg_pool2d(x, kernel, stride, pad))


def _nearest_scale(mode: str, size: object, scale: object, name: str) -> int:
    scales = scale if isinstance(scale, (tuple, list)) else (scale, scale)
    if mode != "nearest" or size is not None or scale is None or len(set(scales)) != 1 \
            or float(scales[0]) != int(scales[0]):
        raise TracingError(f"{name}: only nearest upsampling by an integer scale_factor can be traced")
    return int(scales[0])


def _channel_slice(node: torch.fx.Node) -> slice | None:
    """The channel slice of `x[:, a:b]` (a per-pixel channel selection, e.g. GhostNet's), else None."""
    if node.target is not operator.getitem or not isinstance(node.args[1], tuple):
        return None
    index = node.args[1]
    if len(index) < 2 or not isinstance(index[1], slice) or any(i != slice(None) for i in index[:1] + index[2:]):
        return None
    return index[1]


@dataclass(frozen=True)
class _Op:
    kind: str  # input | const | window | pointwise | upsample | local_pool | global | output
    window: _Window | None = None
    scale: int = 1


@dataclass
class TracePlan:
    """Where every node of the graph must be computed for one input size and set of output windows."""

    input_hw: tuple[int, int]
    input_box: Box
    boxes: dict[torch.fx.Node, Box]
    sizes: dict[torch.fx.Node, tuple[int, int]]
    output_boxes: tuple[Box | None, ...]
    local_pools: list[str] = field(default_factory=list)
    global_ops: list[str] = field(default_factory=list)  # computed on their whole input map

    @property
    def exact(self) -> bool:
        """True when no squeeze-excitation pools inside the traced region (outputs are then exact)."""
        return not self.local_pools

    def region_fraction(self) -> float:
        """Traced share of the input image."""
        return self.input_box.area / (self.input_hw[0] * self.input_hw[1])


class ReceptiveFieldTracer:
    """Traces a module that maps one (B, C, H, W) input to a tuple of feature maps."""

    def __init__(self, module: nn.Module, rules: TracingRules = DEFAULT_RULES):
        self.module, self.rules = module, rules
        self.graph = _LeafTracer(rules).trace(module)
        self.ops: dict[torch.fx.Node, _Op] = {}
        for node in self.graph.nodes:  # in order: a node's inputs are classified before it
            self.ops[node] = self._classify(node)
        if sum(op.kind == "input" for op in self.ops.values()) != 1:
            raise TracingError("the traced module must take exactly one input tensor")

    # ---------------------------------------------------------------- classification
    def _classify(self, node: torch.fx.Node) -> _Op:
        if node.op == "placeholder":
            return _Op("input")
        if node.op == "get_attr":
            return _Op("const")
        if node.op != "output" and node.all_input_nodes and all(self.ops[n].kind == "const"
                                                                 for n in node.all_input_nodes):
            return _Op("const")  # arithmetic on parameters only (e.g. a layer scale's reshape)
        if node.op == "output":
            return _Op("output")
        name = node.format_node()
        if node.op == "call_module":
            m = self.module.get_submodule(node.target)
            if isinstance(m, nn.Conv2d):
                return _Op("window", _conv_window(m, node.target))
            if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                return _Op("window", _pool_window(m, node.target))
            if isinstance(m, nn.Upsample):
                return _Op("upsample", scale=_nearest_scale(m.mode, m.size, m.scale_factor, node.target))
            if isinstance(m, self.rules.local_pool_modules):
                return _Op("local_pool")
            if self.rules.global_rule(m) is not None:
                return _Op("global")
            if isinstance(m, self.rules.pointwise_modules):
                return _Op("pointwise")
            raise TracingError(f"{node.target} ({type(m).__name__}) is not a known local op; "
                               "declare it with TracingRules.with_pointwise/with_local_pool if it is")
        if node.op == "call_function":
            if node.target is F.interpolate:
                kw = dict(zip(("input", "size", "scale_factor", "mode"), node.args, strict=False)) | node.kwargs
                return _Op("upsample", scale=_nearest_scale(kw.get("mode", "nearest"), kw.get("size"),
                                                            kw.get("scale_factor"), name))
            if node.target is torch.cat:
                dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
                if dim not in (1, -3):
                    raise TracingError(f"{name}: only channel concatenation (dim=1) can be traced")
            if node.target in self.rules.pointwise_functions or _channel_slice(node) is not None:
                return _Op("pointwise")
        if node.op == "call_method" and node.target in self.rules.pointwise_methods:
            return _Op("pointwise")
        raise TracingError(f"{name} is not a known local op (global pooling, reshape or unknown function)")

    # ---------------------------------------------------------------- planning
    def _spatial_inputs(self, node: torch.fx.Node, sizes: dict) -> list[torch.fx.Node]:
        return [n for n in node.all_input_nodes if n in sizes]

    def _sizes(self, input_hw: tuple[int, int]) -> dict[torch.fx.Node, tuple[int, int]]:
        """Spatial size of every feature-map node (forward pass over shapes only)."""
        sizes: dict[torch.fx.Node, tuple[int, int]] = {}
        for node, op in self.ops.items():
            if op.kind == "input":
                sizes[node] = tuple(input_hw)
                continue
            args = self._spatial_inputs(node, sizes)
            if op.kind in ("const", "output") or not args:
                continue
            if op.kind == "window":
                sizes[node] = op.window.out_size(sizes[args[0]])
            elif op.kind == "upsample":
                sizes[node] = tuple(n * op.scale for n in sizes[args[0]])
            elif op.kind == "global":
                module = self.module.get_submodule(node.target)
                sizes[node] = tuple(self.rules.global_rule(module).out_hw(module, sizes[args[0]]))
            else:
                if len({sizes[a] for a in args}) != 1:
                    raise TracingError(f"{node.format_node()}: inputs of different spatial sizes "
                                       f"{[sizes[a] for a in args]} (broadcast over space is not local)")
                sizes[node] = sizes[args[0]]
            if min(sizes[node]) < 1:
                raise TracingError(f"input {tuple(input_hw)} is too small: {node.name} would be empty")
        return sizes

    def channels(self, in_channels: int) -> dict[torch.fx.Node, int]:
        """Channel count of every feature-map node for an input of `in_channels` (no arithmetic)."""
        channels: dict[torch.fx.Node, int] = {}
        for node, op in self.ops.items():
            if op.kind == "input":
                channels[node] = in_channels
                continue
            args = [channels[n] for n in node.all_input_nodes if n in channels]
            if op.kind in ("const", "output") or not args:
                continue
            module = self.module.get_submodule(node.target) if node.op == "call_module" else None
            if isinstance(module, nn.Conv2d):
                channels[node] = module.out_channels
            elif op.kind == "global":
                channels[node] = self.rules.global_rule(module).out_channels(module, args[0])
            elif _channel_slice(node) is not None:
                channels[node] = len(range(*_channel_slice(node).indices(args[0])))
            elif node.target is torch.cat:
                channels[node] = sum(args)
            else:  # pooling, upsampling, norms, activations, broadcasting arithmetic
                channels[node] = max(args)
        return channels

    def output_sizes(self, input_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Spatial size of each output for an input of `input_hw`."""
        sizes = self._sizes(input_hw)
        return [sizes[node] for node in self._outputs()]

    def plan(self, input_hw: tuple[int, int], requests: Sequence[Box | None], dense: bool = False) -> TracePlan:
        """Regions to compute so that output `i` is exact inside `requests[i]` (None: output not needed).

        `dense`: every node that feeds a request is computed whole, as the full forward computes it (the
        traced region can be a row short of the map, e.g. before a 1x1 stride-2 conv, which would then
        price and run other shapes than the network it stands for)."""
        sizes = self._sizes(input_hw)
        outputs = self._outputs()
        if len(requests) != len(outputs):
            raise TracingError(f"{len(requests)} output windows given for {len(outputs)} outputs")
        boxes: dict[torch.fx.Node, Box] = {}
        output_boxes = tuple(None if box is None else box.clip(*sizes[node])
                             for node, box in zip(outputs, requests, strict=True))
        for node, box in zip(outputs, output_boxes, strict=True):
            if box is not None:
                if box.area == 0:
                    raise TracingError(f"output window lies outside the {sizes[node]} output map")
                boxes[node] = box.union(boxes.get(node))
        for node in reversed(self.graph.nodes):
            if node not in boxes:
                continue
            op, box = self.ops[node], boxes[node]
            for arg in self._spatial_inputs(node, sizes):
                if op.kind == "window":
                    need = op.window.input_span(box)
                elif op.kind == "upsample":
                    need = box.coarsened(op.scale)
                elif op.kind == "global":
                    need = Box.full(*sizes[arg])
                else:
                    need = box
                boxes[arg] = need.clip(*sizes[arg]).union(boxes.get(arg))
        if dense:
            boxes = {node: Box.full(*sizes[node]) if node in sizes else box for node, box in boxes.items()}
        input_node = next(n for n, op in self.ops.items() if op.kind == "input")
        local_pools = [str(n.target) for n in boxes if self.ops[n].kind == "local_pool"]
        global_ops = [str(n.target) for n in self.graph.nodes if n in boxes and self.ops[n].kind == "global"]
        return TracePlan(tuple(input_hw), boxes[input_node], boxes, sizes, output_boxes, local_pools, global_ops)

    # ---------------------------------------------------------------- cropped execution
    def run(self, plan: TracePlan, x: torch.Tensor,
            observe: Callable[[torch.fx.Node, object], None] | None = None) -> tuple[torch.Tensor, ...]:
        """Execute on `x`, the input cropped to `plan.input_box`; returns each output cut to its window.

        `observe(node, value)` sees every computed value (e.g. to record the cropped shapes)."""
        if tuple(x.shape[-2:]) != (plan.input_box.h, plan.input_box.w):
            raise TracingError(f"input crop is {tuple(x.shape[-2:])}, the plan needs "
                             f"{(plan.input_box.h, plan.input_box.w)} for {plan.input_box}")
        env: dict[torch.fx.Node, object] = {}

        def cropped(node: torch.fx.Node, box: Box) -> object:
            if node not in plan.sizes or box == plan.boxes[node]:
                return env[node]  # no Slice op, so exported graphs keep conv-BN-activation fusable
            rows, cols = box.relative_to(plan.boxes[node])
            return env[node][..., rows, cols]

        for node, op in self.ops.items():
            if op.kind == "input":
                env[node] = x
            elif op.kind == "const" and node.op == "get_attr":
                env[node] = functools.reduce(getattr, node.target.split("."), self.module)
            elif op.kind == "const":
                env[node] = self._call(node, torch.fx.node.map_arg(node.args, env.__getitem__),
                                       torch.fx.node.map_arg(node.kwargs, env.__getitem__))
            elif op.kind == "output":
                return tuple(None if box is None else cropped(n, box)
                             for n, box in zip(self._outputs(), plan.output_boxes, strict=True))
            elif node in plan.sizes and node not in plan.boxes:
                continue  # feeds no requested window
            elif op.kind == "window":
                env[node] = self._run_window(op.window, node, plan, env)
            elif op.kind == "global":  # its whole input map is planned; keep the part that is needed
                out = self._call(node, (env[node.args[0]],), {})
                h, w = plan.sizes[node]
                box = plan.boxes[node]
                env[node] = out if (box.h, box.w) == (h, w) else out[..., box.y0:box.y1, box.x0:box.x1]
            elif op.kind == "upsample":
                box, s = plan.boxes[node], op.scale
                src = box.coarsened(s)
                up = F.interpolate(cropped(node.args[0], src), scale_factor=float(s), mode="nearest")
                top, left = box.y0 - src.y0 * s, box.x0 - src.x0 * s
                if (top, left, box.h, box.w) != (0, 0, *up.shape[-2:]):  # a full-range slice exports as an alias
                    up = up[..., top:top + box.h, left:left + box.w]
                env[node] = up
            else:  # pointwise or local pool: every spatial input cut to this node's region
                region = functools.partial(cropped, box=plan.boxes[node]) if node in plan.boxes else env.__getitem__
                args = torch.fx.node.map_arg(node.args, region)
                kwargs = torch.fx.node.map_arg(node.kwargs, region)
                env[node] = self._call(node, args, kwargs)
            if observe is not None and node in env:
                observe(node, env[node])
        raise TracingError("graph has no output node")

    def _outputs(self) -> tuple[torch.fx.Node, ...]:
        output = next(n for n, op in self.ops.items() if op.kind == "output")
        return tuple(output.args[0]) if isinstance(output.args[0], (tuple, list)) else (output.args[0],)

    def _run_window(self, window: _Window, node: torch.fx.Node, plan: TracePlan, env: dict) -> torch.Tensor:
        src = node.args[0]
        span = window.input_span(plan.boxes[node])
        h, w = plan.sizes[src]
        inside = span.clip(h, w)
        x = env[src]
        if inside != plan.boxes[src]:
            rows, cols = inside.relative_to(plan.boxes[src])
            x = x[..., rows, cols]
        # padding only where the region crosses the true border of the map; when it is symmetric
        # the op pads itself (no extra copy), otherwise pad explicitly
        left, right, top, bottom = inside.x0 - span.x0, span.x1 - inside.x1, inside.y0 - span.y0, span.y1 - inside.y1
        if left == right and top == bottom:
            return window.apply(x, (top, left))
        return window.apply(F.pad(x, (left, right, top, bottom), value=window.pad_value), (0, 0))

    def _call(self, node: torch.fx.Node, args: tuple, kwargs: dict) -> object:
        if node.op == "call_module":
            return self.module.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)
