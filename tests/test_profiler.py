import itertools
import json

import pytest
import torch

import nas.latency.profiling.profiler as profiler
from nas.cli.main import main
from nas.latency.op_keys import OpKey, OpKeyError
from nas.latency.op_kinds import op_module
from nas.latency.profiling.profiler import covering_archs, measure, profile, profile_keys, summarize
from nas.latency.table import Entry, LatencyTable, LatencyTableError
from search_spaces import get_space

TINY = "tracenet_tiny"


@pytest.fixture(scope="module")
def tiny_keys():
    return profile_keys(TINY)


def test_covering_archs_contain_every_per_layer_choice():
    spec = get_space(TINY)
    archs = covering_archs(TINY)
    for width in spec.width_mults:
        seen = {(a.kernels[0][0], a.expands[0][0], a.se[0]) for a in archs if a.width_mult == width}
        assert seen == set(itertools.product(spec.kernels, spec.expands, spec.se))
    heads = {(a.dyn_layers, a.mask_channels, a.fpn_channels) for a in archs}
    assert heads == set(itertools.product(spec.dyn_layers, spec.mask_channels, spec.fpn_channels))
    assert all(d == spec.max_depth for a in archs for d in a.depths)


def test_profile_keys_cover_every_configuration_at_ladder_shapes(tiny_keys):
    configs = {k.config for k in tiny_keys}
    arch = covering_archs(TINY)[5]
    from nas.latency.op_keys import arch_op_keys

    assert {k.config for k in arch_op_keys(arch, (96, 128), (10.0, 10.0), 32)} <= configs
    assert all(k.out_hw[0] == k.out_hw[1] for k in tiny_keys)  # squares of the ladder
    assert len(tiny_keys) == len(set(tiny_keys))


def test_op_modules_produce_the_key_shape(tiny_keys):
    by_kind = {}
    for key in tiny_keys:
        by_kind.setdefault(key.kind, key)
    by_kind["act"] = OpKey.parse("act[c=4,fn=relu]@5x5")
    by_kind["bn"] = OpKey.parse("bn[c=4,fn=bn]@5x5")
    for key in list(by_kind.values()) + [k for k in tiny_keys if k.kind == "conv" and "s=2" in k.config][:3]:
        module, inputs = op_module(key)
        with torch.no_grad():
            out = module.eval()(*inputs)
        assert tuple(out.shape[-2:]) == key.out_hw, key
    with pytest.raises(OpKeyError, match="no op kind .softmax. is registered"):
        op_module(OpKey.parse("softmax[c=4]@2x2"))


@pytest.mark.parametrize("fn, expected", [("add", torch.add), ("sub", torch.sub), ("mul", torch.mul),
                                          ("cat", lambda a, b: torch.cat([a, b], dim=1))])
def test_each_eltwise_unit_is_timed_as_its_own_op(fn, expected):
    key = OpKey.parse(f"eltwise[c=6,fn={fn}]@3x5")
    module, inputs = op_module(key)
    out = module(*inputs)
    assert tuple(out.shape) == (1, 6, 3, 5) and torch.equal(out, expected(*inputs))
    with pytest.raises(OpKeyError, match="no profiling builder for eltwise fn='div'"):
        op_module(OpKey.parse("eltwise[c=6,fn=div]@3x5"))


def test_measure_unit_times_the_unit_at_its_exact_shape():
    from nas.latency.profiling.backends import get_backend

    key = OpKey.parse("conv[act=relu,cin=4,cout=8,d=1,g=1,k=3,s=1]@6x10")
    shapes = []

    class Recording:  # a backend that records what it is asked to run
        def prepare(self, module, inputs):
            shapes.append(tuple(module.eval()(*inputs).shape))
            return get_backend("torch", 1).prepare(module, inputs)

    entry = profiler.measure_unit(Recording(), key)
    assert shapes == [(1, 8, 6, 10)] and entry.count > 0 and entry.median > 0


def test_measure_rejects_outliers(monkeypatch):
    clock = itertools.count()
    durations = itertools.cycle([1e-3] * 9 + [1e-1])  # every 10th run is a 100 ms hiccup
    now = [0.0]

    def fake_counter():
        next(clock)
        return now[0]

    def run():
        now[0] += next(durations)

    monkeypatch.setattr(profiler.time, "perf_counter", fake_counter)
    entry = measure(run, warmup=0, max_runs=40)
    assert entry.median == pytest.approx(1.0) and entry.mean == pytest.approx(1.0)
    assert entry.count < 40 and entry.std == pytest.approx(0.0)


def test_summarize_keeps_every_sample_of_a_few():
    """Quartiles of fewer than 4 samples are not meaningful: nothing is dropped as an outlier."""
    assert summarize([5.0]) == Entry(count=1, mean=5.0, median=5.0, p90=5.0, std=0.0)
    few = summarize([1.0, 9.0, 2.0])
    assert few.count == 3 and few.mean == pytest.approx(4.0) and few.median == 2.0 and few.p90 == 9.0
    assert summarize([1.0] * 9 + [100.0]).count == 9


RUNTIME_MODULE = {"torch": "torch", "onnxruntime": "onnxruntime", "executorch-xnnpack": "executorch"}


@pytest.mark.parametrize("backend", list(RUNTIME_MODULE))
def test_profile_end_to_end_and_resume(tmp_path, tiny_keys, backend, monkeypatch):
    pytest.importorskip(RUNTIME_MODULE[backend], reason="install the [mobile] extra")
    keys = [k for k in tiny_keys if k.kind in ("conv", "eltwise")][:: max(1, len(tiny_keys) // 4)][:3]
    out = tmp_path / "host.json"
    table = profile(keys[:2], out, "host", backend, 1, TINY, progress=False, max_seconds=0.05)
    assert set(table.entries) == {str(k) for k in keys[:2]}
    assert all(e.count > 0 and e.median > 0 for e in table.entries.values())
    calls = []
    real_measure = profiler.measure
    monkeypatch.setattr(profiler, "measure", lambda run, **kw: calls.append(1) or real_measure(run, **kw))
    table = profile(keys, out, "host", backend, 1, TINY, progress=False, max_seconds=0.05)
    assert len(calls) == 1 and len(table.entries) == 3  # resumed: only the new key was measured
    loaded = LatencyTable.load(out)
    assert loaded.device["runtime"] == backend and loaded.device["threads"] == 1 and loaded.space == TINY
    with pytest.raises(LatencyTableError, match="choose another --out"):
        profile(keys, out, "host", backend, 2, TINY, progress=False)


def test_recheck_keeps_the_faster_median_of_slow_keys(tmp_path, tiny_keys, monkeypatch):
    keys = [k for k in tiny_keys if k.kind == "conv"][:2]
    timings = iter([5.0, 0.5, 3.0, 4.0])  # pass 1: both keys; each recheck: only the slow one

    def fake_measure(run, **kw):
        ms = next(timings)
        return Entry(count=10, mean=ms, median=ms, p90=ms, std=0.0)

    monkeypatch.setattr(profiler, "measure", fake_measure)
    out = tmp_path / "t.json"
    table = profile(keys, out, "host", "torch", 1, TINY, progress=False, recheck_above_ms=1.0)
    assert [table.entries[str(k)].median for k in keys] == [3.0, 0.5]
    profile(keys, out, "host", "torch", 1, TINY, progress=False, recheck_above_ms=1.0)
    assert [LatencyTable.load(out).entries[str(k)].median for k in keys] == [3.0, 0.5]  # 4.0 was slower


def test_cli_profile_predict_and_errors(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["profile", "--device", "host", "--backend", "torch", "--space", TINY, "--out", str(out),
                 "--limit", "4", "--max-seconds", "0.05"]) == 0
    first = LatencyTable.load(out).entries
    capsys.readouterr()
    assert main(["profile", "--device", "host", "--backend", "torch", "--space", TINY, "--out", str(out),
                 "--limit", "4", "--max-seconds", "0.05", "--recheck-above-ms", "0"]) == 0
    assert "recheck > 0 ms: 100%" in capsys.readouterr().err  # every entry timed a second time
    assert all(e.median <= first[k].median for k, e in LatencyTable.load(out).entries.items())
    arch_file = tmp_path / "arch.json"
    main(["space", "sample", "--n", "1", "--space", TINY])
    arch_file.write_text(capsys.readouterr().out.splitlines()[0])
    code = main(["latency", "predict", "--target", str(out), "--arch", str(arch_file)])
    err = capsys.readouterr().err
    assert code == 2 and "has no entry for" in err and len(err.strip().splitlines()) == 1
    assert main(["latency", "predict", "--target", "nope", "--arch", str(arch_file)]) == 2
    assert "unknown target 'nope'" in capsys.readouterr().err
    assert main(["latency", "predict", "--target", str(out), "--arch", str(tmp_path / "none.json")]) == 2
    assert "no such architecture file" in capsys.readouterr().err
    assert main(["latency", "tables"]) == 0


def test_cli_predict_on_a_complete_table(tmp_path, capsys, tiny_keys):
    table = LatencyTable(device={"name": "unit", "runtime": "torch", "threads": 1}, provenance="measured")

    for key in tiny_keys:  # 1 ms per output pixel: predictions are then exact area sums
        area = key.out_hw[0] * key.out_hw[1]
        table.add(str(key), Entry(count=1, mean=area * 1e-3, median=area * 1e-3, p90=area * 1e-3, std=0.0))
    path = table.save(tmp_path / "unit.json")
    arch_file = tmp_path / "arch.json"
    main(["space", "sample", "--n", "1", "--seed", "4", "--space", TINY])
    arch_file.write_text(capsys.readouterr().out.splitlines()[0])
    assert main(["latency", "predict", "--target", str(path), "--arch", str(arch_file), "--json",
                 "--window", "full"]) == 0
    report = json.loads(capsys.readouterr().out)
    from nas.latency.op_keys import arch_op_keys
    from search_spaces import ArchConfig

    arch = ArchConfig.from_json(arch_file.read_text())
    keys = arch_op_keys(arch, tuple(report["latency_setting"]["input_hw"]),
                        ((arch.resolution - 1) / 2, (report["latency_setting"]["input_hw"][0] - 1) / 2), None)
    expected = sum(k.out_hw[0] * k.out_hw[1] for k in keys) * 1e-3
    assert report["latency_ms"] == pytest.approx(expected, rel=1e-6)
    assert report["keys"] == len(keys) and sum(report["per_kind_ms"].values()) == pytest.approx(expected)


def test_several_devices_profile_in_parallel_through_ray(tmp_path, capsys):
    pytest.importorskip("ray")
    code = main(["profile", "--device", "dev-a,dev-b", "--backend", "torch", "--space", TINY,
                 "--out", str(tmp_path), "--limit", "2", "--max-seconds", "0.05"])
    assert code == 0
    for name in ("dev-a", "dev-b"):
        table = LatencyTable.load(tmp_path / f"{name}.json")
        assert table.name == name and len(table.entries) == 2
    assert main(["profile", "--device", "a,b", "--backend", "torch", "--out", str(tmp_path / "x.json")]) == 2
    assert "must be a directory" in capsys.readouterr().err


def test_classifier_tail_units():
    module, inputs = op_module(OpKey.parse("gpool[c=8,in=6x5]@1x1"))
    assert inputs[0].shape == (1, 8, 6, 5) and module(*inputs).shape == (1, 8, 1, 1)
    module, inputs = op_module(OpKey.parse("linear[cin=8,cout=3]@1x1"))
    assert module(*inputs).shape == (1, 3)


def test_executorch_lowers_one_dynamic_program_per_configuration(tmp_path, tiny_keys, monkeypatch):
    pytest.importorskip("executorch", reason="install the [mobile] extra")
    from nas.latency.profiling import backends
    from nas.latency.profiling.profiler import _lowering_groups

    config = next(k.config for k in tiny_keys if k.kind == "conv" and k.out_hw[0] >= 16)
    ladder = [k for k in tiny_keys if k.config == config]
    groups = _lowering_groups(ladder, shared=True)
    assert sorted(map(len, groups)) == sorted(n for n in (sum(min(k.out_hw) == 1 for k in ladder) * [1] + [
        sum(2 <= min(k.out_hw) < 8 for k in ladder), sum(min(k.out_hw) >= 8 for k in ladder)]) if n)
    big = [k for k in ladder if min(k.out_hw) >= 8]
    runtime = backends.get_backend("executorch-xnnpack", 1)
    module = op_module(big[0])[0]
    inputs = [op_module(k)[1] for k in big]
    for run, key_inputs in zip(runtime.prepare_shapes(module, inputs), inputs, strict=True):
        with torch.no_grad():
            assert torch.allclose(run()[0], module(*key_inputs), atol=1e-4)  # one program, every shape
    lowered = []
    real_lower = backends._lower_to_xnnpack
    monkeypatch.setattr(backends, "_lower_to_xnnpack", lambda *a, **kw: lowered.append(a) or real_lower(*a, **kw))
    table = profile(big, tmp_path / "et.json", "host", "executorch-xnnpack", 1, TINY, progress=False,
                    max_seconds=0.02)
    assert len(lowered) == 1 and set(table.entries) == {str(k) for k in big}


def test_executorch_units_take_the_layout_they_run_in_within_a_network():
    pytest.importorskip("executorch", reason="install the [mobile] extra")
    from nas.latency.profiling.backends import NCHW_1X1, NCHW_PORTABLE, NHWC, get_backend, lower_executorch

    conv = op_module(OpKey.parse("conv[act=relu,cin=8,cout=16,d=1,g=1,k=3,s=1]@6x6"))
    upsample = op_module(OpKey.parse("upsample[c=8,scale=2]@6x6"))  # a portable kernel: NCHW
    point = op_module(OpKey.parse("conv[act=relu,cin=8,cout=16,d=1,g=1,k=3,s=1]@1x1"))  # 1x1 maps: NCHW
    assert [lower_executorch(*unit)[1] for unit in (conv, upsample, point)] == [NHWC, NCHW_PORTABLE, NCHW_1X1]
    runtime = get_backend("executorch-xnnpack", 1)
    for module, inputs in (conv, upsample, point):
        run = runtime.prepare(module, inputs)  # its outputs alias the program's memory: keep it alive
        with torch.no_grad():
            assert torch.allclose(run()[0], module(*inputs), atol=1e-4)
        assert run()[0].data_ptr() == run()[0].data_ptr()  # the timing copies no output out


def test_onnxruntime_without_layout_transforms_runs_the_same_model():
    ort = pytest.importorskip("onnxruntime")
    from nas.latency.profiling.backends import OnnxRuntimeBackend, export_onnx

    module = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 8, 12, 12)
    levels = ort.GraphOptimizationLevel
    for layout_transforms, level in ((True, levels.ORT_ENABLE_ALL), (False, levels.ORT_ENABLE_EXTENDED)):
        runtime = OnnxRuntimeBackend(1, layout_transforms=layout_transforms)
        session = runtime.session(export_onnx(module, (x,)))
        assert session.get_session_options().graph_optimization_level == level
        out = runtime.prepare(module, (x,))()[0]
        torch.testing.assert_close(torch.from_numpy(out), module(x), rtol=1e-4, atol=1e-5)


X86_CPUINFO = ("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
               "flags\t\t: fpu sse4_2 avx2 fma f16c avx512f avx512_vnni\n\nprocessor\t: 1\ncpu family\t: 25\n")
ARM_CPUINFO = ("processor\t: 0\nFeatures\t: fp asimd asimdhp asimddp i8mm sve\n"
               "CPU implementer\t: 0x41\nCPU part\t: 0xd0c\n")


@pytest.mark.parametrize(("cpuinfo", "isa"), [(X86_CPUINFO, ["avx2", "fma", "f16c", "avx512f", "avx512_vnni"]),
                                              (ARM_CPUINFO, ["asimd", "asimdhp", "asimddp", "i8mm", "sve"]),
                                              ("", None)])
def test_host_isa_lists_the_instruction_sets_kernels_are_chosen_by(monkeypatch, cpuinfo, isa):
    monkeypatch.setattr(profiler, "_cpuinfo", lambda: cpuinfo.splitlines())
    assert profiler.host_isa() == isa


@pytest.mark.parametrize(("cpuinfo", "generation"), [(X86_CPUINFO, "AMD EPYC (family 25 model 17, "),
                                                     (ARM_CPUINFO, "(implementer 0x41 part 0xd0c, ")])
def test_host_hardware_tells_cpu_generations_that_share_a_name(monkeypatch, cpuinfo, generation):
    monkeypatch.setattr(profiler, "_cpuinfo", lambda: cpuinfo.splitlines())
    assert generation in profiler.host_hardware()
    assert profiler.host_hardware().endswith(f"{torch.get_num_threads()} threads visible)")


def test_a_table_of_another_cpu_is_never_resumed_and_is_noted_when_validated(tmp_path, tiny_keys, tiny_table_path,
                                                                             monkeypatch, capsys):
    keys = [k for k in tiny_keys if k.kind == "conv"][:2]
    out = tmp_path / "host.json"
    monkeypatch.setattr(profiler, "_cpuinfo", lambda: X86_CPUINFO.splitlines())
    profile(keys[:1], out, "host", "torch", 1, TINY, progress=False, max_seconds=0.01)
    profiled = out.read_text()
    assert LatencyTable.load(out).device["isa"] == ["avx2", "fma", "f16c", "avx512f", "avx512_vnni"]
    assert profiler.other_cpu(LatencyTable.load(out).device) is None
    assert profiler.other_cpu({"name": "published"}) is None  # a table that does not say cannot be told apart

    without_vnni = X86_CPUINFO.replace(" avx512f avx512_vnni", "").splitlines()
    monkeypatch.setattr(profiler, "_cpuinfo", lambda: without_vnni)
    assert profiler.other_cpu(LatencyTable.load(out).device) == (
        "measured on another CPU (instruction sets only it has: avx512f avx512_vnni; only this host has: none)")
    with pytest.raises(LatencyTableError, match="another CPU"):
        profile(keys, out, "host", "torch", 1, TINY, progress=False, max_seconds=0.01)
    code = main(["profile", "--device", "host", "--backend", "torch", "--space", TINY, "--out", str(out),
                 "--limit", "2", "--max-seconds", "0.01"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "another CPU" in err and len(err.splitlines()) == 1
    assert out.read_text() == profiled  # nothing of this host mixed in

    other = LatencyTable.load(tiny_table_path)
    other.device["isa"] = ["avx2", "avx512_vnni"]
    other_path = other.save(tmp_path / "tiny-other-cpu.json")
    assert main(["latency", "validate", "--target", str(other_path), "--backend", "torch", "--n", "2",
                 "--rounds", "1"]) == 0
    assert "note: the table was measured on another CPU (instruction sets only it has: avx512_vnni; only this " \
           "host has: fma f16c)" in capsys.readouterr().out
