import pytest
import torch
from torch import nn

from nas.latency.op_keys import OpKey, OpKeyError, arch_op_keys, trunk_op_keys
from search_spaces import ArchConfig, Box, ReceptiveFieldTracer
from search_spaces.space import IN_CHANNELS
from search_spaces.students.student import TraceNetStudent, output_cells

TINY = "tracenet_tiny"


def test_key_canonical_round_trip_and_errors():
    key = OpKey.make("conv", (12, 16), k=3, s=2, cin=8, cout=16, g="dw", act="relu", d=1)
    text = str(key)
    assert text == "conv[act=relu,cin=8,cout=16,d=1,g=dw,k=3,s=2]@12x16"
    assert OpKey.parse(text) == key and key.config == text.split("@")[0]
    # the order of the keyword arguments does not matter
    assert OpKey.make("conv", (12, 16), d=1, act="relu", g="dw", cout=16, cin=8, s=2, k=3) == key
    for bad in ("conv@3x3", "conv[k=3]@3", "conv[k]@3x3", "conv[s=1,k=3]@3x3"):
        with pytest.raises(OpKeyError):
            OpKey.parse(bad)


def _meta(module: nn.Module) -> nn.Module:
    return module.to_empty(device="meta")


def test_conv_bn_activation_fuse_into_one_unit():
    net = _meta(nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.Hardswish(),
                              nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8),  # BN only: act none
                              nn.ReLU(), nn.Identity()))
    tracer = ReceptiveFieldTracer(net)
    keys = trunk_op_keys(tracer, tracer.plan((32, 32), [Box.full(16, 16)]), 3)
    assert [str(k) for k in keys] == [
        "conv[act=hardswish,cin=3,cout=8,d=1,g=1,k=3,s=2]@16x16",
        "conv[act=relu,cin=8,cout=8,d=1,g=dw,k=3,s=1]@16x16",
    ]


def test_a_conv_feeding_two_consumers_is_not_fused():
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.act = nn.ReLU()

        def forward(self, x):
            y = self.conv(x)
            return self.act(y) + y

    tracer = ReceptiveFieldTracer(_meta(Branch()))
    kinds = [k.kind for k in trunk_op_keys(tracer, tracer.plan((8, 8), [Box.full(8, 8)]), 3)]
    assert kinds == ["conv", "act", "eltwise"]


def test_keys_follow_the_traced_shapes():
    arch = ArchConfig.sample(0, TINY, se=False)
    full = arch_op_keys(arch, (256, 256), (20.0, 20.0), None)
    traced = arch_op_keys(arch, (256, 256), (20.0, 20.0), 16)
    assert [k.config for k in full] == [k.config for k in traced]  # same units, smaller shapes
    assert all(t.out_hw[0] * t.out_hw[1] <= f.out_hw[0] * f.out_hw[1] for f, t in zip(full, traced, strict=True))
    assert sum(t.out_hw[0] * t.out_hw[1] for t in traced) < sum(f.out_hw[0] * f.out_hw[1] for f in full)
    assert full[0].kind == "clicks" and full[-1].kind == "tap_head" and traced[-1].out_hw == (2, 2)
    assert full[1] == OpKey.make("conv", (128, 128), act="hardswish", cin=5, cout=8, d=1, g=1, k=3, s=2)


@pytest.mark.parametrize("seed", range(6))
def test_planned_shapes_equal_the_shapes_a_cropped_run_computes(seed):
    """Op keys read shapes from the plan and channel propagation; a real cropped run must agree."""
    arch = ArchConfig.sample(seed, TINY)
    model = TraceNetStudent(arch).eval()
    image_hw, tap = (96, 128), (float(7 + 19 * seed), float(5 + 13 * seed))
    plan = model.plan(image_hw, tap, output_cells(image_hw, tap, 32 if seed % 2 else None))
    channels = model.tracer.channels(IN_CHANNELS)
    seen = {}
    x = torch.zeros(1, IN_CHANNELS, plan.input_box.h, plan.input_box.w)
    model.tracer.run(plan, x, observe=lambda node, value: seen.__setitem__(node, getattr(value, "shape", None)))
    planned = {n: (1, channels[n], b.h, b.w) for n, b in plan.boxes.items()}
    assert planned == {n: tuple(seen[n]) for n in plan.boxes}


def test_se_units_only_where_the_arch_has_se():
    arch = ArchConfig.sample(1, TINY)
    keys = arch_op_keys(arch, (128, 128), (64.0, 64.0), None)
    se_blocks = sum(d for d, se in zip(arch.depths, arch.se, strict=True) if se)
    assert sum(k.kind == "se" for k in keys) == se_blocks


def test_one_op_kind_registry_serves_profiling_calibration_and_in_context_matching(monkeypatch):
    from nas.latency.calibrate import op_class
    from nas.latency.op_keys import OpKeyError
    from nas.latency.op_kinds import OP_KINDS, OpKind, op_kind, op_module

    def build(key):
        return torch.nn.Hardshrink(), (torch.randn(1, int(key.attr("c")), *key.out_hw),)

    key = OpKey.parse("shrink[c=4]@5x6")
    with pytest.raises(OpKeyError, match="no op kind 'shrink'"):
        op_module(key)
    assert op_class(key) == "shrink"  # an unknown kind (an imported table's block) is its own class
    monkeypatch.setitem(OP_KINDS, "shrink", OpKind("shrink", ("c",), build, calibration_class=lambda k: "act",
                                                   onnx_anchor=lambda k: "Shrink"))
    module, inputs = op_module(key)
    assert module(*inputs).shape == (1, 4, 5, 6)
    assert op_class(key) == "act" and op_kind(key).onnx_nodes(key) == ("Shrink",) and op_kind(key).shape_free
    with pytest.raises(OpKeyError, match="does not carry the attributes"):
        op_module(OpKey.parse("shrink[c=4,k=3]@5x6"))


def test_every_unit_a_student_runs_is_a_registered_kind():
    from nas.latency.op_kinds import op_kind

    for space in ("tracenet_tiny", "fixed:mobilenetv3_small_100", "fixed:efficientformerv2_s0"):
        for key in arch_op_keys(ArchConfig.largest(space), (96, 128), (64.0, 48.0), None):
            assert op_kind(key).name == key.kind
