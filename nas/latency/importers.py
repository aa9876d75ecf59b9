"""Importers for published per-block latency tables (Once-for-All and ProxylessNAS YAML format).

Their keys look like `expanded_conv-input:112x112x24-output:56x56x32-expand:144-kernel:3-stride:2-
idskip:0-se:0-hs:0` with `count`, `mean` (ms) and `std` (OFA) or `var` (ProxylessNAS). Each becomes
an op key of kind `ofa_<type>` (block-level units, as those phones' runtimes were measured), e.g.
`ofa_expanded_conv[cin=24,cout=32,expand=144,hs=0,idskip=0,in=112x112,k=3,s=2,se=0]@56x56`.
Only mean and std are published, so median is set to the mean and p90 to mean + 1.2816 std (normal
approximation). Several files (e.g. one per resolution) merge into one table; a key present in
several files keeps the count-weighted mean.

`ofa_net_keys` decomposes an OFA MobileNetV3 `net.config` at a resolution into the same keys, the
way Once-for-All's own latency estimator sums a network.
"""

from __future__ import annotations

import math
import re
from datetime import date
from pathlib import Path

from nas import __version__
from nas.latency.op_keys import OpKey
from nas.latency.table import Entry, LatencyTable
from search_spaces.common.errors import TraceNASError
from search_spaces.common.files import read_text
from search_spaces.common.limits import parse_json, parse_yaml

FORMATS = ("ofa", "proxyless")
_SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")
_NAMES = {"expand": "expand", "kernel": "k", "stride": "s", "idskip": "idskip", "se": "se", "hs": "hs"}


class LatencyImportError(TraceNASError, ValueError):
    """A published table file that cannot be read or has malformed keys."""


def _block_key(kind: str, in_shape: tuple[int, int, int], out_shape: tuple[int, ...], **extra: int) -> OpKey:
    """One block's key; `out_shape` is (H, W, C) or (C,) for the classifier."""
    h, w, cout = out_shape if len(out_shape) == 3 else (1, 1, out_shape[0])
    return OpKey.make(f"ofa_{kind.lower()}", (h, w), cin=in_shape[2], cout=cout,
                      **{"in": f"{in_shape[0]}x{in_shape[1]}"}, **extra)


def parse_published_key(text: str, fmt: str) -> OpKey:
    parts = text.split("-")
    try:
        fields = dict(p.split(":", 1) for p in parts[1:])
        in_match, out_text = _SHAPE.match(fields.pop("input")), fields.pop("output")
        out_match = _SHAPE.match(out_text)
        in_shape = tuple(int(v) for v in in_match.groups())
        out_shape = tuple(int(v) for v in out_match.groups()) if out_match else (int(out_text),)
        extra = {_NAMES[name]: int(value) for name, value in fields.items()}
    except (ValueError, KeyError, AttributeError):
        raise LatencyImportError(f"malformed {fmt} key {text!r}") from None
    return _block_key(parts[0], in_shape, out_shape, **extra)


def import_tables(files: list[str | Path], fmt: str, device: str) -> LatencyTable:
    """Merge published YAML tables of one device into one table with provenance 'imported'."""
    if fmt not in FORMATS:
        raise LatencyImportError(f"unknown format {fmt!r}; choose from {list(FORMATS)}")
    if not files:
        raise LatencyImportError("give at least one YAML table file")
    merged: dict[str, list[tuple[int, float, float]]] = {}
    for file in files:
        path = Path(file)
        data = parse_yaml(read_text(path, "latency table"), str(path), LatencyImportError)
        if not isinstance(data, dict) or not data:
            raise LatencyImportError(f"{path}: expected a mapping of block keys to statistics")
        for text, stats in data.items():
            try:
                key = parse_published_key(str(text), fmt)
            except LatencyImportError as err:
                raise LatencyImportError(f"{path}: {err}") from None
            spread_field = "std" if fmt == "ofa" else "var"
            if not isinstance(stats, dict) or "mean" not in stats or spread_field not in stats:
                raise LatencyImportError(f"{path}: entry {text!r} lacks 'mean' and '{spread_field}'")
            spread = stats["std"] if fmt == "ofa" else math.sqrt(stats["var"])
            merged.setdefault(str(key), []).append((int(stats.get("count", 1)), float(stats["mean"]), float(spread)))
    table = LatencyTable(device={"name": device, "hardware": "unknown (published table)", "os": "unknown",
                                 "runtime": f"published ({fmt})", "runtime_version": "unknown", "threads": None,
                                 "dtype": "float32", "date": date.today().isoformat(), "tool_version": __version__},
                         provenance="imported", notes="imported from " + ", ".join(Path(f).name for f in files))
    for key, rows in merged.items():
        count = sum(c for c, _, _ in rows)
        mean = sum(c * m for c, m, _ in rows) / count
        std = math.sqrt(sum(c * s * s for c, _, s in rows) / count)
        table.add(key, Entry(count=count, mean=mean, median=mean, p90=mean + 1.2816 * std, std=std))
    return table


def ofa_net_keys(net_config: dict, resolution: int) -> list[OpKey]:
    """The blocks of an OFA MobileNetV3 network at `resolution`, as Once-for-All's estimator sums them."""
    first, size = net_config["first_conv"], resolution
    out = (size + 1) // 2
    keys = [_block_key("Conv", (size, size, first["in_channels"]), (out, out, first["out_channels"]))]
    size = out
    for block in net_config["blocks"]:
        conv = block["mobile_inverted_conv"]
        if conv is None:
            continue
        out = (size - 1) // conv["stride"] + 1
        mid = conv.get("mid_channels") or conv["in_channels"] * conv["expand_ratio"]
        keys.append(_block_key("expanded_conv", (size, size, conv["in_channels"]), (out, out, conv["out_channels"]),
                               expand=mid, k=conv["kernel_size"], s=conv["stride"],
                               idskip=int(block.get("shortcut") is not None), se=int(bool(conv.get("use_se"))),
                               hs=int(conv.get("act_func") == "h_swish")))
        size = out
    final, mix, classifier = net_config["final_expand_layer"], net_config["feature_mix_layer"], net_config["classifier"]
    keys.append(_block_key("Conv_1", (size, size, final["in_channels"]), (size, size, final["out_channels"])))
    keys.append(_block_key("AvgPool2D", (size, size, final["out_channels"]), (1, 1, final["out_channels"])))
    keys.append(_block_key("Conv_2", (1, 1, mix["in_channels"]), (1, 1, mix["out_channels"])))
    keys.append(_block_key("Logits", (1, 1, classifier["in_features"]), (classifier["out_features"],)))
    return keys


def check_ofa_net(table: LatencyTable, net_dir: str | Path) -> dict:
    """Price a specialised OFA net (`net.config` + `run.config`) exactly (no shape interpolation).

    Returns the prediction and the latency named in the folder (`..._lat-30ms_...`), or which
    resolution / keys the table lacks."""

    net_dir = Path(net_dir)
    try:
        net = parse_json(read_text(net_dir / "net.config", "OFA net.config"), str(net_dir / "net.config"))
        run = parse_json(read_text(net_dir / "run.config", "OFA run.config"), str(net_dir / "run.config"))
        resolution = int(run["image_size"])
    except (OSError, ValueError, KeyError) as err:
        raise LatencyImportError(f"{net_dir}: not an OFA network folder with net.config and run.config ({err})") \
            from None
    named = re.search(r"lat-(\d+(?:\.\d+)?)ms", net_dir.name)
    keys = ofa_net_keys(net, resolution)
    missing = sorted({str(k) for k in keys if str(k) not in table.entries})
    first_convs = [OpKey.parse(k) for k in table.entries if k.startswith("ofa_conv[")]
    resolutions = sorted({int(str(k.attr("in")).split("x")[0]) for k in first_convs})
    report = {"net": net_dir.name, "resolution": resolution, "named_ms": float(named[1]) if named else None,
              "keys": len(keys), "missing_keys": missing, "table_resolutions": resolutions,
              "resolution_missing": resolution not in resolutions, "predicted_ms": None, "error": None}
    if not missing:
        report["predicted_ms"] = sum(table.entries[str(k)].mean for k in keys)
        if report["named_ms"]:
            report["error"] = report["predicted_ms"] / report["named_ms"] - 1
    return report
