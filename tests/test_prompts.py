import numpy as np
import pytest

from distill.data.prompts import (
    TapMix,
    boundary_distance,
    draw_rounds,
    error_click,
    hard_mask_weights,
    tap_boundary,
    tap_interior,
    tap_uniform,
)


def _rect(h, w, y0, y1, x0, x1):
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_boundary_distance_counts_the_image_border():
    mask = _rect(5, 9, 0, 5, 0, 9)  # the whole image
    depth = boundary_distance(mask)
    assert depth[2, 4] == 3 and depth[0, 4] == 1 and depth[2, 0] == 1


def test_uniform_taps_cover_the_instance_and_nothing_else():
    mask = _rect(20, 20, 4, 8, 10, 14)
    rng = np.random.default_rng(0)
    taps = {tap_uniform(mask, rng) for _ in range(800)}
    assert taps == {(float(x), float(y)) for y in range(4, 8) for x in range(10, 14)}


def test_interior_taps_prefer_the_centre():
    mask = _rect(41, 41, 0, 41, 0, 41)
    rng = np.random.default_rng(0)
    depth = boundary_distance(mask)
    interior = np.mean([depth[int(y), int(x)] for x, y in (tap_interior(mask, rng) for _ in range(400))])
    uniform = np.mean([depth[int(y), int(x)] for x, y in (tap_uniform(mask, rng) for _ in range(400))])
    assert interior > uniform + 2  # expectation: 10.3 vs 7.7 on a 41 x 41 square


def test_boundary_taps_stay_in_the_band_inside_the_instance():
    mask = _rect(30, 30, 5, 25, 5, 25)
    rng = np.random.default_rng(0)
    depth = boundary_distance(mask)
    for x, y in (tap_boundary(mask, rng, band=2) for _ in range(200)):
        assert mask[int(y), int(x)] and depth[int(y), int(x)] <= 2


def test_tap_mix_shares_select_the_rules():
    mask = _rect(30, 30, 5, 25, 5, 25)
    depth = boundary_distance(mask)
    rng = np.random.default_rng(0)
    only_boundary = TapMix(uniform=0, interior=0, boundary=1, band=1)
    assert all(depth[int(y), int(x)] == 1 for x, y in (only_boundary.draw(mask, rng) for _ in range(50)))
    with pytest.raises(ValueError):
        TapMix(uniform=0, interior=0, boundary=0)


def test_ritm_click_goes_to_the_centre_of_the_deeper_error():
    target = _rect(40, 40, 10, 21, 10, 21)  # 11 x 11 object, centre (15, 15)
    pred = _rect(40, 40, 30, 33, 30, 33)  # a small false positive elsewhere
    assert error_click(pred, target) == (15.0, 15.0, True)
    # the false positive is now the deeper region: a negative click at its centre
    pred = _rect(40, 40, 20, 40, 0, 20) | target  # a 20 x 20 false positive in the bottom-left corner
    x, y, positive = error_click(pred, target)
    assert not positive and (x, y) in {(9.0, 29.0), (10.0, 29.0), (9.0, 30.0), (10.0, 30.0)}  # its centre


def test_ritm_click_treats_the_border_as_boundary():
    target = _rect(20, 20, 0, 20, 0, 6)  # an object along the left border, cols 0..5
    x, y, positive = error_click(np.zeros_like(target), target)
    assert positive and x in (2.0, 3.0) and 2 <= y <= 17  # without the border rule it would be x = 0


def test_uniform_error_clicks_fall_in_the_error_with_its_label():
    target = _rect(20, 20, 2, 10, 2, 10)
    pred = _rect(20, 20, 5, 15, 5, 15)
    rng = np.random.default_rng(0)
    for _ in range(100):
        x, y, positive = error_click(pred, target, rng, rule="uniform")
        assert (target & ~pred)[int(y), int(x)] if positive else (pred & ~target)[int(y), int(x)]


def test_no_error_no_click_and_ignored_pixels_do_not_count():
    target = _rect(10, 10, 2, 6, 2, 6)
    assert error_click(target, target) is None
    ignore = _rect(10, 10, 6, 7, 2, 6)
    assert error_click(target | ignore, target, ignore=ignore) is None
    with pytest.raises(ValueError, match="unknown click rule"):
        error_click(target, ~target, rule="nearest")


def test_rounds_and_hard_mask_weights():
    rng = np.random.default_rng(0)
    assert {draw_rounds(rng, 3) for _ in range(200)} == {0, 1, 2, 3}
    weights = hard_mask_weights(np.array([1.0, 0.5, 0.0]))
    assert weights.mean() == pytest.approx(1.0) and weights[2] > weights[1] > weights[0]
    assert hard_mask_weights(np.array([0.2, 0.9]), strength=0) == pytest.approx([1.0, 1.0])
