import numpy as np
import pytest
import torch

from nas.cli.main import main
from nas.latency.op_keys import arch_op_keys
from search_spaces import ArchConfig, Segmenter, TraceNetStudent
from search_spaces.space import FIXED_BACKBONES, UnknownSpaceError, get_space
from search_spaces.students.checkpoint import load_student, save_student
from search_spaces.students.fixed_report import describe_fixed
from search_spaces.students.student import tap_window

# backbones with squeeze-excitation pool over the traced region only, so their crop deviates; the rest is exact
WITH_SE = {"mobilenetv3_large_100", "mobilenetv3_small_100", "ghostnet_100", "repvit_m0_9"}


@pytest.mark.parametrize("name", FIXED_BACKBONES)
def test_fixed_backbone_student_runs_traces_and_has_op_keys(name, calibrate):
    arch = ArchConfig.smallest(f"fixed:{name}")
    model = TraceNetStudent(arch)
    calibrate(model)
    image, clicks = torch.randn(1, 3, 96, 128), torch.tensor([[[70.0, 30.0, 1.0], [10.0, 80.0, 0.0]]])
    window = tap_window((96, 128), (70.0, 30.0), 32)
    with torch.no_grad():
        full = model(image, clicks)
        traced = model(image, clicks, window=window)
    assert full.logits.shape == (1, 1, 12, 16) and torch.isfinite(full.logits).all()
    inside = full.logits[..., window.y0:window.y1, window.x0:window.x1]
    plan = model.plan((96, 128), (70.0, 30.0), window)
    deviation = float((traced.logits - inside).abs().max() / inside.abs().max().clamp_min(1e-6))
    assert plan.exact == (name not in WITH_SE) and bool(plan.local_pools) == (name in WITH_SE)
    if plan.exact:  # no squeeze-excitation in the traced region: cropping must be exact
        assert deviation < 1e-4
    else:  # pooling over the crop changes the output, by a bounded amount
        assert 0 < deviation < 1
    keys = arch_op_keys(arch, (96, 128), (70.0, 30.0), 32)
    assert keys[0].kind == "clicks" and keys[-1].kind == "tap_head" and any(k.kind == "conv" for k in keys)
    assert sum(k.out_hw[0] * k.out_hw[1] for k in keys) < sum(
        k.out_hw[0] * k.out_hw[1] for k in arch_op_keys(arch, (96, 128), (70.0, 30.0), None))


def test_listing_says_how_tracing_crops_each_backbone():
    hybrid = describe_fixed("efficientformerv2_s0", flops=True)
    assert hybrid["supported"] and hybrid["tracing"].startswith("partial: ")
    assert "attention blocks read their whole input map" in hybrid["tracing"]
    assert 0 < hybrid["flops_traced"] < hybrid["flops"]  # only what follows the attention is cropped
    conv = describe_fixed("mobilenetv2_100", flops=True)
    assert conv["tracing"].startswith("cropped") and conv["flops_traced"] / conv["flops"] < (
        hybrid["flops_traced"] / hybrid["flops"])


def test_fixed_spaces_are_found_by_name_and_bad_names_fail():
    spec = get_space("fixed:mobilenetv3_small_100")
    assert spec.backbone == "mobilenetv3_small_100" and spec.stages == ()
    assert spec.size() == len(spec.resolutions) * 4 * 3 * 3
    with pytest.raises(UnknownSpaceError, match="not a timm model"):
        get_space("fixed:no_such_net")


def test_fixed_student_checkpoint_segmenter_and_latency_errors(tmp_path, tiny_table_path, capsys):
    arch = ArchConfig.sample(0, "fixed:mobilenetv3_small_100")
    path = save_student(TraceNetStudent(arch), tmp_path / "student.pt")
    model = load_student(path)
    assert model.arch == arch
    mask, _ = Segmenter(model).predict(np.zeros((60, 80, 3), np.uint8), [(40, 30, True)])
    assert mask.shape == (60, 80)
    (tmp_path / "arch.json").write_text(arch.to_json())
    assert main(["latency", "predict", "--target", str(tiny_table_path), "--arch", str(tmp_path / "arch.json")]) == 2
    assert "has no entry for" in capsys.readouterr().err  # the ops the table lacks, by name


def test_distill_accepts_a_fixed_student(tmp_path):
    from distill.training.config import load_config
    from distill.training.engine import Trainer

    config = load_config(None, ["student.space=fixed:mobilenetv3_small_100", "student.arch=smallest",
                                "train.steps=1", "train.batch_size=1", "data.train=synthetic:2:64",
                                "prompts.max_rounds=0"])
    assert Trainer(config, tmp_path / "run", progress=False).fit()["steps"] == 1
    assert load_student(tmp_path / "run" / "student.pt").arch.space == "fixed:mobilenetv3_small_100"


def test_fixed_student_exports_with_parity(tmp_path):
    from nas.deploy.export import export_student

    info = export_student(TraceNetStudent(ArchConfig.smallest("fixed:mobilenetv3_small_100")), "onnx", tmp_path)
    assert info["parity_max_abs_diff"] < 1e-4


def test_any_size_attention_equals_timm_on_its_grid_and_runs_at_other_sizes():
    from timm.models.efficientformer_v2 import Attention2d, Attention2dDownsample

    from search_spaces.modules.any_size_attention import adapt_attention

    torch.manual_seed(0)
    for make, size in ((lambda: Attention2d(32, 8, 2, 2, resolution=7), 7),
                       (lambda: Attention2d(32, 8, 2, 2, resolution=14, stride=2), 14),
                       (lambda: Attention2dDownsample(32, 8, 2, 2, resolution=7, out_dim=48), 7)):
        timm_module = make()
        timm_module.eval()  # (timm's returns None)
        torch.nn.init.normal_(timm_module.attention_biases)
        adapted = adapt_attention(make()).eval()
        adapted.load_state_dict(timm_module.state_dict())
        x = torch.randn(1, 32, size, size)
        with torch.no_grad():
            assert torch.allclose(adapted(x), timm_module(x), atol=1e-5)
            out = adapted(torch.randn(1, 32, 9, 13))  # odd, non-square: timm's forward fails here
        assert out.shape[-2:] == ((5, 7) if isinstance(timm_module, Attention2dDownsample) else (9, 13))
        assert adapted.train() is adapted  # timm's train() returns None


def test_attention_op_keys_are_profiled_units(tmp_path):
    from nas.latency.op_kinds import op_module

    arch = ArchConfig.smallest("fixed:efficientformerv2_s0")
    keys = [k for k in arch_op_keys(arch, (96, 128), (70.0, 30.0), 32) if k.kind == "attention"]
    assert {k.attr("down") for k in keys} == {0, 1}
    for key in keys[:2] + keys[-1:]:
        module, inputs = op_module(key)
        with torch.no_grad():
            assert tuple(module(*inputs).shape[-2:]) == key.out_hw
