"""What each listed fixed backbone supports as a student: its size, how tracing crops it, its FLOPs
(the report behind `nas space show --fixed` and the fixed baselines of a search)."""

from __future__ import annotations

import torch

from search_spaces.space import ArchConfig, UnknownSpaceError
from search_spaces.space.fixed import FIXED_PREFIX
from search_spaces.students.complexity import arch_complexity
from search_spaces.students.student import TRACENET_WINDOW_FRACTION, TraceNetStudent, output_cells
from search_spaces.tracing.tracer import TracingError


def describe_fixed(name: str, flops: bool = False) -> dict:
    """A listed backbone's status: parameters of its smallest student, how tracing crops it and, with
    `flops`, the FLOPs of one centre tap full-frame and traced (`arch_complexity`)."""
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
                                                              round(TRACENET_WINDOW_FRACTION * r)))
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
