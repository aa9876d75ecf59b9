"""Op keys of hand-designed timm classification models (for calibrating tables to published figures).

The model is re-parameterised first (timm.utils.reparameterize_model: MobileOne, RepViT and FastViT
fold their training branches), because published latencies are for the deployed network. Its
`forward_features` trunk is traced like a TraceNet trunk (full frame); the classifier tail is
priced as a global average pool plus a linear layer. Models whose trunk mixes globally (attention,
non-padding pooling) raise TracingError.
"""

from __future__ import annotations

import timm
import torch
from timm.utils import reparameterize_model
from torch import nn

from nas.latency.op_keys import OpKey, trunk_op_keys
from search_spaces.common.errors import InvalidValueError
from search_spaces.tracing.box import Box
from search_spaces.tracing.tracer import ReceptiveFieldTracer


class _Features(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def timm_op_keys(name: str, resolution: int, num_classes: int = 1000) -> list[OpKey]:
    """Fused op keys of timm model `name` on a square `resolution` input, deployed (re-parameterised)."""
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as err:  # timm: "Unknown model"
        raise InvalidValueError(f"timm has no model {name!r} ({err})") from None
    model = reparameterize_model(model.eval()).to("meta")
    tracer = ReceptiveFieldTracer(_Features(model))
    (h, w), = tracer.output_sizes((resolution, resolution))
    keys = trunk_op_keys(tracer, tracer.plan((resolution, resolution), [Box.full(h, w)]), 3)
    return keys + [OpKey.make("gpool", (1, 1), c=model.num_features, **{"in": f"{h}x{w}"}),
                   OpKey.make("linear", (1, 1), cin=model.num_features, cout=num_classes)]
