import csv
import json

import numpy as np
import optuna
import pytest
import torch

from nas.cli.main import main
from nas.latency.predict import predict_latency
from nas.latency.setting import LatencySetting
from nas.latency.table import LatencyTable
from nas.search.algorithms import Candidate
from nas.search.arch_params import arch_params
from nas.search.report import pareto_front
from nas.search.run import run_search
from nas.search.scores.naswot import RELU_LIKE, NaswotScorer
from nas.search.settings import SearchSettings, parse_budget
from search_spaces import ArchConfig, TraceNetStudent
from search_spaces.space import genome_space

TINY = "tracenet_tiny"
BUDGET = 1.7


def _settings(table, **kw):
    base = dict(targets=(str(table),), budgets_ms=(BUDGET,), space=TINY, population=6, generations=2, trials=12)
    return SearchSettings(**(base | kw))


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse usage errors
        return exit.code


def _study(run_dir, study="") -> optuna.Study:
    storage = f"sqlite:///{run_dir / 'study.db'}"
    return optuna.load_study(study_name=study or optuna.get_all_study_names(storage)[0], storage=storage)


def _trial_archs(run_dir, study="") -> list[str]:
    return [t.user_attrs["arch"] for t in _study(run_dir, study).trials]


@pytest.mark.parametrize("text, ms", [("5ms", 5.0), ("5", 5.0), ("0.005s", 5.0), ("2.5 MS", 2.5), ("1e-3s", 1.0)])
def test_budget_units(text, ms):
    assert parse_budget(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "5us", "-1ms", "0", "fast"])
def test_bad_budgets_are_rejected(text):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


def test_arch_params_round_trip():
    for seed in range(20):
        arch = ArchConfig.sample(seed, TINY)
        params, dists = arch_params(arch)
        assert genome_space(TINY).from_params(params) == arch
        assert all(params[name] in dists[name].choices for name in params)


def test_pareto_front_on_hand_made_points():
    arch = ArchConfig.smallest(TINY)
    points = [(1.0, 5.0), (2.0, 4.0), (2.0, 6.0), (3.0, 6.0), (4.0, 9.0), (0.5, 1.0)]
    front = pareto_front([Candidate(arch, lat, score, True) for lat, score in points])
    assert [(c.latency_ms, c.score) for c in front] == [(0.5, 1.0), (1.0, 5.0), (2.0, 6.0), (4.0, 9.0)]


def test_naswot_is_deterministic_and_matches_its_definition():
    scorer = NaswotScorer()
    arch = ArchConfig.sample(3, TINY)
    assert scorer.score(arch) == scorer.score(arch)
    assert NaswotScorer().score(arch) == scorer.score(arch)  # same photos, same initialisation
    assert scorer.score(arch) != scorer.score(ArchConfig.sample(4, TINY))
    # Mellor et al.'s definition, computed independently: K = N_A - Hamming distance between the images'
    # binary codes over all N_A ReLU-like units, score = log|det K|
    images = scorer._images(arch)
    n, _, h, w = images.shape
    torch.manual_seed(scorer.seed)
    model = TraceNetStudent(arch).train()
    codes = []
    hooks = [m.register_forward_hook(lambda m, a, out: codes.append((out.reshape(n, -1) > 0).numpy()))
             for m in model.modules() if isinstance(m, RELU_LIKE)]
    with torch.no_grad():
        model(images, torch.tensor([[[w / 2, h / 2, 1.0]]]).expand(n, 1, 3))
    for hook in hooks:
        hook.remove()
    code = np.concatenate(codes, axis=1)
    hamming = (code[:, None, :] != code[None, :, :]).sum(-1)
    sign, logdet = np.linalg.slogdet((code.shape[1] - hamming).astype(np.float64))
    assert sign != 0 and scorer.score(arch) == pytest.approx(logdet, rel=1e-9)


def test_evolution_end_to_end_every_architecture_meets_the_budget(tmp_path, tiny_table_path):
    settings = _settings(tiny_table_path)
    [result] = run_search(settings, tmp_path / "run", progress=False)
    table = LatencyTable.load(tiny_table_path)
    for candidate in result.front + [result.best]:
        assert predict_latency(candidate.arch, table, LatencySetting()).latency_ms == pytest.approx(
            candidate.latency_ms)
        assert candidate.latency_ms <= BUDGET
    recorded = [ArchConfig.from_json(arch) for arch in _trial_archs(tmp_path / "run")]
    # evolution records the parents and the Pareto front; every one is within budget
    assert {c.arch for c in result.front} | {result.best.arch} <= set(recorded)
    assert len(recorded) <= result.evaluated <= 6 + 2 * 4
    assert all(predict_latency(arch, table, LatencySetting()).latency_ms <= BUDGET for arch in recorded)
    state = _study(tmp_path / "run").user_attrs["evolution_state"]
    assert state["generation"] == 2 and state["evaluated"] == result.evaluated and len(state["elite"]) == 2
    assert genome_space(TINY).decode(np.array(state["elite"][0])) == result.best.arch
    best = json.loads((tmp_path / "run" / "best_arch.json").read_text())
    assert ArchConfig.from_dict(best["arch"]) == result.best.arch
    assert best["budget_ms"] == BUDGET and best["predicted_latency_ms"] <= BUDGET
    assert best["score_kind"] == "proxy" and best["score_name"] == "naswot" and best["seed"] == 0
    assert best["table"]["name"] == "tiny-unit" and best["table"]["provenance"] == "measured"
    assert best["latency_setting"]["tap"] == [0.5, 0.5] and best["latency_setting"]["window"] == "full"
    assert best["score"] == max(c.score for c in result.front)
    with open(tmp_path / "run" / "pareto.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.front) and float(rows[0]["score"]) == pytest.approx(best["score"], rel=1e-5)
    assert (tmp_path / "run" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "new best" in (tmp_path / "run" / "search.log").read_text()


def test_search_is_deterministic_by_seed(tmp_path, tiny_table_path):
    runs = [run_search(_settings(tiny_table_path, seed=seed), tmp_path / f"r{i}", progress=False)[0]
            for i, seed in enumerate((7, 7, 8))]
    assert _trial_archs(tmp_path / "r0") == _trial_archs(tmp_path / "r1") != _trial_archs(tmp_path / "r2")
    assert runs[0].best.arch == runs[1].best.arch


def test_evolution_resume_continues_from_the_recorded_generation(tmp_path, tiny_table_path):
    run_search(_settings(tiny_table_path, generations=1), tmp_path / "a", progress=False)
    first = _trial_archs(tmp_path / "a")
    assert _study(tmp_path / "a").user_attrs["evolution_state"]["generation"] == 1
    [resumed] = run_search(_settings(tiny_table_path, generations=2), tmp_path / "a", resume=True, progress=False)
    [straight] = run_search(_settings(tiny_table_path, generations=2), tmp_path / "b", progress=False)
    assert _trial_archs(tmp_path / "a")[:len(first)] == first  # nothing re-recorded
    assert resumed.best.arch == straight.best.arch and resumed.evaluated == straight.evaluated
    assert _study(tmp_path / "a").user_attrs["evolution_state"] == _study(tmp_path / "b").user_attrs["evolution_state"]
    assert (tmp_path / "a" / "pareto.csv").read_text() == (tmp_path / "b" / "pareto.csv").read_text()


@pytest.mark.parametrize("algo", ["nsga2", "tpe"])
def test_optuna_samplers_with_constraints_and_resume(tmp_path, tiny_table_path, algo):
    [result] = run_search(_settings(tiny_table_path, algo=algo), tmp_path / "run", progress=False)
    study = optuna.load_study(study_name=str(tiny_table_path), storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert len(study.trials) == 12 and result.evaluated == len({t.user_attrs["arch"] for t in study.trials})
    for trial in study.trials:  # the sampler saw the latency constraint of every trial
        violation = trial.constraints["latency_ms_over_budget"]
        assert violation == pytest.approx(trial.user_attrs["latency_ms"] - BUDGET)
        assert trial.user_attrs["feasible"] == (violation <= 0)
    assert all(c.latency_ms <= BUDGET for c in result.front)
    assert len(study.directions) == (2 if algo == "nsga2" else 1)
    run_search(_settings(tiny_table_path, algo=algo, trials=18), tmp_path / "run", resume=True, progress=False)
    assert len(study.trials) == 18


def test_one_run_searches_several_targets(tmp_path, tiny_table_path):
    slow = LatencyTable.load(tiny_table_path)
    slow.device["name"] = "tiny-slow"
    for key, entry in list(slow.entries.items()):
        slow.add(key, type(entry)(**{**entry.__dict__, "mean": entry.mean * 3}))
    slow_path = slow.save(tmp_path / "tiny-slow.json")
    code = main(["search", "--target", f"{tiny_table_path},{slow_path}", "--budget", "1.7ms,5ms", "--space", TINY,
                 "--population", "4", "--generations", "1", "--out", str(tmp_path / "multi"), "--json", "--quiet"])
    assert code == 0
    for target, budget in ((tiny_table_path, 1.7), (slow_path, 5.0)):
        best = json.loads((tmp_path / "multi" / target.stem / "best_arch.json").read_text())
        assert best["target"] == str(target) and best["budget_ms"] == budget
        arch = ArchConfig.from_dict(best["arch"])  # the reported latency is the table's, and fits
        predicted = predict_latency(arch, LatencyTable.load(target), LatencySetting()).latency_ms
        assert best["predicted_latency_ms"] == pytest.approx(predicted) and predicted <= budget
    assert sorted(optuna.get_all_study_names(f"sqlite:///{tmp_path / 'multi' / 'study.db'}")) == sorted(
        [str(tiny_table_path), str(slow_path)])


@pytest.mark.parametrize("argv, needle", [
    (["--target", "nope", "--budget", "5ms"], "unknown target 'nope'; available: iphone12, iphone13"),
    (["--budget", "0.1ms"], "below the lowest latency achievable"),
    (["--budget", "5ms,6ms,7ms"], "one budget, or one per target"),
    (["--budget", "5 parsecs"], "must be a latency like 5ms"),
    (["--budget", "5ms", "--window", "2"], "window must be a fraction"),
    (["--budget", "5ms", "--storage", "nosuchdb://x"], "storage 'nosuchdb://x'"),
])
def test_search_errors_exit_2_and_write_nothing(tmp_path, tiny_table_path, capsys, argv, needle):
    argv = (["--target", str(tiny_table_path)] if "--target" not in argv else []) + argv
    assert _exit_code(["search", "--space", TINY, "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_resume_keeps_settings(tmp_path, tiny_table_path, capsys):
    run_search(_settings(tiny_table_path, generations=1), tmp_path / "run", progress=False)
    assert main(["search", "--resume", str(tmp_path / "run"), "--seed", "3"]) == 2
    assert "cannot change seed" in capsys.readouterr().err
    assert main(["search", "--resume", str(tmp_path / "nothing")]) == 2
    assert main(["search", "--target", str(tiny_table_path), "--budget", "2", "--space", TINY,
                 "--out", str(tmp_path / "run")]) == 2
    assert "already holds a search" in capsys.readouterr().err


def test_workers_1_and_2_agree(tmp_path, tiny_table_path):
    one = run_search(_settings(tiny_table_path, generations=1, workers=1), tmp_path / "w1", progress=False)[0]
    two = run_search(_settings(tiny_table_path, generations=1, workers=2), tmp_path / "w2", progress=False)[0]
    assert _trial_archs(tmp_path / "w1") == _trial_archs(tmp_path / "w2")
    assert one.best.arch == two.best.arch and one.best.score == pytest.approx(two.best.score)


def test_include_fixed_runs_hand_designed_backbones_under_the_same_table(tmp_path, tiny_table_path, capsys):
    from nas.latency.predict import setting_op_keys
    from nas.latency.table import Entry

    table = LatencyTable.load(tiny_table_path)
    spec_name = "fixed:mobilenetv3_small_100"
    for resolution in (512, 640, 768, 896, 1024):  # only this backbone is priced; it fits up to 896 px
        for dyn in (1, 2, 3):
            arch = ArchConfig(space=spec_name, resolution=resolution, width_mult=1.0, depths=(), kernels=(),
                              expands=(), se=(), fpn_channels=32, mask_channels=8, dyn_layers=dyn)
            keys = setting_op_keys(arch, LatencySetting())
            for key in keys:
                ms = 1.0 / len(keys) * (resolution / 768) ** 2  # 1 ms at 768 px
                table.add(str(key), Entry(count=1, mean=ms, median=ms, p90=ms, std=0.0))
    path = table.save(tmp_path / "with-fixed.json")
    assert main(["search", "--target", str(path), "--budget", "1.7ms", "--space", TINY, "--population", "4",
                 "--generations", "1", "--include-fixed", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "best hand-designed: fixed:mobilenetv3_small_100" in out
    best = json.loads((tmp_path / "run" / "best_arch.json").read_text())
    fixed = {f["backbone"]: f for f in best["fixed"]}
    small = fixed[spec_name]
    assert small["arch"]["resolution"] == 896 and small["predicted_latency_ms"] <= 1.7 and small["score"] > 0
    assert best["best_fixed"]["backbone"] == spec_name
    assert best["best_fixed"]["searched_minus_fixed_score"] == pytest.approx(best["score"] - small["score"])
    assert all(f["reason"].startswith("not priced") for name, f in fixed.items() if name != spec_name)
