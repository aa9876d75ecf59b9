"""The data folders ship as package data, so a non-editable install finds them."""

from importlib.resources import files

import pytest

import experiments
import latency_tables


def test_data_folders_are_installed_with_the_package():
    assert files("latency_tables").joinpath("README.md").is_file()
    assert files("experiments").joinpath("README.md").is_file()
    assert isinstance(latency_tables.shipped_tables(), dict)
    assert isinstance(experiments.shipped_configs(), dict)


def test_top_level_packages_import():
    import distill
    import nas
    import search_spaces

    assert nas.__version__ and distill.__doc__ and search_spaces.ArchConfig


def test_shipped_tables_load_and_resolve_by_name(capsys):
    from nas.cli import main
    from nas.latency_table import resolve_target

    shipped = latency_tables.shipped_tables()
    assert {"x86-2core-ort-1t", "x86-2core-ort-2t", "x86-2core-xnnpack-1t", "x86-2core-xnnpack-2t"} <= set(shipped)
    for threads in ("1t", "2t"):  # end-to-end calibrated on top of the measured ExecuTorch tables
        assert resolve_target(f"x86-2core-xnnpack-{threads}-e2e").calibration["base"] == f"x86-2core-xnnpack-{threads}"
    for name in shipped:
        table = resolve_target(name)
        assert table.name == name and table.entries
        assert table.provenance in ("measured", "imported", "calibrated")
    assert main(["latency", "tables", "--json"]) == 0
    rows = [__import__("json").loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["target"] for r in rows} == set(shipped)
    assert main(["latency", "tables"]) == 0  # a measured table's notes carry its validation
    assert resolve_target("x86-2core-xnnpack-2t").notes in capsys.readouterr().out


@pytest.mark.parametrize("target", ["x86-2core-ort-2t", "x86-2core-ort-1t-ctx", "x86-2core-ort-2t-ctx"])
def test_shipped_host_tables_cover_the_default_space(target):
    """Every op configuration of random tracenet_mbv3 subnets is in the measured tables (no missing keys)."""
    from nas.latency_predict import predict_latency
    from nas.latency_setting import LatencySetting
    from nas.latency_table import resolve_target
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
    from nas.latency_predict import predict_latency
    from nas.latency_table import resolve_target
    from search_spaces import ArchConfig

    table = resolve_target(target)
    for name in ("mobilenetv3_large_100", "mobilenetv3_small_100", "mobilenetv2_100", "mobilenetv2_140",
                 "mnasnet_100", "efficientnet_lite0", "ghostnet_100", "repvit_m0_9"):
        assert predict_latency(ArchConfig.sample(0, f"fixed:{name}"), table).latency_ms > 0  # no missing key


def test_iphone_targets_are_calibrated_tables_with_their_error():
    from nas.latency_table import resolve_target

    for name in ("iphone13", "iphone12"):
        table = resolve_target(name)
        assert table.provenance == "calibrated" and table.name == name
        assert 0 <= table.calibration["loo_mape"] < 1 and table.calibration["n"] >= 3
