"""The RITM interactive protocol (Sofiiuk et al., "Reviving Iterative Training with Mask Guidance"),
with RITM's own click simulator and IoU (`nas.evaluation.clicker`).

For each object, click k = 1..`max_clicks` is placed by `RitmClicker` against the prediction after
click k-1 (an empty mask before the first), the predictor answers all k clicks, and the IoU after
click k is `ritm_iou` of `sigmoid(logits) > 0.49`:
- NoC@85 / NoC@90: the first k whose IoU >= 0.85 / 0.90, or `max_clicks` when none is (a NaN IoU,
  an object left wholly in the ignored band, never reaches a threshold), averaged over objects;
- mIoU@k: the mean IoU after k clicks over the objects whose IoU is defined (`nan_objects` counts
  the others).
RITM stops clicking an object once it reaches its target IoU; this loop always runs `max_clicks`
clicks so that the mIoU@k curve covers every k. NoC at any threshold up to RITM's target IoU is the
same either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from distill.data.datasets import Sample
from nas.evaluation.clicker import PROBABILITY_THRESHOLD, RitmClicker, foreground, ritm_iou
from nas.evaluation.predictors import Predictor

NOC_THRESHOLDS = (0.85, 0.90)


@dataclass
class NocResult:
    names: list[str]
    ious: np.ndarray  # (images, max_clicks): IoU after each click

    def noc(self, threshold: float) -> np.ndarray:
        reached = self.ious >= threshold
        return np.where(reached.any(1), reached.argmax(1) + 1, self.ious.shape[1])

    def summary(self) -> dict:
        defined = ~np.isnan(self.ious).any(1)
        curve = self.ious[defined].mean(0) if defined.any() else np.full(self.ious.shape[1], np.nan)
        return {"images": len(self.names), "max_clicks": self.ious.shape[1],
                "noc85": float(self.noc(0.85).mean()), "noc90": float(self.noc(0.90).mean()),
                "miou_at_1": float(curve[0]), "miou_at_k": [float(v) for v in curve],
                "nan_objects": int((~defined).sum()), "probability_threshold": PROBABILITY_THRESHOLD}


def noc_protocol(predictor: Predictor, samples: list[Sample], max_clicks: int = 20,
                 progress: bool = True) -> NocResult:
    names, rows = [], []
    for sample in tqdm(samples, desc="NoC", unit="image", disable=not progress):
        state = predictor.start(sample)
        clicker = RitmClicker(sample.mask, sample.ignore)
        pred = np.zeros(sample.mask.shape, bool)
        ious = []
        for _ in range(max_clicks):
            clicker.next_click(pred)
            pred = foreground(predictor.logits(state, list(clicker.clicks)))
            ious.append(ritm_iou(sample.mask, pred, sample.ignore))
        names.append(sample.name)
        rows.append(ious)
    return NocResult(names, np.asarray(rows, dtype=float))
