"""Peers side by side (issue E): our searched student, MobileSAM (vit_t) and SAM ViT-B, one tap each.

All three run in torch eager on this machine at the same thread count, on a 1024 x 768 photo
(scikit-image's astronaut, resized) with one positive tap, end to end: image in, mask out. SAM
and MobileSAM run their predictor (image encoder, then prompt encoder and mask decoder); our
student runs `Segmenter.predict` (resize to its resolution, traced one-tap forward, upsampling).
Weights are random: latency does not depend on their values. Each model is measured in a fresh
process. Peak memory is the inference working set: the rise of the peak resident set above the
loaded model over the warm-up call and the timed calls (Linux).

The default students are the best_arch.json files beside this script, both from `nas search` with
its defaults (seed 0): `iphone13_5ms_best_arch.json` (`--target iphone13 --budget 5ms`, a student
for the phone) and `x86-2core-ort-2t_15ms_best_arch.json` (`--target x86-2core-ort-2t --budget 15ms`,
a student searched for this CPU's table). `Segmenter` runs them with BatchNorm folded and
channels-last weights (search_spaces/fusion.py); SAM and MobileSAM run as their packages ship.

usage: python benchmarks/peers.py [--threads 2] [--runs 3] [--arch best_arch.json,...]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import skimage.data
import skimage.transform
import torch

from nas.deploy.bench import peak_memory_mb
from search_spaces.space import ArchConfig
from search_spaces.students.segmenter import Segmenter
from search_spaces.students.student import TraceNetStudent

DEFAULT_ARCHS = ",".join(str(Path(__file__).with_name(f"{name}_best_arch.json"))
                         for name in ("iphone13_5ms", "x86-2core-ort-2t_15ms"))


def timed(predict, runs: int) -> tuple[float, float | None]:
    """Median seconds of `runs` calls after one warm-up, and the inference memory (MiB): the rise of the
    peak RSS over warm-up and runs."""

    def repeat() -> list[float]:
        predict()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            predict()
            times.append(time.perf_counter() - start)
        return times

    times, peak = peak_memory_mb(repeat)
    return statistics.median(times), peak


def measure(model: str, threads: int, runs: int) -> tuple[float, float | None]:
    """Time one model ("mobilesam", "sam_vit_b" or a best_arch.json path) in this process."""
    torch.set_num_threads(threads)
    image = (skimage.transform.resize(skimage.data.astronaut(), (768, 1024)) * 255).astype(np.uint8)
    tap = (512.0, 300.0)
    if model == "mobilesam":
        from mobile_sam import SamPredictor, sam_model_registry

        predictor = SamPredictor(sam_model_registry["vit_t"]().eval())
    elif model == "sam_vit_b":
        from segment_anything import SamPredictor, sam_model_registry

        predictor = SamPredictor(sam_model_registry["vit_b"]().eval())
    else:
        segmenter = Segmenter(TraceNetStudent(ArchConfig.from_json(Path(model).read_text())).eval())
        _ = segmenter.inference_model  # its optimised copy is part of the loaded model, not of inference
        return timed(lambda: segmenter.predict(image, [(*tap, True)]), max(runs, 10))

    def run() -> None:
        with torch.inference_mode():
            predictor.set_image(image)
            predictor.predict(point_coords=np.array([tap]), point_labels=np.array([1]), multimask_output=False)

    return timed(run, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--arch", default=DEFAULT_ARCHS, help="comma-separated best_arch.json files")
    args = parser.parse_args()
    models = {}
    for path in args.arch.split(","):
        summary = json.loads(Path(path).read_text())
        models[f"ours: {summary['target']} {summary['budget_ms']:g} ms (res {summary['arch']['resolution']})"] = path
    students = list(models)
    models |= {"MobileSAM (vit_t)": "mobilesam", "SAM ViT-B": "sam_vit_b"}
    results = {}
    for name, model in models.items():  # each in a fresh process, so that memory peaks do not mask each other
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[name] = pool.submit(measure, model, args.threads, args.runs).result()

    print(f"torch {torch.__version__} eager, {args.threads} threads, 1024x768 image, one tap, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'model':<40} {'s / image':>10} {'memory MiB':>11}")
    for name, (seconds, memory) in results.items():
        print(f"{name:<40} {seconds:>10.3f} {memory if memory is not None else float('nan'):>11.1f}")
    mobile = results["MobileSAM (vit_t)"]
    for name in students:
        ours = results[name]
        memory = f"memory ratio {ours[1] / mobile[1]:.3f} (goal <= 0.2)" if ours[1] and mobile[1] else ""
        print(f"{name}: {mobile[0] / ours[0]:.1f}x faster than MobileSAM (goal >= 50x); {memory}")

if __name__ == "__main__":
    main()
