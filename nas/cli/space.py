"""`nas space`: inspect a search space, sample members, verify receptive-field tracing."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from nas.cli.common import add_space_arg, positive_float, positive_int
from search_spaces.space import FIXED_BACKBONES, ArchConfig, get_space, list_spaces
from search_spaces.students.complexity import arch_complexity
from search_spaces.students.fixed_report import describe_fixed
from search_spaces.students.student import TraceNetStudent
from search_spaces.students.tracing_check import check_tracing


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "space", help="inspect search spaces, sample architectures, check tracing",
        description="Search spaces of TraceNet-style students: an elastic MobileNetV3 backbone, an FPN and a "
                    "tap-conditioned mask head. Available spaces: " + ", ".join(list_spaces()) + ".")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True

    show = actions.add_parser("show", help="print the choices and the number of architectures",
                              description="Print every choice of a space and how many architectures it holds.")
    add_space_arg(show)
    show.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    show.add_argument("--fixed", action="store_true",
                      help="list the hand-designed timm backbones usable as fixed:NAME spaces")
    show.set_defaults(func=_show)

    sample = actions.add_parser(
        "sample", help="print N random architectures as JSON lines with FLOPs and params",
        description="Print N random architectures, one JSON object per line: 'arch' (the ArchConfig), 'params', "
                    "'flops' (full frame, square image at the arch's resolution, centre tap) and 'flops_traced' "
                    "(the same tap, computing only the default output window's receptive field). FLOPs are "
                    "2 x multiply-accumulates (torch.utils.flop_counter).",
        epilog="example: nas space sample --n 3 --seed 0 | jq .flops")
    add_space_arg(sample)
    sample.add_argument("--n", type=positive_int, default=5, help="number of architectures (default 5)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.set_defaults(func=_sample)

    check = actions.add_parser(
        "check-tracing", help="verify that cropped (traced) outputs equal full outputs",
        description="For N random subnets without squeeze-excitation and random taps (corners, borders, interior) "
                    "compare the traced forward pass with the full one inside the output window, and measure "
                    "the deviation of N subnets whose traced stages use squeeze-excitation (it pools over the "
                    "traced region). Exit 0 only if every local case is within --tolerance.")
    add_space_arg(check)
    check.add_argument("--n", type=positive_int, default=8, help="subnets per group (default 8)")
    check.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    check.add_argument("--tolerance", type=positive_float, default=1e-4,
                       help="max abs difference allowed (default 1e-4)")
    check.add_argument("--json", action="store_true", help="print one JSON object (with per-case details)")
    check.set_defaults(func=_check)


def _show_fixed(as_json: bool) -> int:
    for name in FIXED_BACKBONES:
        info = describe_fixed(name, flops=True)
        if as_json:
            print(json.dumps(info))
        elif info["supported"]:
            flops = (f"{info['flops'] / 1e9:.2f} GFLOPs full frame, {info['flops_traced'] / 1e9:.2f} traced at "
                     f"{info['image_hw'][0]} px" if "flops" in info else "")
            print(f"{info['name']:<28} backbone {info['backbone_params'] / 1e6:5.2f} M params, {flops}; tracing "
                  f"{info['tracing']}")
        else:
            print(f"{info['name']:<28} not supported yet: {info['reason']}")
    if not as_json:
        print("any timm model with stride-8/16/32 features works as fixed:NAME (random initialisation)")
    return 0


def _show(args: argparse.Namespace) -> int:
    if args.fixed:
        return _show_fixed(args.json)
    spec = get_space(args.space)
    info = spec.describe()
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"space {spec.name}: {spec.description}")
    if spec.backbone is None:
        print(f"  stem: {spec.stem_channels} channels, stride 2, {spec.stem_act}")
    if spec.backbone is not None:
        print(f"  backbone: timm {spec.backbone} (fixed)")
    for i, stage in enumerate(spec.stages):
        role = " -> FPN" if i in spec.feature_stages else ""
        print(f"  stage {i}: {stage.channels} channels x width, stride {stage.stride}, {stage.act}{role}")
    for name in ("resolutions", "width_mults", "depths", "kernels", "expands", "se", "fpn_channels",
                 "mask_channels", "dyn_layers"):
        print(f"  {name:<14} {info[name]}")
    print(f"  architectures: {spec.size():,} ({spec.size():.3e})")
    print(f"  other spaces: {', '.join(s for s in list_spaces() if s != spec.name)}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    get_space(args.space)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    for _ in range(args.n):
        arch = ArchConfig.sample(rng, args.space)
        print(json.dumps({"arch": arch.to_dict(), **arch_complexity(TraceNetStudent(arch).eval())}), flush=True)
    return 0


def _check(args: argparse.Namespace) -> int:
    get_space(args.space)
    progress = not args.json and sys.stderr.isatty()
    report = check_tracing(args.n, args.seed, args.space, args.tolerance, progress=progress)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"local subnets: max |traced - full| = {report['max_abs_diff']:.2e} "
              f"(tolerance {report['tolerance']:.0e}) -> {'OK' if report['ok'] else 'FAILED'}")
        print(f"  FLOPs per tap: full {report['flops_full'] / 1e9:.3f} G, traced {report['flops_traced'] / 1e9:.3f} G "
              f"({report['flops_traced'] / report['flops_full']:.0%})")
        print(f"squeeze-excitation subnets: max deviation {report['se_deviation']:.3e}, "
              f"mean {report['se_deviation_mean']:.3e} (SE pools over the traced region)")
    return 0 if report["ok"] else 1
