"""Post-training int8 (W8A8) programs, quantized the way each runtime quantizes.

- ExecuTorch: PT2E with XNNPACK's quantizer (weights symmetric per channel, activations per tensor):
  `torch.export` -> `prepare_pt2e` -> calibration -> `convert_pt2e`, then lowered to XNNPACK like a
  float program (`backends.lower_to_xnnpack`).
- ONNX Runtime: static QDQ quantization of the float ONNX program (`quantize_static`, weights int8
  per channel, activations uint8), the format ONNX Runtime's int8 kernels fuse; the quantized model
  keeps the float model's node order.

Profiling, validation and `nas bench` calibrate on the example inputs they time (the scales do not
change which kernels run); `nas export --precision int8` calibrates on real images
(`nas/deploy/quantize.py`). What a quantizer leaves float stays float inside the program:
`float_ops` names it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # onnx and onnxruntime come with the 'mobile' extra
    import onnx

Inputs = tuple[torch.Tensor, ...]


def quantize_pt2e(module: nn.Module, calibration: Sequence[Inputs], dynamic_shapes: object = None
                  ) -> torch.fx.GraphModule:
    """`module` as XNNPACK's PT2E int8 graph, calibrated on `calibration` (the first set is the example)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch.export.export(module.eval(), tuple(calibration[0]), dynamic_shapes=dynamic_shapes).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for inputs in calibration:
            prepared(*inputs)
    return convert_pt2e(prepared)


# ops that move or reshape values without computing: quantization passes their inputs' int8 through
_NON_COMPUTE = ("quantize_per", "dequantize_per", "getitem", "view", "reshape", "permute", "slice", "select",
                "squeeze", "unsqueeze", "expand", "clone", "contiguous", "_to_copy", "sym_size", "alias")
_ONNX_NON_COMPUTE = {"QuantizeLinear", "DequantizeLinear", "Constant", "Identity", "Shape", "Gather", "Reshape",
                     "Slice", "Squeeze", "Unsqueeze", "Transpose", "Cast", "ConstantOfShape", "Expand", "Pad",
                     "Flatten", "Split"}


def float_ops(graph: torch.fx.GraphModule) -> list[str]:
    """The computing ops of a converted PT2E graph that XNNPACK's quantizer did not annotate: they run in
    float between a dequantize and a quantize (a hardswish, an SE's mean and gate) or take float inputs
    (a dynamic conv whose weights are an input)."""
    return [node.name for node in graph.graph.nodes
            if node.op == "call_function" and not any(name in str(node.target) for name in _NON_COMPUTE)
            and isinstance(node.meta.get("val"), torch.Tensor) and node.meta["val"].dtype.is_floating_point
            and "quantization_annotation" not in node.meta]


def qdq_float_graph_nodes(model: bytes) -> tuple[onnx.GraphProto, list[onnx.NodeProto]]:
    """ONNX Runtime's optimised graph of a QDQ ONNX model, and its computing nodes that run in float: those
    left after its optimiser fused each DequantizeLinear -> op -> QuantizeLinear it has an int8 kernel for
    (QLinearConv, QLinearAdd, ...)."""
    import onnx
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    return graph, [node for node in graph.node
                   if node.op_type not in _ONNX_NON_COMPUTE and not node.op_type.startswith(("QLinear", "QGemm"))]


def qdq_float_nodes(model: bytes) -> list[str]:
    """The names (op types where ONNX Runtime inserted them unnamed) of the nodes ONNX Runtime runs in
    float in a QDQ ONNX model (`qdq_float_graph_nodes`)."""
    return [node.name or node.op_type for node in qdq_float_graph_nodes(model)[1]]


def _initializers_for_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each Identity of an initializer replaced by a copy of that initializer: the
    TorchScript exporter shares equal biases through Identity nodes, and `quantize_static` leaves a
    conv whose bias is not an initializer float (7 of a student's 108 convs, which then ran
    DequantizeLinear -> float Conv -> QuantizeLinear: 1.9x the latency)."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy = model.graph.initializer.add()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def _in_float_order(quantized: onnx.ModelProto, float_order: list[str]) -> onnx.ModelProto:
    """The quantized model's nodes in the float model's order (`quantize_static` sorts them anew, and
    in-context profiling reads units in forward order): each float node where it was, a quantize /
    dequantize node right after the node whose output it reads, or right before its first consumer
    when it reads a weight or a graph input."""
    rank = {name: i for i, name in enumerate(float_order)}
    nodes = list(quantized.graph.node)
    producer = {out: node.name for node in nodes for out in node.output}
    consumers: dict[str, list[str]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    by_name = {node.name: node for node in nodes}
    keys: dict[str, tuple[int, int]] = {node.name: (rank[node.name], 0) for node in nodes if node.name in rank}

    def first_use(node: onnx.NodeProto) -> int:
        return min(rank[c] if c in rank else first_use(by_name[c]) for c in consumers[node.output[0]])

    def key(node: onnx.NodeProto) -> tuple[int, int]:
        if node.name not in keys:
            source = producer.get(node.input[0])
            if source is None:  # a weight's or a graph input's: before its first use, its chain after it
                keys[node.name] = (first_use(node), -len(nodes))
            else:
                above = key(by_name[source])
                keys[node.name] = (above[0], above[1] + 1)
        return keys[node.name]

    del quantized.graph.node[:]
    quantized.graph.node.extend(sorted(nodes, key=key))
    return quantized


def quantize_onnx(float_onnx: bytes, calibration: Sequence[Inputs]) -> bytes:
    """ONNX Runtime's static QDQ int8 model of `float_onnx`, calibrated on `calibration` (tensors in the
    order of the model's inputs), its nodes in the float model's order. Every conv's bias is first made an
    initializer, so every conv is quantized."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = _initializers_for_identities(onnx.load_from_string(float_onnx))
    initializers = {tensor.name for tensor in model.graph.initializer}
    input_names = [i.name for i in model.graph.input if i.name not in initializers]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{name: t.numpy() for name, t in zip(input_names, inputs, strict=True)}
                               for inputs in calibration])

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs its advice through the root logger
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
            onnx.save(model, source)
            quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
            quantized = onnx.load(target)
    finally:
        root.setLevel(level)
    return _in_float_order(quantized, [node.name for node in model.graph.node]).SerializeToString()
