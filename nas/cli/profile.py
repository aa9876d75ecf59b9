"""`nas profile`: measure a device's latency table for a search space."""

from __future__ import annotations

import argparse
from pathlib import Path

from nas.cli.common import add_space_arg, non_negative_float, positive_float, positive_int
from nas.latency.op_keys import OpKey
from nas.latency.profiling.backends import BACKENDS
from nas.latency.profiling.bundle import BUNDLE_BACKENDS, read_results, write_bundle
from nas.latency.profiling.profiler import profile, profile_keys, read_keys
from nas.latency.setting import PRECISIONS, LatencySetting
from nas.latency.timm_keys import timm_op_keys
from search_spaces.common.errors import InvalidValueError
from search_spaces.common.resources import ray_session


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile", help="measure a per-op latency table on this machine (or devices through Ray)",
        description="Enumerate every op configuration the space can produce (convs fused with their BN and "
                    "activation, SE, adds, upsamples, the click encoding and the tap head), export each at a "
                    "ladder of square output shapes to the backend, and time it: warm-up, repeats until the "
                    "median is stable (2 %), outliers outside 1.5 IQR dropped. ExecuTorch units that XNNPACK runs "
                    "entirely are fed NHWC, as inside a network. The table is written as it goes; "
                    "rerunning the same command resumes. Cropped shapes from tracing and other resolutions "
                    "are priced by interpolating in output area between ladder shapes.",
        epilog="examples:\n  nas profile --device x86-2core-ort-2t --backend onnxruntime --threads 2 "
               "--out latency_tables/x86-2core-ort-2t.json\n  nas profile --in-context --device x86-2core-ort-2t-ctx "
               "--backend onnxruntime --threads 2 --out latency_tables/x86-2core-ort-2t-ctx.json\n"
               "  nas profile --in-context --device x86-2core-ort-2t-ctx --backend onnxruntime --threads 2 "
               "--space fixed:mobilenetv3_large_100 --out latency_tables/x86-2core-ort-2t-ctx.json\n"
               "  nas profile --device boardA,boardB --backend "
               "onnxruntime --threads 4 --out tables/ --ray-address auto   # one Ray actor per device",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device",
                        help="device name written into the table; several comma-separated names profile in "
                             "parallel through Ray actors (then --out is a directory)")
    parser.add_argument("--backend", choices=BACKENDS, help="runtime to measure")
    parser.add_argument("--threads", type=positive_int, default=1, help="runtime threads (default 1)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="int8: time each unit quantized W8A8 as the runtime quantizes it (executorch-xnnpack: "
                             "PT2E + XNNPACK's quantizer; onnxruntime: static QDQ), calibrated on its example "
                             "inputs, and the table lists the ops each unit keeps float; fp16 (executorch-xnnpack "
                             "only): each unit's float16 copy. The table's dtype says so and it prices programs of "
                             "that precision only (default fp32)")
    parser.add_argument("--out", help="table .json to write or resume (a directory for several devices)")
    add_space_arg(parser)
    parser.add_argument("--limit", type=positive_int,
                        help="profile only the first N op keys, or N programs with --in-context (smoke runs)")
    parser.add_argument("--timm-models", metavar="NAME[@RES],...",
                        help="also profile the ops of these timm models (default resolution 224), e.g. to "
                             "calibrate against published latencies of those models")
    parser.add_argument("--keys", metavar="FILE",
                        help="profile these op keys instead of the space's (whitespace-separated, '#' starts a "
                             "comment): units of any network, e.g. another search space's, for 'nas latency "
                             "calibrate --measurements' with a keys column; custom units need a registered op kind")
    parser.add_argument("--remeasure", action="store_true",
                        help="time the keys again even where the table has them, replacing their entries (e.g. "
                             "after a profiling builder changed)")
    parser.add_argument("--max-seconds", type=positive_float, default=2.0, help="time cap per op (default 2 s)")
    parser.add_argument("--recheck-above-ms", type=non_negative_float, metavar="MS",
                        help="afterwards time every op slower than MS once more and keep the faster median: "
                             "a slow phase of a shared machine or a throttled phone inflates whole measurements, "
                             "and the slowest ops dominate every prediction (rerunning rechecks again)")
    parser.add_argument("--in-context", action="store_true",
                        help="onnxruntime only: price each unit by its nodes' time inside the covering programs "
                             "(every op configuration, at every resolution, at the reference tap setting), read "
                             "from ONNX Runtime's node profiler, instead of timing units alone. On x86 ONNX Runtime "
                             "converts convs to its blocked NCHWc layout and fuses adds into them, so isolated "
                             "units over-predict networks 1.1-2.6x; in context they add up. --limit counts "
                             "programs; a rerun resumes from TABLE.SPACE.programs.jsonl. Another --space "
                             "profiled into an existing in-context table adds only the units it lacks (a fixed "
                             "backbone: about 20 programs); EfficientFormerV2's attention and MobileOne's and "
                             "FastViT's multi-branch blocks have no rule yet")
    parser.add_argument("--ray-address", help="Ray cluster address ('auto' for a running cluster); each device's "
                                              "actor then needs the custom resource 'device_<NAME>'")
    parser.set_defaults(func=_profile)

    actions = parser.add_subparsers(dest="profile_action", metavar="[bundle|import]", parser_class=type(parser))
    bundle = actions.add_parser(
        "bundle", help="write per-op models, a manifest and a standalone runner for a real device",
        description="Export every op key of the space to the backend's file format with manifest.json and "
                    "run_bundle.py, a standalone runner that needs only the runtime and numpy. Copy the folder "
                    "to the device (Linux board, Mac for Core ML, Android under Termux; or push the .pte files "
                    "with adb and time them with ExecuTorch's executor_runner), run 'python run_bundle.py "
                    "--threads N', bring results.json back and turn it into a table with 'nas profile import'.")
    bundle.add_argument("--backend", required=True, choices=list(BUNDLE_BACKENDS))
    bundle.add_argument("--out", required=True, help="bundle directory")
    add_space_arg(bundle)
    bundle.add_argument("--limit", type=positive_int, help="bundle only the first N op keys")
    bundle.set_defaults(func=_bundle)
    imp = actions.add_parser("import", help="turn a device's results.json into a latency table",
                             description="Convert the results.json that run_bundle.py wrote into a measured table.")
    imp.add_argument("results", help="results.json written by run_bundle.py")
    imp.add_argument("--device", required=True, help="device name of the table")
    imp.add_argument("--out", required=True, help="table .json to write")
    imp.set_defaults(func=_import_results)


def _profile(args: argparse.Namespace) -> int:
    missing = [f"--{name}" for name in ("device", "backend", "out") if getattr(args, name) is None]
    if missing:
        raise InvalidValueError(f"{', '.join(missing)} required (or use 'nas profile bundle' / 'nas profile import')")
    devices = [d for d in args.device.split(",") if d]
    if args.in_context:
        return _profile_in_context(devices, args)
    if args.remeasure and not args.keys:
        raise InvalidValueError("--remeasure re-times the keys of --keys FILE; rerun without it to resume a profile")
    keys = (read_keys(args.keys) if args.keys else profile_keys(args.space))[: args.limit]
    for spec in filter(None, (args.timm_models or "").split(",")):
        name, _, res = spec.partition("@")
        keys += timm_op_keys(name, int(res) if res else 224)
    if len(devices) == 1 and not args.ray_address:
        table = profile(keys, args.out, devices[0], args.backend, args.threads, None if args.keys else args.space,
                        recheck_above_ms=args.recheck_above_ms, remeasure=args.remeasure, precision=args.precision,
                        max_seconds=args.max_seconds)
        print(f"{args.out}: {len(table.entries)} entries for {devices[0]} ({args.backend}, {args.threads} threads, "
              f"{args.precision})")
        return 0
    outs = _profile_with_ray(devices, [str(k) for k in keys], Path(args.out), args)
    for device, (path, n) in zip(devices, outs, strict=True):
        print(f"{path}: {n} entries for {device} ({args.backend}, {args.threads} threads)")
    return 0


def _profile_in_context(devices: list[str], args: argparse.Namespace) -> int:
    if args.backend != "onnxruntime":
        raise InvalidValueError("--in-context reads ONNX Runtime's node profiler: use --backend onnxruntime")
    if len(devices) != 1 or args.ray_address or args.timm_models or args.keys or args.recheck_above_ms is not None:
        raise InvalidValueError("--in-context profiles one device here; it takes no --ray-address, --timm-models, "
                                "--keys or --recheck-above-ms")
    from nas.latency.profiling.in_context import profile_context  # needs the onnx package (the 'mobile' extra)

    table = profile_context(args.out, devices[0], args.threads, args.space, LatencySetting(precision=args.precision),
                            limit=args.limit)
    print(f"{args.out}: {len(table.entries)} entries for {devices[0]} (onnxruntime in context, "
          f"{args.threads} threads, {args.precision})")
    return 0


def _profile_with_ray(devices: list[str], keys: list[str], out_dir: Path, args: argparse.Namespace) -> list:
    import ray

    if out_dir.suffix == ".json":
        raise InvalidValueError("with several devices --out must be a directory (one NAME.json per device)")

    @ray.remote
    def run(device: str) -> tuple[str, int]:
        path = out_dir / f"{device}.json"
        table = profile([OpKey.parse(k) for k in keys], path, device, args.backend, args.threads,
                        None if args.keys else args.space, progress=False, recheck_above_ms=args.recheck_above_ms,
                        remeasure=args.remeasure, precision=args.precision, max_seconds=args.max_seconds)
        return str(path), len(table.entries)

    with ray_session(args.ray_address, log_to_driver=False):
        tasks = [run.options(num_cpus=args.threads if not args.ray_address else 0,
                             resources={f"device_{d}": 1} if args.ray_address else None).remote(d)
                 for d in devices]
        return ray.get(tasks)


def _bundle(args: argparse.Namespace) -> int:
    keys = (read_keys(args.keys) if args.keys else profile_keys(args.space))[: args.limit]
    out = write_bundle(keys, args.backend, args.out, args.space)
    print(f"{out}: {len(keys)} ops for {args.backend}; on the device run: python run_bundle.py --threads N")
    return 0


def _import_results(args: argparse.Namespace) -> int:
    table = read_results(args.results, args.device)
    table.save(args.out)
    print(f"{args.out}: {len(table.entries)} entries for {args.device} ({table.device['runtime']}, "
          f"{table.device['threads']} threads)")
    return 0
