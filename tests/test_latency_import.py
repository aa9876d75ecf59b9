import json
from pathlib import Path

import pytest

from nas.cli.main import main
from nas.latency.importers import LatencyImportError, check_ofa_net, import_tables, ofa_net_keys

SHARED = Path(__file__).resolve().parents[2] / "shared" / "latency_reference"

OFA_224 = """
Conv-input:32x32x3-output:16x16x24:
  count: 10
  mean: 1.0
  std: 0.1
expanded_conv-input:16x16x24-output:8x8x32-expand:72-kernel:3-stride:2-idskip:0-se:0-hs:0:
  count: 10
  mean: 2.0
  std: 0.2
Conv_1-input:8x8x32-output:8x8x64:
  count: 10
  mean: 0.5
  std: 0.0
AvgPool2D-input:8x8x64-output:1x1x64:
  count: 10
  mean: 0.1
  std: 0.0
Conv_2-input:1x1x64-output:1x1x128:
  count: 10
  mean: 0.2
  std: 0.0
Logits-input:1x1x128-output:10:
  count: 10
  mean: 0.3
  std: 0.0
"""
OFA_OTHER = """
Logits-input:1x1x128-output:10:
  count: 30
  mean: 0.7
  std: 0.0
"""
NET = {
    "first_conv": {"in_channels": 3, "out_channels": 24},
    "blocks": [{"mobile_inverted_conv": {"in_channels": 24, "out_channels": 32, "kernel_size": 3, "stride": 2,
                                         "expand_ratio": 3, "mid_channels": 72, "act_func": "relu",
                                         "use_se": False}, "shortcut": None}],
    "final_expand_layer": {"in_channels": 32, "out_channels": 64},
    "feature_mix_layer": {"in_channels": 64, "out_channels": 128},
    "classifier": {"in_features": 128, "out_features": 10},
}


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _net_dir(tmp_path, resolution, latency="3.9"):
    folder = tmp_path / f"toy_lat-{latency}ms_top1-70"
    folder.mkdir()
    (folder / "net.config").write_text(json.dumps(NET))
    (folder / "run.config").write_text(json.dumps({"image_size": resolution}))
    return folder


def test_import_merges_files_and_prices_a_net(tmp_path):
    table = import_tables([_write(tmp_path, "a.yaml", OFA_224), _write(tmp_path, "b.yaml", OFA_OTHER)], "ofa", "toy")
    assert table.provenance == "imported" and len(table.entries) == 6
    logits = table.entries["ofa_logits[cin=128,cout=10,in=1x1]@1x1"]
    assert logits.count == 40 and logits.mean == pytest.approx((10 * 0.3 + 30 * 0.7) / 40)
    block = table.entries["ofa_expanded_conv[cin=24,cout=32,expand=72,hs=0,idskip=0,in=16x16,k=3,s=2,se=0]@8x8"]
    assert block.median == 2.0 and block.p90 == pytest.approx(2.0 + 1.2816 * 0.2)
    keys = ofa_net_keys(NET, 32)
    assert [k.kind for k in keys] == ["ofa_conv", "ofa_expanded_conv", "ofa_conv_1", "ofa_avgpool2d", "ofa_conv_2",
                                      "ofa_logits"]
    report = check_ofa_net(table, _net_dir(tmp_path, 32))
    assert report["predicted_ms"] == pytest.approx(1.0 + 2.0 + 0.5 + 0.1 + 0.2 + logits.mean)
    assert report["named_ms"] == 3.9 and report["missing_keys"] == []


def test_missing_resolution_and_keys_are_reported(tmp_path):
    table = import_tables([_write(tmp_path, "a.yaml", OFA_224)], "ofa", "toy")
    report = check_ofa_net(table, _net_dir(tmp_path, 64))
    assert report["predicted_ms"] is None and report["resolution_missing"]
    assert report["table_resolutions"] == [32]
    assert "ofa_conv[cin=3,cout=24,in=64x64]@32x32" in report["missing_keys"]


@pytest.mark.parametrize("text, message", [
    ("Conv-input:32x32-output:16x16x24:\n  mean: 1\n  std: 0\n", "malformed ofa key"),
    ("Conv-input:32x32x3-output:16x16x24:\n  mean: 1\n", "lacks 'mean' and 'std'"),
    ("Conv: [1, 2\n", "not valid YAML"),
    ("[]\n", "expected a mapping"),
])
def test_malformed_published_tables(tmp_path, text, message):
    with pytest.raises(LatencyImportError, match=message):
        import_tables([_write(tmp_path, "bad.yaml", text)], "ofa", "toy")


def test_proxyless_format_uses_var(tmp_path):
    text = ("expanded_conv-input:16x16x8-output:8x8x16-expand:3-kernel:5-stride:2-idskip:0:\n"
            "  count: 4\n  mean: 2.0\n  var: 0.25\n")
    table = import_tables([_write(tmp_path, "p.yaml", text)], "proxyless", "pixel1")
    (key, entry), = table.entries.items()
    assert key == "ofa_expanded_conv[cin=8,cout=16,expand=3,idskip=0,in=16x16,k=5,s=2]@8x8"
    assert entry.std == pytest.approx(0.5)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/latency_reference is not present")
def test_note10_tables_price_the_30ms_net_and_name_gaps(tmp_path, capsys):
    files = sorted(str(p) for p in (SHARED / "ofa_note10").glob("*_lookup_table.yaml"))
    nets = sorted(str(p) for p in (SHARED / "ofa_note10" / "specialized").iterdir())
    out = tmp_path / "note10.json"
    assert main(["latency", "import", "--format", "ofa", "--device", "note10", "--out", str(out), *files,
                 "--check-net", *nets, "--json"]) == 0
    checks = {c["net"].split("_top1")[0]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert abs(checks["note10_lat-30ms"]["error"]) <= 0.10
    for name in ("note10_lat-11ms", "note10_lat-16ms", "note10_lat-22ms"):  # width-1.0 space: keys absent
        assert checks[name]["predicted_ms"] is None and checks[name]["missing_keys"]
        assert not checks[name]["resolution_missing"]
    for name in ("note10_lat-41ms", "note10_lat-50ms", "note10_lat-64ms"):  # 220 / 260 px
        assert checks[name]["resolution_missing"] and checks[name]["missing_keys"]
    proxyless = tmp_path / "pixel1.json"
    assert main(["latency", "import", "--format", "proxyless", "--device", "pixel1", "--out", str(proxyless),
                 str(SHARED / "proxylessnas_mobile" / "mobile_trim.yaml")]) == 0
