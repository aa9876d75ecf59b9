"""TraceNet's one-tap protocol: mIoU-T, mTA and a robustness curve.

Each instance gets `taps` taps drawn uniformly among its pixels (seeded, the same for every
predictor). mIoU-T is the IoU averaged over all taps. mTA estimates, per instance, the fraction of
its area where one tap yields IoU >= 0.85 as the fraction of its uniform taps that do (a Monte
Carlo estimate of that area fraction), averaged over instances. The robustness curve bins taps by
their depth inside the instance (distance to the boundary over the instance's largest depth:
0 = on the boundary, 1 = the most interior point) and averages the IoU per bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from distill.data.datasets import Sample
from distill.data.prompts import boundary_distance
from distill.data.tap_metrics import instance_taps, mask_iou
from nas.evaluation.clicker import foreground
from nas.evaluation.predictors import Predictor

TAP_IOU_THRESHOLD = 0.85
DEPTH_BINS = 5


@dataclass
class TapResult:
    names: list[str]
    ious: np.ndarray  # (instances, taps)
    depths: np.ndarray  # (instances, taps): normalised depth of each tap

    def summary(self) -> dict:
        edges = np.linspace(0, 1, DEPTH_BINS + 1)
        bins = np.clip(np.digitize(self.depths, edges[1:-1]), 0, DEPTH_BINS - 1)
        curve = [float(self.ious[bins == b].mean()) if (bins == b).any() else None for b in range(DEPTH_BINS)]
        return {"instances": len(self.names), "taps_per_instance": self.ious.shape[1],
                "miou_t": float(self.ious.mean()),
                "mta": float((self.ious >= TAP_IOU_THRESHOLD).mean(1).mean()),
                "mta_iou_threshold": TAP_IOU_THRESHOLD,
                "robustness": {"depth_bin_edges": [float(e) for e in edges], "miou": curve}}


def tracenet_protocol(predictor: Predictor, samples: list[Sample], taps: int = 16, seed: int = 0,
                      progress: bool = True) -> TapResult:
    names, ious, depths = [], [], []
    for i, sample in enumerate(tqdm(samples, desc="mIoU-T", unit="instance", disable=not progress)):
        state = predictor.start(sample)
        depth = boundary_distance(sample.mask)
        row_iou, row_depth = [], []
        for x, y in instance_taps(sample.mask, taps, np.random.default_rng([seed, i])):
            pred = foreground(predictor.logits(state, [(x, y, True)]))
            row_iou.append(mask_iou(pred, sample.mask, sample.ignore))
            row_depth.append(depth[int(y), int(x)] / depth.max())
        names.append(sample.name)
        ious.append(row_iou)
        depths.append(row_depth)
    return TapResult(names, np.asarray(ious), np.asarray(depths))
