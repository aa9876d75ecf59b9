import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import distance_transform_edt

from distill.data.datasets import Sample
from nas.cli.main import main
from nas.evaluation.noc import noc_protocol
from nas.evaluation.tracenet import tracenet_protocol
from search_spaces import ArchConfig, TraceNetStudent
from search_spaces.students.checkpoint import save_student


def _rect(h, w, y0, y1, x0, x1):
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _sample(mask, ignore=None):
    return Sample("s", np.zeros((*mask.shape, 3), np.uint8), mask, ignore)


class Scripted:
    """A predictor answering from a function of the clicks; it records every click set."""

    name = "scripted"

    def __init__(self, answer):
        self.answer, self.seen = answer, []

    def start(self, sample):
        return sample

    def logits(self, sample, clicks):
        self.seen.append(list(clicks))
        return np.where(self.answer(sample, clicks), 10.0, -10.0)


def test_noc_of_a_perfect_and_a_useless_predictor():
    samples = [_sample(_rect(40, 40, 5, 25, 5, 25)), _sample(_rect(30, 50, 10, 20, 0, 50))]
    perfect = noc_protocol(Scripted(lambda s, c: s.mask), samples, max_clicks=5, progress=False).summary()
    assert perfect["noc85"] == perfect["noc90"] == 1 and perfect["miou_at_1"] == 1.0
    useless = noc_protocol(Scripted(lambda s, c: np.zeros_like(s.mask)), samples, max_clicks=5,
                           progress=False).summary()
    assert useless["noc85"] == useless["noc90"] == 5 and useless["miou_at_k"] == [0.0] * 5


def test_click_simulator_places_clicks_where_ritm_does():
    target = _rect(40, 60, 10, 31, 10, 41)  # 21 rows x 31 columns
    left_part = _rect(40, 60, 10, 31, 10, 20)  # the predictor only ever finds the left 10 columns
    predictor = Scripted(lambda s, c: left_part)
    result = noc_protocol(predictor, [_sample(target)], max_clicks=2, progress=False)
    first, second = predictor.seen[0], predictor.seen[1]
    # deepest point of the object: depth 11 on row 20, columns 20..30; the first in raster order, as RITM's argmax
    assert first == [(20.0, 20.0, True)]
    assert second[1] == (30.0, 20.0, True)  # the centre of the missed 21 x 21 part (columns 20..40)
    assert result.ious[0, 0] == pytest.approx(10 / 31)


def test_ignored_band_does_not_count():
    target = _rect(20, 20, 5, 15, 5, 15)
    band = _rect(20, 20, 4, 16, 4, 16) & ~target
    grown = Scripted(lambda s, c: target | band)
    assert noc_protocol(grown, [_sample(target, band)], max_clicks=3, progress=False).summary()["miou_at_1"] == 1.0


def test_an_equal_depth_tie_between_the_error_regions_is_a_negative_click():
    target = _rect(20, 30, 2, 7, 2, 7)  # 5 x 5: depth 3 at its centre (row 4, column 4)
    wrong = _rect(20, 30, 2, 7, 20, 25)  # a 5 x 5 false positive, just as deep (centre row 4, column 22)
    predictor = Scripted(lambda s, c: wrong)
    noc_protocol(predictor, [_sample(target)], max_clicks=2, progress=False)
    assert predictor.seen[0] == [(4.0, 4.0, True)]
    assert predictor.seen[1][1] == (22.0, 4.0, False)  # RITM: positive only when strictly deeper


def test_a_clicked_pixel_is_never_clicked_again():
    target = _rect(30, 30, 5, 26, 5, 26)  # 21 x 21: one deepest pixel, (15, 15)
    stubborn = Scripted(lambda s, c: np.zeros_like(s.mask))  # leaves every clicked pixel wrong
    noc_protocol(stubborn, [_sample(target)], max_clicks=4, progress=False)
    clicks = stubborn.seen[-1]
    assert clicks[0] == (15.0, 15.0, True) and len(set(clicks)) == 4  # no click repeats
    depth = distance_transform_edt(np.pad(target, 1))[1:-1, 1:-1]
    depth[15, 15] = 0  # the next is the deepest pixel not yet clicked, the first in raster order
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    assert clicks[1] == (float(x), float(y), True)


def test_foreground_is_ritms_float32_sigmoid_above_0_49():
    from nas.evaluation.clicker import foreground

    # float32 logits just above log(0.49 / 0.51): foreground by a logit threshold, background by RITM's sigmoid
    start = np.float32(math.log(0.49 / 0.51))
    edge = [v for v in (np.nextafter(start, np.float32(-1)) + np.float32(k) * np.float32(1e-9) for k in range(60))
            if v > math.log(0.49 / 0.51)]
    ritm = [bool(torch.sigmoid(torch.tensor([v], dtype=torch.float32)).item() > np.float32(0.49)) for v in edge]
    assert not all(ritm), "no float32 logit where the two rules differ"
    logits = np.array([edge], dtype=np.float32)
    assert foreground(logits)[0].tolist() == ritm


def test_with_no_error_left_the_next_click_is_negative_at_the_origin_and_is_evaluated():
    target = _rect(20, 20, 5, 15, 5, 15)
    half = _rect(20, 20, 5, 15, 5, 10)
    predictor = Scripted(lambda s, c: s.mask if len(c) == 1 else half)  # perfect, then worse with more clicks
    result = noc_protocol(predictor, [_sample(target)], max_clicks=3, progress=False)
    assert predictor.seen[1][1] == (0.0, 0.0, False)  # RITM keeps clicking
    assert result.ious[0].tolist() == [1.0, 0.5, pytest.approx(0.5)]
    assert result.noc(0.9)[0] == 1


def test_an_object_wholly_in_the_ignored_band_has_no_iou_and_never_reaches_a_threshold():
    band = _rect(20, 20, 5, 15, 5, 15)
    empty = np.zeros((20, 20), bool)
    result = noc_protocol(Scripted(lambda s, c: band), [_sample(empty, band), _sample(_rect(20, 20, 2, 8, 2, 8))],
                          max_clicks=4, progress=False)
    assert np.isnan(result.ious[0]).all() and result.noc(0.85)[0] == 4  # RITM: 0 / 0, NoC = max clicks
    summary = result.summary()
    assert summary["nan_objects"] == 1 and summary["miou_at_1"] == pytest.approx(result.ious[1, 0])


def test_benchmark_masks_decode_as_ritm_reads_them():
    from distill.data.datasets import decode_mask

    grey = np.array([[0, 1, 100, 128, 129, 255]], np.uint8)
    obj, ignore = decode_mask("grabcut", np.repeat(grey[..., None], 3, axis=2))
    assert obj.tolist() == [[False, True, False, False, True, True]]  # 100 is background, only 128 is ignored
    assert ignore.tolist() == [[False, False, False, True, False, False]]
    colour = np.array([[[0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 3, 0]]], np.uint8)  # blue 1 is dark grey 0
    obj, ignore = decode_mask("davis", colour)
    assert obj.tolist() == [[False, True, True, True]] and ignore is None


def test_mta_and_miou_t_on_a_case_with_a_known_answer():
    target = _rect(80, 100, 20, 60, 20, 80)  # 60 columns, 20..79
    works_on_the_left = Scripted(lambda s, c: s.mask if c[0][0] < 50 else np.zeros_like(s.mask))
    summary = tracenet_protocol(works_on_the_left, [_sample(target)], taps=600, progress=False).summary()
    assert summary["mta"] == pytest.approx(0.5, abs=0.06)  # 30 of the 60 columns
    assert summary["miou_t"] == pytest.approx(summary["mta"])
    curve = summary["robustness"]["miou"]
    assert len(curve) == 5 and all(v is None or 0 <= v <= 1 for v in curve)


def _grabcut_fixture(root):
    (root / "data_GT").mkdir(parents=True)
    (root / "boundary_GT").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        image = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
        mask = np.zeros((64, 80), np.uint8)
        mask[10 + i:40, 15:50 + i] = 255
        mask[9 + i, 15:50 + i] = 128  # a strip of the uncertain band
        Image.fromarray(image).save(root / "data_GT" / f"img{i}.jpg")
        Image.fromarray(mask).save(root / "boundary_GT" / f"img{i}.bmp")


def test_eval_json_contract_on_a_three_image_fixture(tmp_path, capsys):
    _grabcut_fixture(tmp_path / "gc")
    student = save_student(TraceNetStudent(ArchConfig.smallest("tracenet_tiny")), tmp_path / "student.pt")
    for who in (["--teacher", "gt"], ["--checkpoint", str(student)]):
        out = tmp_path / who[0].strip("-")
        assert main(["eval", *who, "--dataset", f"grabcut:{tmp_path / 'gc'}", "--protocol", "noc", "--max-clicks",
                     "3", "--json", "--quiet", "--out", str(out)]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert {"noc85", "noc90", "miou_at_1", "miou_at_k"} <= set(summary) and summary["images"] == 3
        assert 1 <= summary["noc90"] <= 3 and len(summary["miou_at_k"]) == 3
        assert (out / "per_image.csv").read_text().count("\n") == 4 and (out / "miou_vs_clicks.png").is_file()
    assert main(["eval", "--teacher", "gt", "--dataset", f"grabcut:{tmp_path / 'gc'}", "--protocol", "tracenet",
                 "--taps", "4", "--json", "--quiet", "--out", str(tmp_path / "t")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["miou_t"] == 1.0 and summary["mta"] == 1.0 and summary["mta_iou_threshold"] == 0.85


def test_eval_errors_exit_2(tmp_path, capsys):
    assert main(["eval", "--teacher", "gt", "--dataset", "davis:/nonexistent"]) == 2
    assert "not a davis folder" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"junk")
    assert main(["eval", "--checkpoint", str(tmp_path / "bad.pt"), "--dataset", "synthetic:2"]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
