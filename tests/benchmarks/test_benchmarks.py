"""The throughput benchmark's quick mode runs and produces its table (timings not asserted)."""

import csv
import json
import subprocess
import sys

from helpers import ROOT


def test_throughput_quick_mode_writes_the_table(tmp_path, bundle_dir):
    out = tmp_path / "tp.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--quick", "--model",
         str(bundle_dir), "--data-dir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    stages = [r["stage"] for r in rows]
    assert stages == ["io", "read", "normalize", "forward", "sequential", "overlapped", "scdr",
                      "pathways", "explain"]
    assert all("error" not in r and r["cells"] == 2000 and r["cells_per_s"] > 0 for r in rows)
    assert all(r["peak_rss_mb"] > 10 for r in rows)
    with out.with_suffix(".csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    for stage in stages:
        assert any(line.split()[1] == stage for line in proc.stdout.splitlines() if line.strip())


def test_atlas_generator_resamples_real_cells(tmp_path):
    import h5py
    import numpy as np
    from make_atlas import make_atlas

    stats = make_atlas(tmp_path / "a.h5ad", 500, "10x", compress=True, seed=1)
    assert 2000 < stats["nnz_per_cell"] < 3000  # 10x-like depth after thinning
    with h5py.File(tmp_path / "a.h5ad") as f:
        data = f["X/data"][()]
        assert f["X/data"].compression == "gzip"
        assert np.all(data == np.round(data)) and data.min() > 0
        assert f["X"].attrs["shape"].tolist() == [500, stats["genes"]]
    csc = make_atlas(tmp_path / "c.h5ad", 300, "celseq", fmt="csc", seed=1)
    assert csc["nnz_per_cell"] > 4000


def test_throughput_repeat_interleaves_rounds_and_summarises_medians(tmp_path, bundle_dir):
    out = tmp_path / "tp.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--quick", "--model",
         str(bundle_dir), "--data-dir", str(tmp_path), "--out", str(out), "--stages",
         "io,scdr,explain", "--repeat", "2"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["round"], r["stage"]) for r in rows] == [
        (0, "io"), (0, "scdr"), (0, "explain"), (1, "io"), (1, "scdr"), (1, "explain")]
    summary = proc.stdout.split("median over rounds", 1)[1].splitlines()
    scdr = next(line for line in summary if line.split()[1:2] == ["scdr"])
    assert "x IO floor [" in scdr and "(2 rounds)" in scdr
    assert any("--explain costs" in line for line in summary)
