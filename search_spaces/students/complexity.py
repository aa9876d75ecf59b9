"""FLOPs (torch.utils.flop_counter: 2 x multiply-accumulates) and parameter counts of a student."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from search_spaces.students.student import TRACENET_WINDOW_FRACTION, TraceNetStudent, tap_window


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def student_flops(model: TraceNetStudent, image_hw: tuple[int, int], tap_xy: tuple[float, float] | None = None,
                  window_px: int | tuple[int, int] | None = None) -> int:
    """FLOPs of one tap on an image of `image_hw`: full frame, or traced to a `window_px` window."""
    h, w = image_hw
    tap = tap_xy if tap_xy is not None else (w / 2, h / 2)
    image = torch.zeros(1, 3, h, w)
    clicks = torch.tensor([[[tap[0], tap[1], 1.0]]])
    window = tap_window(image_hw, tap, window_px) if window_px is not None else None
    with FlopCounterMode(display=False) as counter:
        model(image, clicks, window=window)
    return counter.get_total_flops()


def arch_complexity(model: TraceNetStudent) -> dict:
    """Params and FLOPs of one centre tap on a square image at the architecture's resolution,
    full frame and traced to the default output window."""
    r = model.arch.resolution
    window = round(TRACENET_WINDOW_FRACTION * r)
    return {"params": count_params(model), "image_hw": [r, r], "window_px": window,
            "flops": student_flops(model, (r, r)), "flops_traced": student_flops(model, (r, r), window_px=window)}
