"""What each output-window policy caps a perfect model at, and what it costs.

For every policy, a perfect model (it predicts the ground-truth mask wherever it computes) answers
the RITM first click on each GrabCut and DAVIS image; outside the computed window the mask is
empty, exactly as `Segmenter` leaves it. The ceiling is the mean RITM IoU. Next to it: the predicted
one-tap latency of the two README students (`benchmarks/*_best_arch.json`) on two shipped tables.

Policies: `full` (the whole output, the default), `window:F` (TraceNet's fixed square window of F x
the resolution around the tap) and `grow:F` (a window of F that is recomputed full-frame when the
object reaches the window's edge; its latency is the window's plus the full pass times the share
of images that need it, measured per set). Needs the GrabCut and DAVIS sets (`--grabcut`, `--davis`).

usage: python benchmarks/window_ceiling.py [--json] [--tables iphone13,x86-2core-ort-1t-ctx]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.data.datasets import labelled, load_dataset
from nas.evaluation.clicker import RitmClicker, ritm_iou
from nas.latency.predict import predict_latency
from nas.latency.setting import LatencySetting
from nas.latency.table import resolve_target
from search_spaces.space import ArchConfig
from search_spaces.students.segmenter import Segmenter
from search_spaces.students.student import DEFAULT_WINDOW, MASK_STRIDE, TraceNetStudent, tap_window

HERE = Path(__file__).parent
STUDENTS = {"iphone13 5 ms": HERE / "iphone13_5ms_best_arch.json",
            "x86-2core-ort-2t 15 ms": HERE / "x86-2core-ort-2t_15ms_best_arch.json"}
POLICIES = ("full", "window:0.5", "window:0.75", "window:0.9", "grow:0.5")


def window_of(policy: str) -> float | None:
    return None if policy == "full" else float(policy.split(":")[1])


def computed_region(segmenter: Segmenter, image: np.ndarray, click: tuple[float, float, bool]) -> np.ndarray:
    """(H, W) bool: the image pixels `segmenter`'s output window covers for this tap (all with no window)."""
    x, clicks, (nh, nw) = segmenter.prepare(image, [click])
    if segmenter.window is None:
        return np.ones(image.shape[:2], bool)
    ph, pw = x.shape[-2:]
    cells = tap_window((ph, pw), tuple(clicks[0, 0, :2].tolist()),
                       max(MASK_STRIDE, round(segmenter.window * segmenter.model.arch.resolution)))
    px = cells.scaled(MASK_STRIDE)
    inside = torch.zeros(1, 1, ph, pw)
    inside[..., px.y0:px.y1, px.x0:px.x1] = 1
    inside = F.interpolate(inside[..., :nh, :nw], size=image.shape[:2], mode="bilinear", align_corners=False)
    return inside[0, 0].numpy() > 0.5


def ceilings(samples: list, arch: ArchConfig, window: float | None) -> tuple[float, float]:
    """Mean IoU of the perfect model, and the share of images whose object leaves the window."""
    segmenter = Segmenter(TraceNetStudent(arch), window=window)  # its resize policy and window; no weights used
    ious, clipped = [], []
    for s in samples:
        clicker = RitmClicker(s.mask, s.ignore)
        click = clicker.next_click(np.zeros(s.mask.shape, bool))
        region = computed_region(segmenter, s.image, click)
        ious.append(ritm_iou(s.mask, s.mask & region, s.ignore))
        clipped.append(bool((s.mask & ~region & (~s.ignore if s.ignore is not None else True)).any()))
    return float(np.nanmean(ious)), float(np.mean(clipped))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grabcut", default="grabcut:../shared/data/GrabCut")
    parser.add_argument("--davis", default="davis:../shared/data/DAVIS")
    parser.add_argument("--tables", default="iphone13,x86-2core-ort-1t-ctx")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sets = {"grabcut": labelled(load_dataset(args.grabcut), args.grabcut),
            "davis": labelled(load_dataset(args.davis), args.davis)}
    students = {name: ArchConfig.from_dict(json.loads(path.read_text())["arch"]) for name, path in STUDENTS.items()}
    reference = next(iter(students.values()))  # the resize policy's resolution
    tables = {name: resolve_target(name) for name in args.tables.split(",")}

    def latency(arch: ArchConfig, window: float | None, table) -> float:
        return predict_latency(arch, table, LatencySetting(window=window)).latency_ms

    report: dict = {"default": "full" if DEFAULT_WINDOW is None else f"window:{DEFAULT_WINDOW:g}",
                    "resolution": reference.resolution, "policies": {}}
    for policy in POLICIES:
        entry: dict = {}
        window = window_of(policy)
        grows = policy.startswith("grow")
        for set_name, samples in sets.items():
            ceiling, clipped = ceilings(samples, reference, window)
            entry[f"ceiling_{set_name}"] = 1.0 if grows else ceiling  # grown images are computed whole
            entry[f"clipped_{set_name}"] = clipped
        latencies = {}
        for student, arch in students.items():
            for table_name, table in tables.items():
                key = f"{student} on {table_name}"
                if grows:
                    base, full = latency(arch, window, table), latency(arch, None, table)
                    latencies[key] = {f"expected_ms_{s}": base + entry[f"clipped_{s}"] * full for s in sets}
                else:
                    latencies[key] = {"ms": latency(arch, window, table)}
        entry["latency"] = latencies
        report["policies"][policy] = entry
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"perfect model, RITM first click, resolution {reference.resolution}; default policy: {report['default']}")
    for policy, entry in report["policies"].items():
        lat = "; ".join(f"{k}: " + ", ".join(f"{v:.2f} ms" if n == "ms" else f"{v:.2f} ms ({n[12:]})"
                                             for n, v in vals.items()) for k, vals in entry["latency"].items())
        print(f"{policy:12s} GrabCut {entry['ceiling_grabcut']:.3f} DAVIS {entry['ceiling_davis']:.3f} | {lat}")


if __name__ == "__main__":
    main()
