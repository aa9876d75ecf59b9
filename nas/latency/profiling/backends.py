"""Runtimes a module can be timed on: torch eager, ONNX Runtime (CPU) and ExecuTorch with XNNPACK.

`get_backend(name, threads, precision).prepare(module, inputs)` exports the module to the runtime
(with `precision="int8"`, quantized as that runtime quantizes: `quantized.py`; with `"fp16"`, in
float16 for the lowering) and returns a
zero-argument callable that runs one inference; `nas profile`, `nas latency validate` and
`nas bench` all time these callables, so per-op tables and end-to-end checks share one path.
ExecuTorch's callables return outputs that alias the program's memory: valid while the callable lives.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import torch
from torch import nn

from nas.latency.profiling.quantized import float_ops, qdq_float_nodes, quantize_onnx, quantize_pt2e
from nas.latency.setting import PRECISIONS
from search_spaces.common.errors import InvalidValueError, TraceNASError
from search_spaces.common.resources import torch_threads

BACKENDS = ("torch", "onnxruntime", "executorch-xnnpack")
# the runtimes that run each reduced precision here. ONNX Runtime's CPU provider has no float16 conv
# kernels on x86: it would cast a float16 model back to float32 around each op
PRECISION_BACKENDS = {"int8": ("onnxruntime", "executorch-xnnpack"), "fp16": ("executorch-xnnpack",)}


@dataclass(frozen=True)
class Lowering:
    """What a backend made of a module: the size of the program it runs and the ops quantization left float."""

    program_bytes: int
    float_ops: list[str]


class BackendUnavailableError(TraceNASError, ValueError):
    """The runtime of a backend is not installed (pip install 'tracenas[mobile]')."""


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


class TorchBackend:
    name = "torch"
    precision = "fp32"

    def __init__(self, threads: int):
        self.threads = threads
        self.lowerings: dict[str, Lowering] = {}  # eager modules are run as they are: nothing is lowered

    @property
    def runtime_version(self) -> str:
        return torch.__version__

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
        module = module.eval()

        def run() -> object:  # the thread count is borrowed per run, so the caller's stays as it was
            with torch_threads(self.threads), torch.inference_mode():
                return module(*inputs)

        return run


def export_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes:
    """ONNX bytes of an eval-mode module (TorchScript exporter: ~0.1 s per op, vs seconds for dynamo)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), inputs, buffer, dynamo=False, opset_version=18)
    return buffer.getvalue()


def onnx_feeds(session, inputs: tuple[torch.Tensor, ...]) -> dict:
    """An ONNX Runtime session's inputs by name, from tensors in the exported module's order."""
    return {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, threads: int, layout_transforms: bool = True, precision: str = "fp32"):
        """`layout_transforms=False` stops at ONNX Runtime's extended optimisations, leaving out its
        layout transforms (x86's blocked NCHWc convs): for experiments, not how it deploys.
        `precision="int8"`: programs are quantized statically to QDQ, calibrated on their inputs."""
        try:
            import onnxruntime
        except ImportError:
            raise BackendUnavailableError("onnxruntime is not installed: pip install 'tracenas[mobile]'") from None
        self.ort = onnxruntime
        self.threads = threads
        self.layout_transforms = layout_transforms
        self.precision = precision
        self.lowerings: dict[str, Lowering] = {}  # by module repr (no weights, no shapes)

    @property
    def runtime_version(self) -> str:
        return self.ort.__version__

    def session(self, model: bytes, profile_prefix: str | None = None):
        """An inference session; with `profile_prefix`, ONNX Runtime's node profiler writes there
        (`session.end_profiling()` returns the JSON file)."""
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if not self.layout_transforms:
            options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return self.ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def program(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes:
        """The ONNX model this backend runs for `module`: float, or QDQ int8 calibrated on `inputs`."""
        model = export_onnx(module, inputs)
        if self.precision == "int8":
            model = quantize_onnx(model, [inputs])
        self.lowerings[repr(module)] = Lowering(len(model), qdq_float_nodes(model) if self.precision == "int8" else [])
        return model

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
        session = self.session(self.program(module, inputs))
        feed = onnx_feeds(session, inputs)
        return lambda: session.run(None, feed)


def channels_last(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """4-D inputs in NHWC memory order, the layout XNNPACK computes in."""
    return tuple(t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t for t in inputs)


def lower_to_xnnpack(module: nn.Module, inputs: tuple[torch.Tensor, ...], dynamic_shapes: object = None):
    """`module` exported as it is (an eval-mode module, or a converted PT2E graph, which has no
    train/eval switch) and lowered with every supported op delegated to XNNPACK: an
    `EdgeProgramManager` (`.to_executorch().buffer` is the .pte program)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes)
    return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])


@contextmanager
def half_precision(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in float16 for the duration (to export the program a float16 runtime runs), then back to its
    exact float32 values. Converted in place, not copied: a `TracedTap`'s plan is keyed by its student's
    traced graph, which a copy of the student traces anew."""
    saved = {name: value.clone() for name, value in module.state_dict().items()}
    module.half()
    try:
        yield module
    finally:
        module.float()
        module.load_state_dict(saved)


def half_inputs(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(t.half() if t.is_floating_point() else t for t in inputs)


def _lower_to_xnnpack(module: nn.Module, inputs: tuple[torch.Tensor, ...], hw_range: tuple[int, int] | None,
                      int8: bool = False):
    """The lowered program (int8: of the PT2E-quantized module), and (int8) the ops its quantizer left float."""
    dynamic = None
    if hw_range is not None:
        h, w = torch.export.Dim("h", min=hw_range[0], max=hw_range[1]), torch.export.Dim("w", min=hw_range[0],
                                                                                        max=hw_range[1])
        dynamic = tuple({2: h, 3: w} if t.ndim == 4 else None for t in inputs)
    if int8:
        graph = quantize_pt2e(module, [inputs], dynamic)
        return lower_to_xnnpack(graph, inputs, dynamic), float_ops(graph)
    return lower_to_xnnpack(module.eval(), inputs, dynamic), []


def export_executorch(module: nn.Module, inputs: tuple[torch.Tensor, ...],
                      hw_range: tuple[int, int] | None = None) -> bytes:
    """A .pte program with every supported op delegated to XNNPACK. With `hw_range` (min, max), the
    height and width of every 4-D input are dynamic within it (one program for many shapes)."""
    return _lower_to_xnnpack(module, inputs, hw_range)[0].to_executorch().buffer


# layouts `lower_executorch` chooses for a program's 4-D inputs
NHWC, NCHW_PORTABLE, NCHW_1X1 = "nhwc", "nchw: portable kernels", "nchw: a 1x1 map"


def _layout_of(lowered) -> str:
    graph = lowered.exported_program().graph_module.graph
    if any(n.op == "call_function" and n.target.__name__ not in ("executorch_call_delegate", "getitem")
           for n in graph.nodes):
        return NCHW_PORTABLE
    tensors = [n.meta["val"] for n in graph.nodes if n.op == "placeholder" and "val" in n.meta]
    tensors += [v.meta["val"] for n in graph.nodes if n.op == "output" for v in n.args[0] if "val" in v.meta]
    if any(t.ndim == 4 and tuple(t.shape[-2:]) == (1, 1) for t in tensors if hasattr(t, "ndim")):
        return NCHW_1X1
    return NHWC


def lower_executorch(module: nn.Module, inputs: tuple[torch.Tensor, ...], hw_range: tuple[int, int] | None = None,
                     try_nhwc: bool = True, precision: str = "fp32") -> tuple[bytes, str, list[str]]:
    """`export_executorch` at `precision` (int8: of the PT2E-quantized module; fp16: of the module in
    float16, which takes float16 inputs), the layout its 4-D inputs take
    (NHWC, NCHW_PORTABLE or NCHW_1X1) and the ops quantization left float.

    Inside a network XNNPACK keeps activations NHWC from op to op, so a table unit it runs entirely
    is lowered for NHWC inputs: fed NCHW, it would pay a layout conversion on each side that in the
    network only the input and output pay (1x1 conv at 128x128: 0.51 ms NCHW, 0.31 ms NHWC). Units
    (and programs) with portable kernels, which compute NCHW, keep NCHW, as do 1x1 maps (ExecuTorch
    rejects their ambiguous layout at run time). `try_nhwc=False` skips the NHWC attempt (a lowering
    costs seconds) for a module already known to need portable kernels."""
    if precision == "fp16":
        with half_precision(module.eval()):  # serialized before the module is float32 again
            return lower_executorch(module, half_inputs(inputs), hw_range, try_nhwc)
    int8 = precision == "int8"
    if try_nhwc:
        lowered, kept = _lower_to_xnnpack(module, channels_last(inputs), hw_range, int8)
        layout = _layout_of(lowered)
        if layout == NHWC:
            return lowered.to_executorch().buffer, NHWC, kept
    else:
        layout = NCHW_PORTABLE
    lowered, kept = _lower_to_xnnpack(module, inputs, hw_range, int8)
    return lowered.to_executorch().buffer, layout, kept


def export_coreml(module: nn.Module, inputs: tuple[torch.Tensor, ...]):
    """A Core ML ML program (an `MLModel`; `.save(path)` writes an .mlpackage). Conversion runs on any
    OS; running it needs macOS."""
    import coremltools as ct

    # core-ATen decompositions: Core ML's converter lacks some ops (e.g. alias) of the un-decomposed graph
    exported = torch.export.export(module.eval(), inputs).run_decompositions()
    return ct.convert(exported, convert_to="mlprogram")


class ExecutorchXnnpackBackend:
    name = "executorch-xnnpack"

    def __init__(self, threads: int, precision: str = "fp32"):
        """`precision="int8"`: modules are quantized through PT2E with XNNPACK's quantizer, calibrated
        on their inputs; `"fp16"`: float16 copies of them run on float16 inputs. `lowerings` maps each
        module's repr to what it was lowered to."""
        try:
            from executorch.extension.pybindings import portable_lib
        except ImportError:
            raise BackendUnavailableError("executorch is not installed: pip install 'tracenas[mobile]'") from None
        portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's thread pool is process-wide
        self.portable_lib = portable_lib
        self.threads = threads
        self.precision = precision
        self._portable_modules: set[str] = set()  # module reprs (no weights, no shapes) that need portable kernels
        self.lowerings: dict[str, Lowering] = {}

    @property
    def runtime_version(self) -> str:
        return package_version("executorch")

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
        return self.prepare_shapes(module, [inputs])[0]

    def prepare_shapes(self, module: nn.Module, input_sets: list[tuple[torch.Tensor, ...]]
                       ) -> list[Callable[[], object]]:
        """One runner per input set. Several sets share one program lowered with dynamic height and
        width (lowering costs seconds, so a table's shape ladder is lowered once per op configuration),
        with the layout of `lower_executorch`."""
        sides = [s for inputs in input_sets for t in inputs if t.ndim == 4 for s in t.shape[-2:]]
        hw_range = (min(sides), max(sides)) if len(input_sets) > 1 else None
        buffer, layout, kept = lower_executorch(module, input_sets[0], hw_range,
                                                try_nhwc=repr(module) not in self._portable_modules,
                                                precision=self.precision)
        # the pybinding's method, not `executorch.runtime.Method`: its `execute()` runs without copying
        # inputs in and outputs out, so only the program is timed, as ETDump and on-device runners do
        program = self.portable_lib._load_program_from_buffer(buffer)
        method = program.load_method("forward")
        if self.precision != "fp32" and layout == NHWC and not self._computes(method, module, input_sets[0]):
            # a lone quantized add or concat lowered NHWC is rejected at run time or returns its output
            # in the wrong memory order
            buffer, layout, kept = lower_executorch(module, input_sets[0], hw_range, try_nhwc=False,
                                                    precision=self.precision)
            program = self.portable_lib._load_program_from_buffer(buffer)
            method = program.load_method("forward")
        self.lowerings[repr(module)] = Lowering(len(buffer), kept)
        if layout == NCHW_PORTABLE:
            self._portable_modules.add(repr(module))
        if layout == NHWC:
            input_sets = [channels_last(inputs) for inputs in input_sets]
        if self.precision == "fp16":
            input_sets = [half_inputs(inputs) for inputs in input_sets]
        current = None  # the inputs set on `method`, which all runners share

        def runner(args: list[torch.Tensor]) -> Callable[[], object]:
            def run() -> object:
                nonlocal current
                _ = buffer, program
                if current is not args:  # the first (warm-up) call of each runner sets its inputs
                    method.set_inputs(args)
                    current = args
                method.execute()
                return method.get_outputs(clone_outputs=False)

            return run

        return [runner(list(inputs)) for inputs in input_sets]

    def _computes(self, method, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bool:
        """Whether `method`, fed `inputs` NHWC (float16 at fp16), runs and answers the float module within a
        tenth of its output range (int8 or float16 rounding is far below that; a wrong memory order is not)."""
        fed = channels_last(inputs)
        try:
            method.set_inputs(list(half_inputs(fed) if self.precision == "fp16" else fed))
            method.execute()
        except RuntimeError:
            return False
        with torch.no_grad():
            references = module.eval()(*inputs)
        references = references if isinstance(references, tuple | list) else (references,)
        for out, ref in zip(method.get_outputs(clone_outputs=True), references, strict=True):
            span = float(ref.max() - ref.min()) if ref.numel() else 0.0
            if float((out.float() - ref).abs().max()) > 0.1 * span:
                return False
        return True


Backend = TorchBackend | OnnxRuntimeBackend | ExecutorchXnnpackBackend


def get_backend(name: str, threads: int, precision: str = "fp32") -> Backend:
    if threads < 1:
        raise InvalidValueError(f"threads must be at least 1, got {threads}")
    classes = {"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend, "executorch-xnnpack": ExecutorchXnnpackBackend}
    if name not in classes:
        raise InvalidValueError(f"unknown backend {name!r}; choose from {list(BACKENDS)}")
    if precision not in PRECISIONS:
        raise InvalidValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return classes[name](threads)
    if name not in PRECISION_BACKENDS[precision]:
        raise InvalidValueError(f"{name} does not run {precision} programs here; {precision} is for "
                                f"{' and '.join(PRECISION_BACKENDS[precision])}")
    return classes[name](threads, precision=precision)
