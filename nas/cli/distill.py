"""`nas distill` and `nas train-supernet`: YAML-configured training runs."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from distill.training.config import load_config
from nas.cli.common import positive_int
from search_spaces.common.errors import InputFileError, InvalidValueError, OutputError
from search_spaces.common.files import exclusive

EPILOG = """examples:
  nas distill --config experiments/smoke.yaml
  nas distill --config experiments/tracenet_iphone13.yaml --set student.arch=runs/search/X/best_arch.json
  nas distill --resume runs/distill/smoke-20261122-101500 --set train.steps=400
  tensorboard --logdir runs/distill

The run directory holds config.yaml (the resolved config), checkpoints/last.pt (resumable state),
tensorboard/ (losses, IoU with the teacher, masks with clicks, hparams), teacher_cache/ and, at the
end, student.pt (or supernet.pt) and summary.json."""


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, supernet, help_text in (
            ("distill", False, "distill a teacher into one student (experiments/*.yaml)"),
            ("train-supernet", True, "train the weight-sharing supernet (sandwich rule, in-place distillation)")):
        parser = subparsers.add_parser(
            name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
            description=f"{help_text[0].upper()}{help_text[1:]}. Each step places a first tap per sample (uniform, "
                        "interior-biased or near the boundary), runs 0..max_rounds corrective clicks on the "
                        "model's error against the teacher, and learns the teacher's mask logits. Configs are "
                        "validated on load: an unknown or ill-typed key is an error that names it.")
        parser.add_argument("--config", help="experiment YAML, or a shipped config's name (e.g. smoke)")
        parser.add_argument("--out", help="run directory (default runs/<command>/<config>-<time>)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config key, e.g. --set train.lr=3e-4 (repeatable)")
        parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
        parser.add_argument("--pretrained", metavar="SOURCE",
                            help="ImageNet start for the backbone (= --set student.pretrained=SOURCE): for "
                                 "fixed:NAME students 'timm' or a timm weights file; for tracenet_mbv3 a Once-for-All "
                                 "MobileNetV3 supernet file or its name (ofa_mbv3_d234_e346_k357_w1.0 / _w1.2)")
        parser.add_argument("--workers", type=positive_int, default=1,
                            help="data-parallel workers through Ray Train (default 1: this process)")
        parser.add_argument("--ray-address", help="Ray cluster address for --workers (default: local)")
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")
        parser.set_defaults(func=_run, supernet=supernet)


def _config_path(name: str) -> Path:
    """A config file, or the name of a shipped one (smoke, tracenet_iphone13, ...)."""
    from experiments import shipped_configs

    path = Path(name)
    if path.is_file():
        return path
    shipped = shipped_configs()
    if name in shipped:
        return shipped[name]
    raise InputFileError(f"{name}: no such config file or shipped config ({', '.join(sorted(shipped))})")


def _run(args: argparse.Namespace) -> int:
    from distill.training.engine import CONFIG_FILE, Trainer

    if args.pretrained:
        args.overrides = [*args.overrides, f"student.pretrained={args.pretrained}"]
    if args.resume:
        if args.config:
            raise InvalidValueError("--resume takes the run's own config.yaml; use --set to change train.steps")
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise InputFileError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
        config = load_config(run_dir / CONFIG_FILE, args.overrides)
    else:
        if not args.config:
            raise InvalidValueError("--config is required (or --resume RUN_DIR)")
        config_path = _config_path(args.config)
        config = load_config(config_path, args.overrides)
        name = f"{config_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(args.out) if args.out else Path("runs") / args.command / name
        if (run_dir / "checkpoints" / "last.pt").exists():
            raise OutputError(f"{run_dir} already holds a run; pass it to --resume or choose another --out")
    with exclusive(run_dir):  # one process trains into a run folder at a time
        if args.workers > 1:
            from distill.training.parallel import train_with_ray

            summary = train_with_ray(config, run_dir, args.workers, args.supernet, bool(args.resume),
                                     not args.quiet, args.ray_address)
        else:
            trainer = Trainer(config, run_dir, supernet=args.supernet, resume=bool(args.resume),
                              progress=not args.quiet)
            summary = trainer.fit()
    if args.json:
        print(json.dumps(summary | {"run_dir": str(run_dir)}))
    else:
        print(f"{args.command}: {summary['steps']} steps -> {summary['checkpoint']}")
        if "loss_first" in summary:
            print(f"  loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f}; IoU with the teacher "
                  f"{summary['iou_first']:.3f} -> {summary['iou_last']:.3f} (first and last fifth of the steps)")
        if "val_iou_vs_teacher" in summary:
            before = f"{summary['val_iou_before']:.3f} -> " if "val_iou_before" in summary else ""
            print(f"  validation IoU with the teacher (1 interior tap): {before}{summary['val_iou_vs_teacher']:.3f}")
        print(f"  tensorboard --logdir {run_dir / 'tensorboard'}")
    return 0
