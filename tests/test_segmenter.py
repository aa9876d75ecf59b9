import dataclasses
import json

import numpy as np
import pytest
import torch

from search_spaces import ArchConfig, CheckpointError, Segmenter, TraceNetStudent, load_student, save_student

TINY = "tracenet_tiny"


@pytest.fixture
def segmenter():
    return Segmenter(TraceNetStudent(ArchConfig.sample(0, TINY)))


IMAGE = np.random.default_rng(0).integers(0, 255, size=(50, 70, 3), dtype=np.uint8)


@pytest.mark.parametrize("image, clicks, message", [
    (IMAGE, [(70, 10, True)], "off the 70x50 image"),
    (IMAGE, [(-1, 10, True)], "off the"),
    (IMAGE, [(10, 50.0, True)], "off the"),
    (IMAGE, [(10, 10, False)], "at least one positive click"),
    (IMAGE, [], "non-empty"),
    (IMAGE, [(10, 10)], "must be (x, y, positive)"),
    (IMAGE, [("a", 10, True)], "non-numeric"),
    (IMAGE, [(float("nan"), 10, True)], "non-numeric"),
    (IMAGE.astype(np.float32), [(10, 10, True)], "uint8"),
    (IMAGE[..., 0], [(10, 10, True)], "HxWx3"),
    (np.zeros((50, 70, 4), np.uint8), [(10, 10, True)], "HxWx3"),
    (np.zeros((0, 70, 3), np.uint8), [(10, 10, True)], "empty"),
    ([[1, 2, 3]], [(0, 0, True)], "numpy array"),
])
def test_bad_input_raises_one_line_value_error(segmenter, image, clicks, message):
    with pytest.raises(ValueError) as err:
        segmenter.predict(image, clicks)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_predict_any_size_returns_mask_and_score(segmenter):
    for shape in [(50, 70), (333, 97), (20, 20)]:
        image = np.random.default_rng(1).integers(0, 255, size=(*shape, 3), dtype=np.uint8)
        mask, score = segmenter.predict(image, [(5, 5, False), (shape[1] - 1, shape[0] - 1, True)])
        assert mask.shape == shape and mask.dtype == bool
        assert isinstance(score, float) and 0.0 <= score <= 1.0


def test_window_limits_the_mask_to_the_region_around_the_tap():
    model = TraceNetStudent(dataclasses.replace(ArchConfig.sample(0, TINY), resolution=64))
    with torch.no_grad():  # bias the last dynamic layer so every computed pixel is foreground
        model.head.bias_bias[-1].fill_(100.0)
    image = np.zeros((256, 256, 3), np.uint8)
    full_mask, _ = Segmenter(model, window=None).predict(image, [(10, 10, True)])
    assert full_mask.all()
    mask, _ = Segmenter(model, window=0.25).predict(image, [(10, 10, True)])
    ys, xs = np.nonzero(mask)
    # resolution 64 -> window 16 network px = 64 image px, kept inside the image at the corner
    assert mask[:60, :60].all() and not mask[80:, :].any() and not mask[:, 80:].any()
    assert ys.max() < 72 and xs.max() < 72


def test_window_must_be_a_fraction():
    with pytest.raises(ValueError, match="fraction"):
        Segmenter(TraceNetStudent(ArchConfig.smallest(TINY)), window=2.0)


def test_checkpoint_round_trip_and_errors(tmp_path, segmenter):
    path = save_student(segmenter.model, tmp_path / "ckpt" / "student.pt", note="test")
    assert sorted(p.name for p in path.parent.iterdir()) == ["student.pt"]  # no temp files left behind
    loaded = Segmenter.from_checkpoint(path)
    assert loaded.model.arch == segmenter.model.arch
    clicks = [(30, 20, True), (5, 5, False)]
    mask_a, score_a = segmenter.predict(IMAGE, clicks)
    mask_b, score_b = loaded.predict(IMAGE, clicks)
    assert np.array_equal(mask_a, mask_b) and score_a == pytest.approx(score_b)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt.pt: not a readable checkpoint"):
        load_student(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a TraceNAS student checkpoint"):
        load_student(foreign)
    mismatched = tmp_path / "mismatch.pt"
    payload = torch.load(path, weights_only=True)
    payload["arch"] = ArchConfig.largest(TINY).to_dict()
    torch.save(payload, mismatched)
    with pytest.raises(CheckpointError, match="do not match"):
        load_student(mismatched)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_student(tmp_path / "missing.pt")


def _random_bn_stats(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.normal_(generator=generator)
            module.bias.data.normal_(generator=generator)


def test_batchnorm_folding_keeps_outputs_and_removes_every_trunk_norm():
    import copy

    from search_spaces.students.fusion import fold_batchnorm, optimise_for_inference

    model = TraceNetStudent(ArchConfig.sample(3, TINY)).eval()
    _random_bn_stats(model)
    folded = copy.deepcopy(model)
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.trunk.modules())
    assert fold_batchnorm(folded.trunk) == norms > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.trunk.modules())
    optimise_for_inference(folded)
    image, clicks = torch.randn(1, 3, 96, 128), torch.tensor([[[70.0, 30.0, 1.0]]])
    with torch.no_grad():
        for window in (None, dataclasses.replace(model.plan((96, 128), (70.0, 30.0), _window()).output_boxes[0])):
            expected, got = model(image, clicks, window=window), folded(image, clicks, window=window)
            assert torch.allclose(got.logits, expected.logits, atol=1e-4) and torch.allclose(got.iou, expected.iou,
                                                                                           atol=1e-4)


def _window():
    from search_spaces.students.student import tap_window

    return tap_window((96, 128), (70.0, 30.0), 32)


@pytest.mark.parametrize("fraction, cropped", [(0.25, True), (1.0, False)])
def test_windowed_prediction_equals_the_full_frame_inside_the_window(fraction, cropped):
    from search_spaces.students.student import tap_window
    from search_spaces.tracing.box import Box

    arch = ArchConfig.sample(3, TINY)  # without squeeze-excitation, so that cropping is exact
    model = TraceNetStudent(dataclasses.replace(arch, resolution=128, se=(False,) * len(arch.se))).eval()
    _random_bn_stats(model)
    window = tap_window((96, 128), (38.0, 58.0), round(fraction * 128))
    assert (model.plan((96, 128), (38.0, 58.0), window).input_box != Box.full(96, 128)) == cropped  # both paths
    image = np.random.default_rng(2).integers(0, 255, size=(96, 128, 3), dtype=np.uint8)
    windowed, score_w = Segmenter(model, window=fraction).predict_logits(image, [(38.0, 58.0, True)])
    full, score_f = Segmenter(model, window=None).predict_logits(image, [(38.0, 58.0, True)])
    inside = windowed > -1e3
    assert inside.any() and score_w == pytest.approx(score_f, abs=1e-4)
    core = inside & np.roll(inside, 8, 0) & np.roll(inside, -8, 0) & np.roll(inside, 8, 1) & np.roll(inside, -8, 1)
    assert core.any() and np.allclose(windowed[core], full[core], atol=1e-3)  # away from the interpolated edge


def test_default_output_is_the_whole_object_in_every_path(tmp_path):
    """Segmenter, the search's latency setting, the exported program and the CLIs share one default: the
    whole output, so a mask reaches beyond TraceNet's old window of half the resolution."""
    from nas.cli.main import main
    from nas.latency.setting import REFERENCE_SETTING, LatencySetting
    from nas.search.settings import SearchSettings
    from search_spaces.students.student import DEFAULT_WINDOW

    arch = ArchConfig.sample(3, TINY)
    model = TraceNetStudent(dataclasses.replace(arch, resolution=128)).eval()
    image = np.random.default_rng(2).integers(0, 255, size=(96, 128, 3), dtype=np.uint8)
    default, _ = Segmenter(model).predict_logits(image, [(10.0, 10.0, True)])
    windowed, _ = Segmenter(model, window=0.5).predict_logits(image, [(10.0, 10.0, True)])
    outside_old_window = windowed < -1e3
    assert outside_old_window.mean() > 0.5 and (default[outside_old_window] > -1e3).all()
    assert DEFAULT_WINDOW is None and LatencySetting().window is None and REFERENCE_SETTING.window is None
    assert SearchSettings(targets=("iphone13",), budgets_ms=(5.0,)).setting() == REFERENCE_SETTING
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(model.arch.to_json())
    assert main(["export", "--arch", str(arch_file), "--format", "torchscript", "--out", str(tmp_path / "x")]) == 0
    exported = json.loads((tmp_path / "x" / "export.json").read_text())
    assert exported["setting"]["window"] == "full", exported["setting"]
