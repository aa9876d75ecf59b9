import json
import subprocess
import sys

import pytest

from nas.cli.main import main
from nas.latency.profiling.bundle import read_results, write_bundle
from nas.latency.profiling.profiler import profile_keys
from nas.latency.table import LatencyTable, LatencyTableError

TINY = "tracenet_tiny"


@pytest.fixture(scope="module")
def keys():
    all_keys = profile_keys(TINY)
    convs = [k for k in all_keys if k.kind == "conv" and min(k.out_hw) >= 2]
    return convs[:2] + [k for k in all_keys if k.kind == "clicks"][:1]


def _run_on_device(bundle):
    """Run the runner the way a device would: a fresh interpreter, from the bundle folder, no TraceNAS import."""
    runner = (bundle / "run_bundle.py").read_text()
    assert "import nas" not in runner and "search_spaces" not in runner and "tracenas import" not in runner
    subprocess.run([sys.executable, "run_bundle.py", "--threads", "1", "--max-seconds", "0.05"], cwd=bundle,
                   check=True, capture_output=True, text=True)
    return bundle / "results.json"


@pytest.mark.parametrize("backend, module", [("onnxruntime", "onnxruntime"), ("executorch-xnnpack", "executorch")])
def test_bundle_runs_on_this_host_and_imports_as_a_table(tmp_path, keys, backend, module, capsys):
    pytest.importorskip(module, reason="install the [mobile] extra")
    chosen = keys if backend == "onnxruntime" else keys[1:]
    bundle = write_bundle(chosen, backend, tmp_path / "bundle", TINY, progress=False)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [op["key"] for op in manifest["ops"]] == [str(k) for k in chosen]
    # ExecuTorch: the conv (all XNNPACK) is fed NHWC, the click encoding (portable kernels) NCHW
    assert [op["channels_last"] for op in manifest["ops"]] == [backend == "executorch-xnnpack" and k.kind == "conv"
                                                               for k in chosen]
    assert all((bundle / op["file"]).is_file() for op in manifest["ops"])
    results = _run_on_device(bundle)
    out = tmp_path / "board.json"
    assert main(["profile", "import", str(results), "--device", "board", "--out", str(out)]) == 0
    table = LatencyTable.load(out)
    assert table.name == "board" and table.provenance == "measured" and table.space == TINY
    assert set(table.entries) == {str(k) for k in chosen}
    assert all(e.median > 0 and e.count > 0 for e in table.entries.values())


def test_coreml_bundle_converts_here(tmp_path, keys):
    pytest.importorskip("coremltools", reason="install the [mobile] extra")
    bundle = write_bundle(keys[-1:], "coreml", tmp_path / "cm", TINY, progress=False)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert (bundle / manifest["ops"][0]["file"]).exists()  # an .mlpackage; timing it needs macOS


def test_bad_results_and_bundle_arguments(tmp_path, capsys):
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(LatencyTableError, match="results.json: not a TraceNAS bundle results file"):
        read_results(bad, "x")
    assert main(["profile", "import", str(tmp_path / "none.json"), "--device", "x", "--out",
                 str(tmp_path / "t.json")]) == 2
    assert "none.json: no such results file" in capsys.readouterr().err
    assert main(["profile", "--backend", "torch"]) == 2
    assert "--device, --out required" in capsys.readouterr().err
    with pytest.raises(ValueError, match="bundles are for"):
        write_bundle([], "torch", tmp_path / "b")
