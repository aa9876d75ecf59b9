"""Replay the bad inputs, interruptions and concurrent runs TraceNAS promises to survive, and print
case | expected | observed. Every case runs the real `nas` command in this process (or the real demo
server on loopback) on small files it makes in a temporary folder.

    python benchmarks/reliability.py [--json]

`tests/test_reliability.py` runs the same cases and asserts each one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from PIL import Image

from distill.data.datasets import load_dataset
from nas.cli.main import main
from nas.latency.profiling import profiler
from search_spaces import ArchConfig, Segmenter, TraceNetStudent
from search_spaces.common.files import atomic_write, exclusive
from search_spaces.students.checkpoint import FORMAT, save_student

TINY = "tracenet_tiny"


@dataclass(frozen=True)
class Case:
    name: str
    expected: str
    check: Callable[[Path], tuple[bool, str]]  # (as expected, what was observed) in a fresh folder


def nas(*argv: str) -> tuple[int, list[str]]:
    """Exit code and stderr lines of `nas ARGV` run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse's usage errors
            code = int(exit_.code or 0)
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


def one_line(code: int, lines: list[str], needle: str, code_expected: int = 2) -> tuple[bool, str]:
    observed = f"exit {code}, {len(lines)} line(s): {lines[0][:110] if lines else ''}"
    return code == code_expected and len(lines) == 1 and needle in lines[0], observed


def _arch_file(tmp: Path) -> Path:
    path = tmp / "arch.json"
    path.write_text(ArchConfig.smallest(TINY).to_json())
    return path


def _table(tmp: Path, entries: str) -> Path:
    path = tmp / "table.json"
    path.write_text('{"schema": "tracenas-latency-table", "version": 1, "device": {"name": "d"}, '
                    f'"provenance": "measured", "entries": {entries}}}')
    return path


def _predict(tmp: Path, table: Path) -> tuple[int, list[str]]:
    return nas("latency", "predict", "--target", str(table), "--arch", str(_arch_file(tmp)))


def deep_table(tmp: Path) -> tuple[bool, str]:
    table = tmp / "deep.json"
    table.write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    return one_line(*_predict(tmp, table), "nested deeper")


def huge_number(tmp: Path) -> tuple[bool, str]:
    stats = '{"count": 1, "mean": 1' + "0" * 400 + ', "median": 1, "p90": 1, "std": 0}'
    return one_line(*_predict(tmp, _table(tmp, '{"clicks[c=5]@8x8": ' + stats + "}")), "digits")


def empty_shape(tmp: Path) -> tuple[bool, str]:
    stats = '{"count": 1, "mean": 1, "median": 1, "p90": 1, "std": 0}'
    return one_line(*_predict(tmp, _table(tmp, '{"clicks[c=5]@0x0": ' + stats + "}")), "empty output shape")


def _distill(tmp: Path, *extra: str) -> tuple[bool, str, tuple[int, list[str]]]:
    out = tmp / "run"
    result = nas("distill", "--config", "smoke", "--out", str(out), "--quiet", *extra)
    return not out.exists(), f"; {'nothing written' if not out.exists() else 'run folder left behind'}", result


def distill_case(needle: str, *extra: str) -> Callable[[Path], tuple[bool, str]]:
    def check(tmp: Path) -> tuple[bool, str]:
        clean, note, result = _distill(tmp, *extra)
        ok, observed = one_line(*result, needle)
        return ok and clean, observed + note
    return check


def config_file_case(text: str, needle: str) -> Callable[[Path], tuple[bool, str]]:
    def check(tmp: Path) -> tuple[bool, str]:
        config = tmp / "config.yaml"
        config.write_text(text)
        start = time.perf_counter()
        ok, observed = one_line(*nas("distill", "--config", str(config), "--out", str(tmp / "run")), needle)
        return ok and time.perf_counter() - start < 10, observed
    return check


def _export(tmp: Path, checkpoint: Path) -> tuple[int, list[str]]:
    return nas("export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(tmp / "x"))


def random_checkpoint(tmp: Path) -> tuple[bool, str]:
    path = tmp / "random.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return one_line(*_export(tmp, path), "not a readable checkpoint")


def other_architecture(tmp: Path) -> tuple[bool, str]:
    path = save_student(TraceNetStudent(ArchConfig.largest(TINY)), tmp / "student.pt")
    payload = torch.load(path, weights_only=True)
    torch.save(payload | {"format": FORMAT, "arch": ArchConfig.smallest(TINY).to_dict()}, path)
    return one_line(*_export(tmp, path), "do not match")


def corrupt_study(tmp: Path, table: Path) -> tuple[bool, str]:
    assert nas("search", "--target", str(table), "--budget", "1.7", "--space", TINY, "--population", "4",
               "--generations", "1", "--out", str(tmp / "s"), "--quiet")[0] == 0
    (tmp / "s" / "study.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    return one_line(*nas("search", "--resume", str(tmp / "s"), "--quiet"), "study.db")


def non_utf8(tmp: Path) -> tuple[bool, str]:
    path = tmp / "arch.json"
    path.write_bytes(b'{"space": "\xff\xfe"}')
    ok, observed = one_line(*nas("latency", "predict", "--target", "iphone13", "--arch", str(path)), str(path))
    return ok, observed


def locked_search(tmp: Path, table: Path) -> tuple[bool, str]:
    with exclusive(tmp / "s"):  # another `nas search` is writing this folder
        result = nas("search", "--target", str(table), "--budget", "1.7", "--space", TINY, "--population", "4",
                     "--generations", "1", "--out", str(tmp / "s"), "--quiet")
    ok, observed = one_line(*result, "being written by another process")
    return ok and not (tmp / "s").exists(), observed


def _profile(out: Path, limit: int = 6) -> tuple[int, list[str]]:
    return nas("profile", "--device", "d", "--backend", "torch", "--threads", "1", "--out", str(out), "--space",
               TINY, "--limit", str(limit), "--max-seconds", "0.05")


def locked_profile(tmp: Path) -> tuple[bool, str]:
    out = tmp / "t.json"
    assert _profile(out, 2)[0] == 0
    before = out.read_bytes()
    with exclusive(out):
        ok, observed = one_line(*_profile(out), "being written by another process")
    return ok and out.read_bytes() == before, observed


def interrupted_profile(how: str) -> Callable[[Path], tuple[bool, str]]:
    def check(tmp: Path) -> tuple[bool, str]:
        out, calls, measure = tmp / "t.json", [], profiler.measure

        def measure_then_stop(run: Callable[[], object], **options: float) -> object:
            calls.append(1)
            if len(calls) == 4:
                if how == "SIGTERM":
                    os.kill(os.getpid(), signal.SIGTERM)
                else:
                    raise KeyboardInterrupt
            return measure(run, **options)

        profiler.measure = measure_then_stop
        try:
            code, _ = _profile(out)
        finally:
            profiler.measure = measure
        kept = len(json.loads(out.read_text())["entries"]) if out.exists() else 0
        resumed = _profile(out)[0] == 0 and len(json.loads(out.read_text())["entries"]) == 6
        return code == 130 and kept == 3 and resumed, f"exit {code}, {kept} of 6 ops kept, rerun completes: {resumed}"
    return check


def stale_temps(tmp: Path) -> tuple[bool, str]:
    dead, live = tmp / ".t.json.999999999.abc.tmp", tmp / f".t.json.{os.getpid()}.abc.tmp"
    dead.write_bytes(b"half"), live.write_bytes(b"being written")
    atomic_write(tmp / "t.json", lambda f: f.write(b"{}"))
    return not dead.exists() and live.exists(), f"dead writer's temp removed: {not dead.exists()}, live kept: " \
                                                f"{live.exists()}"


def interrupted_nsga2(tmp: Path, table: Path) -> tuple[bool, str]:
    from nas.search import scoring

    scores, calls = scoring.ScorePool.scores, []

    def interrupt_second_batch(self: scoring.ScorePool, archs: list) -> list:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return scores(self, archs)

    scoring.ScorePool.scores = interrupt_second_batch
    try:
        code, _ = nas("search", "--target", str(table), "--budget", "1.7", "--space", TINY, "--algo", "nsga2",
                      "--population", "4", "--trials", "12", "--out", str(tmp / "s"), "--quiet")
    finally:
        scoring.ScorePool.scores = scores
    storage = f"sqlite:///{tmp / 's' / 'study.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    running = len(study.get_trials(states=(optuna.trial.TrialState.RUNNING,)))
    return code == 130 and running == 0, f"exit {code}, {running} trial(s) left RUNNING"


def bomb_in_dataset(tmp: Path) -> tuple[bool, str]:
    for name, size in (("a", (64, 48)), ("bomb", (9000, 9000))):
        (tmp / "photos").mkdir(exist_ok=True)
        Image.new("RGB", size).save(tmp / "photos" / f"{name}.png")
    dataset = load_dataset(f"folder:{tmp / 'photos'}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = list(dataset)
    said = [str(w.message) for w in caught]
    return len(samples) == 1 and dataset.skipped == 1 and "the limit is" in " ".join(said), \
        f"{len(samples)} read, {dataset.skipped} skipped: {said[0][:80] if said else 'no warning'}"


def bomb_in_evaluation(tmp: Path) -> tuple[bool, str]:
    for folder in ("img", "gt"):
        (tmp / "davis" / folder).mkdir(parents=True)
    for name, size in (("a", (64, 48)), ("bomb", (9000, 9000))):
        Image.new("RGB", size).save(tmp / "davis" / "img" / f"{name}.png")
        mask = Image.new("L", size)
        mask.paste(1, (8, 8, 24, 24))
        mask.save(tmp / "davis" / "gt" / f"{name}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = nas("eval", "--teacher", "gt", "--dataset", f"davis:{tmp / 'davis'}", "--out", str(tmp / "e"),
                     "--quiet")
    ok, observed = one_line(*result, "could not be read")
    return ok and not (tmp / "e").exists(), observed


def sixteen_bit_dataset(tmp: Path) -> tuple[bool, str]:
    (tmp / "photos").mkdir()
    Image.fromarray(np.full((32, 32), 32768, np.uint16)).save(tmp / "photos" / "deep.png")
    [sample] = list(load_dataset(f"folder:{tmp / 'photos'}"))
    value = int(sample.image[0, 0, 0])
    return value == 128, f"16-bit 32768 read as {value}"


def _demo_server() -> tuple[object, str]:
    from nas.deploy.demo import DemoApp, make_server

    server = make_server(DemoApp(Segmenter(TraceNetStudent(ArchConfig.smallest(TINY)))), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_port}"


def demo_negative_length(tmp: Path) -> tuple[bool, str]:
    server, address = _demo_server()
    try:
        host, port = address.split(":")
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            conn.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: -1\r\n\r\n" + b"x" * 2**20)
            status = conn.recv(4096).split(b"\r\n", 1)[0].decode()
    finally:
        server.shutdown(), server.server_close()
    return " 400 " in status, status


def demo_concurrent(tmp: Path) -> tuple[bool, str]:
    import urllib.request

    server, address = _demo_server()
    body = json.dumps({"image": "astronaut", "clicks": [[200, 150, True]]}).encode()

    def post(_: int) -> int:
        request = urllib.request.Request(f"http://{address}/predict", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status

    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(pool.map(post, range(50)))
    finally:
        server.shutdown(), server.server_close()
    return statuses == [200] * 50, f"{statuses.count(200)} of 50 answered 200"


def cases(table: Path) -> list[Case]:
    return [
        Case("table JSON nested 100,000 deep", "one line, exit 2", deep_table),
        Case("table statistic of 10^400", "one line, exit 2", huge_number),
        Case("table entry at 0x0", "one line, exit 2", empty_shape),
        Case("bad YAML in --set", "one line, exit 2, nothing written", distill_case("not valid YAML", "--set",
                                                                                     "train.lr=[1")),
        Case("YAML aliases (billion laughs)", "one line within 10 s, exit 2",
             config_file_case('a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
                              'c: [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n', "aliases")),
        Case("empty config file", "one line, exit 2", config_file_case("", "empty")),
        Case("train.device=cuda:7", "one line, exit 2, nothing written",
             distill_case("CUDA device", "--set", "train.device=cuda:7")),
        Case("train.batch_size=100000000", "one line, exit 2, nothing written",
             distill_case("batch_size", "--set", "train.batch_size=100000000")),
        Case("--set student.space=nospace", "one line naming student.space",
             distill_case("student.space", "--set", "student.space=nospace")),
        Case("nas demo --port 70000", "one line, exit 2",
             lambda tmp: one_line(*nas("demo", "--checkpoint", "x.pt", "--port", "70000"), "1..65535")),
        Case("nas profile --max-seconds -1", "one line, exit 2",
             lambda tmp: one_line(*nas("profile", "--max-seconds", "-1"), "positive")),
        Case("nas space check-tracing --tolerance -1", "one line, exit 2",
             lambda tmp: one_line(*nas("space", "check-tracing", "--tolerance", "-1"), "positive")),
        Case("random bytes as a checkpoint", "one line, exit 2", random_checkpoint),
        Case("checkpoint of another architecture", "one line, exit 2", other_architecture),
        Case("corrupt study.db on --resume", "one line, exit 2", lambda tmp: corrupt_study(tmp, table)),
        Case("non-UTF-8 architecture file", "one line naming the file, exit 2", non_utf8),
        Case("two searches into one --out", "the second: one line, exit 2, nothing written",
             lambda tmp: locked_search(tmp, table)),
        Case("two profiles into one table", "the second: one line, exit 2, table unchanged", locked_profile),
        Case("Ctrl-C during nas profile", "exit 130, ops kept, rerun resumes", interrupted_profile("SIGINT")),
        Case("SIGTERM during nas profile", "exit 130, ops kept, rerun resumes", interrupted_profile("SIGTERM")),
        Case("temp files of killed writers", "removed by the next write, live ones kept", stale_temps),
        Case("interrupted NSGA-II study", "no trial left RUNNING", lambda tmp: interrupted_nsga2(tmp, table)),
        Case("decompression bomb in a dataset", "skipped with a counted warning", bomb_in_dataset),
        Case("decompression bomb in an evaluation set", "refused: one line, exit 2, nothing written",
             bomb_in_evaluation),
        Case("16-bit image in a dataset", "scaled to 8 bits, not clipped", sixteen_bit_dataset),
        Case("demo: Content-Length -1 with a 1 MiB body", "400, body not read", demo_negative_length),
        Case("demo: 50 simultaneous predictions", "50 answers", demo_concurrent),
    ]


def tiny_table(folder: Path) -> Path:
    """A complete latency table for the tiny space (latency proportional to output size)."""
    from nas.latency.profiling.profiler import profile_keys
    from nas.latency.table import Entry, LatencyTable

    table = LatencyTable(device={"name": "tiny", "runtime": "torch", "threads": 1}, provenance="measured", space=TINY)
    for key in profile_keys(TINY):
        ms = key.out_hw[0] * key.out_hw[1] * 1e-4
        table.add(str(key), Entry(count=1, mean=ms, median=ms, p90=ms, std=0.0))
    return table.save(folder / "tiny.json")


def run(case: Case) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as folder:
        return case.check(Path(folder))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    failed = 0
    with tempfile.TemporaryDirectory() as shared:
        table = tiny_table(Path(shared))
        if not args.json:
            print("| case | expected | observed | ok |\n|---|---|---|---|")
        for case in cases(table):
            ok, observed = run(case)
            failed += not ok
            if args.json:
                print(json.dumps({"case": case.name, "expected": case.expected, "observed": observed, "ok": ok}))
            else:
                print(f"| {case.name} | {case.expected} | {observed.replace('|', '/')} | {'yes' if ok else 'NO'} |")
    sys.exit(1 if failed else 0)
