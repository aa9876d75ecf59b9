"""Few-shot device models against FLOPs: does `nas latency calibrate` rank and price a device it cannot
profile op by op better than FLOPs does?

Validation devices (the target's own tables are never a base):
- this host, measured end to end: random `tracenet_mbv3` students at the reference setting, timed by
  `nas latency validate --measurements-out` (the CSVs ship in `latency_tables/data/`): 20 networks on
  ExecuTorch-XNNPACK at 1 and 2 threads (seed 0, measured with the tables) and 60 on ONNX Runtime at
  1 and 2 threads (seed 1, measured later, when the same VM ran 1.5-3x slower per unit). Cross-runtime:
  ONNX Runtime tables -> ExecuTorch and ExecuTorch tables -> ONNX Runtime, 1 thread. Threads: 1-thread
  tables -> 2 threads. Drift: the ONNX Runtime tables -> the same runtime on the slower VM.
- the Samsung Note10 of Once-for-All (per-block tables in `../shared/latency_reference/ofa_note10`): a
  network's latency is the sum of its blocks there, as in Once-for-All; random networks of OFA's
  MobileNetV3 w1.2 space, their fused ops profiled with ONNX Runtime on this host on first use.
- the published iPhone figures (`../shared/latency_reference/published_model_latency.csv`): iPhone 12
  by nested leave-one-out (the model is chosen again without the held-out figure); iPhone 13 has 3
  figures, too few to choose a model, so each fixed model's leave-one-out error is reported.

For every host / Note10 device, sample count and seed: fit on N random networks, predict all others.
Methods: `chosen` (every candidate of `nas latency calibrate`, transfer from all bases included, chosen
by leave-one-out), `chosen-1base` (the primary base only, no transfer), `table` (one scale + offset on
the primary base: the previous default), and the baselines `flops` and `flops+offset`.
Reports Spearman, Kendall tau, MAPE and within +-10 %, averaged over seeds. Devices without their
data (no `../shared`) are skipped with a line.

usage: python benchmarks/few_shot_devices.py [--samples 10,20] [--seeds 10] [--note10-test 1000] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr
from timm.layers import ConvNormAct, make_divisible
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import nn

from nas.latency.calibrate import BASELINES, FAMILIES, MODELS, calibrate, read_measurements, read_published
from nas.latency.importers import import_tables, ofa_net_keys
from nas.latency.op_keys import OpKey, trunk_op_keys
from nas.latency.profiling.profiler import profile
from nas.latency.table import LatencyTable, resolve_target
from nas.latency.timm_keys import timm_op_keys
from search_spaces.modules.backbone import SE_LAYER
from search_spaces.tracing.box import Box
from search_spaces.tracing.tracer import ReceptiveFieldTracer, TracingError

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "latency_tables" / "data"
SHARED = ROOT.parent / "shared" / "latency_reference"
# (case, kind, measurements in latency_tables/data, base tables: the first is primary). The seed-0 files were
# measured on 2026-11-22 like the tables; the seed-1 ones on 2026-12-01, when the same VM ran 1.5-3x slower
HOST_CASES = [
    ("ort-1t -> xnnpack-1t", "cross-runtime", "x86-2core-xnnpack-1t-validate-seed0.csv",
     ["x86-2core-ort-1t-ctx", "x86-2core-ort-1t"]),
    ("xnnpack-1t -> ort-1t (later)", "cross-runtime", "x86-2core-ort-1t-validate-seed1.csv",
     ["x86-2core-xnnpack-1t", "x86-2core-xnnpack-2t"]),
    ("xnnpack 1t -> 2t", "threads", "x86-2core-xnnpack-2t-validate-seed0.csv",
     ["x86-2core-xnnpack-1t", "x86-2core-ort-1t-ctx"]),
    ("ort 1t -> 2t (later)", "threads", "x86-2core-ort-2t-validate-seed1.csv",
     ["x86-2core-ort-1t-ctx", "x86-2core-ort-1t"]),
    ("ort-1t -> itself later", "drift", "x86-2core-ort-1t-validate-seed1.csv",
     ["x86-2core-ort-1t-ctx", "x86-2core-ort-1t"]),
]
MIN_TEST = 8  # networks a sample count must leave to score
METHODS = {"chosen": MODELS, "chosen-1base": BASELINES + FAMILIES, "table": ("global",), "flops": ("flops",),
           "flops+offset": ("flops+offset",)}
METRICS = ("spearman", "kendall", "mape", "within_10pct")
# Once-for-All MobileNetV3 width 1.2 (the space the Note10 tables cover)
OFA_STAGES = [(32, 2, "relu", False), (48, 2, "relu", True), (96, 2, "h_swish", False), (136, 1, "h_swish", True),
              (192, 2, "h_swish", True)]
OFA_RESOLUTIONS = (160, 176, 192, 208, 224)
OFA_ACTS = {"relu": nn.ReLU, "h_swish": nn.Hardswish}


def scores(predicted: np.ndarray, measured: np.ndarray) -> dict:
    rel = np.abs(predicted - measured) / measured
    return {"spearman": float(spearmanr(predicted, measured).statistic),
            "kendall": float(kendalltau(predicted, measured).statistic),
            "mape": float(rel.mean()), "within_10pct": float(np.mean(rel <= 0.10))}


def fit_predict(method: str, bases: list[LatencyTable], fit_keys: list, fit_ms: np.ndarray,
                test_keys: list) -> tuple[np.ndarray, str]:
    used = bases if method == "chosen" else bases[:1]
    calibration = calibrate(used, fit_keys, fit_ms, METHODS[method])
    return np.array([calibration.predict_ms(keys, used) for keys in test_keys]), calibration.model


def few_shot(name: str, kind: str, key_lists: list, measured: np.ndarray, bases: list[LatencyTable],
             samples: list[int], seeds: int, test: int | None = None) -> dict:
    """Per sample count and method: metrics on the networks not fitted, averaged over seeds."""
    result = {"case": name, "kind": kind, "bases": [b.name for b in bases], "networks": len(measured),
              "samples": {}}
    for n in samples:
        if len(measured) - n < MIN_TEST:
            result.setdefault("skipped_samples", []).append(n)
            continue
        per_method = {m: [] for m in METHODS}
        chosen_models = []
        for seed in range(seeds):
            order = np.random.default_rng(seed).permutation(len(measured))
            fit, rest = order[:n], order[n:] if test is None else order[n: n + test]
            for method in METHODS:
                predicted, model = fit_predict(method, bases, [key_lists[i] for i in fit], measured[fit],
                                               [key_lists[i] for i in rest])
                per_method[method].append(scores(predicted, measured[rest]))
                if method == "chosen":
                    chosen_models.append(model)
        result["samples"][n] = {m: {k: float(np.mean([s[k] for s in runs])) for k in METRICS}
                                for m, runs in per_method.items()}
        result["samples"][n]["chosen_models"] = {m: chosen_models.count(m) for m in sorted(set(chosen_models))}
    return result


# ---------------------------------------------------------------- host runtimes
def host_case(name: str, kind: str, file: str, base_names: list[str], samples: list[int], seeds: int) -> dict:
    key_lists, measured = read_measurements(MEASURED / file)
    result = few_shot(name, kind, key_lists, np.array(measured), [resolve_target(b) for b in base_names], samples,
                      seeds)
    return result | {"measurements": file}


# ---------------------------------------------------------------- Note10
def random_ofa_net(rng: np.random.Generator) -> tuple[dict, int]:
    """A random member of OFA's MobileNetV3 w1.2 space as an OFA net.config, and its resolution."""
    blocks, cin = [{"mobile_inverted_conv": {"in_channels": 24, "out_channels": 24, "kernel_size": 3, "stride": 1,
                                             "expand_ratio": 1, "mid_channels": None, "act_func": "relu",
                                             "use_se": False}, "shortcut": {}}], 24
    for cout, stride, act, se in OFA_STAGES:
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
    return net, int(rng.choice(OFA_RESOLUTIONS))


def ofa_trunk(net: dict) -> nn.Module:
    """The convolutional trunk of an OFA net (stem .. final expand) from timm blocks."""
    layers = [ConvNormAct(3, net["first_conv"]["out_channels"], 3, stride=2, act_layer=nn.Hardswish)]
    for block in net["blocks"]:
        c = block["mobile_inverted_conv"]
        act, se = OFA_ACTS[c["act_func"]], SE_LAYER if c["use_se"] else None
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


def ofa_fused_keys(net: dict, resolution: int) -> list[OpKey]:
    """TraceNAS op keys of a whole OFA network: traced trunk + global pool, feature-mix conv, classifier."""
    with torch.device("meta"):
        trunk = ofa_trunk(net).eval()
    tracer = ReceptiveFieldTracer(trunk)
    side = resolution
    for _ in range(5):
        side = (side - 1) // 2 + 1
    keys = trunk_op_keys(tracer, tracer.plan((resolution, resolution), [Box.full(side, side)], dense=True), 3)
    mix, cls = net["feature_mix_layer"], net["classifier"]
    return keys + [OpKey.make("gpool", (1, 1), c=mix["in_channels"], **{"in": f"{side}x{side}"}),
                   OpKey.make("conv", (1, 1), act="hardswish", cin=mix["in_channels"], cout=mix["out_channels"],
                              d=1, g=1, k=1, s=1),
                   OpKey.make("linear", (1, 1), cin=cls["in_features"], cout=cls["out_features"])]


def note10_case(samples: list[int], seeds: int, test: int, base_path: Path) -> dict | None:
    tables = sorted(glob.glob(str(SHARED / "ofa_note10" / "*_lookup_table.yaml")))
    if not tables:
        print("note10: skipped, no Once-for-All Note10 tables next to the project")
        return None
    note10 = import_tables(tables, "ofa", "note10")
    rng = np.random.default_rng(0)
    nets = [random_ofa_net(rng) for _ in range(max(samples) + test)]
    measured = np.array([sum(note10.entries[str(k)].mean for k in ofa_net_keys(n, r)) for n, r in nets])
    key_lists = [ofa_fused_keys(n, r) for n, r in nets]
    needed = sorted({k for keys in key_lists for k in keys}, key=str)
    print(f"note10: {len(nets)} networks, {len(needed)} distinct fused ops (profiled into {base_path} on first use)")
    base = profile(needed, base_path, "x86-2core-ort-1t-ofa", "onnxruntime", 1)
    result = few_shot("note10 (host ort-1t ->)", "phone", key_lists, measured, [base], samples, seeds, test)
    result["note"] = "one base: no other measured device prices these networks, so no transfer"
    return result


# ---------------------------------------------------------------- iPhones
def published_keys(match: str) -> tuple[list, np.ndarray] | None:
    path = SHARED / "published_model_latency.csv"
    if not path.exists():
        return None
    key_lists, measured = [], []
    for row in read_published(path, match):
        try:
            key_lists.append(timm_op_keys(row.timm_name, row.resolution))
        except TracingError:  # not decomposable into fused units yet (e.g. EfficientFormer's pooling)
            continue
        measured.append(row.latency_ms)
    return key_lists, np.array(measured)


def iphone_cases(base_names: list[str]) -> list[dict]:
    results = []
    for device, match in (("iphone12", "iPhone 12"), ("iphone13", "iPhone 13")):
        data = published_keys(match)
        if data is None:
            print(f"{device}: skipped, no published-latency CSV next to the project")
            continue
        key_lists, measured = data
        bases = [t for t in map(resolve_target, base_names) if not any(t.missing(k) for k in key_lists)]
        result = {"case": device, "kind": "phone", "bases": [b.name for b in bases], "networks": len(measured)}
        if len(measured) >= 4:  # nested leave-one-out: every method chooses again without the held-out figure
            predicted = {m: [] for m in METHODS}
            for i in range(len(measured)):
                keep = [j for j in range(len(measured)) if j != i]
                for method in METHODS:
                    p, _ = fit_predict(method, bases, [key_lists[j] for j in keep], measured[keep], [key_lists[i]])
                    predicted[method].append(p[0])
            result["nested_loo"] = {m: scores(np.array(p), measured) for m, p in predicted.items()}
        else:  # too few to choose: each fixed model's own leave-one-out error
            result["loo"] = {m: calibrate(bases[:1], key_lists, measured, (m,)).loo
                             for m in ("global", "per-class", "flops", "flops+offset")}
        results.append(result)
    return results


# ---------------------------------------------------------------- report
def goals(results: list[dict]) -> list[str]:
    """Where the chosen model beats both FLOPs baselines in Spearman and MAPE, and the cross-runtime goal."""
    lines = []
    for r in results:
        for n, by in r.get("samples", {}).items():
            flops = [by["flops"], by["flops+offset"]]
            rank = by["chosen"]["spearman"] > max(f["spearman"] for f in flops)
            mape = by["chosen"]["mape"] < min(f["mape"] for f in flops)
            lines.append(f"{r['case']} n={n}: beats FLOPs in rank {'yes' if rank else 'NO'}, "
                         f"in MAPE {'yes' if mape else 'NO'}")
            if r["kind"] == "cross-runtime" and int(n) == 10:
                ok = by["chosen"]["spearman"] >= 0.95
                lines.append(f"{r['case']} n=10: Spearman {by['chosen']['spearman']:.3f} "
                             f"{'>=' if ok else '<'} 0.95 (cross-runtime goal)")
        if "nested_loo" in r:
            by = r["nested_loo"]
            rank = by["chosen"]["spearman"] > max(by[f]["spearman"] for f in BASELINES)
            mape = by["chosen"]["mape"] < min(by[f]["mape"] for f in BASELINES)
            lines.append(f"{r['case']} nested LOO: beats FLOPs in rank {'yes' if rank else 'NO'}, "
                         f"in MAPE {'yes' if mape else 'NO'}")
    return lines


def print_report(results: list[dict]) -> None:
    header = f"  {'method':<14}" + "".join(f"{m:>13}" for m in METRICS)
    for r in results:
        print(f"\n{r['case']}  [{r['kind']}] ({r['networks']} networks; bases {', '.join(r['bases'])})"
              + (f"; n={r['skipped_samples']} leaves too few to score" if "skipped_samples" in r else ""))
        blocks = [(f"n={n} (mean of seeds)", by) for n, by in r.get("samples", {}).items()]
        blocks += [("nested leave-one-out", r["nested_loo"])] if "nested_loo" in r else []
        blocks += [("leave-one-out of each fixed model", r["loo"])] if "loo" in r else []
        for title, by in blocks:
            print(f" {title}" + (f"; chosen: {by['chosen_models']}" if "chosen_models" in by else ""))
            print(header)
            for method, m in by.items():
                if method != "chosen_models":
                    print(f"  {method:<14}" + "".join(f"{m.get(k, float('nan')):>13.3f}" for k in METRICS))
    print("\ngoals:")
    for line in goals(results):
        print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default="10,20", help="fitting sample counts, comma-separated")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--note10-test", type=int, default=1000, help="Note10 networks predicted per seed")
    parser.add_argument("--note10-base", default="runs/bench/ofa_w12_host_ort_1t.json",
                        help="host table of the OFA networks' fused ops (profiled on first use, then resumed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (results and goals) instead")
    args = parser.parse_args()
    samples = [int(s) for s in args.samples.split(",")]
    start = time.time()
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():  # progress lines
        results = [host_case(*case, samples, args.seeds) for case in HOST_CASES]
        note10 = note10_case(samples, args.seeds, args.note10_test, Path(args.note10_base))
        results += [note10] if note10 else []
        results += iphone_cases(["x86-2core-ort-2t", "x86-2core-ort-1t", "x86-2core-ort-2t-ctx",
                                 "x86-2core-xnnpack-2t"])
    if args.json:
        print(json.dumps({"results": results, "goals": goals(results), "seconds": round(time.time() - start)}))
        return
    print_report(results)
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
