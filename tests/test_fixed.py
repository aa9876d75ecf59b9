import numpy as np
import pytest
import torch

from nas.cli import main
from nas.op_keys import arch_op_keys
from search_spaces import ArchConfig, Segmenter, TraceNetStudent
from search_spaces.checkpoint import load_student, save_student
from search_spaces.fixed import FIXED_BACKBONES, describe_fixed
from search_spaces.space import UnknownSpaceError, get_space
from search_spaces.student import tap_window

RUNNABLE = [n for n in FIXED_BACKBONES if n != "efficientformerv2_s0"]


@pytest.mark.parametrize("name", RUNNABLE)
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
    if plan.exact:  # no squeeze-excitation in the traced region: cropping must be exact
        assert deviation < 1e-4
    keys = arch_op_keys(arch, (96, 128), (70.0, 30.0), 32)
    assert keys[0].kind == "clicks" and keys[-1].kind == "tap_head" and any(k.kind == "conv" for k in keys)
    assert sum(k.out_hw[0] * k.out_hw[1] for k in keys) < sum(
        k.out_hw[0] * k.out_hw[1] for k in arch_op_keys(arch, (96, 128), (70.0, 30.0), None))


def test_listing_says_which_backbones_are_not_supported():
    info = describe_fixed("efficientformerv2_s0")
    assert not info["supported"] and "fails at other input sizes" in info["reason"]
    assert describe_fixed("mobilenetv2_100")["tracing"].startswith("cropped")


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
    from distill.config import load_config
    from distill.engine import Trainer

    config = load_config(None, ["student.space=fixed:mobilenetv3_small_100", "student.arch=smallest",
                                "train.steps=1", "train.batch_size=1", "data.train=synthetic:2:64",
                                "prompts.max_rounds=0"])
    assert Trainer(config, tmp_path / "run", progress=False).fit()["steps"] == 1
    assert load_student(tmp_path / "run" / "student.pt").arch.space == "fixed:mobilenetv3_small_100"


def test_fixed_student_exports_with_parity(tmp_path):
    from nas.export import export_student

    info = export_student(TraceNetStudent(ArchConfig.smallest("fixed:mobilenetv3_small_100")), "onnx", tmp_path)
    assert info["parity_max_abs_diff"] < 1e-4
