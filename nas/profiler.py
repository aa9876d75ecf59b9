"""Device profiling: measure every op configuration of a space at a ladder of shapes into a table.

Enumeration: a covering set of architectures (every width x every (kernel, expand, SE) at every
block position, every FPN/mask/head combination) is traced full-frame at the space's largest
resolution; each distinct op configuration is then measured at the square shapes of
`shape_ladder(largest side it reaches)`. Cropped shapes (from tracing) and other resolutions fall
between ladder shapes and are priced by the table's area interpolation.
"""

from __future__ import annotations

import itertools
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nas import __version__
from nas.backends import Backend, get_backend
from nas.latency_table import Entry, LatencyTable, LatencyTableError, shape_ladder
from nas.op_keys import OpKey, arch_op_keys
from search_spaces.arch_config import ArchConfig
from search_spaces.backbone import SE_LAYER
from search_spaces.box import Box
from search_spaces.head import TapHead, encode_clicks, relative_coords
from search_spaces.space import get_space
from search_spaces.student import MASK_STRIDE

SAVE_EVERY_S = 5.0
# activation name in op keys (the class name, lower-cased, as op_keys writes it) -> module
_ACTS = {"none": nn.Identity, **{cls.__name__.lower(): cls for cls in (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU)}}


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


# ---------------------------------------------------------------- one unit as a module
class _Eltwise(nn.Module):
    def __init__(self, fn: str):
        super().__init__()
        self.fn = fn

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b if self.fn == "add" else a * b


class _Upsample(nn.Module):
    """Nearest upsampling cut to the output size, as the cropped forward does."""

    def __init__(self, scale: int, h: int, w: int):
        super().__init__()
        self.scale, self.h, self.w = scale, h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=float(self.scale), mode="nearest")[..., : self.h, : self.w]


class _Clicks(nn.Module):
    """Click maps over the image crop, concatenated to it (the student's input stage). The region is
    the crop's own size, so one exported program serves every size."""

    def forward(self, image: torch.Tensor, clicks: torch.Tensor) -> torch.Tensor:
        return torch.cat([image, encode_clicks(clicks, Box.full(*image.shape[-2:]))], dim=1)


class _Head(nn.Module):
    """Relative coordinates + the tap-conditioned head over the window of cells `mask_features` covers."""

    def __init__(self, f: int, cm: int, layers: int, hidden: int):
        super().__init__()
        self.head = TapHead(f, cm, layers, hidden)

    def forward(self, mask_features: torch.Tensor, tap_feature: torch.Tensor, tap: torch.Tensor) -> torch.Tensor:
        coords = relative_coords(tap, Box.full(*mask_features.shape[-2:]), MASK_STRIDE)
        return self.head(mask_features, tap_feature, coords)[0]


def op_module(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A module that runs exactly the unit `key`, with example inputs of the right shape."""
    a, (h, w) = dict(key.attrs), key.out_hw
    if key.kind == "conv":
        k, s, d = int(a["k"]), int(a["s"]), int(a["d"])
        cin, cout = int(a["cin"]), int(a["cout"])
        groups = cin if a["g"] == "dw" else int(a["g"])
        span = d * (k - 1) + 1  # the cropped forward runs convs unpadded on a padded crop
        module = nn.Sequential(nn.Conv2d(cin, cout, k, s, 0, d, groups, bias=True), _ACTS[str(a["act"])]())
        return module, (torch.randn(1, cin, (h - 1) * s + span, (w - 1) * s + span),)
    if key.kind in ("maxpool2d", "avgpool2d"):
        k, s = int(a["k"]), int(a["s"])
        pool = nn.MaxPool2d(k, s) if key.kind == "maxpool2d" else nn.AvgPool2d(k, s)
        return nn.Sequential(pool, _ACTS[str(a["act"])]()), (torch.randn(1, int(a["c"]), (h - 1) * s + k,
                                                                          (w - 1) * s + k),)
    if key.kind == "se":
        c, rd = int(a["c"]), int(a["rd"])
        return SE_LAYER(c, rd_channels=rd), (torch.randn(1, c, h, w),)
    if key.kind == "eltwise":
        c = int(a["c"])
        return _Eltwise(str(a["fn"])), (torch.randn(1, c, h, w), torch.randn(1, c, h, w))
    if key.kind == "upsample":
        s = int(a["scale"])
        return _Upsample(s, h, w), (torch.randn(1, int(a["c"]), math.ceil(h / s), math.ceil(w / s)),)
    if key.kind == "clicks":
        clicks = torch.tensor([[[w / 2, h / 2, 1.0], [w / 4, h / 4, 0.0]]])
        return _Clicks(), (torch.randn(1, int(a["c"]) - 2, h, w), clicks)
    if key.kind == "tap_head":
        f, cm = int(a["f"]), int(a["cm"])
        module = _Head(f, cm, int(a["layers"]), int(a["hidden"]))
        return module, (torch.randn(1, cm, h, w), torch.randn(1, f), torch.tensor([[w * 4.0, h * 4.0]]))
    if key.kind == "gpool":  # global average pooling of an `in`-sized map (classifier tails)
        ih, iw = (int(v) for v in str(a["in"]).split("x"))
        return nn.AdaptiveAvgPool2d(1), (torch.randn(1, int(a["c"]), ih, iw),)
    if key.kind == "linear":
        return nn.Linear(int(a["cin"]), int(a["cout"])), (torch.randn(1, int(a["cin"])),)
    if key.kind == "attention":  # EfficientFormerV2's, made to run at any size
        from timm.models.efficientformer_v2 import Attention2d, Attention2dDownsample

        from search_spaces.any_size_attention import adapt_attention

        cin, kd, heads, ratio, s = (int(a[n]) for n in ("cin", "kd", "heads", "ratio", "s"))
        down = bool(int(a["down"]))
        module = adapt_attention(Attention2dDownsample(cin, kd, heads, ratio, out_dim=int(a["cout"])) if down
                                 else Attention2d(cin, kd, heads, ratio, stride=s if s > 1 else None)).eval()
        return module, (torch.randn(1, cin, 2 * h if down else h, 2 * w if down else w),)
    if key.kind in ("act", "bn"):
        c = int(a["c"])
        layer = nn.BatchNorm2d(c).eval() if key.kind == "bn" else _ACTS[str(a["fn"])]()
        return layer, (torch.randn(1, c, h, w),)
    raise ValueError(f"no module builder for op kind '{key.kind}' ({key})")


# op kinds whose module does not depend on the shape it runs at, so one program serves a shape ladder
# (not tap_head: its dynamic 1x1 convs reshape over height and width, which XNNPACK cannot make dynamic)
SHAPE_FREE_KINDS = ("conv", "maxpool2d", "avgpool2d", "se", "eltwise", "act", "bn", "clicks")


# ---------------------------------------------------------------- timing
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
def host_hardware() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads visible)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_metadata(name: str, backend: str, threads: int, runtime_version: str) -> dict:
    return {"name": name, "hardware": host_hardware(), "os": platform.platform(), "runtime": backend,
            "runtime_version": runtime_version, "threads": threads, "dtype": "float32",
            "date": date.today().isoformat(), "tool_version": __version__}


def open_table(path: Path, device: dict, space: str | None) -> LatencyTable:
    """The table at `path` to resume (it must be for the same device, runtime and threads), or a new one."""
    if not path.exists():
        return LatencyTable(device=device, provenance="measured", space=space)
    table = LatencyTable.load(path)
    for field in ("name", "runtime", "threads"):
        if table.device.get(field) != device[field]:
            raise LatencyTableError(f"{path}: exists for {field}={table.device.get(field)!r}, not "
                                    f"{device[field]!r}; choose another --out to profile a different setup")
    return table


def profile(keys: Iterable[OpKey], out: str | Path, device: str, backend: str, threads: int,
            space: str | None = None, progress: bool = True, recheck_above_ms: float | None = None,
            **measure_options: float) -> LatencyTable:
    """Measure every key missing from the table at `out`, saving as it goes (a rerun resumes).

    `recheck_above_ms`: then time the keys whose median exceeds it once more and keep the faster
    median. A slow phase of a shared VM (or a throttled phone) lasts seconds to minutes and inflates
    whole measurements, and the largest units dominate every prediction; an interrupted recheck
    keeps what it saved, and rerunning only lowers entries further."""
    runtime = get_backend(backend, threads)
    out = Path(out)
    table = open_table(out, device_metadata(device, backend, threads, runtime.runtime_version), space)
    keys = list(dict.fromkeys(keys))
    todo = [k for k in keys if str(k) not in table.entries]
    _measure_into(table, todo, runtime, out, f"profile {device} ({backend}, {threads}t)", progress,
                  measure_options, keep_faster=False)
    if recheck_above_ms is not None:
        slow = [k for k in keys if table.entries[str(k)].median > recheck_above_ms]
        _measure_into(table, slow, runtime, out, f"recheck > {recheck_above_ms:g} ms", progress,
                      measure_options, keep_faster=True)
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
        if shared and key.kind in SHAPE_FREE_KINDS and min(key.out_hw) >= 2:
            groups.setdefault((key.config, min(key.out_hw) >= 8), []).append(key)
        else:
            singles.append([key])
    return list(groups.values()) + singles
