import json

import numpy as np
import pytest

from nas.latency.op_keys import OpKey
from nas.latency.table import (
    Entry,
    LatencyTable,
    LatencyTableError,
    MissingKeysError,
    UnknownTargetError,
    resolve_target,
    shape_ladder,
)

CONV = "conv[act=relu,cin=8,cout=8,d=1,g=1,k=1,s=1]"


def _entry(ms: float) -> Entry:
    return Entry(count=10, mean=ms, median=ms, p90=ms, std=0.0)


def _table() -> LatencyTable:
    table = LatencyTable(device={"name": "toy", "runtime": "torch", "threads": 1}, provenance="measured")
    for side, ms in ((4, 1.0), (8, 2.0), (16, 6.0)):
        table.add(f"{CONV}@{side}x{side}", _entry(ms))
    table.add("eltwise[c=8,fn=add]@8x8", _entry(0.5))
    return table


def test_round_trip(tmp_path):
    table = _table()
    path = table.save(tmp_path / "toy.json")
    loaded = LatencyTable.load(path)
    assert loaded.entries == table.entries and loaded.device == table.device
    assert loaded.provenance == "measured"
    assert [p.name for p in tmp_path.iterdir()] == ["toy.json"]  # atomic write leaves no temp file


def test_predict_is_the_sum_of_entries_with_multiplicity():
    table = _table()
    keys = [OpKey.parse(f"{CONV}@8x8"), OpKey.parse(f"{CONV}@16x16"), OpKey.parse(f"{CONV}@8x8"),
            OpKey.parse("eltwise[c=8,fn=add]@8x8")]
    prediction = table.predict(keys)
    assert prediction.total_ms == pytest.approx(2.0 + 6.0 + 2.0 + 0.5)
    assert prediction.interpolated == prediction.extrapolated == 0


def test_shapes_between_ladder_points_interpolate_in_area():
    table = _table()
    # 12x12 = 144 lies between 8x8 (64, 2 ms) and 16x16 (256, 6 ms)
    ms, how = table.latency(OpKey.parse(f"{CONV}@12x12"))
    assert how == "interpolated" and ms == pytest.approx(2.0 + 4.0 * (144 - 64) / (256 - 64))
    ms, how = table.latency(OpKey.parse(f"{CONV}@32x32"))  # beyond the ladder: proportional to area
    assert how == "extrapolated" and ms == pytest.approx(6.0 * 4)
    # the entries each price reads (what benchmarks/latency_error_sources.py re-profiles)
    assert table.sources(OpKey.parse(f"{CONV}@12x12")) == [f"{CONV}@8x8", f"{CONV}@16x16"]
    assert table.sources(OpKey.parse(f"{CONV}@32x32")) == [f"{CONV}@16x16"]
    assert table.sources(OpKey.parse(f"{CONV}@8x8")) == [f"{CONV}@8x8"]


def test_missing_configurations_are_named():
    table = _table()
    missing = "conv[act=relu,cin=8,cout=16,d=1,g=1,k=1,s=1]@8x8"
    with pytest.raises(MissingKeysError) as err:
        table.predict([OpKey.parse(f"{CONV}@8x8"), OpKey.parse(missing)])
    assert err.value.missing == [missing] and missing in str(err.value)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(schema="other"), "not a latency table"),
    (lambda d: d.update(version=99), "version 99 is not supported"),
    (lambda d: d.update(provenance="guessed"), "provenance 'guessed'"),
    (lambda d: d.update(provenance="calibrated"), "calibration error"),
    (lambda d: d["entries"].update({"conv@bad": d["entries"][f"{CONV}@8x8"]}), "malformed op key"),
    (lambda d: d["entries"][f"{CONV}@8x8"].pop("p90"), "exactly the fields"),
    (lambda d: d["entries"][f"{CONV}@8x8"].update(mean=-1), "negative or non-numeric"),
    (lambda d: d["device"].pop("name"), "'name' is required"),
    (lambda d: d.update(probe_ms=-1.0), "probe_ms must be a positive number"),
])
def test_corrupt_tables_name_the_file(tmp_path, mutate, message):
    data = _table().to_json()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyTableError) as err:
        LatencyTable.load(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_unreadable_and_unknown_targets(tmp_path):
    path = tmp_path / "trunc.json"
    path.write_text(json.dumps(_table().to_json())[:50])
    with pytest.raises(LatencyTableError, match="trunc.json: not valid JSON"):
        LatencyTable.load(path)
    with pytest.raises(LatencyTableError, match="no such latency table"):
        LatencyTable.load(tmp_path / "none.json")
    with pytest.raises(UnknownTargetError, match="unknown target 'pixel99'; available:"):
        resolve_target("pixel99")
    assert resolve_target(str(_table().save(tmp_path / "toy.json"))).name == "toy"


def test_shape_ladder_steps_by_sqrt2_in_side():
    assert shape_ladder(16) == [1, 2, 3, 4, 6, 8, 11, 16]
    assert shape_ladder(12) == [1, 2, 3, 4, 6, 8, 11, 12]
    ladder = shape_ladder(512)
    assert ladder[-1] == 512 and all(b / a <= 2.0 for a, b in zip(ladder, ladder[1:], strict=False))


def test_latency_setting_validation():
    from nas.latency.setting import LatencySetting, parse_image_size

    assert parse_image_size("1024x768") == (1024, 768)
    for bad in ("1024", "1000x768", "axb", "0x32"):
        with pytest.raises(ValueError, match="image size"):
            parse_image_size(bad)
    with pytest.raises(ValueError, match="window"):
        LatencySetting(window=1.5)
    with pytest.raises(ValueError, match="tap"):
        LatencySetting(tap=(1.2, 0.5))


def test_repeatability_counts_subnets_whose_rounds_agree_within_10pct():
    from nas.latency.validate import repeatability

    stats = repeatability([[10.0, 10.5, 10.2], [10.0, 12.0], [5.0, 5.4]])  # spreads 5 %, 20 %, 8 %
    assert stats["rounds_within_10pct"] == pytest.approx(2 / 3)
    assert stats["max_round_spread"] == pytest.approx(0.2)


def test_validate_measures_random_subnets_and_feeds_calibrate(tmp_path, tiny_table_path, capsys):
    from nas.cli.main import main
    from nas.latency.predict import setting_op_keys
    from nas.latency.setting import REFERENCE_SETTING
    from nas.latency.table import Entry
    from nas.latency.validate import validate
    from search_spaces.space import ArchConfig

    csv = tmp_path / "e2e.csv"
    assert main(["latency", "validate", "--target", str(tiny_table_path), "--backend", "torch", "--n", "3",
                 "--rounds", "2", "--json", "--measurements-out", str(csv)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 3 and report["space"] == "tracenet_tiny" and len(report["cases"]) == 3
    for case in report["cases"]:
        assert len(case["round_ms"]) == 2 and case["measured_ms"] == min(case["round_ms"]) > 0
    predicted = np.array([c["predicted_ms"] for c in report["cases"]])
    measured = np.array([c["measured_ms"] for c in report["cases"]])
    assert report["mape"] == pytest.approx(np.mean(np.abs(predicted - measured) / measured))
    assert report["within_10pct"] == pytest.approx(np.mean(np.abs(predicted - measured) <= 0.1 * measured))
    assert report["median_ratio"] == pytest.approx(np.median(predicted / measured))
    spreads = [max(c["round_ms"]) / min(c["round_ms"]) - 1 for c in report["cases"]]
    assert report["max_round_spread"] == pytest.approx(max(spreads))

    # predicted is the sum of the table's entries over each network's traced units: a table with an exact
    # entry of known latency per unit gives that sum, with multiplicity, plus the overhead
    archs = [ArchConfig.from_dict(c["arch"]) for c in report["cases"]]
    keys = {arch: setting_op_keys(arch, REFERENCE_SETTING) for arch in archs}
    known = LatencyTable(device={"name": "known"}, provenance="measured", space="tracenet_tiny", overhead_ms=0.25)
    price = {str(k): 0.01 * (1 + i % 7) for i, k in enumerate(sorted({str(k) for ks in keys.values() for k in ks}))}
    for key, ms in price.items():
        known.add(key, Entry(count=10, mean=ms, median=ms, p90=ms, std=0.0))
    again = validate(known, "torch", 1, n=3, seed=0, rounds=1, progress=False)
    assert [ArchConfig.from_dict(c["arch"]) for c in again["cases"]] == archs  # the same seed, the same networks
    for case, arch in zip(again["cases"], archs, strict=True):
        assert case["predicted_ms"] == pytest.approx(0.25 + sum(price[str(k)] for k in keys[arch]))

    # the saved measurements priced again, without timing: the same summary, and another table's sums
    assert main(["latency", "validate", "--target", str(tiny_table_path), "--measurements", str(csv), "--json"]) == 0
    repriced = json.loads(capsys.readouterr().out)
    assert [c["predicted_ms"] for c in repriced["cases"]] == pytest.approx(predicted.tolist())
    assert [c["measured_ms"] for c in repriced["cases"]] == pytest.approx(measured.tolist(), abs=1e-6)
    assert repriced["mape"] == pytest.approx(report["mape"], abs=1e-6)
    known_path = known.save(tmp_path / "known.json")
    assert main(["latency", "validate", "--target", str(known_path), "--measurements", str(csv)]) == 0
    printed = capsys.readouterr().out
    assert "3 fp32 networks measured in" in printed and "median prediction/measurement" in printed
    assert main(["latency", "validate", "--target", str(known_path), "--measurements", str(csv), "--json"]) == 0
    assert [c["predicted_ms"] for c in json.loads(capsys.readouterr().out)["cases"]] == pytest.approx(
        [0.25 + sum(price[str(k)] for k in keys[arch]) for arch in archs])
    assert main(["latency", "validate", "--target", str(tiny_table_path)]) == 2  # neither a backend nor measurements
    assert "--backend is needed" in capsys.readouterr().err
    assert main(["latency", "validate", "--target", str(tiny_table_path), "--measurements", str(csv),
                 "--measurements-out", str(tmp_path / "again.csv")]) == 2
    assert "times nothing" in capsys.readouterr().err and not (tmp_path / "again.csv").exists()

    assert main(["latency", "calibrate", "--base", str(tiny_table_path), "--measurements", str(csv),
                 "--out", str(tmp_path / "cal.json")]) == 0
    assert LatencyTable.load(tmp_path / "cal.json").provenance == "calibrated"
    assert main(["latency", "validate", "--target", str(tiny_table_path), "--backend", "torch", "--n", "1"]) == 2


def test_validate_times_a_probed_tables_probe_and_prices_each_pass_at_its_profiles_speed(tiny_table_path):
    """A table profiled with a probe program (in context) records the probe's median time; validate times
    the same probe before each program of each pass and also scores each pass scaled to that speed."""
    from nas.latency.validate import accuracy, validate

    table = LatencyTable.load(tiny_table_path)
    table.probe_ms = 2.0
    assert LatencyTable.load(table.save(tiny_table_path.with_name("probed.json"))).probe_ms == 2.0
    report = validate(table, "torch", 1, n=3, seed=0, rounds=2, progress=False)
    for case in report["cases"]:
        assert len(case["probe_ms"]) == 2 and min(case["probe_ms"]) > 0
        assert case["at_profile_speed_ms"] == pytest.approx(
            min(ms * 2.0 / probe for ms, probe in zip(case["round_ms"], case["probe_ms"], strict=True)))
    assert report["probe_ratio"] == pytest.approx(np.median([c["probe_ms"] for c in report["cases"]]) / 2.0)
    assert report["at_profile_speed"] == pytest.approx(accuracy([c["predicted_ms"] for c in report["cases"]],
                                                                [c["at_profile_speed_ms"] for c in report["cases"]]))
    table.device["runtime"] = "onnxruntime"  # its probe time says nothing about torch's speed
    assert "probe_ratio" not in validate(table, "torch", 1, n=2, seed=0, rounds=1, progress=False)


def test_a_table_prices_programs_of_its_own_precision_only(tmp_path, tiny_table_path, capsys):
    """An int8 table never prices a float program (the default), nor a float table an int8 one: one line each."""
    from nas.cli.main import main
    from nas.latency.predict import predict_latency
    from nas.latency.setting import LatencySetting
    from nas.latency.table import PrecisionMismatchError
    from search_spaces import ArchConfig

    data = json.loads(tiny_table_path.read_text())
    data["device"] |= {"name": "tiny-int8", "dtype": "int8"}
    int8_path = tmp_path / "tiny-int8.json"
    int8_path.write_text(json.dumps(data))
    int8, fp32 = LatencyTable.load(int8_path), LatencyTable.load(tiny_table_path)
    assert (int8.precision, fp32.precision) == ("int8", "fp32")
    arch = ArchConfig.smallest("tracenet_tiny")
    assert predict_latency(arch, int8, LatencySetting(precision="int8")).latency_ms == pytest.approx(
        predict_latency(arch, fp32).latency_ms)
    with pytest.raises(PrecisionMismatchError, match="prices int8 programs, not fp32"):
        predict_latency(arch, int8)
    arch_path = tmp_path / "arch.json"
    arch_path.write_text(arch.to_json())
    for table, extra, message in ((int8_path, [], "prices int8 programs, not fp32"),
                                  (tiny_table_path, ["--precision", "int8"], "prices fp32 programs, not int8")):
        capsys.readouterr()
        assert main(["latency", "predict", "--target", str(table), "--arch", str(arch_path)] + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert main(["latency", "predict", "--target", str(int8_path), "--arch", str(arch_path),
                 "--precision", "int8"]) == 0
    assert main(["search", "--target", str(int8_path), "--budget", "50ms", "--space", "tracenet_tiny",
                 "--out", str(tmp_path / "run"), "--generations", "1", "--population", "4"]) == 2
    assert "prices int8 programs, not fp32" in capsys.readouterr().err
