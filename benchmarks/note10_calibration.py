"""Validate `nas latency calibrate` on a real phone table (issue B).

The Samsung Note10 per-block tables of Once-for-All (../shared/latency_reference/ofa_note10) play
the device we cannot profile op by op: the "measured" latency of a network is the sum of its
blocks there (as in Once-for-All). The base table is this machine's ONNX Runtime latency of the
same networks' fused ops (built from timm blocks and traced by TraceNAS; the ops are profiled here
on first use). We calibrate the base on N_FIT random networks and predict N_TEST others.

usage: python benchmarks/note10_calibration.py [--fit 20] [--test 1000] [--threads 2] [--base-table PATH]
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from timm.layers import ConvNormAct, make_divisible
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import nn

from nas.latency.calibrate import calibrate
from nas.latency.importers import import_tables, ofa_net_keys
from nas.latency.op_keys import OpKey, trunk_op_keys
from nas.latency.profiling.profiler import profile
from search_spaces.modules.backbone import SE_LAYER
from search_spaces.tracing.box import Box
from search_spaces.tracing.tracer import ReceptiveFieldTracer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "latency_reference" / "ofa_note10"
# Once-for-All MobileNetV3 width 1.2 (the space the Note10 tables cover)
STAGES = [(32, 2, "relu", False), (48, 2, "relu", True), (96, 2, "h_swish", False), (136, 1, "h_swish", True),
          (192, 2, "h_swish", True)]
RESOLUTIONS = (160, 176, 192, 208, 224)
ACTS = {"relu": nn.ReLU, "h_swish": nn.Hardswish}


def random_ofa_net(rng: np.random.Generator) -> tuple[dict, int]:
    """A random member of OFA's MobileNetV3 w1.2 space as an OFA net.config, and its resolution."""
    blocks, cin = [{"mobile_inverted_conv": {"in_channels": 24, "out_channels": 24, "kernel_size": 3, "stride": 1,
                                             "expand_ratio": 1, "mid_channels": None, "act_func": "relu",
                                             "use_se": False}, "shortcut": {}}], 24
    for cout, stride, act, se in STAGES:
        for b in range(int(rng.choice([2, 3, 4]))):
            e, k = int(rng.choice([3, 4, 6])), int(rng.choice([3, 5, 7]))
            s = stride if b == 0 else 1
            blocks.append({"mobile_inverted_conv": {"in_channels": cin, "out_channels": cout, "kernel_size": k,
                                                    "stride": s, "expand_ratio": e,
                                                    "mid_channels": make_divisible(round(cin * e), 8),
                                                    "act_func": act, "use_se": se},
                           "shortcut": {} if (s == 1 and cin == cout) else None})
            cin = cout
    net = {"first_conv": {"in_channels": 3, "out_channels": 24}, "blocks": blocks,
           "final_expand_layer": {"in_channels": 192, "out_channels": 1152},
           "feature_mix_layer": {"in_channels": 1152, "out_channels": 1536},
           "classifier": {"in_features": 1536, "out_features": 1000}}
    return net, int(rng.choice(RESOLUTIONS))


def trunk_module(net: dict) -> nn.Module:
    """The convolutional trunk of an OFA net (stem .. final expand) from timm blocks."""
    layers = [ConvNormAct(3, net["first_conv"]["out_channels"], 3, stride=2, act_layer=nn.Hardswish)]
    for block in net["blocks"]:
        c = block["mobile_inverted_conv"]
        act, se = ACTS[c["act_func"]], SE_LAYER if c["use_se"] else None
        if c["expand_ratio"] == 1:
            layers.append(DepthwiseSeparableConv(c["in_channels"], c["out_channels"], dw_kernel_size=c["kernel_size"],
                                                 stride=c["stride"], act_layer=act, se_layer=se))
        else:
            layers.append(InvertedResidual(c["in_channels"], c["out_channels"], dw_kernel_size=c["kernel_size"],
                                           stride=c["stride"], exp_ratio=c["mid_channels"] / c["in_channels"],
                                           act_layer=act, se_layer=se))
    final = net["final_expand_layer"]
    layers.append(ConvNormAct(final["in_channels"], final["out_channels"], 1, act_layer=nn.Hardswish))
    return nn.Sequential(*layers)


def fused_keys(net: dict, resolution: int) -> list[OpKey]:
    """TraceNAS op keys of the whole network: traced trunk + global pool, feature-mix conv, classifier."""
    with torch.device("meta"):
        trunk = trunk_module(net).eval()
    tracer = ReceptiveFieldTracer(trunk)
    side = resolution
    for _ in range(5):
        side = (side - 1) // 2 + 1
    keys = trunk_op_keys(tracer, tracer.plan((resolution, resolution), [Box.full(side, side)]), 3)
    mix, cls = net["feature_mix_layer"], net["classifier"]
    return keys + [OpKey.make("gpool", (1, 1), c=mix["in_channels"], **{"in": f"{side}x{side}"}),
                   OpKey.make("conv", (1, 1), act="hardswish", cin=mix["in_channels"], cout=mix["out_channels"],
                              d=1, g=1, k=1, s=1),
                   OpKey.make("linear", (1, 1), cin=cls["in_features"], cout=cls["out_features"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=int, default=20)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-table", default="runs/bench/ofa_w12_host_ort.json")
    args = parser.parse_args()
    note10 = import_tables(sorted(glob.glob(str(SHARED / "*_lookup_table.yaml"))), "ofa", "note10")
    rng = np.random.default_rng(args.seed)
    nets = [random_ofa_net(rng) for _ in range(args.fit + args.test)]
    device_ms = np.array([sum(note10.entries[str(k)].mean for k in ofa_net_keys(n, r)) for n, r in nets])
    t0 = time.time()
    key_lists = [fused_keys(n, r) for n, r in nets]
    needed = sorted({k for keys in key_lists for k in keys}, key=str)
    print(f"{len(nets)} networks, {len(needed)} distinct fused ops (traced in {time.time() - t0:.0f} s)")
    base = profile(needed, args.base_table, "x86-2core-ort-ofa", "onnxruntime", args.threads)
    calibration = calibrate(base, key_lists[: args.fit], device_ms[: args.fit])
    table = calibration.apply(base, {"name": "note10-calibrated"})
    predicted = np.array([table.predict(keys).total_ms for keys in key_lists[args.fit:]])
    truth = device_ms[args.fit:]
    rel = np.abs(predicted - truth) / truth
    raw = np.array([base.predict(keys).total_ms for keys in key_lists[args.fit:]])
    print(f"calibrated on {args.fit} Note10 networks, predicting {args.test} others:")
    print(f"  spearman {spearmanr(predicted, truth).statistic:.3f}   mape {rel.mean():.1%}   "
          f"within_10pct {np.mean(rel <= 0.1):.2f}")
    print(f"  (uncalibrated host table: spearman {spearmanr(raw, truth).statistic:.3f})")
    print(f"  scales {', '.join(f'{c}={s:.3g}' for c, s in calibration.scales.items())}; "
          f"overhead {calibration.overhead_ms:.2f} ms; loo mape {calibration.loo['mape']:.1%}")


if __name__ == "__main__":
    main()
