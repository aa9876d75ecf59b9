"""Exactness check of AutoCropping over random subnets and taps (`nas space check-tracing`).

Local subnets (no squeeze-excitation anywhere, so every traced op is local) must match the full
forward pass inside the window to `tolerance`. Subnets with squeeze-excitation pool over the traced
region instead of the whole map; their deviation is measured and reported, not bounded.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from search_spaces.common.errors import InvalidValueError
from search_spaces.modules.batchnorm import recalibrate_bn
from search_spaces.space import DEFAULT_SPACE, ArchConfig
from search_spaces.students.student import MASK_STRIDE, SIZE_MULTIPLE, TraceNetStudent, tap_window

TAP_KINDS = ("corner", "border", "interior")


def random_tap(rng: np.random.Generator, h: int, w: int, kind: str) -> tuple[float, float]:
    """A tap (x, y) at a random image corner, on a random border, or anywhere inside."""
    if kind == "corner":
        return float(rng.choice([0, w - 1])), float(rng.choice([0, h - 1]))
    if kind == "border":
        along = rng.integers(2)
        x = float(rng.choice([0, w - 1])) if along else float(rng.uniform(0, w - 1))
        y = float(rng.uniform(0, h - 1)) if along else float(rng.choice([0, h - 1]))
        return x, y
    return float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1))


def calibrate_bn(model: TraceNetStudent, gen: torch.Generator, batches: int = 2) -> None:
    """BatchNorm statistics from a few random batches, so activations have the scale of a trained
    network rather than exploding."""
    r = model.arch.resolution

    def random_batches():
        for _ in range(batches):
            image = torch.randn(2, 3, r, r, generator=gen)
            clicks = torch.rand(2, 2, 3, generator=gen) * r
            clicks[..., 2] = torch.tensor([1.0, 0.0])
            yield image, clicks

    recalibrate_bn(model, random_batches())


@torch.no_grad()
def compare_case(model: TraceNetStudent, rng: np.random.Generator, kind: str) -> dict:
    """Full vs traced forward for one random image size, tap and window; returns diff and FLOPs."""
    r = model.arch.resolution
    short = int(rng.integers(max(1, r // (2 * SIZE_MULTIPLE)), r // SIZE_MULTIPLE + 1)) * SIZE_MULTIPLE
    h, w = (r, short) if rng.random() < 0.5 else (short, r)
    tap = random_tap(rng, h, w, kind)
    window_px = int(rng.integers(2, max(3, r // (2 * MASK_STRIDE)) + 1)) * MASK_STRIDE
    window = tap_window((h, w), tap, window_px)
    image = torch.randn(1, 3, h, w)
    extra = (float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1)), float(rng.integers(2)))
    clicks = torch.tensor([[[tap[0], tap[1], 1.0], list(extra)]])
    with FlopCounterMode(display=False) as full_counter:
        full = model(image, clicks)
    with FlopCounterMode(display=False) as traced_counter:
        traced = model(image, clicks, window=window)
    inside = full.logits[..., window.y0:window.y1, window.x0:window.x1]
    diff = max((inside - traced.logits).abs().max().item(), (full.iou - traced.iou).abs().max().item())
    plan = model.plan((h, w), tap, window)
    return {"arch": model.arch.to_dict(), "image_hw": [h, w], "tap": [tap[0], tap[1]], "tap_kind": kind,
            "window": [window.y0, window.y1, window.x0, window.x1], "max_abs_diff": diff,
            "flops_full": full_counter.get_total_flops(), "flops_traced": traced_counter.get_total_flops(),
            "traced_input_fraction": plan.region_fraction(), "se_in_traced_region": not plan.exact}


def check_tracing(n: int = 8, seed: int = 0, space: str = DEFAULT_SPACE, tolerance: float = 1e-4,
                  progress: bool = False) -> dict:
    """Run `n` local and `n` squeeze-excitation cases; `ok` is True when every local case is within tolerance."""
    if n < 1:
        raise InvalidValueError(f"--n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    cases = {"local": [], "se": []}
    total = 2 * n
    for i in tqdm(range(total), desc="check-tracing", unit="subnet", disable=not progress):
        group = "local" if i < n else "se"
        arch = ArchConfig.sample(rng, space, se=False if group == "local" else None)
        if group == "se" and not any(arch.se):
            arch = dataclasses.replace(arch, se=(True,) * len(arch.se))
        torch.manual_seed(int(rng.integers(2**31)))
        model = TraceNetStudent(arch)
        calibrate_bn(model, gen)
        cases[group].append(compare_case(model, rng, TAP_KINDS[i % len(TAP_KINDS)]))
    local, se = cases["local"], cases["se"]
    max_diff = max(c["max_abs_diff"] for c in local)
    return {
        "space": space, "n": n, "seed": seed, "tolerance": tolerance,
        "max_abs_diff": max_diff,
        "flops_full": float(np.mean([c["flops_full"] for c in local])),
        "flops_traced": float(np.mean([c["flops_traced"] for c in local])),
        "se_deviation": max(c["max_abs_diff"] for c in se),
        "se_deviation_mean": float(np.mean([c["max_abs_diff"] for c in se])),
        "se_flops_full": float(np.mean([c["flops_full"] for c in se])),
        "se_flops_traced": float(np.mean([c["flops_traced"] for c in se])),
        "ok": max_diff <= tolerance,
        "cases": local + se,
    }
