"""Device profiling: measure every op configuration of a space at a ladder of shapes into a table.

Enumeration: a covering set of architectures (every width x every (kernel, expand, SE) at every
block position, every FPN/mask/head combination) is traced full-frame at the space's largest
resolution; each distinct op configuration is then measured at the square shapes of
`shape_ladder(largest side it reaches)`. Cropped shapes (from tracing) and other resolutions fall
between ladder shapes and are priced by the table's area interpolation.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path

import torch
from tqdm import tqdm

from nas import __version__
from nas.latency.op_keys import OpKey, OpKeyError, arch_op_keys
from nas.latency.op_kinds import op_kind, op_module
from nas.latency.profiling.backends import Backend, get_backend
from nas.latency.setting import LatencySetting
from nas.latency.table import PRECISION_DTYPE, Entry, LatencyTable, LatencyTableError, shape_ladder
from search_spaces.common.files import exclusive, read_text
from search_spaces.common.resources import sigterm_as_interrupt
from search_spaces.space import ArchConfig, get_space
from search_spaces.students.student import TraceNetStudent

SAVE_EVERY_S = 5.0
# ---------------------------------------------------------------- enumeration
def covering_archs(space: str) -> list[ArchConfig]:
    """Architectures in which every per-layer choice appears at every block position at least once,
    for every width, and every FPN/mask/head combination at least once."""
    spec = get_space(space)
    block_choices = list(itertools.product(spec.kernels, spec.expands, spec.se))
    head_choices = list(itertools.product(spec.dyn_layers, spec.mask_channels, spec.fpn_channels))
    n, depth = len(spec.stages), spec.max_depth
    per_width = max(len(block_choices), math.ceil(len(head_choices) / len(spec.width_mults)))
    archs = []
    for w, width in enumerate(spec.width_mults):
        for i in range(per_width):
            k, e, se = block_choices[i % len(block_choices)]
            layers, mask, fpn = head_choices[(w * per_width + i) % len(head_choices)]
            archs.append(ArchConfig(space=spec.name, resolution=spec.resolutions[-1], width_mult=width,
                                    depths=(depth,) * n, kernels=((k,) * depth,) * n, expands=((e,) * depth,) * n,
                                    se=(se,) * n, fpn_channels=fpn, mask_channels=mask, dyn_layers=layers))
    return archs


def profile_keys(space: str) -> list[OpKey]:
    """Every op configuration of `space`, each at the square shapes of its ladder."""
    largest_side: dict[str, tuple[OpKey, int]] = {}
    r = get_space(space).resolutions[-1]
    for arch in covering_archs(space):
        for key in arch_op_keys(arch, (r, r), (r / 2, r / 2), None):
            side = max(key.out_hw)
            if key.config not in largest_side or side > largest_side[key.config][1]:
                largest_side[key.config] = (key, side)
    keys = []
    for key, side in largest_side.values():
        keys += [OpKey(key.kind, key.attrs, (s, s)) for s in shape_ladder(side)]
    return sorted(keys, key=str)


# ---------------------------------------------------------------- timing
def read_keys(path: str | Path) -> list[OpKey]:
    """Op keys from a text file: whitespace-separated, '#' starts a comment; each must be a registered kind."""
    keys = []
    for line_no, line in enumerate(read_text(Path(path), "op key file").splitlines(), start=1):
        for text in line.split("#", 1)[0].split():
            try:
                key = OpKey.parse(text)
                op_kind(key)
            except OpKeyError as err:
                raise OpKeyError(f"{path}:{line_no}: {err}") from None
            keys.append(key)
    if not keys:
        raise OpKeyError(f"{path}: no op keys")
    return keys


def measure(run: Callable[[], object], warmup: int = 5, min_runs: int = 10, max_runs: int = 200,
            max_seconds: float = 2.0, rel_tol: float = 0.02) -> Entry:
    """Time `run` in chunks of 10 until the median moves < `rel_tol` between chunks (or a cap is hit),
    then drop outliers outside Tukey's fences (1.5 IQR) and summarise in milliseconds."""
    for _ in range(warmup):
        run()
    samples: list[float] = []
    previous, start = None, time.perf_counter()
    while len(samples) < max_runs:
        for _ in range(10):
            t0 = time.perf_counter()
            run()
            samples.append((time.perf_counter() - t0) * 1e3)
        median = statistics.median(samples)
        if len(samples) >= min_runs and previous is not None and abs(median - previous) <= rel_tol * previous:
            break
        if time.perf_counter() - start > max_seconds:
            break
        previous = median
    return summarize(samples)


def summarize(samples: list[float]) -> Entry:
    """Count, mean, median, p90 and std (ms) of `samples` after dropping outliers outside Tukey's fences
    (from 4 samples on: quartiles of fewer are not meaningful)."""
    kept = sorted(samples)
    if len(kept) >= 4:
        q1, _, q3 = statistics.quantiles(kept, n=4)
        kept = [t for t in kept if q1 - 1.5 * (q3 - q1) <= t <= q3 + 1.5 * (q3 - q1)]
    return Entry(count=len(kept), mean=statistics.fmean(kept), median=statistics.median(kept),
                 p90=kept[min(len(kept) - 1, math.ceil(0.9 * len(kept)) - 1)],
                 std=statistics.pstdev(kept))


def measure_unit(runtime: Backend, key: OpKey) -> Entry:
    """The unit `key` exported alone at its exact shape, in a program of its own, and timed."""
    module, inputs = op_module(key)
    return measure(runtime.prepare(module, inputs))


# ---------------------------------------------------------------- profiling a device
# Instruction-set extensions by which ONNX Runtime's MLAS and XNNPACK pick their kernels: two CPUs sold under
# one model name (a cloud VM's "AMD EPYC") can differ here, and int8 runs several times faster with VNNI / dot
# product instructions than without.
KERNEL_ISA = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "avx512_fp16", "amx_int8", "amx_bf16",  # x86 /proc/cpuinfo "flags"
              "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme")  # arm64 "Features"


@functools.cache  # read once: every table listed or validated asks
def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _cpu_fields() -> dict[str, str]:
    """The first processor's /proc/cpuinfo fields (it describes them all)."""
    fields: dict[str, str] = {}
    for line in _cpuinfo():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def host_hardware() -> str:
    """The CPU's name and generation: VMs give several generations one name (family 25 and 26 are both "AMD EPYC")."""
    fields = _cpu_fields()
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        generation = f"family {fields['cpu family']} model {fields.get('model', '?')}, "
    elif "CPU part" in fields:
        generation = f"implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}, "
    else:
        generation = ""
    return f"{name} ({generation}{torch.get_num_threads()} threads visible)"


def host_isa() -> list[str] | None:
    """The `KERNEL_ISA` extensions this CPU has, or None where the OS does not list them (no /proc/cpuinfo)."""
    fields = _cpu_fields()
    listed = fields.get("flags", fields.get("Features"))  # x86, arm64
    if listed is None:
        return None
    present = set(listed.split())
    return [isa for isa in KERNEL_ISA if isa in present]


def device_metadata(name: str, backend: str, threads: int, runtime_version: str, precision: str = "fp32") -> dict:
    return {"name": name, "hardware": host_hardware(), "isa": host_isa(), "os": platform.platform(),
            "runtime": backend, "runtime_version": runtime_version, "threads": threads,
            "dtype": PRECISION_DTYPE[precision], "date": date.today().isoformat(), "tool_version": __version__}


def probe_program(space: str, setting: LatencySetting, runtime: Backend) -> Callable[[], object]:
    """One small fixed program of `space` (its first covering architecture at its lowest resolution), ready to
    run: timed before each program of an in-context profile (and of `validate`), it tells how fast the
    machine runs at that moment."""
    arch = dataclasses.replace(covering_archs(space)[0], resolution=min(get_space(space).resolutions))
    program = setting.program(TraceNetStudent(arch))
    return runtime.prepare(program, program.example_inputs())


def other_cpu(table_device: dict) -> str | None:
    """Why a table's measurements do not describe this host's CPU (its kernel ISA extensions differ), or None
    where they match or the table or the host does not record them."""
    theirs, ours = table_device.get("isa"), host_isa()
    if theirs is None or ours is None or set(theirs) == set(ours):
        return None
    table_only = " ".join(isa for isa in theirs if isa not in ours) or "none"
    host_only = " ".join(isa for isa in ours if isa not in theirs) or "none"
    return f"measured on another CPU (instruction sets only it has: {table_only}; only this host has: {host_only})"


def open_table(path: Path, device: dict, space: str | None) -> LatencyTable:
    """The table at `path` to resume (it must be for the same device, runtime, threads and dtype), or a new one."""
    if not path.exists():
        return LatencyTable(device=device, provenance="measured", space=space)
    table = LatencyTable.load(path)
    if table.device.get("dtype", "float32") != device["dtype"]:
        raise LatencyTableError(f"{path}: exists for dtype={table.device.get('dtype', 'float32')!r}, not "
                                f"{device['dtype']!r}; choose another --out to profile another precision")
    for field in ("name", "runtime", "threads"):
        if table.device.get(field) != device[field]:
            raise LatencyTableError(f"{path}: exists for {field}={table.device.get(field)!r}, not "
                                    f"{device[field]!r}; choose another --out to profile a different setup")
    if reason := other_cpu(table.device):  # one table, one CPU: resuming elsewhere would mix two machines
        raise LatencyTableError(f"{path}: was {reason}; choose another --out to profile this host")
    return table


def profile(keys: Iterable[OpKey], out: str | Path, device: str, backend: str, threads: int,
            space: str | None = None, progress: bool = True, recheck_above_ms: float | None = None,
            remeasure: bool = False, precision: str = "fp32", **measure_options: float) -> LatencyTable:
    """Measure every key missing from the table at `out` (with `remeasure`, every key, replacing its
    entry), saving as it goes (a rerun resumes).

    `precision="int8"`: each unit is quantized as the backend's runtime quantizes (PT2E + XNNPACK's
    quantizer, or ONNX Runtime's static QDQ), calibrated on its example inputs, and the ops the
    quantizer leaves float are recorded per configuration in `table.float_units`. `"fp16"`: each unit's
    float16 copy (ExecuTorch-XNNPACK).

    `recheck_above_ms`: then time the keys whose median exceeds it once more and keep the faster
    median. A slow phase of a shared VM (or a throttled phone) lasts seconds to minutes and inflates
    whole measurements, and the largest units dominate every prediction; an interrupted recheck
    keeps what it saved, and rerunning only lowers entries further."""
    runtime = get_backend(backend, threads, precision)
    out = Path(out)
    with exclusive(out), sigterm_as_interrupt():  # one writer per table; SIGTERM stops like Ctrl-C
        table = open_table(out, device_metadata(device, backend, threads, runtime.runtime_version, precision), space)
        keys = list(dict.fromkeys(keys))
        todo = keys if remeasure else [k for k in keys if str(k) not in table.entries]
        try:
            _measure_into(table, todo, runtime, out, f"profile {device} ({backend}, {threads}t)", progress,
                          measure_options, keep_faster=False)
            if recheck_above_ms is not None:
                slow = [k for k in keys if table.entries[str(k)].median > recheck_above_ms]
                _measure_into(table, slow, runtime, out, f"recheck > {recheck_above_ms:g} ms", progress,
                              measure_options, keep_faster=True)
        finally:  # an interrupted profile keeps everything measured so far, and a rerun resumes from it
            if table.entries:
                table.save(out)
    return table


def _measure_into(table: LatencyTable, keys: list[OpKey], runtime: Backend, out: Path, desc: str, progress: bool,
                  measure_options: dict, keep_faster: bool) -> None:
    """Measure `keys` into `table` (with `keep_faster`, replacing an entry only by a faster median)."""
    last_save = time.monotonic()
    bar = tqdm(total=len(keys), desc=desc, unit="op", disable=not progress)
    for group in _lowering_groups(keys, shared=hasattr(runtime, "prepare_shapes")):
        module, _ = op_module(group[0])
        inputs = [op_module(key)[1] for key in group]
        try:
            runs = runtime.prepare_shapes(module, inputs) if len(group) > 1 else [runtime.prepare(module, inputs[0])]
        except Exception:  # noqa: BLE001 - export's guards reject some dynamic ranges: lower shape by shape
            runs = [runtime.prepare(op_module(key)[0], key_inputs) for key, key_inputs in zip(group, inputs,
                                                                                             strict=True)]
        lowering = runtime.lowerings.get(repr(module))
        if lowering is not None and lowering.float_ops:
            table.float_units[group[0].config] = lowering.float_ops
        for key, run in zip(group, runs, strict=True):
            entry = measure(run, **measure_options)
            previous = table.entries.get(str(key))
            if not (keep_faster and previous is not None and previous.median <= entry.median):
                table.add(str(key), entry)
            bar.update()
        if time.monotonic() - last_save > SAVE_EVERY_S:
            table.save(out)
            last_save = time.monotonic()
    bar.close()


def _lowering_groups(keys: list[OpKey], shared: bool) -> list[list[OpKey]]:
    """Keys that can share one program: same configuration and a shape-independent module, with output
    sides in 2..7 or >= 8 (export specialises sizes 0 and 1, and its guards differ between tiny and
    large maps). Without a shared-program backend, one key per group."""
    groups: dict[tuple[str, bool], list[OpKey]] = {}
    singles = []
    for key in keys:
        if shared and op_kind(key).shape_free and min(key.out_hw) >= 2:
            groups.setdefault((key.config, min(key.out_hw) >= 8), []).append(key)
        else:
            singles.append([key])
    return list(groups.values()) + singles
