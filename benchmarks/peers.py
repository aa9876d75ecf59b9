"""Peers side by side (issue E): our searched student, MobileSAM (vit_t) and SAM ViT-B, one tap each.

All three run in torch eager on this machine at the same thread count, on a 1024 x 768 photo
(scikit-image's astronaut, resized) with one positive tap, end to end: image in, mask out. SAM
and MobileSAM run their predictor (image encoder, then prompt encoder and mask decoder); our
student runs `Segmenter.predict` (resize to its resolution, traced one-tap forward, upsampling).
Weights are random: latency does not depend on their values. Peak memory is the inference working
set: the rise of the peak resident set above the loaded model while it runs (Linux).

The default student is `iphone13_5ms_best_arch.json` beside this script: the best_arch.json of
`nas search --target iphone13 --budget 5ms` (defaults, seed 0).

usage: python benchmarks/peers.py [--threads 2] [--runs 3] [--arch best_arch.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import skimage.data
import skimage.transform
import torch

from nas.bench import peak_memory_mb
from search_spaces.arch_config import ArchConfig
from search_spaces.segmenter import Segmenter
from search_spaces.student import TraceNetStudent

DEFAULT_ARCH = Path(__file__).with_name("iphone13_5ms_best_arch.json")


def timed(predict, runs: int) -> tuple[float, float | None]:
    """Median seconds of `runs` calls after one warm-up, and the inference memory (MiB)."""
    predict()

    def repeat() -> list[float]:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            predict()
            times.append(time.perf_counter() - start)
        return times

    times, peak = peak_memory_mb(repeat)
    return statistics.median(times), peak


def sam_predict(predictor, image: np.ndarray, tap: tuple[float, float]):
    def run():
        with torch.inference_mode():
            predictor.set_image(image)
            predictor.predict(point_coords=np.array([tap]), point_labels=np.array([1]), multimask_output=False)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--arch", default=str(DEFAULT_ARCH))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = (skimage.transform.resize(skimage.data.astronaut(), (768, 1024)) * 255).astype(np.uint8)
    tap = (512.0, 300.0)
    results = {}

    arch = ArchConfig.from_json(Path(args.arch).read_text())
    student = Segmenter(TraceNetStudent(arch).eval())
    results["TraceNAS student"] = timed(lambda: student.predict(image, [(*tap, True)]), max(args.runs, 10))

    from mobile_sam import SamPredictor as MobileSamPredictor
    from mobile_sam import sam_model_registry as mobile_registry

    results["MobileSAM (vit_t)"] = timed(sam_predict(MobileSamPredictor(mobile_registry["vit_t"]().eval()), image,
                                                     tap), args.runs)
    from segment_anything import SamPredictor, sam_model_registry

    results["SAM ViT-B"] = timed(sam_predict(SamPredictor(sam_model_registry["vit_b"]().eval()), image, tap),
                                 args.runs)

    print(f"torch {torch.__version__} eager, {args.threads} threads, 1024x768 image, one tap, "
          f"{time.strftime('%Y-%m-%d')}; student: res {arch.resolution} ({Path(args.arch).name})")
    print(f"{'model':<20} {'s / image':>10} {'memory MiB':>11}")
    for name, (seconds, memory) in results.items():
        print(f"{name:<20} {seconds:>10.3f} {memory if memory is not None else float('nan'):>11.1f}")
    ours, mobile = results["TraceNAS student"], results["MobileSAM (vit_t)"]
    print(f"speed-up vs MobileSAM: {mobile[0] / ours[0]:.1f}x (goal >= 50x); "
          f"memory ratio: {ours[1] / mobile[1]:.3f} (goal <= 0.2)" if ours[1] and mobile[1] else "")


if __name__ == "__main__":
    main()
