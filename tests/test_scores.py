import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distill.data.datasets import DatasetError, SyntheticShapes, load_dataset
from distill.data.tap_metrics import instance_taps, mask_iou
from nas.cli.main import main
from nas.search.scores import build_scorer
from nas.search.scores.predictor import PredictorScorer, fit_predictor, load_predictor, read_pairs, save_predictor
from nas.search.scores.supernet import SupernetScorer
from search_spaces import ArchConfig
from search_spaces.modules.batchnorm import recalibrate_bn
from search_spaces.space import genome_space
from search_spaces.students.checkpoint import CheckpointError, load_supernet, save_supernet
from search_spaces.students.supernet import TraceNetSupernet

TINY = "tracenet_tiny"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tiny_supernet(tmp_path_factory):
    torch.manual_seed(0)
    return save_supernet(TraceNetSupernet(TINY), tmp_path_factory.mktemp("supernet") / "supernet.pt")


def test_mask_iou_ignores_the_uncertain_band():
    gt = np.zeros((4, 4), bool)
    gt[:2] = True
    pred = np.zeros((4, 4), bool)
    pred[:3] = True
    assert mask_iou(pred, gt) == pytest.approx(8 / 12)
    band = np.zeros((4, 4), bool)
    band[2] = True
    assert mask_iou(pred, gt, band) == 1.0
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_instance_taps_fall_inside_the_instance():
    mask = np.zeros((20, 30), bool)
    mask[5:8, 10:12] = True
    taps = instance_taps(mask, 50, np.random.default_rng(0))
    assert all(mask[int(y), int(x)] for x, y in taps) and len(set(taps)) == 6  # every pixel of the 3x2 block
    with pytest.raises(ValueError, match="empty"):
        instance_taps(np.zeros((3, 3), bool), 1, np.random.default_rng(0))


def test_recalibrate_bn_sets_the_average_of_batch_statistics():
    bn = nn.BatchNorm2d(1)
    batches = [(torch.full((1, 1, 2, 2), 2.0),), (torch.full((1, 1, 2, 2), 4.0),)]
    assert recalibrate_bn(bn, batches) == 2
    assert bn.running_mean.item() == pytest.approx(3.0) and not bn.training and bn.momentum == 0.1


def test_synthetic_shapes_are_deterministic_and_hold_one_instance():
    a, b = list(SyntheticShapes(3, 64, seed=1)), list(SyntheticShapes(3, 64, seed=1))
    assert all((x.image == y.image).all() and (x.mask == y.mask).all() for x, y in zip(a, b, strict=True))
    assert all(s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8 and 0 < s.mask.sum() < 64 * 64 for s in a)


def test_folder_dataset_skips_corrupt_images_with_a_warning(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / f"{name}.jpg")
        Image.fromarray(np.eye(8, dtype=np.uint8)).save(tmp_path / "gt" / f"{name}.png")
    (tmp_path / "img" / "b.jpg").write_bytes(b"not a jpeg")
    dataset = load_dataset(f"davis:{tmp_path}")
    with pytest.warns(UserWarning, match="skipping b.jpg"):
        samples = list(dataset)
    assert [s.name for s in samples] == ["a"] and dataset.skipped == 1 and samples[0].mask.sum() == 8


@pytest.mark.parametrize("spec", ["davis:/nonexistent", "coco", "synthetic:x", "synthetic:0"])
def test_bad_dataset_specs(spec):
    with pytest.raises(DatasetError):
        load_dataset(spec)


@pytest.mark.skipif(not (SHARED / "GrabCut").is_dir(), reason="../shared/data not present")
def test_real_benchmark_folders_read():
    grabcut = list(load_dataset(f"grabcut:{SHARED / 'GrabCut'}"))
    assert len(grabcut) == 50 and all(s.mask.any() and not (s.mask & s.ignore).any() for s in grabcut)
    assert any(s.ignore.any() for s in grabcut)  # the 128 band of most masks
    davis = list(load_dataset(f"davis:{SHARED / 'DAVIS'}", limit=2))
    assert davis[0].image.shape[:2] == davis[0].mask.shape and davis[0].ignore is None and davis[0].mask.any()


def test_supernet_checkpoint_round_trip_and_errors(tmp_path, tiny_supernet):
    loaded = load_supernet(tiny_supernet)
    reference = TraceNetSupernet(TINY)
    reference.load_state_dict(torch.load(tiny_supernet, weights_only=True)["state_dict"])
    arch = ArchConfig.sample(2, TINY)
    assert all(torch.equal(a, b) for a, b in zip(loaded.extract(arch).state_dict().values(),
                                                 reference.extract(arch).state_dict().values(), strict=True))
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_supernet(tmp_path / "bad.pt")


def test_supernet_scorer_is_miou_t_and_deterministic(tiny_supernet):
    scorer = SupernetScorer(str(tiny_supernet), "synthetic:4:64", images=4, taps=2, calibration_images=2)
    archs = [ArchConfig.sample(i, TINY) for i in range(3)]
    first = scorer.scores(archs)
    assert all(0.0 <= s <= 1.0 for s in first) and first == scorer.scores(archs)
    assert build_scorer(scorer.recipe()).scores(archs[:1]) == first[:1]
    assert len(scorer.samples) == 4 and all(len(taps) == 2 for _, taps in scorer.samples)


def _linear_pairs(n: int, seed: int = 0) -> tuple[list[ArchConfig], np.ndarray]:
    rng = np.random.default_rng(seed)
    archs = [ArchConfig.sample(rng, TINY) for _ in range(n)]
    features = genome_space(TINY).features(archs)
    weights = np.random.default_rng(99).normal(size=features.shape[1])
    return archs, (features @ weights).astype(np.float32)


def test_predictor_learns_a_known_function_and_round_trips(tmp_path):
    archs, scores = _linear_pairs(300)
    model, report = fit_predictor(archs, scores, hidden=(64, 64), epochs=300)
    assert report.n_heldout == 60 and report.heldout_spearman > 0.9
    path = save_predictor(model, tmp_path / "p.pt", report)
    scorer = PredictorScorer(str(path))
    test = [ArchConfig.sample(1000 + i, TINY) for i in range(5)]
    assert scorer.scores(test) == pytest.approx([float(v) for v in model.predict(test)], rel=1e-6)
    assert load_predictor(path)[1]["heldout_spearman"] == pytest.approx(report.heldout_spearman)
    with pytest.raises(ValueError, match="too few"):
        fit_predictor(archs[:5], scores[:5])


def test_predictor_cli_collect_fit_and_search(tmp_path, tiny_supernet, tiny_table_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    common = ["predictor", "collect", "--supernet", str(tiny_supernet), "--data", "synthetic:2:64", "--images", "2",
              "--taps", "1", "--out", str(pairs)]
    assert main([*common, "--n", "6"]) == 0
    assert main([*common, "--n", "12"]) == 0  # continues: 6 more, the first 6 unchanged
    archs, scores = read_pairs(pairs)
    rng = np.random.default_rng(0)
    assert archs == [ArchConfig.sample(rng, TINY) for _ in range(12)]  # no repeats, no gaps
    capsys.readouterr()
    assert main(["predictor", "fit", str(pairs), "--out", str(tmp_path / "p.pt"), "--hidden", "16",
                 "--epochs", "20", "--heldout", "0.25", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_heldout"] == 3 and -1 <= report["heldout_spearman"] <= 1
    assert main(["search", "--target", str(tiny_table_path), "--budget", "1.7", "--space", TINY, "--population",
                 "4", "--generations", "1", "--predictor", str(tmp_path / "p.pt"), "--out", str(tmp_path / "s"),
                 "--quiet"]) == 0
    best = json.loads((tmp_path / "s" / "best_arch.json").read_text())
    assert best["score_kind"] == "predictor" and "held-out Spearman" in best["score_description"]
    pairs.write_text("{not json\n")
    assert main(["predictor", "fit", str(pairs), "--out", str(tmp_path / "q.pt")]) == 2
    assert not (tmp_path / "q.pt").exists()


def test_search_with_a_supernet_score(tmp_path, tiny_supernet, tiny_table_path, capsys):
    argv = ["search", "--target", str(tiny_table_path), "--budget", "1.7", "--space", TINY, "--population", "4",
            "--generations", "1", "--out", str(tmp_path / "s"), "--quiet"]
    assert main([*argv, "--supernet", str(tiny_supernet)]) == 2
    assert "--supernet and --data go together" in capsys.readouterr().err
    assert main([*argv, "--supernet", str(tiny_supernet), "--data", "synthetic:2:64"]) == 0
    best = json.loads((tmp_path / "s" / "best_arch.json").read_text())
    assert best["score_kind"] == "supernet" and 0 <= best["score"] <= 1
    assert "score     " in capsys.readouterr().out


def test_coco_instances_become_samples_and_tiny_or_crowd_ones_are_skipped(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((100, 120, 3), 90, np.uint8)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(np.full((100, 120, 3), 90, np.uint8)).save(tmp_path / "images" / "b.jpg")

    def box(x0, y0, x1, y1):
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    annotations = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 120},
                   {"id": 2, "coco_url": "http://x/b.jpg", "height": 100, "width": 120}],  # LVIS-style name
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": box(10, 10, 60, 50), "area": 2000,
             "bbox": [10, 10, 50, 40], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": box(0, 0, 5, 5), "area": 25,
             "bbox": [0, 0, 5, 5], "iscrowd": 0},  # tiny
            {"id": 12, "image_id": 1, "category_id": 1, "segmentation": box(0, 0, 100, 90), "area": 9000,
             "bbox": [0, 0, 100, 90], "iscrowd": 1},  # crowd
            {"id": 13, "image_id": 1, "category_id": 1, "segmentation": box(70, 60, 115, 95), "area": 1575,
             "bbox": [70, 60, 45, 35], "iscrowd": 0},
            {"id": 20, "image_id": 2, "category_id": 1, "segmentation": box(30, 20, 100, 90), "area": 4900,
             "bbox": [30, 20, 70, 70]}]}
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    dataset = load_dataset(f"coco:{tmp_path / 'ann.json'}:{tmp_path / 'images'}")
    samples = list(dataset)
    assert [s.name for s in samples] == ["a#10", "a#13", "b#20"]
    # several instances of one image from one read of it (a training step's `data.instances_per_image`)
    assert sorted(s.name for s in dataset.instances(0, 3, np.random.default_rng(0))) == ["a#10", "a#13"]
    assert samples[0].mask[30, 30] and not samples[0].mask[80, 100] and samples[0].mask.shape == (100, 120)
    assert len(list(load_dataset(f"lvis:{tmp_path / 'ann.json'}:{tmp_path / 'images'}"))) == 3
    with pytest.raises(DatasetError, match="not readable"):
        load_dataset(f"coco:{tmp_path / 'images' / 'a.jpg'}:{tmp_path / 'images'}")


def test_search_quotes_the_measured_rank_correlation_of_its_score():
    from nas.search.scores.validity import evidence_line, load_evidence

    scale = {"architectures": 16, "space": "tracenet_mbv3", "steps": 200, "train_resolution": 192,
             "machine": "2-core CPU"}
    worse = {"date": "2026-12-01", "scale": scale, "kendall_tau_miou_at_1": {"naswot": 0.1, "flops": 0.3}}
    line = evidence_line("naswot", worse)
    assert "naswot +0.10, FLOPs +0.30" in line and "no signal ranks trained students better than FLOPs" in line
    better = worse | {"kendall_tau_miou_at_1": {"naswot": 0.5, "flops": 0.3}}
    assert "the best signal is naswot" in evidence_line("naswot", better)
    noise = worse | {"kendall_tau_miou_at_1": {"naswot": 0.1, "flops": -0.2}}  # 16 architectures: 2 s.e. = 0.37
    assert "no signal is distinguishable from chance at this scale (|tau| < 0.37)" in evidence_line("naswot", noise)
    assert evidence_line("predictor", {"kendall_tau_miou_at_1": {"naswot": 0.1, "flops": 0.3}}) is None
    shipped = load_evidence()  # the benchmark's measurement ships with the package
    assert shipped is not None and {"naswot", "flops", "supernet", "predictor"} <= set(shipped["kendall_tau_miou_at_1"])
    assert evidence_line("naswot").startswith("Kendall tau with trained mIoU@1: naswot ")
