"""Offline: scoring opens no network socket, proved by running the real CLI under a guard that
kills the process at the first attempt (a Python audit hook) and, where strace is available,
by watching its system calls (which also covers the C++ of ONNX Runtime, HDF5 and Numba)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import EXAMPLE

NETWORK_EXIT = 99
# an audit hook that ends the process on any socket or URL event, before it can be caught
GUARD = f"""
import os, sys

def _no_network(event, args):
    if event.startswith(("socket.", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.")):
        os.write(2, ("network attempt: " + event + "\\n").encode())
        os._exit({NETWORK_EXIT})

sys.addaudithook(_no_network)
if sys.argv[1] == "--control":
    import socket
    socket.socket()
else:
    sys.argv = ["scdr-score", *sys.argv[1:]]
    from scdr.scoring.cli import score_command
    score_command()
"""


def _guarded(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", GUARD, *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_the_guard_catches_a_socket():
    proc = _guarded("--control")
    assert proc.returncode == NETWORK_EXIT and "socket.__new__" in proc.stderr


def test_scoring_with_every_output_opens_no_socket(tmp_path, bundle_dir):
    proc = _guarded(EXAMPLE, "--model", bundle_dir, "-o", tmp_path / "out.csv", "--pathways",
                    "--explain", "--summary", tmp_path / "run.json")
    assert proc.returncode == 0, proc.stderr
    assert "network attempt" not in proc.stderr
    assert (tmp_path / "out.csv").stat().st_size > 0


def test_failing_runs_open_no_socket_either(tmp_path):
    proc = _guarded(EXAMPLE, "--drug", "no-such-drug", "-o", tmp_path / "out.csv", "-q")
    assert proc.returncode == 3, proc.stderr
    assert "network attempt" not in proc.stderr


def _strace(tmp_path: Path, *command: object) -> str:
    log = tmp_path / "strace.log"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=socket,connect", "-o", str(log),
                    *map(str, command)], capture_output=True, text=True, timeout=600)
    return log.read_text() if log.exists() else ""


def test_no_network_socket_at_the_system_call_level(tmp_path, bundle_dir):
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    control = _strace(tmp_path, sys.executable, "-c", "import socket; socket.socket()")
    if "AF_INET" not in control:
        pytest.skip("strace cannot trace here (ptrace not permitted)")
    calls = _strace(tmp_path, sys.executable, "-m", "scdr.scoring.cli", EXAMPLE, "--model", bundle_dir,
                    "-o", tmp_path / "out.csv", "-q", "--threads", "2")
    assert (tmp_path / "out.csv").exists()
    network = [line for line in calls.splitlines() if "AF_INET" in line or "AF_PACKET" in line]
    assert network == [], network
