"""`TracedTap`: a student frozen to one image size, tap cell and output window: the static program
a phone runs (and what `nas latency validate` and export time end to end).

Inputs are the image cropped to the traced input region and the clicks in full-image pixels;
outputs are the window's mask logits and the IoU logit. Everything input-dependent in the Python
forward (the plan) is fixed at construction, so torch.export / ONNX export see a plain graph.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces.modules.head import encode_clicks, relative_coords
from search_spaces.students.student import MASK_STRIDE, TraceNetStudent, output_cells


class TracedTap(nn.Module):
    def __init__(self, model: TraceNetStudent, image_hw: tuple[int, int], tap_xy: tuple[float, float],
                 window_px: int | None):
        super().__init__()
        self.model = model.eval()
        self.cells = output_cells(image_hw, tap_xy, window_px)
        self.plan = model.plan(image_hw, tap_xy, self.cells)
        self.input_box = self.plan.input_box

    def example_inputs(self, n_clicks: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """An image crop of the right size and `n_clicks` clicks, the first being the tap."""
        box = self.input_box
        clicks = torch.tensor([[[(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, 1.0]] + [[box.x0, box.y0, 0.0]] *
                               (n_clicks - 1)])
        return torch.randn(1, 3, box.h, box.w), clicks

    def forward(self, image_crop: torch.Tensor, clicks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([image_crop, encode_clicks(clicks, self.input_box)], dim=1)
        mask_features, p5_cell = self.model.tracer.run(self.plan, x)
        coords = relative_coords(clicks[:, 0, :2], self.cells, MASK_STRIDE)
        return self.model.head(mask_features, p5_cell[:, :, 0, 0], coords)
