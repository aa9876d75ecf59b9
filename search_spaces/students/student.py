"""The TraceNet-style student: backbone + FPN + mask branch (the traced trunk) and the tap head.

Inputs are a normalised image (B, 3, H, W) with H and W multiples of 32, and clicks (B, N, 3) as
rows `[x, y, label]` in pixels (label 1 positive, 0 negative, -1 padding); the first click is the
tap and must be positive. The click maps enter the backbone with the image; the tap also drives
the head's controller. `forward(image, clicks)` computes the full mask; with `window=` it computes
only the receptive field of that window (AutoCropping) and returns the window's logits.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from search_spaces.common.errors import InvalidValueError
from search_spaces.modules.backbone import Backbone
from search_spaces.modules.head import POSITIVE, TapHead, TapOutput, encode_clicks, relative_coords
from search_spaces.modules.neck import FPN, MaskBranch
from search_spaces.modules.timm_backbone import TimmBackbone
from search_spaces.space import ArchConfig
from search_spaces.tracing.box import Box
from search_spaces.tracing.tracer import ReceptiveFieldTracer, TracePlan

MASK_STRIDE = 8  # P3: the mask logits' stride
TAP_STRIDE = 32  # P5: where the controller reads the tap
SIZE_MULTIPLE = 32
# The output a tap computes by default: the whole object (None: every output cell). A fraction of the
# network resolution instead computes only a square window around the tap (TraceNet's fixed window);
# `benchmarks/window_ceiling.py` measures what each choice caps IoU at and costs.
DEFAULT_WINDOW: float | None = None
TRACENET_WINDOW_FRACTION = 0.5  # TraceNet's fixed window, the one tracing reports quote their savings at


class Trunk(nn.Module):
    """Dense part: (B, 5, H, W) image + click maps -> (mask features at stride 8, P5 at stride 32)."""

    def __init__(self, arch: ArchConfig):
        super().__init__()
        if arch.spec.backbone is not None:
            self.backbone: nn.Module = TimmBackbone(arch.spec.backbone)
        else:
            self.backbone = Backbone(arch)
        self.fpn = FPN(self.backbone.out_channels, arch.fpn_channels)
        self.mask_branch = MaskBranch(arch.fpn_channels, arch.mask_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p3, p5 = self.fpn(self.backbone(x))
        return self.mask_branch(p3), p5


def tap_window(image_hw: tuple[int, int], tap_xy: tuple[float, float], size_px: int | tuple[int, int]) -> Box:
    """The output window (cells at the mask stride) of `size_px` around the tap, kept inside the image."""
    sh, sw = (size_px, size_px) if isinstance(size_px, int) else size_px
    cells = (-(-sh // MASK_STRIDE), -(-sw // MASK_STRIDE))
    grid = (image_hw[0] // MASK_STRIDE, image_hw[1] // MASK_STRIDE)
    center = (int(tap_xy[1]) // MASK_STRIDE, int(tap_xy[0]) // MASK_STRIDE)
    return Box.window(center, cells, grid)


def output_cells(image_hw: tuple[int, int], tap_xy: tuple[float, float], window_px: int | None) -> Box:
    """The output cells one tap computes: a window of `window_px` around it, or the whole grid (None)."""
    if window_px is None:
        return Box.full(image_hw[0] // MASK_STRIDE, image_hw[1] // MASK_STRIDE)
    return tap_window(image_hw, tap_xy, window_px)


class TraceNetStudent(nn.Module):
    """A plain, standalone student for one `ArchConfig` (what the supernet extracts and what ships)."""

    def __init__(self, arch: ArchConfig):
        super().__init__()
        self.arch = arch
        self.trunk = Trunk(arch)
        self.head = TapHead(arch.fpn_channels, arch.mask_channels, arch.dyn_layers, arch.spec.dyn_hidden)

    @functools.cached_property
    def tracer(self) -> ReceptiveFieldTracer:
        return ReceptiveFieldTracer(self.trunk)

    def __getstate__(self) -> dict:
        # a copy (copy.deepcopy, timm's EMA, pickling) traces its own trunk: the cached tracer's graph
        # and its windows' closures belong to this one's, and a copy of them runs this trunk's layers
        # or fails on a traced forward
        state = self.__dict__.copy()
        state.pop("tracer", None)
        return state

    def plan(self, image_hw: tuple[int, int], tap_xy: tuple[float, float], window: Box) -> TracePlan:
        """Receptive-field plan for one tap: the window of mask features plus the P5 cell under the tap. A
        window of the whole grid is the full forward (a dense plan: every map computed whole)."""
        cy = min(int(tap_xy[1]) // TAP_STRIDE, image_hw[0] // TAP_STRIDE - 1)
        cx = min(int(tap_xy[0]) // TAP_STRIDE, image_hw[1] // TAP_STRIDE - 1)
        full = window == Box.full(image_hw[0] // MASK_STRIDE, image_hw[1] // MASK_STRIDE)
        return self.tracer.plan(image_hw, (window, Box(cy, cy + 1, cx, cx + 1)), dense=full)

    def forward(self, image: torch.Tensor, clicks: torch.Tensor, window: Box | None = None) -> TapOutput:
        h, w = _check_inputs(image, clicks)
        taps = clicks[:, 0, :2]
        if window is None:
            mask_features, p5 = self.trunk(torch.cat([image, encode_clicks(clicks, Box.full(h, w))], dim=1))
            cy = (taps[:, 1] // TAP_STRIDE).long().clamp(0, p5.shape[-2] - 1)
            cx = (taps[:, 0] // TAP_STRIDE).long().clamp(0, p5.shape[-1] - 1)
            tap_feature = p5[torch.arange(p5.shape[0]), :, cy, cx]
            cells = Box.full(*mask_features.shape[-2:])
        else:
            if image.shape[0] != 1:
                raise InvalidValueError(f"a windowed (traced) forward takes one image, got a batch of {image.shape[0]}")
            plan = self.plan((h, w), tuple(taps[0].tolist()), window)
            rows, cols = plan.input_box.relative_to(Box.full(h, w))
            x = torch.cat([image[..., rows, cols], encode_clicks(clicks, plan.input_box)], dim=1)
            mask_features, p5_cell = self.tracer.run(plan, x)
            tap_feature = p5_cell[:, :, 0, 0]
            cells = window
        logits, iou = self.head(mask_features, tap_feature, relative_coords(taps, cells, MASK_STRIDE))
        return TapOutput(logits, iou, cells)


def _check_inputs(image: torch.Tensor, clicks: torch.Tensor) -> tuple[int, int]:
    if image.ndim != 4 or image.shape[1] != 3:
        raise InvalidValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or h == 0 or w == 0:
        raise InvalidValueError(f"image height and width must be positive multiples of {SIZE_MULTIPLE}, got {h}x{w}")
    if clicks.ndim != 3 or clicks.shape[0] != image.shape[0] or clicks.shape[2] != 3 or clicks.shape[1] == 0:
        raise InvalidValueError(f"clicks must be (B, N>=1, 3) rows of [x, y, label], got {tuple(clicks.shape)}")
    if not bool((clicks[:, 0, 2] == POSITIVE).all()):
        raise InvalidValueError("the first click of every sample is the tap and must be positive")
    return h, w
