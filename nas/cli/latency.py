"""`nas latency`: list, predict with, validate, import and calibrate latency tables."""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from nas import __version__
from nas.cli.common import positive_int, read_arch, window_fraction
from nas.latency.calibrate import MODELS, calibrate, read_measurements, read_published, write_measurements
from nas.latency.importers import FORMATS, check_ofa_net, import_tables
from nas.latency.predict import predict_latency
from nas.latency.profiling.backends import BACKENDS
from nas.latency.profiling.profiler import other_cpu
from nas.latency.setting import PRECISIONS, LatencySetting, parse_image_size
from nas.latency.table import PRECISION_DTYPE, LatencyTable, available_targets, resolve_target
from nas.latency.timm_keys import timm_op_keys
from nas.latency.validate import measure_programs, random_archs, validate, validate_measured
from search_spaces.common.errors import InvalidValueError
from search_spaces.space import DEFAULT_SPACE, ArchConfig
from search_spaces.tracing.tracer import TracingError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "latency", help="latency tables: list, predict, validate, measure, import, calibrate",
        description="Per-device latency lookup tables. A target is a shipped table name (nas latency tables) "
                    "or a path to a table .json written by 'nas profile'.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True

    tables = actions.add_parser("tables", help="list the shipped targets with provenance and error",
                                description="List the latency tables that ship with TraceNAS.")
    tables.add_argument("--json", action="store_true", help="print JSON lines")
    tables.set_defaults(func=_tables)

    predict = actions.add_parser(
        "predict", help="sum a table over the traced op keys of an architecture",
        description="Trace the architecture at the reference setting (a 4:3 image whose long side is the "
                    "arch's resolution, tap at the centre, the whole output), fuse its "
                    "ops into the units a runtime executes and sum their latencies from the table. Shapes "
                    "between the table's measured shapes are interpolated in output area; an op "
                    "configuration the table lacks is an error that names it.",
        epilog="example: nas space sample --n 1 | head -1 > arch.json && nas latency predict --target T.json "
               "--arch arch.json")
    predict.add_argument("--target", required=True, help="shipped table name or table .json path")
    predict.add_argument("--arch", required=True, help="architecture JSON (bare ArchConfig or a result with 'arch')")
    predict.add_argument("--image-size", type=parse_image_size, help="network input WIDTHxHEIGHT (multiples of 32)")
    predict.add_argument("--window", type=window_fraction, default=LatencySetting.window,
                         help="output window side as a fraction of the resolution, or 'full' (default full: the "
                              "whole object)")
    predict.add_argument("--precision", choices=PRECISIONS, default="fp32",
                         help="precision of the program to price; the table must be of that precision (default fp32)")
    predict.add_argument("--json", action="store_true", help="print one JSON object")
    predict.set_defaults(func=_predict)

    imp = actions.add_parser(
        "import", help="import published Once-for-All / ProxylessNAS per-block tables",
        description="Convert published per-block latency tables (YAML, Once-for-All or ProxylessNAS format) into "
                    "one TraceNAS table with provenance 'imported'; several files (one per resolution) merge. "
                    "--check-net prices Once-for-All specialised networks (folders with net.config and "
                    "run.config, latency named as '_lat-30ms_') and reports the error against the named "
                    "latency, or exactly which keys and which resolution the table lacks.",
        epilog="example: nas latency import --format ofa --device note10 --out note10.json "
               "../shared/latency_reference/ofa_note10/*_lookup_table.yaml "
               "--check-net ../shared/latency_reference/ofa_note10/specialized/*")
    imp.add_argument("files", nargs="+", metavar="FILE.yaml")
    imp.add_argument("--format", required=True, choices=FORMATS)
    imp.add_argument("--device", required=True, help="device name written into the table")
    imp.add_argument("--out", required=True, help="table .json to write")
    imp.add_argument("--check-net", nargs="*", default=[], metavar="NET_DIR", help="OFA network folders to price")
    imp.add_argument("--json", action="store_true", help="print one JSON object")
    imp.set_defaults(func=_import)

    validate = actions.add_parser(
        "validate", help="benchmark a table: predicted vs measured latency of random subnets",
        description="Build N random subnets of the table's space, export each one's traced one-tap program "
                    "(reference setting) to the backend, measure it end to end on this machine and compare with "
                    "the table's prediction. Prints within_10pct (fraction within ±10 %), mape, spearman and the "
                    "median prediction/measurement (a bias all networks share). --measurements CSV prices "
                    "networks measured before instead, to compare two tables on the same programs. "
                    "A benchmark, not a test: run it on an idle machine with the table's backend and threads.")
    validate.add_argument("--target", required=True, help="shipped table name or table .json path")
    validate.add_argument("--backend", choices=BACKENDS, help="runtime to time the subnets on (needed unless "
                                                               "--measurements)")
    validate.add_argument("--threads", type=positive_int, default=1)
    validate.add_argument("--n", type=positive_int, default=100, help="random subnets (default 100)")
    validate.add_argument("--seed", type=int, default=0)
    validate.add_argument("--rounds", type=positive_int, default=3,
                          help="interleaved timing passes over all subnets; each keeps its fastest (default 3)")
    validate.add_argument("--space", help="space to sample (default: the table's)")
    validate.add_argument("--precision", choices=PRECISIONS, default="fp32",
                          help="int8: measure the programs quantized as the backend's runtime quantizes them; fp16 "
                               "(executorch-xnnpack): their float16 copies; the table must price that precision "
                               "(default fp32)")
    validate.add_argument("--json", action="store_true", help="print one JSON object with per-arch cases")
    validate.add_argument("--measurements-out", metavar="CSV",
                          help="also write the end-to-end measurements (arch, latency_ms) for 'nas latency calibrate'")
    validate.add_argument("--measurements", metavar="CSV",
                          help="price these earlier measurements (--measurements-out, 'nas latency measure') instead "
                               "of timing: compares a re-profiled table with the old one on the same programs")
    validate.set_defaults(func=_validate)

    measure = actions.add_parser(
        "measure", help="measure random subnets end to end (no table), for 'nas latency calibrate'",
        description="Time the one-tap programs of N random subnets (the ones 'nas latency validate' draws for the "
                    "same --seed) on a backend of this machine and write their latencies as the CSV 'nas latency "
                    "calibrate --measurements' reads: how a table for a precision or runtime that has no per-unit "
                    "table yet starts from one that has (e.g. int8 programs from a float32 table).",
        epilog="example: nas latency measure --backend executorch-xnnpack --precision int8 --n 20 --out int8.csv && "
               "nas latency calibrate --base x86-2core-xnnpack-1t --measurements int8.csv --precision int8 "
               "--runtime executorch-xnnpack --threads 1 --out xnnpack-int8.json")
    measure.add_argument("--backend", required=True, choices=BACKENDS)
    measure.add_argument("--threads", type=positive_int, default=1)
    measure.add_argument("--precision", choices=PRECISIONS, default="fp32",
                         help="int8 (onnxruntime, executorch-xnnpack) or fp16 (executorch-xnnpack) programs, as "
                              "validate builds them (default fp32)")
    measure.add_argument("--n", type=positive_int, default=20, help="random subnets (default 20)")
    measure.add_argument("--seed", type=int, default=0)
    measure.add_argument("--rounds", type=positive_int, default=3,
                         help="interleaved timing passes over all subnets; each keeps its fastest (default 3)")
    measure.add_argument("--space", default=DEFAULT_SPACE, help=f"space to sample (default {DEFAULT_SPACE})")
    measure.add_argument("--out", required=True, metavar="CSV", help="measurements to write (arch, latency_ms)")
    measure.set_defaults(func=_measure)

    cal = actions.add_parser(
        "calibrate", help="fit a base table to a device from a few end-to-end measurements",
        description="For a device you cannot profile op by op: fit a few-shot latency model to end-to-end "
                    "latencies of a handful of networks and write it as a table. Candidates, all non-negative "
                    "least squares: FLOPs alone and FLOPs + offset (baselines); a global scale of the base "
                    "table + offset; one scale per op class (conv_1x1, conv_dw_k3/k5/k7, conv_kxk, se, eltwise, ...) "
                    "shrunk toward the global scale; either plus architecture features (FLOPs, depthwise FLOPs, "
                    "memory traffic, unit count); and with several --base tables a mix of them (transfer from "
                    "devices already measured). Leave-one-out MAPE over the measurements chooses the model and "
                    "its prior weight. Prints the choice next to the FLOPs baselines and writes the table, with "
                    "provenance 'calibrated' and those errors in its metadata.",
        epilog="CSV columns: arch (ArchConfig JSON or a path to one) or keys (op keys separated by spaces), and "
               "latency_ms. 'nas latency validate --measurements-out' writes such a file for this machine.\n"
               "example: nas latency calibrate --base x86-2core-ort-2t,x86-2core-ort-1t --published "
               "published.csv --match 'iPhone 12' --out iphone12.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cal.add_argument("--base", required=True, type=lambda text: [t for t in text.split(",") if t],
                     help="base table (name or .json); several, comma-separated, also fit a transfer from all of "
                          "them (the first is the primary: the calibrated table has its units)")
    cal.add_argument("--models", type=lambda text: text.split(","), default=list(MODELS),
                     help=f"candidate models, comma-separated (default all: {','.join(MODELS)})")
    source = cal.add_mutually_exclusive_group(required=True)
    source.add_argument("--measurements", metavar="CSV",
                        help="columns latency_ms and arch (ArchConfig JSON or path) or keys (a network's op keys "
                             "separated by spaces: networks of any family the base table prices)")
    source.add_argument("--published", metavar="CSV",
                        help="published end-to-end latencies of timm models (columns timm_name, input_resolution, "
                             "latency_ms, device), e.g. ../shared/latency_reference/published_model_latency.csv")
    cal.add_argument("--match", help="with --published: use the rows whose device contains this text")
    cal.add_argument("--out", required=True, help="calibrated table .json to write")
    cal.add_argument("--device", help="device name of the calibrated table (default: the output file's stem)")
    cal.add_argument("--hardware", help="hardware the measurements ran on (default with --published: the CSV's "
                                        "device column; otherwise left unknown)")
    cal.add_argument("--runtime", help="runtime that measured them, e.g. executorch-xnnpack (default with "
                                       "--published: the CSV's runtime column; otherwise left unknown)")
    cal.add_argument("--threads", type=positive_int, help="threads of those measurements, if known")
    cal.add_argument("--precision", choices=PRECISIONS, default="fp32",
                     help="precision of the measured programs: the calibrated table prices that precision only, "
                          "whatever its bases price (default fp32)")
    cal.add_argument("--json", action="store_true", help="print one JSON object")
    cal.set_defaults(func=_calibrate)


def _tables(args: argparse.Namespace) -> int:
    targets = available_targets()
    if not targets and not args.json:
        print("no latency tables ship yet: write one with 'nas profile' and pass its path as --target")
    for name, path in sorted(targets.items()):
        table = LatencyTable.load(path)
        summary = table.summary() | {"target": name, "other_cpu": other_cpu(table.device)}
        if args.json:
            print(json.dumps(summary))
        else:
            error = summary["calibration_error"]
            print(f"{name:<28} {summary['provenance']:<10} {summary['runtime'] or '-':<20} {summary['precision']:<4} "
                  f"threads={summary['threads'] or '-'} entries={summary['entries']}"
                  + (f" loo_mape={error:.1%}" if error is not None else "")
                  + (f" flops_loo_mape={summary['flops_baseline_error']:.1%}"
                     if summary["flops_baseline_error"] is not None else "")
                  + (f"\n{'':<28} {summary['other_cpu']}" if summary["other_cpu"] else "")
                  + (f"\n{'':<28} {summary['notes']}" if summary["notes"] else ""))
    return 0


def _predict(args: argparse.Namespace) -> int:
    arch = read_arch(args.arch)
    table = resolve_target(args.target)
    setting = LatencySetting(image_size=args.image_size, window=args.window, precision=args.precision)
    result = predict_latency(arch, table, setting)
    report = {"target": table.name, "provenance": table.provenance,
              "calibration_error": (table.calibration or {}).get("loo_mape"),
              "latency_ms": result.latency_ms, "keys": result.keys, "interpolated": result.interpolated,
              "extrapolated": result.extrapolated, "per_kind_ms": result.per_kind_ms,
              "latency_setting": setting.describe() | {"input_hw": list(setting.input_hw(arch))}}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{result.latency_ms:.3f} ms on {table.name} ({table.provenance}) for {result.keys} fused ops "
              f"({result.interpolated} interpolated, {result.extrapolated} extrapolated in shape)")
        for kind, ms in sorted(result.per_kind_ms.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:<10} {ms:8.3f} ms")
    return 0


def _validate(args: argparse.Namespace) -> int:
    table = resolve_target(args.target)
    setting = LatencySetting(precision=args.precision)
    if args.measurements and args.measurements_out:
        raise InvalidValueError("--measurements prices earlier measurements and times nothing; drop "
                                "--measurements-out")
    if args.measurements:
        report = validate_measured(table, *read_measurements(args.measurements, setting), args.precision)
        heading = f"{table.name} vs the {report['n']} {args.precision} networks measured in {args.measurements}:"
    elif args.backend:
        report = validate(table, args.backend, args.threads, args.n, args.seed, args.space, setting,
                          rounds=args.rounds, progress=not args.json)
        heading = (f"{table.name} vs {args.backend} ({args.threads} threads, {args.precision}), {args.n} random "
                   f"subnets of {report['space']}:")
    else:
        raise InvalidValueError("--backend is needed to time subnets (or --measurements CSV to price earlier ones)")
    if args.measurements_out:
        write_measurements(args.measurements_out, [ArchConfig.from_dict(c["arch"]) for c in report["cases"]],
                           [c["measured_ms"] for c in report["cases"]])
    if args.json:
        print(json.dumps(report))
    else:
        print(heading)
        print(f"  within_10pct {report['within_10pct']:.2f}   mape {report['mape']:.1%}   "
              f"spearman {report['spearman']:.3f}   median prediction/measurement {report['median_ratio']:.2f}x")
        if "rounds_within_10pct" in report:
            print(f"  repeatability: {report['rounds_within_10pct']:.2f} of the subnets timed within 10% across "
                  f"{args.rounds} rounds (widest spread {report['max_round_spread']:.0%}): how well this "
                  "machine repeats itself now, which bounds what within_10pct can show")
        if "probe_ratio" in report:
            at_speed = report["at_profile_speed"]
            print(f"  the probe program ran at {report['probe_ratio']:.2f}x its profile's median time; each pass "
                  f"scaled to the profile's speed: within_10pct {at_speed['within_10pct']:.2f}   mape "
                  f"{at_speed['mape']:.1%}   median {at_speed['median_ratio']:.2f}x")
        if report.get("table_runtime") and (report["table_runtime"], report["table_threads"]) != (args.backend,
                                                                                            args.threads):
            print(f"  note: the table was measured with {report['table_runtime']} at "
                  f"{report['table_threads']} threads")
        if report.get("other_cpu"):
            print(f"  note: the table was {report['other_cpu']}")
    return 0


def _measure(args: argparse.Namespace) -> int:
    archs = random_archs(args.n, args.seed, args.space)
    setting = LatencySetting(precision=args.precision)
    round_ms = measure_programs(archs, args.backend, args.threads, setting, args.rounds,
                                desc=f"measure {args.backend} ({args.threads}t, {args.precision})").round_ms
    measured = [min(times) for times in round_ms]
    write_measurements(args.out, archs, measured)
    print(f"{args.out}: {len(archs)} {args.precision} programs of {args.space} on {args.backend} ({args.threads} "
          f"threads), {min(measured):.2f}-{max(measured):.2f} ms")
    return 0


def _import(args: argparse.Namespace) -> int:
    table = import_tables(args.files, args.format, args.device)
    checks = [check_ofa_net(table, net) for net in args.check_net]
    table.save(args.out)
    if args.json:
        print(json.dumps({"out": args.out, "entries": len(table.entries), "checks": checks}))
        return 0
    print(f"{args.out}: {len(table.entries)} entries for {args.device} (imported from {len(args.files)} file(s))")
    for check in checks:
        if check["predicted_ms"] is not None:
            named = f" vs {check['named_ms']:g} ms named ({check['error']:+.1%})" if check["named_ms"] else ""
            print(f"  {check['net']}: {check['predicted_ms']:.2f} ms at {check['resolution']} px{named}")
            continue
        reason = (f"resolution {check['resolution']} px is not in the table (has {check['table_resolutions']}); "
                  if check["resolution_missing"] else "")
        print(f"  {check['net']}: cannot price: {reason}{len(check['missing_keys'])} missing key(s):")
        for key in check["missing_keys"]:
            print(f"    {key}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    bases = [resolve_target(name) for name in args.base]
    if args.published:
        if not args.match:
            raise InvalidValueError("--published needs --match DEVICE_TEXT (e.g. 'iPhone 13')")
        key_lists, used = [], []
        for row in read_published(args.published, args.match):
            try:
                key_lists.append(timm_op_keys(row.timm_name, row.resolution))
            except TracingError as err:  # attention / global mixing: no fused-op decomposition yet
                print(f"  skipped {row.timm_name}: {str(err).splitlines()[0][:100]}")
                continue
            used.append(row)
        calibration = calibrate(bases, key_lists, [row.latency_ms for row in used], args.models)
        hardware = args.hardware or "; ".join(sorted({row.device for row in used}))
        runtime = args.runtime or "; ".join(sorted({row.runtime for row in used if row.runtime})) or None
    else:
        key_lists, measured = read_measurements(args.measurements)
        calibration = calibrate(bases, key_lists, measured, args.models)
        hardware, runtime = args.hardware, args.runtime
    name = args.device or Path(args.out).stem
    # the device the measurements came from, not the base's machine (that stays in calibration.base)
    device = {"name": name, "hardware": hardware, "runtime": runtime, "threads": args.threads,
              "dtype": PRECISION_DTYPE[args.precision], "date": date.today().isoformat(), "tool_version": __version__}
    table = calibration.apply(bases, device)
    table.save(args.out)
    loo = calibration.loo
    if args.json:
        print(json.dumps({"out": args.out, "model": calibration.model, "coefficients": calibration.coefficients,
                          "scales": calibration.scales, "overhead_ms": calibration.overhead_ms, "loo": loo,
                          "baselines": calibration.baselines}))
        return 0
    print(f"{args.out}: {name} calibrated on {', '.join(calibration.bases)} from {loo['n']} measurements")
    print(f"  {'leave-one-out':<16} {'mape':>7} {'within_10pct':>13} {'spearman':>9}")
    for label, score in [(calibration.model, loo)] + list(calibration.baselines.items()):
        print(f"  {label:<16} {score['mape']:>7.1%} {score['within_10pct']:>13.2f} {score['spearman']:>9.3f}")
    print("  weights: " + ", ".join(f"{c}={w:.3g}" for c, w in calibration.coefficients.items())
          + f"; overhead {calibration.overhead_ms:.3f} ms")
    return 0
