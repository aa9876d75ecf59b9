"""ArchConfig -> traced op keys -> latency on a table (one arrow of the data flow)."""

from __future__ import annotations

from dataclasses import dataclass

from nas.latency.op_keys import OpKey, arch_op_keys
from nas.latency.setting import REFERENCE_SETTING, LatencySetting
from nas.latency.table import LatencyTable
from search_spaces.space import ArchConfig


@dataclass(frozen=True)
class ArchLatency:
    latency_ms: float
    keys: int
    interpolated: int
    extrapolated: int
    per_kind_ms: dict[str, float]


def setting_op_keys(arch: ArchConfig, setting: LatencySetting) -> list[OpKey]:
    return arch_op_keys(arch, setting.input_hw(arch), setting.tap_xy(arch), setting.window_px(arch))


def predict_latency(arch: ArchConfig, table: LatencyTable, setting: LatencySetting = REFERENCE_SETTING) -> ArchLatency:
    """Sum of the table's latencies over the architecture's traced op keys at `setting` (whose precision
    must be the table's)."""
    table.require_precision(setting.precision)
    keys = setting_op_keys(arch, setting)
    prediction = table.predict(keys)
    per_kind: dict[str, float] = {}
    for key, ms in prediction.per_key.items():
        kind = key.split("[", 1)[0]
        per_kind[kind] = per_kind.get(kind, 0.0) + ms
    return ArchLatency(prediction.total_ms, len(keys), prediction.interpolated, prediction.extrapolated, per_kind)
