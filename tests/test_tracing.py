import numpy as np
import pytest
import torch
from torch import nn

from search_spaces import ArchConfig, Box, ReceptiveFieldTracer, TraceNetStudent, TracingError, tap_window
from search_spaces.students.complexity import student_flops
from search_spaces.students.tracing_check import check_tracing

TINY = "tracenet_tiny"


def _single_conv(**kw):
    return ReceptiveFieldTracer(nn.Sequential(nn.Conv2d(1, 1, **kw)))


def test_conv_receptive_field_by_hand():
    # k3 s2 p1: output rows 0..1 read input rows -1..3 (row -1 is padding) -> clipped to 0..3
    plan = _single_conv(kernel_size=3, stride=2, padding=1).plan((8, 8), [Box(0, 2, 0, 2)])
    assert plan.input_box == Box(0, 4, 0, 4)
    # k3 dilation 2 padding 2: output row 5 reads rows 3, 5, 7
    plan = _single_conv(kernel_size=3, dilation=2, padding=2).plan((16, 16), [Box(5, 6, 5, 6)])
    assert plan.input_box == Box(3, 8, 3, 8)
    # bottom-right corner: k5 s1 p2 at output (15, 15) reads 13..17, clipped to the 16x16 map
    plan = _single_conv(kernel_size=5, padding=2).plan((16, 16), [Box(15, 16, 15, 16)])
    assert plan.input_box == Box(13, 16, 13, 16)
    # two stacked convs compose: k3 s2 p1 after k3 s1 p1
    tracer = ReceptiveFieldTracer(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, 2, 1)))
    assert tracer.plan((32, 32), [Box(4, 5, 4, 5)]).input_box == Box(6, 11, 6, 11)


class UserNet(nn.Module):
    """A user-defined module mixing every supported op: the tracer must derive its fields itself."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 5, 2, 2), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.b = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.c = nn.Conv2d(8, 8, 3, 2, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.avg = nn.AvgPool2d(3, 1, 1)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.pool(self.a(x))
        y = torch.nn.functional.hardswish(self.b(x)) + x
        z = self.up(self.c(y)) * torch.sigmoid(y)
        return self.out(torch.cat([self.avg(z), y], dim=1)), self.c(y)


@pytest.mark.parametrize("seed", range(6))
def test_user_defined_module_is_traced_exactly(seed):
    torch.manual_seed(seed)
    net = UserNet().eval()
    with torch.no_grad():
        net.a[1].running_mean.normal_()
        net.a[1].running_var.uniform_(0.5, 2)
    rng = np.random.default_rng(seed)
    h, w = 64 + 8 * int(rng.integers(4)), 96
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        full0, full1 = net(x)
    gh, gw = full0.shape[-2:]
    y0, x0 = int(rng.integers(gh)), int(rng.integers(gw))
    box0 = Box(y0, min(gh, y0 + int(rng.integers(1, 5))), x0, min(gw, x0 + int(rng.integers(1, 5))))
    box1 = Box(0, 1, gw // 2 - 1, gw // 2)  # the second output's top border cell
    tracer = ReceptiveFieldTracer(net)
    plan = tracer.plan((h, w), [box0, box1])
    rows, cols = plan.input_box.relative_to(Box.full(h, w))
    with torch.no_grad():
        out0, out1 = tracer.run(plan, x[..., rows, cols])
    assert torch.allclose(out0, full0[..., box0.y0:box0.y1, box0.x0:box0.x1], atol=1e-5)
    assert torch.allclose(out1, full1[..., 0:1, box1.x0:box1.x1], atol=1e-5)
    assert plan.exact


def test_global_and_unknown_ops_are_refused_by_name():
    class GlobalPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(x) * x.mean(dim=(2, 3), keepdim=True)

    with pytest.raises(TracingError, match="mean"):
        ReceptiveFieldTracer(GlobalPool())
    with pytest.raises(TracingError, match="AdaptiveAvgPool2d"):
        ReceptiveFieldTracer(nn.Sequential(nn.Conv2d(3, 3, 1), nn.AdaptiveAvgPool2d(1)))
    with pytest.raises(TracingError, match="zeros"):
        ReceptiveFieldTracer(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")))
    with pytest.raises(TracingError, match="nearest"):
        ReceptiveFieldTracer(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear")))


def _compare(model, h, w, tap, window_px):
    image = torch.randn(1, 3, h, w)
    clicks = torch.tensor([[[tap[0], tap[1], 1.0], [w / 3, h / 2, 0.0]]])
    window = tap_window((h, w), tap, window_px)
    with torch.no_grad():
        full = model(image, clicks)
        traced = model(image, clicks, window=window)
    inside = full.logits[..., window.y0:window.y1, window.x0:window.x1]
    assert traced.logits.shape == inside.shape and traced.box == window
    return max((inside - traced.logits).abs().max().item(), (full.iou - traced.iou).abs().max().item())


@pytest.mark.parametrize("seed", range(4))
def test_student_tracing_is_exact_at_corners_borders_and_inside(seed, calibrate):
    arch = ArchConfig.sample(seed, TINY, se=False)
    model = TraceNetStudent(arch)
    calibrate(model, seed)
    h, w = 128, 96
    taps = [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1), (w / 2, 0), (0, h / 2), (37.5, 81.25)]
    for tap in taps:
        for window_px in (8, 24, 64):
            assert _compare(model, h, w, tap, window_px) <= 1e-4, (tap, window_px)


def test_a_copy_of_a_traced_student_traces_its_own_layers():
    """A deep copy (timm's EMA, Segmenter's fused copy) made after a traced forward: its traced forward
    runs its own weights and equals its own full forward."""
    import copy

    model = TraceNetStudent(ArchConfig.sample(0, TINY)).eval()
    image, clicks, window = torch.randn(1, 3, 64, 64), torch.tensor([[[32.0, 32.0, 1.0]]]), Box(2, 6, 2, 6)
    with torch.no_grad():
        original = model(image, clicks, window).logits  # caches the tracer
        twin = copy.deepcopy(model)
        for p in twin.parameters():
            p.mul_(0.5)
        traced = twin(image, clicks, window).logits
        assert torch.allclose(traced, twin(image, clicks).logits[..., 2:6, 2:6], atol=1e-5)
        assert not torch.allclose(traced, original)
        assert torch.equal(model(image, clicks, window).logits, original)


def test_check_tracing_report(calibrate):
    report = check_tracing(n=4, seed=1, space=TINY)
    assert report["ok"] and report["max_abs_diff"] <= 1e-4
    assert {c["tap_kind"] for c in report["cases"]} == {"corner", "border", "interior"}
    se_cases = [c for c in report["cases"] if any(c["arch"]["se"])]
    assert len(se_cases) == 4 and all(c["se_in_traced_region"] for c in se_cases)
    assert np.isfinite(report["se_deviation"]) and report["se_deviation"] >= report["se_deviation_mean"]
    assert report["flops_traced"] <= report["flops_full"]


def test_squeeze_excitation_pools_over_the_traced_region(calibrate):
    arch = ArchConfig.sample(2, TINY, se=True)
    model = TraceNetStudent(arch)
    calibrate(model)
    h, w = 256, 256
    plan = model.plan((h, w), (3.0, 3.0), tap_window((h, w), (3.0, 3.0), 8))
    assert not plan.exact and plan.local_pools  # SE modules inside the region are named
    assert plan.input_box.area < h * w
    # the deviation is real (SE sees only the region) but bounded and measurable
    assert 0 < _compare(model, h, w, (3.0, 3.0), 8) < 1.0


def test_cropping_saves_flops_for_small_windows_on_large_images():
    for seed in range(3):
        model = TraceNetStudent(ArchConfig.sample(seed, TINY)).eval()
        full = student_flops(model, (512, 384), tap_xy=(100.0, 100.0))
        traced = student_flops(model, (512, 384), tap_xy=(100.0, 100.0), window_px=32)
        assert traced < 0.5 * full
        plan = model.plan((512, 384), (100.0, 100.0), tap_window((512, 384), (100.0, 100.0), 32))
        assert plan.region_fraction() < 0.5


def test_traced_forward_trains_the_way_it_runs():
    """Gradients flow through the cropped path (how a student with SE is trained)."""
    model = TraceNetStudent(ArchConfig.sample(0, TINY, se=True)).train()
    image = torch.randn(1, 3, 128, 128)
    clicks = torch.tensor([[[40.0, 40.0, 1.0]]])
    out = model(image, clicks, window=tap_window((128, 128), (40.0, 40.0), 32))
    out.logits.mean().backward()
    grads = [p.grad for p in model.trunk.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_windowed_forward_rejects_batches_and_bad_sizes():
    model = TraceNetStudent(ArchConfig.smallest(TINY)).eval()
    clicks = torch.tensor([[[4.0, 4.0, 1.0]], [[4.0, 4.0, 1.0]]])
    with pytest.raises(ValueError, match="one image"):
        model(torch.zeros(2, 3, 64, 64), clicks, window=Box(0, 2, 0, 2))
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 50, 64), clicks[:1])
    with pytest.raises(ValueError, match="tap and must be positive"):
        model(torch.zeros(1, 3, 64, 64), torch.tensor([[[4.0, 4.0, 0.0]]]))


def test_a_dense_plan_computes_every_map_whole_where_tracing_would_skip_a_row():
    """A 1x1 stride-2 conv reads every other pixel, so its traced input is a row and a column short of
    the map; the full-output setting must price and run the map the full forward computes."""
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1, stride=2))
    tracer = ReceptiveFieldTracer(module)
    first = next(n for n in tracer.graph.nodes if n.target == "0")
    traced = tracer.plan((32, 32), (Box.full(16, 16),))
    dense = tracer.plan((32, 32), (Box.full(16, 16),), dense=True)
    assert (traced.boxes[first].h, traced.boxes[first].w) == (31, 31)
    assert dense.boxes[first] == Box.full(32, 32) and dense.input_box == Box.full(32, 32)
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(tracer.run(dense, x)[0], module(x), atol=1e-6)
