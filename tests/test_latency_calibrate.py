import json

import numpy as np
import pytest

from nas.cli.main import main
from nas.latency.calibrate import (
    CalibrationError,
    calibrate,
    calibrate_archs,
    op_class,
    write_measurements,
)
from nas.latency.predict import predict_latency, setting_op_keys
from nas.latency.profiling.profiler import profile_keys
from nas.latency.setting import REFERENCE_SETTING
from nas.latency.table import Entry, LatencyTable
from search_spaces import ArchConfig

TINY = "tracenet_tiny"
TRUE_SCALES = {"conv_1x1": 0.5, "conv_dw_k3": 2.0, "conv_dw_k5": 2.5, "conv_dw_k7": 4.0, "conv_kxk": 1.5, "se": 3.0,
               "eltwise": 1.0, "upsample": 1.0, "clicks": 0.8, "tap_head": 1.2}
TRUE_OVERHEAD = 0.3


@pytest.fixture(scope="module")
def base():
    """A synthetic 'host' table with independent random latencies per key (so class totals are not collinear)."""
    rng = np.random.default_rng(0)
    table = LatencyTable(device={"name": "host", "runtime": "torch", "threads": 1}, provenance="measured",
                         space=TINY)
    for key in profile_keys(TINY):
        ms = float(rng.lognormal(-3, 1)) * key.out_hw[0] * key.out_hw[1] / 64
        table.add(str(key), Entry(count=10, mean=ms, median=ms, p90=ms, std=0.0))
    return table


def _device_latency(base, arch):
    """The 'phone': every class TRUE_SCALES times slower or faster than the host, plus a fixed overhead."""
    total = TRUE_OVERHEAD
    for key in setting_op_keys(arch, REFERENCE_SETTING):
        total += TRUE_SCALES[op_class(key)] * base.latency(key)[0]
    return total


def test_calibration_recovers_a_known_scaling(base):
    rng = np.random.default_rng(1)
    archs = [ArchConfig.sample(rng, TINY) for _ in range(24)]
    measured = [_device_latency(base, a) for a in archs]
    calibration = calibrate_archs(base, archs, measured)
    # classes that vary independently across architectures are identified; 'clicks' (one unit per arch,
    # sized by the resolution only) is nearly collinear with the overhead, so only predictions are checked
    for cls in ("conv_1x1", "conv_dw_k3", "conv_dw_k5", "conv_dw_k7", "conv_kxk", "se"):
        assert calibration.scales[cls] == pytest.approx(TRUE_SCALES[cls], rel=0.05), cls
    assert calibration.loo["mape"] < 0.01 and calibration.loo["n"] == 24
    table = calibration.apply(base, {"name": "phone"})
    assert table.provenance == "calibrated" and table.calibration["loo_mape"] < 0.01
    unseen = ArchConfig.sample(rng, TINY)
    assert predict_latency(unseen, table).latency_ms == pytest.approx(_device_latency(base, unseen), rel=0.02)


def test_calibration_input_errors(base):
    keys = [setting_op_keys(ArchConfig.sample(s, TINY), REFERENCE_SETTING) for s in range(3)]
    with pytest.raises(CalibrationError, match="at least 3"):
        calibrate(base, keys[:2], [1.0, 2.0])
    with pytest.raises(CalibrationError, match="positive"):
        calibrate(base, keys, [1.0, -2.0, 3.0])
    empty = LatencyTable(device={"name": "empty"}, provenance="measured")
    with pytest.raises(CalibrationError, match="lacks"):
        calibrate(empty, keys, [1.0, 2.0, 3.0])


def test_cli_calibrate_writes_a_calibrated_table(tmp_path, base, capsys):
    rng = np.random.default_rng(2)
    archs = [ArchConfig.sample(rng, TINY) for _ in range(12)]
    csv_path = tmp_path / "phone.csv"
    write_measurements(csv_path, archs, [_device_latency(base, a) for a in archs])
    base_path = base.save(tmp_path / "host.json")
    out = tmp_path / "phone.json"
    assert main(["latency", "calibrate", "--base", str(base_path), "--measurements", str(csv_path),
                 "--out", str(out), "--runtime", "executorch-xnnpack", "--threads", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["loo"]["mape"] < 0.05
    table = LatencyTable.load(out)
    assert table.name == "phone" and table.provenance == "calibrated"
    # the metadata describes where the measurements ran, never the base table's machine
    assert table.device["runtime"] == "executorch-xnnpack" and table.device["threads"] == 4
    assert table.device["hardware"] is None
    assert table.calibration["base"] == "host" and table.overhead_ms > 0
    bad = tmp_path / "bad.csv"
    bad.write_text("model,ms\nx,1\n")
    assert main(["latency", "calibrate", "--base", str(base_path), "--measurements", str(bad),
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "columns 'arch' (or 'keys') and 'latency_ms'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


PUBLISHED = """model,timm_name,input_resolution,latency_ms,device,runtime,source
MobileNetV2 x1.0,mobilenetv2_100,64,{a:.6f},Phone X (NPU),Core ML,paper A
MobileNetV2 x1.4,mobilenetv2_140,64,{b:.6f},Phone X (NPU),Core ML,paper B
MobileOne-S0,mobileone_s0,64,{c:.6f},Phone X Pro (NPU),Core ML,readme
EfficientFormer-L1,efficientformer_l1,64,1.0,Phone X (NPU),Core ML,readme
Other,,64,1.0,Phone X (NPU),Core ML,no timm model
MobileNetV2 x1.0,mobilenetv2_100,64,9.9,Phone Y,Core ML,other device
"""


def test_calibrate_to_published_timm_latencies(tmp_path, capsys):
    from nas.latency.timm_keys import timm_op_keys

    keys = {n: timm_op_keys(n, 64) for n in ("mobilenetv2_100", "mobilenetv2_140", "mobileone_s0")}
    assert keys["mobilenetv2_100"][-2].kind == "gpool" and keys["mobilenetv2_100"][-1].kind == "linear"
    base = LatencyTable(device={"name": "host"}, provenance="measured")
    for key in {k for ks in keys.values() for k in ks}:
        channels = sum(v for _, v in key.attrs if isinstance(v, int))  # cost grows with width and area
        ms = 1e-6 * key.out_hw[0] * key.out_hw[1] * channels + 1e-3
        base.add(str(key), Entry(count=1, mean=ms, median=ms, p90=ms, std=0.0))
    phone = {n: 0.05 * base.predict(ks).total_ms + 0.2 for n, ks in keys.items()}  # a phone 20x faster
    csv_path = tmp_path / "published.csv"
    csv_path.write_text(PUBLISHED.format(a=phone["mobilenetv2_100"], b=phone["mobilenetv2_140"],
                                         c=phone["mobileone_s0"]))
    base_path = base.save(tmp_path / "host.json")
    out = tmp_path / "phonex.json"
    assert main(["latency", "calibrate", "--base", str(base_path), "--published", str(csv_path),
                 "--match", "phone x", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped efficientformer_l1" in printed  # attention / non-padding pooling: not decomposable yet
    table = LatencyTable.load(out)
    assert table.provenance == "calibrated" and table.calibration["n"] == 3
    assert table.device["hardware"] == "Phone X (NPU); Phone X Pro (NPU)" and table.device["runtime"] == "Core ML"
    assert table.calibration["loo_mape"] < 0.02
    for name, ks in keys.items():
        assert table.predict(ks).total_ms == pytest.approx(phone[name], rel=0.02)
    assert main(["latency", "calibrate", "--base", str(base_path), "--published", str(csv_path),
                 "--out", str(out)]) == 2
    assert "--match" in capsys.readouterr().err


def test_shrinkage_recovers_per_class_scales_from_10_noisy_samples_better_than_one_global_scale(base):
    """Ten measurements with 3 % noise of a device whose op classes scale differently: the per-class
    model shrunk toward the global scale predicts unseen networks better than the global model (the old
    rule, which refused a per-class fit that priced any class near zero, fell back to the global one)."""
    rng = np.random.default_rng(5)
    archs = [ArchConfig.sample(rng, TINY) for _ in range(10)]
    measured = [_device_latency(base, a) * (1 + 0.03 * rng.standard_normal()) for a in archs]
    unseen = [ArchConfig.sample(rng, TINY) for _ in range(60)]
    truth = np.array([_device_latency(base, a) for a in unseen])
    errors = {}
    for models in (("per-class",), ("global",)):
        calibration = calibrate_archs(base, archs, measured, models=models)
        table = calibration.apply(base, {"name": "phone"})
        predicted = np.array([predict_latency(a, table).latency_ms for a in unseen])
        errors[models[0]] = float(np.mean(np.abs(predicted / truth - 1)))
    assert errors["per-class"] < 0.75 * errors["global"], errors
    assert calibrate_archs(base, archs, measured).model == "per-class"  # and leave-one-out chooses it


def test_calibration_from_op_key_lists_equals_calibration_from_the_architectures(tmp_path, base, capsys):
    """A network of any family enters as its op keys; the same networks as ArchConfigs give the same table."""
    rng = np.random.default_rng(3)
    archs = [ArchConfig.sample(rng, TINY) for _ in range(12)]
    latencies = [_device_latency(base, a) for a in archs]
    base_path = base.save(tmp_path / "host.json")
    write_measurements(tmp_path / "archs.csv", archs, latencies)
    write_measurements(tmp_path / "keys.csv", [setting_op_keys(a, REFERENCE_SETTING) for a in archs], latencies)
    for name in ("archs", "keys"):
        assert main(["latency", "calibrate", "--base", str(base_path), "--measurements", str(tmp_path / f"{name}.csv"),
                     "--out", str(tmp_path / f"{name}.json"), "--device", "phone"]) == 0
    by_arch, by_keys = (LatencyTable.load(tmp_path / f"{n}.json") for n in ("archs", "keys"))
    assert by_arch.calibration == by_keys.calibration and by_arch.entries == by_keys.entries
    (tmp_path / "bad.csv").write_text('keys,latency_ms\n"conv[k=3]@8x8 nonsense",1.0\n')
    capsys.readouterr()
    assert main(["latency", "calibrate", "--base", str(base_path), "--measurements", str(tmp_path / "bad.csv"),
                 "--out", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv:2:" in err and err.count("\n") == 1 and not (tmp_path / "bad.json").exists()


def _random_table(name: str, seed: int) -> LatencyTable:
    rng = np.random.default_rng(seed)
    table = LatencyTable(device={"name": name}, provenance="measured", space=TINY)
    for key in profile_keys(TINY):
        ms = float(rng.lognormal(-3, 1)) * key.out_hw[0] * key.out_hw[1] / 64
        table.add(str(key), Entry(count=10, mean=ms, median=ms, p90=ms, std=0.1 * ms))
    return table


def test_transfer_and_architecture_features_are_found_and_written_as_a_table(base):
    """A device that is a mix of two measured devices, plus a cost per FLOP the tables do not have: the
    transfer model with features is chosen, written as a lookup table that predicts unseen networks, and the
    FLOPs baselines are kept next to it in the table's metadata."""
    from nas.latency.features import network_features

    other = _random_table("other-device", 7)
    rng = np.random.default_rng(8)
    archs = [ArchConfig.sample(rng, TINY) for _ in range(20)]
    unseen = [ArchConfig.sample(rng, TINY) for _ in range(20)]

    def device(arch):
        keys = setting_op_keys(arch, REFERENCE_SETTING)
        return (0.6 * base.predict(keys).total_ms + 0.3 * other.predict(keys).total_ms
                + 1.0 * network_features(keys)[0] + 0.2)  # ms per MFLOP: a third of the latency

    calibration = calibrate_archs([base, other], archs, [device(a) for a in archs])
    assert calibration.model == "transfer+arch" and calibration.loo["mape"] < 0.01
    assert calibration.coefficients["host:all"] == pytest.approx(0.6, rel=0.05)
    assert calibration.coefficients["other-device:all"] == pytest.approx(0.3, rel=0.05)
    assert set(calibration.baselines) == {"flops", "flops+offset"}
    assert calibration.baselines["flops+offset"]["mape"] > 5 * calibration.loo["mape"]
    table = calibration.apply([base, other], {"name": "phone"})
    assert table.calibration["baselines"] == calibration.baselines
    assert table.summary()["flops_baseline_error"] == calibration.baselines["flops+offset"]["mape"]
    for arch in unseen:
        keys = setting_op_keys(arch, REFERENCE_SETTING)
        assert table.predict(keys).total_ms == pytest.approx(device(arch), rel=0.02)
        assert table.predict(keys).total_ms == pytest.approx(calibration.predict_ms(keys, [base, other]), rel=0.02)
    with pytest.raises(CalibrationError, match="reads the tables"):
        calibration.apply(base, {"name": "phone"})
    with pytest.raises(CalibrationError, match="unknown calibration model"):
        calibrate_archs(base, archs, [device(a) for a in archs], models=("magic",))


def test_flops_alone_is_chosen_when_the_device_runs_at_a_fixed_flop_rate(base):
    from nas.latency.features import network_features

    rng = np.random.default_rng(9)
    archs = [ArchConfig.sample(rng, TINY) for _ in range(12)]
    measured = [1e-3 * network_features(setting_op_keys(a, REFERENCE_SETTING))[0] for a in archs]
    calibration = calibrate_archs(base, archs, measured)
    assert calibration.model.startswith("flops") and calibration.loo["mape"] < 1e-6
