import json
import shutil
import subprocess

import pytest

from nas.cli.main import main
from search_spaces import ArchConfig, get_space

TINY = "tracenet_tiny"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_space_show_text_and_json(capsys):
    code, out, _ = run(capsys, "space", "show")
    assert code == 0 and "tracenet_mbv3" in out and f"{get_space('tracenet_mbv3').size():,}" in out
    code, out, _ = run(capsys, "space", "show", "--space", TINY, "--json")
    info = json.loads(out)
    assert code == 0 and info["name"] == TINY and info["size"] == get_space(TINY).size()
    assert info["kernels"] == [3, 5, 7] and info["depths"] == [1, 2]


def test_space_sample_prints_json_lines_deterministically(capsys):
    code, out, _ = run(capsys, "space", "sample", "--n", "3", "--seed", "7", "--space", TINY)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3
    for line in lines:
        row = json.loads(line)
        arch = ArchConfig.from_dict(row["arch"])
        assert arch.space == TINY
        assert isinstance(row["flops"], int) and row["flops"] > 0
        assert isinstance(row["params"], int) and row["params"] > 0
        assert 0 < row["flops_traced"] <= row["flops"]
    _, again, _ = run(capsys, "space", "sample", "--n", "3", "--seed", "7", "--space", TINY)
    assert again == out
    _, other, _ = run(capsys, "space", "sample", "--n", "3", "--seed", "8", "--space", TINY)
    assert other != out


def test_check_tracing_json_contract(capsys):
    code, out, _ = run(capsys, "space", "check-tracing", "--n", "2", "--seed", "0", "--json", "--space", TINY)
    report = json.loads(out)
    assert code == 0 and report["ok"]
    for key in ("max_abs_diff", "flops_full", "flops_traced", "se_deviation"):
        assert isinstance(report[key], float)
    assert report["max_abs_diff"] <= 1e-4 and len(report["cases"]) == 4


def test_check_tracing_fails_when_tolerance_is_not_met(capsys):
    # below float32 rounding (seed 0's cropped and full outputs differ by about 6e-8): the exit code says so
    code, out, _ = run(capsys, "space", "check-tracing", "--n", "1", "--space", TINY, "--tolerance", "1e-12")
    assert code == 1 and "FAILED" in out
    with pytest.raises(SystemExit) as usage:  # -1 is not a tolerance at all
        main(["space", "check-tracing", "--tolerance", "-1"])
    assert usage.value.code == 2 and "positive" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["space", "show", "--space", "nope"], "unknown space 'nope'"),
    (["space", "sample", "--n", "0"], "must be at least 1"),
    (["space", "sample", "--n", "x"], "invalid int value"),
    (["space", "sample", "--seed", "1.5"], "invalid int value"),
    (["space", "frobnicate"], "invalid choice"),
    (["nope"], "invalid choice"),
    (["space"], "required"),
])
def test_invalid_arguments_exit_2_with_one_line(capsys, argv, needle):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == 2 and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_console_script_is_installed():
    exe = shutil.which("nas")
    assert exe, "the 'nas' console script is not on PATH: install the package (pip install .)"
    result = subprocess.run([exe, "space", "show", "--space", "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "space" in result.stdout


def test_input_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    from nas.cli import space
    from search_spaces import TraceNASError, UnknownSpaceError

    code, out, err = run(capsys, "space", "show", "--space", "nospace")
    assert code == 2 and not out and err.count("\n") == 1 and "unknown space 'nospace'" in err
    with pytest.raises(UnknownSpaceError):  # --debug shows the traceback of an input error too
        main(["--debug", "space", "show", "--space", "nospace"])

    def bug(args):
        raise ValueError("an internal bug, not bad input")

    monkeypatch.setattr(space, "_show", bug)
    assert not issubclass(ValueError, TraceNASError)
    with pytest.raises(ValueError, match="internal bug"):  # not caught as if it were the user's fault
        main(["space", "show"])
