"""Pretrained starts against the anchors' own code: Once-for-All's `OFAMobileNetV3.get_active_subnet`
and timm's `features_only` models, with random weights under the real key names."""

import numpy as np
import pytest
import timm
import torch

from distill.training.config import ConfigError, load_config
from distill.training.engine import Trainer
from nas.cli.main import main
from search_spaces.modules.timm_backbone import PretrainedError, TimmBackbone
from search_spaces.space import ArchConfig
from search_spaces.students.checkpoint import load_student
from search_spaces.students.ofa_weights import import_ofa
from search_spaces.students.pretrained import pretrained_student, pretrained_supernet
from search_spaces.students.supernet import TraceNetSupernet

networks = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")

OFA_SE = (False, True, False, True, True)  # the stages where OFA's MobileNetV3 has squeeze-excitation
SPACE = "tracenet_mbv3"


def _ofa_checkpoint(path, width_mult: float, seed: int = 0):
    """An OFA supernet with random weights, BN statistics and kernel transforms, saved as OFA releases them."""
    torch.manual_seed(seed)
    net = networks.OFAMobileNetV3(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4],
                                  width_mult=width_mult)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var") or name.endswith("bn.weight"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.normal_(0, 0.1)
            elif name.endswith("_matrix"):
                tensor.add_(torch.randn_like(tensor) * 0.1)
    torch.save({"state_dict": net.state_dict()}, path)
    return net.eval()


def _ofa_features(net, arch: ArchConfig, image: torch.Tensor) -> list[torch.Tensor]:
    """Once-for-All's own subnet for `arch`, read at the ends of stages 2, 4 and 5 (strides 8, 16, 32)."""
    pad = [4 - d for d in arch.depths]
    net.set_active_subnet(ks=[k for ks, p in zip(arch.kernels, pad, strict=True) for k in (*ks, *[3] * p)],
                          e=[e for es, p in zip(arch.expands, pad, strict=True) for e in (*es, *[3] * p)],
                          d=list(arch.depths))
    subnet = net.get_active_subnet(preserve_weight=True).eval()
    ends, x, out = set(np.cumsum(arch.depths)[[1, 3, 4]]), subnet.blocks[0](subnet.first_conv(image)), []
    for i, block in enumerate(subnet.blocks[1:], start=1):
        x = block(x)
        if i in ends:
            out.append(x)
    return out


def _with_empty_clicks(image: torch.Tensor) -> torch.Tensor:
    return torch.cat([image, torch.zeros(image.shape[0], 2, *image.shape[2:])], dim=1)


def _archs(n: int, width: float, se=OFA_SE, expand: int | None = None) -> list[ArchConfig]:
    rng = np.random.default_rng(0)
    archs = []
    for _ in range(n):
        data = ArchConfig.sample(rng, SPACE).to_dict() | {"width_mult": width, "se": list(se)}
        if expand is not None:
            data["expands"] = [[expand] * d for d in data["depths"]]
        archs.append(ArchConfig.from_dict(data))
    return archs


@torch.no_grad()
def test_ofa_import_equals_get_active_subnet_for_random_subnets(tmp_path):
    net = _ofa_checkpoint(tmp_path / "ofa_w1.0.pth", 1.0)
    supernet = pretrained_supernet(SPACE, str(tmp_path / "ofa_w1.0.pth")).eval()
    image = torch.randn(1, 3, 96, 128)
    for arch in _archs(10, 1.0):
        ours = supernet.extract(arch).eval().trunk.backbone(_with_empty_clicks(image))
        theirs = _ofa_features(net, arch, image)
        assert [t.shape for t in theirs] == [o.shape for o in ours]
        for o, t in zip(ours, theirs, strict=True):
            assert (o - t).abs().max() <= 1e-4


@torch.no_grad()
def test_ofa_import_opens_the_gate_of_squeeze_excitation_ofa_lacks_and_keeps_w12_in_leading_channels(tmp_path):
    net = _ofa_checkpoint(tmp_path / "ofa_w1.2.pth", 1.2, seed=1)
    supernet = pretrained_supernet(SPACE, str(tmp_path / "ofa_w1.2.pth")).eval()
    image = torch.randn(1, 3, 64, 96)
    assert supernet.extract(_archs(1, 1.25)[0]).trunk.backbone.out_channels == [48, 144, 200]
    # SE everywhere: stages 1 and 3 get an open gate. At expand ratio 6 the wider block holds all of OFA's
    # expanded channels and new ones; at a smaller ratio its slice takes a few more of OFA's than OFA does.
    for arch in _archs(3, 1.25, se=(True,) * 5, expand=6):
        ours = supernet.extract(arch).eval().trunk.backbone(_with_empty_clicks(image))
        for o, t in zip(ours, _ofa_features(net, arch, image), strict=True):
            assert o.shape[1] >= t.shape[1]  # 1.25 rounds to 48, 144, 200 channels; OFA's 1.2 to 48, 136, 192
            assert (o[:, :t.shape[1]] - t).abs().max() <= 1e-4


def test_bad_ofa_checkpoints_fail_with_one_line_and_load_nothing(tmp_path):
    (tmp_path / "corrupt.pth").write_bytes(b"\x80not a checkpoint")
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, tmp_path / "foreign.pth")
    _ofa_checkpoint(tmp_path / "wide.pth", 1.6)  # wider than the space's widest width (1.25)
    for name, message in (("corrupt.pth", "not a readable checkpoint"), ("foreign.pth", "not a Once-for-All"),
                          ("wide.pth", "does not fit")):
        with pytest.raises(PretrainedError, match=message) as err:
            pretrained_supernet(SPACE, str(tmp_path / name))
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PretrainedError, match="no such file, and not an OFA supernet name"):
        pretrained_supernet(SPACE, str(tmp_path / "missing.pth"))
    _ofa_checkpoint(tmp_path / "ofa.pth", 1.0)
    with pytest.raises(PretrainedError, match="fit the tracenet_mbv3 structure, not space 'tracenet_tiny'"):
        pretrained_supernet("tracenet_tiny", str(tmp_path / "ofa.pth"))
    # all or nothing: a checkpoint that fails half-way leaves the supernet's weights as they were
    state = torch.load(tmp_path / "wide.pth", weights_only=True)["state_dict"]
    supernet = TraceNetSupernet(SPACE)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    with pytest.raises(PretrainedError):
        import_ofa(supernet, state, "wide.pth")
    assert all(torch.equal(before[k], v) for k, v in supernet.state_dict().items())


NAME = "mobilenetv3_small_100"


@torch.no_grad()
def test_timm_weights_widened_to_click_channels_keep_timm_features_at_step_0(tmp_path):
    torch.manual_seed(0)
    classifier = timm.create_model(NAME, pretrained=False).eval()  # random weights, timm's key names
    for name, buffer in classifier.named_buffers():
        if name.endswith("running_var"):
            buffer.uniform_(0.5, 1.5)
    torch.save(classifier.state_dict(), tmp_path / "weights.pth")
    backbone = TimmBackbone(NAME)
    backbone.load_pretrained(str(tmp_path / "weights.pth"))
    backbone.eval()
    reference = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path / "weights.pth")},
                                  features_only=True, out_indices=backbone.body.feature_info.out_indices).eval()
    image = torch.randn(2, 3, 96, 128)
    for ours, theirs in zip(backbone(_with_empty_clicks(image)), reference(image), strict=True):
        assert (ours - theirs).abs().max() <= 1e-5
    stem = backbone.body.conv_stem.weight
    assert torch.equal(stem[:, :3], classifier.conv_stem.weight) and not stem[:, 3:].any()
    # a student built with it carries the same backbone; the click channels then train from zero
    student = pretrained_student(ArchConfig.smallest(f"fixed:{NAME}"), str(tmp_path / "weights.pth"))
    assert torch.equal(student.trunk.backbone.body.conv_stem.weight, stem)


def test_bad_timm_weights_fail_with_one_line(tmp_path):
    (tmp_path / "corrupt.pth").write_bytes(b"garbage")
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet.pth")
    for name in ("corrupt.pth", "resnet.pth", "missing.pth"):
        with pytest.raises(PretrainedError) as err:
            TimmBackbone(NAME).load_pretrained(str(tmp_path / name))
        assert name in str(err.value) and "\n" not in str(err.value)


def test_distill_and_train_supernet_start_from_pretrained_weights(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(timm.create_model(NAME).state_dict(), tmp_path / "weights.pth")
    overrides = [f"student.space=fixed:{NAME}", "student.arch=smallest", "data.train=synthetic:4:64", "data.workers=0",
                 "train.steps=1", "train.batch_size=2", "train.checkpoint_every=1"]
    assert main(["distill", "--out", str(tmp_path / "run"), "--pretrained", str(tmp_path / "weights.pth"), "--quiet",
                 "--config", "smoke", *[a for o in overrides for a in ("--set", o)]]) == 0
    trained = load_student(tmp_path / "run" / "student.pt").trunk.backbone.body.conv_stem.weight
    saved = torch.load(tmp_path / "weights.pth", weights_only=True)["conv_stem.weight"]
    assert (trained[:, :3] - saved).abs().max() < 0.01 and trained[:, 3:].abs().max() < 0.01  # one step away
    with pytest.raises(ConfigError, match="keep one"):
        load_config(None, ["student.init=a.pt", "student.pretrained=b.pt"])
    capsys.readouterr()
    assert main(["distill", "--config", "smoke", "--out", str(tmp_path / "bad"), "--pretrained",
                 str(tmp_path / "missing.pth"), "--set", f"student.space=fixed:{NAME}"]) == 2
    assert "missing.pth': no such file" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "checkpoints").exists()
    _ofa_checkpoint(tmp_path / "ofa.pth", 1.0)
    config = load_config(None, [f"student.space={SPACE}", f"student.pretrained={tmp_path / 'ofa.pth'}",
                                "data.train=synthetic:2:64"])
    trainer = Trainer(config, tmp_path / "supernet", supernet=True, progress=False)
    stem = trainer.module.largest.trunk.backbone.stem.conv.weight
    ofa_stem = torch.load(tmp_path / "ofa.pth", weights_only=True)["state_dict"]["first_conv.conv.weight"]
    assert torch.equal(stem[:16, :3], ofa_stem) and not stem[:16, 3:].any()


def test_ofa_zoo_names_go_through_the_ofa_package(monkeypatch, tmp_path):
    import urllib.error

    import ofa.model_zoo

    net = _ofa_checkpoint(tmp_path / "unused.pth", 1.0)
    calls = []

    def zoo(name, pretrained):
        calls.append((name, pretrained))
        return net

    monkeypatch.setattr(ofa.model_zoo, "ofa_net", zoo)
    supernet = pretrained_supernet(SPACE, "ofa_mbv3_d234_e346_k357_w1.0")
    assert calls == [("ofa_mbv3_d234_e346_k357_w1.0", True)]
    stem = supernet.largest.trunk.backbone.stem.conv.weight
    assert torch.equal(stem[:16, :3], net.first_conv.conv.weight)

    def offline(name, pretrained):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(ofa.model_zoo, "ofa_net", offline)
    with pytest.raises(PretrainedError, match="cannot download it .* pass the checkpoint file"):
        pretrained_supernet(SPACE, "ofa_mbv3_d234_e346_k357_w1.2")
