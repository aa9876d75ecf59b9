import pytest
import torch

from search_spaces import ArchConfig, TraceNetStudent, TraceNetSupernet, tap_window

TINY = "tracenet_tiny"


def _inputs(batch=2, h=96, w=64):
    image = torch.randn(batch, 3, h, w)
    clicks = torch.tensor([[[10.0, 20.0, 1.0], [50.0, 60.0, 0.0]], [[60.0, 90.0, 1.0], [5.0, 5.0, -1.0]]])[:batch]
    return image, clicks


@pytest.fixture
def supernet():
    """A supernet whose BN statistics and kernel transforms are not at their (trivial) initial values."""
    net = TraceNetSupernet(TINY)
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
        for matrix in net.kernel_transforms.values():
            matrix.add_(torch.randn_like(matrix) * 0.1)
    return net.eval()


def _archs():
    return [ArchConfig.largest(TINY), ArchConfig.smallest(TINY)] + [ArchConfig.sample(s, TINY) for s in range(6)]


@pytest.mark.parametrize("arch", _archs(), ids=lambda a: f"d{''.join(map(str, a.depths))}-r{a.resolution}")
def test_extracted_subnet_equals_supernet(supernet, arch):
    image, clicks = _inputs()
    with torch.no_grad():
        shared = supernet(image, clicks, arch)
        plain = supernet.extract(arch).eval()(image, clicks)
    assert (shared.logits - plain.logits).abs().max() <= 1e-5
    assert (shared.iou - plain.iou).abs().max() <= 1e-5
    assert shared.logits.shape == (2, 1, 96 // 8, 64 // 8)


def test_extracted_subnet_is_standalone_and_minimal(supernet):
    arch = ArchConfig.sample(3, TINY)
    extracted = supernet.extract(arch)
    fresh = TraceNetStudent(arch)
    assert type(extracted) is TraceNetStudent
    assert {k: v.shape for k, v in extracted.state_dict().items()} == \
        {k: v.shape for k, v in fresh.state_dict().items()}
    assert sum(p.numel() for p in extracted.parameters()) < sum(p.numel() for p in supernet.parameters())
    image, clicks = _inputs()
    with torch.no_grad():
        before = extracted.eval()(image, clicks).logits
        for p in supernet.parameters():
            p.add_(1.0)  # changing the supernet must not touch the extracted copy
        after = extracted(image, clicks).logits
    assert torch.equal(before, after)


def test_traced_forward_through_supernet_matches_extracted(supernet):
    arch = ArchConfig.sample(4, TINY, se=False)
    image, clicks = _inputs(batch=1, h=128, w=96)
    window = tap_window((128, 96), (10.0, 20.0), 32)
    with torch.no_grad():
        shared = supernet(image, clicks, arch, window=window)
        plain = supernet.extract(arch).eval()(image, clicks, window=window)
    assert shared.box == plain.box == window
    assert (shared.logits - plain.logits).abs().max() <= 1e-5


def test_elastic_kernel_depth_and_width_are_views_of_shared_weights():
    net = TraceNetSupernet(TINY)  # identity kernel transforms: a small kernel is the centre crop
    arch = ArchConfig.smallest(TINY)  # kernel 3, depth 1, narrowest width and expand
    sub = net.extract(arch)
    big = net.largest.trunk.backbone.stages[0][0].conv_dw.weight
    small = sub.trunk.backbone.stages[0][0].conv_dw.weight
    assert big.shape[-1] == 7 and small.shape[-1] == 3
    assert torch.equal(small, big[: small.shape[0], :, 2:5, 2:5])
    # first-k blocks: block 0 of every stage comes from block 0 of the supernet
    assert len(sub.trunk.backbone.stages[1]) == 1
    pw_big = net.largest.trunk.backbone.stages[1][0].conv_pw.weight
    pw_small = sub.trunk.backbone.stages[1][0].conv_pw.weight
    assert torch.equal(pw_small, pw_big[: pw_small.shape[0], : pw_small.shape[1]])


def test_kernel_transform_is_learned_and_changes_small_kernels():
    net = TraceNetSupernet(TINY).train()
    arch = ArchConfig.smallest(TINY)  # every searchable kernel is 3: uses 7to5 then 5to3
    image, clicks = _inputs()
    net(image, clicks, arch).logits.square().mean().backward()
    used = [k for k, p in net.kernel_transforms.items() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any(k.endswith("7to5") for k in used) and any(k.endswith("5to3") for k in used)
    big = ArchConfig.largest(TINY)  # kernel 7 needs no transform
    net.zero_grad()
    net(image, clicks, big).logits.square().mean().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.kernel_transforms.values())


def test_training_step_updates_only_the_active_slices():
    net = TraceNetSupernet(TINY).train()
    arch = ArchConfig.smallest(TINY)
    bn = net.largest.trunk.backbone.stages[0][0].bn1
    before = bn.running_mean.clone()
    image, clicks = _inputs()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = net(image, clicks, arch).logits.square().mean()
    loss.backward()
    opt.step()
    active = net.extract(arch).trunk.backbone.stages[0][0].bn1.running_mean.numel()
    assert not torch.equal(bn.running_mean[:active], before[:active])  # BN statistics of the subnet updated
    assert torch.equal(bn.running_mean[active:], before[active:])  # channels it does not use untouched
    grad = net.largest.trunk.backbone.stages[0][0].conv_pw.weight.grad
    assert grad[:active].abs().sum() > 0 and grad[active:].abs().sum() == 0


def test_sort_channels_keeps_function_and_orders_by_importance(supernet):
    image, clicks = _inputs()
    big = ArchConfig.largest(TINY)
    with torch.no_grad():
        before = supernet(image, clicks, big).logits
        supernet.sort_channels()
        after = supernet(image, clicks, big).logits
    assert (before - after).abs().max() <= 1e-5
    for block in supernet.largest.trunk.backbone.stages.modules():
        if hasattr(block, "conv_pwl"):
            importance = block.conv_pwl.weight.abs().sum(dim=(0, 2, 3))
            assert torch.all(importance[:-1] >= importance[1:])


def test_wrong_space_is_rejected(supernet):
    image, clicks = _inputs()
    with pytest.raises(ValueError, match="supernet"):
        supernet(image, clicks, ArchConfig.smallest("tracenet_mbv3"))
