"""Distillation throughput and memory against the number of images: images/s of training steps and the
peak resident memory of the training process and of its DataLoader workers, for synthetic SA-1B-format
folders of each size (`sa_N.jpg` + `sa_N.json` with COCO RLE masks written by pycocotools). Memory must
not grow with the folder: the dataset keeps file names, the workers read what each step asks for.

    python benchmarks/distill_throughput.py [--sizes 1000,10000] [--steps 30] [--json]

Each size runs in a fresh process, so each peak is its own. On a GPU machine add `--device cuda`
(and `--space tracenet_mbv3 --teacher sam:vit_b:CKPT` for the real setting).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_folder(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """`n` SA-1B-format images of `size` px with four masks each."""
    from pycocotools import mask as rle

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        annotations = []
        for k in range(4):
            mask = np.zeros((size, size), np.uint8)
            y, x = rng.integers(0, size // 2, 2)
            mask[y:y + size // 2, x:x + size // 2] = 1
            image[mask.astype(bool)] = 50 * k + 30
            counts = rle.encode(np.asfortranarray(mask))["counts"].decode()
            annotations.append({"id": 4 * i + k, "area": int(mask.sum()),
                                "segmentation": {"size": [size, size], "counts": counts}})
        Image.fromarray(image).save(folder / f"sa_{i}.jpg", quality=90)
        (folder / f"sa_{i}.json").write_text(json.dumps({"image": {"image_id": i, "width": size, "height": size},
                                                         "annotations": annotations}))


def measure(args: argparse.Namespace, n: int) -> dict:
    """Train on a fresh folder of `n` images in this process; the timing skips the first step (start-up)."""
    from distill.training.config import load_config
    from distill.training.engine import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sa1b"
        start = time.perf_counter()
        write_folder(folder, n, args.image_size)
        written_s = time.perf_counter() - start
        config = load_config(None, [f"data.train=sa1b:{folder}", f"student.space={args.space}",
                                    "student.arch=smallest", f"teacher={args.teacher}", f"train.steps={args.steps}",
                                    f"train.batch_size={args.batch_size}", f"data.workers={args.workers}",
                                    f"data.instances_per_image={args.instances}", f"train.device={args.device}",
                                    f"train.amp={args.amp}", f"train.checkpoint_every={args.steps}",
                                    "prompts.max_rounds=1"])
        trainer = Trainer(config, Path(tmp) / "run", progress=False)
        times = []
        step_losses = trainer._step_losses

        def timed(batch):  # a step's clock starts when its batch arrives from the workers
            times.append(time.perf_counter())
            return step_losses(batch)

        trainer._step_losses = timed
        trainer.fit()
        end = time.perf_counter()
    steps = len(times) - 1
    instances = steps * args.batch_size * args.instances
    return {"images": n, "steps_timed": steps, "instances_per_s": instances / (end - times[1]),
            "images_per_s": steps * args.batch_size / (end - times[1]),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_worker_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "folder_written_s": written_s}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="folder sizes in images (default %(default)s)")
    parser.add_argument("--steps", type=int, default=30, help="training steps per size (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default %(default)s)")
    parser.add_argument("--instances", type=int, default=2, help="instances per image read (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=128, help="side of the images (default %(default)s)")
    parser.add_argument("--space", default="tracenet_tiny", help="student space (default %(default)s)")
    parser.add_argument("--teacher", default="gt", help="teacher spec (default %(default)s)")
    parser.add_argument("--device", default="auto", help="train.device (default %(default)s)")
    parser.add_argument("--amp", default="auto", help="train.amp (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a single size, in a fresh process
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.one:
        print(json.dumps(measure(args, args.one)))
        return 0
    rows = []
    for n in (int(v) for v in args.sizes.split(",")):
        argv = [a for a in sys.argv[1:] if a != "--json"] + ["--one", str(n)]
        done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    import platform

    import torch

    report = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads visible",
              "torch": torch.__version__, "device": args.device, "space": args.space, "teacher": args.teacher,
              "batch_size": args.batch_size, "instances_per_image": args.instances, "workers": args.workers,
              "image_size": args.image_size, "runs": rows}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['machine']}, torch {report['torch']}, {args.space}, batch {args.batch_size} x "
              f"{args.instances} instances, {args.workers} workers, {args.image_size} px")
        print("| images | images/s | instances/s | peak RSS MiB (trainer) | peak RSS MiB (a worker) |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['images']:,} | {r['images_per_s']:.1f} | {r['instances_per_s']:.1f} | "
                  f"{r['peak_rss_mib']:.0f} | {r['peak_worker_rss_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
