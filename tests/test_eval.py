import json

import numpy as np
import pytest
from PIL import Image

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
