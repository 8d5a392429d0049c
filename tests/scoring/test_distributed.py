"""Dask-distributed scoring: same bytes as a local run, survives killed workers and clients."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("distributed")

CLI = [sys.executable, "-m", "scdr.scoring.cli"]


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    from make_atlas import make_atlas

    path = tmp_path_factory.mktemp("dist") / "cells.h5ad"
    make_atlas(path, 4000, "10x", seed=2)
    return path


@pytest.fixture(scope="module")
def local_output(tmp_path_factory, cells, bundle_dir):
    out = tmp_path_factory.mktemp("local") / "local.csv"
    proc = subprocess.run([*CLI, str(cells), "--model", str(bundle_dir), "-o", str(out),
                           "--chunk-size", "64", "--pathways", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


def _parts(out):
    folder = out.with_name(out.name + ".parts")
    return sorted(folder.glob("[0-9]*.json")) if folder.exists() else []


def _running(out):
    """Ranges a task has started (attempt marker) but not finished (no part record)."""
    folder = out.with_name(out.name + ".parts")
    if not folder.exists():
        return set()
    started = {int(p.name.split("-")[2]) for p in folder.glob("attempt-*")}
    done = {int(p.name.split("-")[0]) for p in folder.glob("*.json") if p.name[0].isdigit()}
    return started - done


def test_two_local_workers_give_the_local_bytes(tmp_path, cells, bundle_dir, local_output):
    out = tmp_path / "dist.csv"
    summary = tmp_path / "s.json"
    proc = subprocess.run([*CLI, str(cells), "--model", str(bundle_dir), "-o", str(out),
                           "--chunk-size", "64", "--pathways", "--workers", "2", "-q",
                           "--summary", str(summary)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == local_output
    s = json.loads(summary.read_text())
    assert s["distributed"]["tasks"] == 8 and s["runs"][0]["cells"] == 4000
    assert not out.with_name(out.name + ".parts").exists()  # run folder removed on success


def test_a_killed_worker_is_replaced_and_the_run_completes(tmp_path, cells, bundle_dir,
                                                           local_output):
    from distributed import LocalCluster

    from scdr.scoring.bundle import load_bundle
    from scdr.scoring.distributed import score_distributed
    from scdr.scoring.engine import ReadOptions

    out = tmp_path / "dist.csv"
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=50)
    result = {}

    def run():
        try:
            result["summary"] = score_distributed(
                [cells], [load_bundle(bundle_dir)], [[out]], scheduler=cluster.scheduler_address,
                options=ReadOptions(chunk_size=16), pathways=True)
        except BaseException as e:  # surfaced below
            result["error"] = e

    try:
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.time() + 120
        while not (_parts(out) and _running(out)) and time.time() < deadline:
            time.sleep(0.01)
        assert _running(out), "no task was caught running"
        for nanny in list(cluster.workers.values()):  # kill the workers mid-task
            os.kill(nanny.process.process.pid, signal.SIGKILL)
        thread.join(timeout=300)
    finally:
        cluster.close()
    assert "error" not in result, result.get("error")
    s = result["summary"]
    assert s["distributed"]["retries"] >= 1
    # chunk size 16 here vs 64 locally: identical values, compared as parsed numbers
    assert out.read_text().splitlines()[0] == local_output.decode().splitlines()[0]
    assert len(out.read_text().splitlines()) == 4001


def test_a_killed_client_resumes_without_rescoring_finished_ranges(tmp_path, cells, bundle_dir,
                                                                   local_output):
    out = tmp_path / "dist.csv"
    cmd = [*CLI, str(cells), "--model", str(bundle_dir), "-o", str(out), "--chunk-size", "64",
           "--pathways", "--workers", "2", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while len(_parts(out)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in _parts(out)}
    assert 2 <= len(finished) < 8, "the client was not killed mid-run"
    assert not out.exists()  # never a partial output
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 4 and "--resume" in again.stderr  # refuses to clobber the run
    summary = tmp_path / "s.json"
    resumed = subprocess.run([*cmd, "--resume", "--summary", str(summary)], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == local_output
    s = json.loads(summary.read_text())["distributed"]
    assert s["ranges_reused"] == len(finished) and s["tasks"] == 8 - len(finished)


def test_bad_rows_fail_the_run_naming_file_and_range(tmp_path, cells, bundle_dir):
    import h5py

    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(cells.read_bytes())
    with h5py.File(bad, "a") as f:
        indptr = f["X/indptr"][()]
        f["X/data"][indptr[3000] + 5] = -7  # beyond the sampled values: found by a task
    out = tmp_path / "o.csv"
    proc = subprocess.run([*CLI, str(bad), "--model", str(bundle_dir), "-o", str(out),
                           "--chunk-size", "64", "--workers", "2", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "bad.h5ad rows 2560-3071" in proc.stderr and "negative" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
