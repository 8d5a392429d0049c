"""Exit codes are a stable interface (0 ok, 1 internal, 2 usage/bad input, 3 bad model, 4 output,
130 interrupted); every failure is one stderr line, nothing on stdout, no output left behind,
and ``--summary`` says what failed."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import EXAMPLE

import scdr.scoring.cli as cli
from scdr.scoring import errors


def test_the_codes_themselves_are_stable():
    assert (errors.EXIT_OK, errors.EXIT_INTERNAL, errors.EXIT_BAD_INPUT, errors.EXIT_BAD_MODEL,
            errors.EXIT_OUTPUT, errors.EXIT_INTERRUPTED) == (0, 1, 2, 3, 4, 130)
    assert errors.InputError("x").exit_code == 2
    assert errors.BundleError("x").exit_code == 3
    assert errors.OutputError("x").exit_code == 4
    assert errors.ScdrError("x").exit_code == 2


def _invoke(tmp_path: Path, *args: object, summary: bool = True):
    argv = [str(a) for a in args]
    if summary:
        argv += ["--summary", str(tmp_path / "run.json")]
    return CliRunner().invoke(cli.score_command, argv)


def _check_failure(tmp_path: Path, result, code: int, words: str, prefix: str = "error: ") -> dict:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert result.stdout == ""  # data goes to files, messages to stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"scdr-score: {prefix}"), result.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.csv")]
    assert code == 4 or (leftovers == [] and not (tmp_path / "out.csv").exists())
    s = json.loads((tmp_path / "run.json").read_text())
    assert s["status"] == "error" and s["exit_code"] == code and words in s["error"], s
    return s


def test_success_is_0_with_nothing_on_stdout(tmp_path, bundle_dir):
    result = _invoke(tmp_path, EXAMPLE, "--model", bundle_dir, "-o", tmp_path / "out.csv")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("args, words", [
    (["--no-such-option"], "No such option"),
    (["--chunk-size", "0"], "--chunk-size"),
    (["--device", "tpu"], "--device"),
])
def test_usage_errors_found_by_the_parser_are_2(tmp_path, bundle_dir, args, words):
    result = _invoke(tmp_path, EXAMPLE, "--model", bundle_dir, *args, summary=False)
    assert result.exit_code == 2 and words in result.stderr and result.stdout == ""


def test_usage_error_found_after_parsing_is_2_with_a_summary(tmp_path):
    result = _invoke(tmp_path, EXAMPLE, "-o", tmp_path / "out.csv")
    _check_failure(tmp_path, result, 2, "name a model")


def test_bad_input_is_2(tmp_path, bundle_dir):
    result = _invoke(tmp_path, tmp_path / "missing.h5ad", "--model", bundle_dir, "-o",
                     tmp_path / "out.csv")
    _check_failure(tmp_path, result, 2, "input not found")


def test_unknown_drug_is_3(tmp_path):
    result = _invoke(tmp_path, EXAMPLE, "--drug", "unobtainium", "-o", tmp_path / "out.csv")
    _check_failure(tmp_path, result, 3, "no model for drug")


def test_tampered_model_is_3(tmp_path, bundle_dir):
    bad = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    (bad / "head.onnx").write_bytes((bad / "head.onnx").read_bytes() + b"\x00")
    result = _invoke(tmp_path, EXAMPLE, "--model", bad, "-o", tmp_path / "out.csv")
    _check_failure(tmp_path, result, 3, "integrity check")


def test_output_folder_missing_is_4(tmp_path, bundle_dir):
    result = _invoke(tmp_path, EXAMPLE, "--model", bundle_dir, "-o", tmp_path / "no" / "out.csv")
    _check_failure(tmp_path, result, 4, "does not exist")


def test_unwritable_summary_after_a_failure_is_still_one_line(tmp_path, bundle_dir):
    result = CliRunner().invoke(cli.score_command, [
        str(EXAMPLE), "--drug", "unobtainium", "--summary", str(tmp_path / "no" / "run.json")])
    assert result.exit_code == 3  # the first failure decides the code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no model for drug" in lines[0], result.stderr


def test_unwritable_summary_of_a_good_run_is_4(tmp_path, bundle_dir, monkeypatch):
    def refuse(path, obj):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli, "write_json_atomic", refuse)
    result = CliRunner().invoke(cli.score_command, [
        str(EXAMPLE), "--model", str(bundle_dir), "-o", str(tmp_path / "out.csv"), "-q",
        "--summary", str(tmp_path / "run.json")])
    assert result.exit_code == 4
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write summary" in lines[0], result.stderr


def test_unforeseen_failure_is_1_internal_in_one_line(tmp_path, bundle_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.delenv("SCDR_DEBUG", raising=False)
    monkeypatch.setattr(cli, "score_file", broken)
    result = _invoke(tmp_path, EXAMPLE, "--model", bundle_dir, "-o", tmp_path / "out.csv")
    s = _check_failure(tmp_path, result, 1, "RuntimeError", prefix="internal error")
    assert s["error"].startswith("internal: RuntimeError")


def test_interrupt_is_130_and_leaves_no_output(tmp_path, bundle_dir, monkeypatch):
    import scdr.scoring.engine as engine

    real = engine._predict_chunk
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # after the first chunk was written to the temporary file
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_predict_chunk", interrupted)
    result = _invoke(tmp_path, EXAMPLE, "--model", bundle_dir, "-o", tmp_path / "out.csv",
                     "--chunk-size", "50", "-q")
    s = _check_failure(tmp_path, result, 130, "interrupted", prefix="interrupted")
    assert s["error"] == "interrupted" and len(calls) == 2


def test_a_path_with_a_newline_still_gives_one_line(tmp_path, bundle_dir):
    result = _invoke(tmp_path, tmp_path / "two\nlines.h5ad", "--model", bundle_dir, "-o",
                     tmp_path / "out.csv")
    _check_failure(tmp_path, result, 2, "input not found")


def test_sigterm_aborts_cleanly_without_leftovers(tmp_path):
    """A pipeline's timeout (SIGTERM) mid-run: exit 130, one line, no output or temp file."""
    import signal
    import subprocess
    import sys
    import time

    from make_atlas import make_atlas

    cells = tmp_path / "big.h5ad"
    make_atlas(cells, 20000, "celseq", seed=3)
    out = tmp_path / "out.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scdr.scoring.cli", str(cells), "--drug", "cisplatin", "-o", str(out),
         "--chunk-size", "256", "--explain", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    def started() -> bool:  # both temp outputs (table, attributions) exist: streaming has begun
        names = [p.name for p in tmp_path.iterdir()]
        return any(n.startswith(".out.csv") for n in names) and any(
            n.startswith(".big.scdr.cisplatin.attributions.h5") for n in names)

    while not started():
        assert proc.poll() is None and time.time() < deadline, "scoring ended before the signal"
        time.sleep(0.02)
    time.sleep(0.3)
    assert proc.poll() is None, "scoring ended before the signal"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["scdr-score: interrupted; no output written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.h5ad"], list(tmp_path.iterdir())


def test_first_signal_is_raised_after_the_chunk_and_a_second_at_once(bundle_dir):
    """A signal landing inside a library's clean-up (numba's LLVM pass objects, a __del__) must
    not raise there: the handler records the first one and the streaming loop raises it after
    the current chunk; a second signal (an impatient user) raises where it lands, once; after an
    interruption is raised, later signals of the burst are only recorded, so the clean-up that
    removes the temp files cannot itself be interrupted."""
    from helpers import EXAMPLE

    from scdr.scoring import cli, engine, score

    engine.INTERRUPTED.clear()
    try:
        cli._interrupt(15, None)  # recorded, not raised
        assert engine.INTERRUPTED.is_set()
        with pytest.raises(KeyboardInterrupt):
            score(EXAMPLE, model=bundle_dir)
        cli._interrupt(2, None)  # the loop already raised: recorded only
        engine.INTERRUPTED.clear()
        cli._interrupt(15, None)
        with pytest.raises(KeyboardInterrupt):
            cli._interrupt(2, None)  # second signal: at once
        cli._interrupt(15, None)  # third: recorded only
    finally:
        engine.INTERRUPTED.clear()


def test_bursts_of_signals_at_random_moments_never_hang_or_half_write():
    """A short run of benchmarks/signal_stress.py (the full one: 200 runs): bursts of 2-5
    SIGINT/SIGTERM to the process and its group, from start-up to the rename."""

    import signal_stress

    outcomes = signal_stress.stress(runs=6, input_path=signal_stress.EXAMPLE, seed=7, deadline=60.0,
                                    max_delay=2.5)
    assert sum(outcomes.values()) == 6
    assert all(o.startswith("ok") for o in outcomes), outcomes
