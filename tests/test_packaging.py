"""The data folders ship as package data, so a non-editable install finds them."""

import json
from importlib.metadata import distribution
from importlib.resources import files
from pathlib import Path

import pytest

import experiments
import latency_tables

SOURCE = Path(__file__).resolve().parents[1]


def test_data_folders_are_installed_with_the_package():
    assert files("latency_tables").joinpath("README.md").is_file()
    assert files("experiments").joinpath("README.md").is_file()
    tables, configs = latency_tables.shipped_tables(), experiments.shipped_configs()
    assert set(tables) == {p.stem for p in (SOURCE / "latency_tables").glob("*.json")}  # every table ships
    assert set(configs) == {p.stem for p in (SOURCE / "experiments").glob("*.yaml")}
    for path in tables.values():
        assert json.loads(path.read_text())["schema"] == "tracenas-latency-table"
    assert configs["smoke"].read_text() == (SOURCE / "experiments" / "smoke.yaml").read_text()


def test_installed_metadata_matches_the_code():
    import nas
    import search_spaces
    from nas.cli.main import main

    dist = distribution("tracenas")
    assert dist.version == nas.__version__
    [script] = [e for e in dist.entry_points if e.group == "console_scripts" and e.name == "nas"]
    assert script.load() is main
    assert nas.TraceNASError is search_spaces.TraceNASError
    assert dist.metadata["License-Expression"] == "Apache-2.0"
    [license_file] = [f for f in dist.files if f.name == "LICENSE"]
    assert "Apache License" in license_file.read_text() and "Version 2.0" in license_file.read_text()


def test_shipped_tables_load_and_resolve_by_name(capsys):
    from nas.cli.main import main
    from nas.latency.table import resolve_target

    shipped = latency_tables.shipped_tables()
    assert {"x86-2core-ort-1t", "x86-2core-ort-2t", "x86-2core-xnnpack-1t", "x86-2core-xnnpack-2t"} <= set(shipped)
    for threads in ("1t", "2t"):  # end-to-end calibrated on top of the measured ExecuTorch tables
        assert resolve_target(f"x86-2core-xnnpack-{threads}-e2e").calibration["base"] == f"x86-2core-xnnpack-{threads}"
    for name in shipped:
        table = resolve_target(name)
        assert table.name == name and len(table.entries) == len(json.loads(shipped[name].read_text())["entries"])
        assert table.provenance in ("measured", "imported", "calibrated")
    assert main(["latency", "tables", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["target"] for r in rows} == set(shipped)
    assert main(["latency", "tables"]) == 0  # a measured table's notes carry its validation
    assert resolve_target("x86-2core-xnnpack-2t").notes in capsys.readouterr().out


@pytest.mark.parametrize("target", ["x86-2core-ort-2t", "x86-2core-ort-1t-ctx", "x86-2core-ort-2t-ctx"])
def test_shipped_host_tables_cover_the_default_space(target):
    """Every op configuration of random tracenet_mbv3 subnets is in the measured tables (no missing keys)."""
    from nas.latency.predict import predict_latency
    from nas.latency.setting import LatencySetting
    from nas.latency.table import resolve_target
    from search_spaces import ArchConfig

    table = resolve_target(target)
    for seed in range(3):
        arch = ArchConfig.sample(seed, "tracenet_mbv3")
        traced = predict_latency(arch, table).latency_ms
        full = predict_latency(arch, table, LatencySetting(window=None)).latency_ms
        assert traced > 0 and full > 0
        if not target.endswith("-ctx"):  # in-context entries are single programs' timings, within ~1 %
            assert traced <= full * 1.01
    assert predict_latency(ArchConfig.smallest(), table).latency_ms < predict_latency(
        ArchConfig.largest(), table).latency_ms


@pytest.mark.parametrize("target", ["x86-2core-ort-1t-ctx", "x86-2core-ort-2t-ctx"])
def test_shipped_in_context_tables_also_price_the_fixed_backbones_they_have_rules_for(target):
    from nas.latency.predict import predict_latency
    from nas.latency.table import resolve_target
    from search_spaces import ArchConfig

    table = resolve_target(target)
    for name in ("mobilenetv3_large_100", "mobilenetv3_small_100", "mobilenetv2_100", "mobilenetv2_140",
                 "mnasnet_100", "efficientnet_lite0", "ghostnet_100", "repvit_m0_9"):
        assert predict_latency(ArchConfig.sample(0, f"fixed:{name}"), table).latency_ms > 0  # no missing key


def test_iphone_targets_are_calibrated_tables_with_their_error():
    from nas.latency.table import resolve_target

    for name in ("iphone13", "iphone12"):
        table = resolve_target(name)
        assert table.provenance == "calibrated" and table.name == name
        assert 0 <= table.calibration["loo_mape"] < 1 and table.calibration["n"] >= 3


@pytest.mark.parametrize("target", ["x86-2core-ort-int8-1t", "x86-2core-ort-int8-1t-ctx",
                                    "x86-2core-xnnpack-int8-1t-e2e"])
def test_shipped_int8_tables_price_int8_programs_of_the_default_space_only(target):
    from nas.latency.predict import predict_latency
    from nas.latency.setting import LatencySetting
    from nas.latency.table import PrecisionMismatchError, resolve_target
    from search_spaces import ArchConfig

    table = resolve_target(target)
    assert table.precision == "int8" and table.space == "tracenet_mbv3"
    for seed in range(3):
        assert predict_latency(ArchConfig.sample(seed, "tracenet_mbv3"), table,
                               LatencySetting(precision="int8")).latency_ms > 0
    with pytest.raises(PrecisionMismatchError):
        predict_latency(ArchConfig.sample(0, "tracenet_mbv3"), table)
    if target == "x86-2core-ort-int8-1t":  # profiled unit by unit, it lists the ops its quantizer keeps float
        assert any("HardSigmoid" in ops for ops in table.float_units.values())
