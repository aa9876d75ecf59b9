"""Supernet score: mIoU-T of a subnet under trained shared weights, on validation data.

Each subnet is extracted from the supernet, its BatchNorm statistics are recalibrated on a few
images (Once-for-All), and it predicts one mask per fixed tap: `taps` taps drawn uniformly inside
each instance, the same for every subnet. The score is the IoU averaged over all taps (mIoU-T),
with the output window of the latency setting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.data.datasets import Sample, labelled, load_dataset
from distill.data.tap_metrics import instance_taps, mask_iou
from search_spaces.modules.batchnorm import recalibrate_bn
from search_spaces.space import ArchConfig
from search_spaces.students.checkpoint import load_supernet
from search_spaces.students.segmenter import Segmenter
from search_spaces.students.student import DEFAULT_WINDOW


class SupernetScorer:
    name = "supernet"
    kind = "supernet"

    def __init__(self, checkpoint: str, data: str, images: int = 32, taps: int = 4, calibration_images: int = 16,
                 window: float | None = DEFAULT_WINDOW, seed: int = 0):
        self.checkpoint, self.data, self.images, self.taps = str(Path(checkpoint).resolve()), data, images, taps
        self.calibration_images, self.window, self.seed = calibration_images, window, seed
        self.description = (f"mIoU-T under supernet {Path(checkpoint).name} on {data} ({images} images x {taps} "
                            f"taps, BN recalibrated on {calibration_images} images)")
        self.supernet = load_supernet(self.checkpoint)  # fail early on a bad checkpoint or dataset
        self.samples = self._fixed_taps()

    def recipe(self) -> dict:
        return {"name": self.name, "checkpoint": self.checkpoint, "data": self.data, "images": self.images,
                "taps": self.taps, "calibration_images": self.calibration_images, "window": self.window,
                "seed": self.seed}

    def _fixed_taps(self) -> list[tuple[Sample, list[tuple[float, float]]]]:
        samples = labelled(load_dataset(self.data, limit=max(self.images, self.calibration_images)), self.data)
        return [(s, instance_taps(s.mask, self.taps, np.random.default_rng([self.seed, i])))
                for i, s in enumerate(samples)]

    def scores(self, archs: list[ArchConfig]) -> list[float]:
        return [self.score(arch) for arch in archs]

    def score(self, arch: ArchConfig) -> float:
        segmenter = Segmenter(self.supernet.extract(arch), window=self.window)
        calibration = (segmenter.prepare(s.image, [(*taps[0], True)])[:2]
                       for s, taps in self.samples[:self.calibration_images])
        recalibrate_bn(segmenter.model, calibration)
        ious = [mask_iou(segmenter.predict(s.image, [(x, y, True)])[0], s.mask, s.ignore)
                for s, taps in self.samples[:self.images] for x, y in taps]
        return float(np.mean(ious))
