"""The RITM interactive protocol (Sofiiuk et al., "Reviving Iterative Training with Mask Guidance").

The first click is the deepest interior point of the object; every next click goes to the deepest
point of the larger error region (false negatives -> positive, false positives -> negative), the
image border counting as boundary. A pixel is foreground when its probability exceeds 0.49.
NoC@85 / NoC@90 count the clicks until IoU reaches 0.85 / 0.90 (`max_clicks` when never), and
mIoU@k averages the IoU after k clicks. GrabCut's uncertain band is left out of every IoU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from distill.data.datasets import Sample
from distill.data.prompts import error_click
from distill.data.tap_metrics import mask_iou
from nas.evaluation.predictors import Predictor

PROBABILITY_THRESHOLD = 0.49
LOGIT_THRESHOLD = math.log(PROBABILITY_THRESHOLD / (1 - PROBABILITY_THRESHOLD))
NOC_THRESHOLDS = (0.85, 0.90)


@dataclass
class NocResult:
    names: list[str]
    ious: np.ndarray  # (images, max_clicks): IoU after each click

    def noc(self, threshold: float) -> np.ndarray:
        reached = self.ious >= threshold
        return np.where(reached.any(1), reached.argmax(1) + 1, self.ious.shape[1])

    def summary(self) -> dict:
        curve = self.ious.mean(0)
        return {"images": len(self.names), "max_clicks": self.ious.shape[1],
                "noc85": float(self.noc(0.85).mean()), "noc90": float(self.noc(0.90).mean()),
                "miou_at_1": float(curve[0]), "miou_at_k": [float(v) for v in curve],
                "probability_threshold": PROBABILITY_THRESHOLD}


def noc_protocol(predictor: Predictor, samples: list[Sample], max_clicks: int = 20,
                 progress: bool = True) -> NocResult:
    names, rows = [], []
    for sample in tqdm(samples, desc="NoC", unit="image", disable=not progress):
        state = predictor.start(sample)
        pred = np.zeros_like(sample.mask)
        clicks, ious = [], []
        for _ in range(max_clicks):
            click = error_click(pred, sample.mask, rule="center", ignore=sample.ignore)
            if click is None:  # already perfect: every later click keeps IoU 1
                ious += [1.0] * (max_clicks - len(ious))
                break
            clicks.append(click)
            pred = predictor.logits(state, clicks) > LOGIT_THRESHOLD
            ious.append(mask_iou(pred, sample.mask, sample.ignore))
        names.append(sample.name)
        rows.append(ious)
    return NocResult(names, np.asarray(rows, dtype=float))
