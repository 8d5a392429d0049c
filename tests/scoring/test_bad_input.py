"""Bad input: a one-line message naming the problem, a stable exit code, no output left."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import EXAMPLE, write_h5ad

CLI = [sys.executable, "-m", "scdr.scoring.cli"]


def _fail(tmp_path, input_path, *args, rc=2, model=None):
    out = tmp_path / "out.csv"
    summary = tmp_path / "summary.json"
    cmd = [*CLI, str(input_path), "-o", str(out), "--summary", str(summary), "-q", *map(str, args)]
    if model is not None:
        cmd += ["--model", str(model)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == rc, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scdr-score: error:"), proc.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.csv")] == []
    s = json.loads(summary.read_text())
    assert s["status"] == "error" and s["exit_code"] == rc
    return lines[0]


def test_missing_file(tmp_path, bundle_dir):
    assert "input not found" in _fail(tmp_path, tmp_path / "nope.h5ad", model=bundle_dir)


def test_folder_instead_of_file(tmp_path, bundle_dir):
    (tmp_path / "d.h5ad").mkdir()
    assert "not a file" in _fail(tmp_path, tmp_path / "d.h5ad", model=bundle_dir)


def test_not_hdf5(tmp_path, bundle_dir):
    p = tmp_path / "cells.h5ad"
    p.write_text("cell,gene\n1,2\n")
    assert "not a readable HDF5" in _fail(tmp_path, p, model=bundle_dir)


def test_hdf5_but_not_anndata(tmp_path, bundle_dir):
    p = tmp_path / "cells.h5ad"
    with h5py.File(p, "w") as f:
        f.create_dataset("something", data=np.arange(3))
    assert "not AnnData" in _fail(tmp_path, p, model=bundle_dir)


def test_truncated_file(tmp_path, bundle_dir):
    p = tmp_path / "cells.h5ad"
    blob = EXAMPLE.read_bytes()
    p.write_bytes(blob[: len(blob) // 2])
    msg = _fail(tmp_path, p, model=bundle_dir)
    assert "cells.h5ad" in msg


@pytest.mark.parametrize("bad", [-3.0, np.nan])
def test_negative_or_nan_counts(tmp_path, bundle_dir, example_counts, bad):
    m, var, obs = example_counts
    m = m[:20].tocsr().astype(np.float32)
    m.data[m.indptr[12] + 2] = bad
    p = write_h5ad(tmp_path / "cells.h5ad", m, var, obs[:20])
    msg = _fail(tmp_path, p, "--layer", "X", model=bundle_dir)
    if np.isnan(bad):  # caught by the kernel, naming the rows
        assert "rows 0-19" in msg and "negative, NaN or infinite" in msg
    else:  # caught by the check on the first stored values
        assert "holds negative values (e.g. -3)" in msg


def test_negative_count_beyond_the_sampled_values(tmp_path, bundle_dir, example_counts):
    m, var, obs = example_counts
    m = m[:40].tocsr().astype(np.float32)
    m.data[m.indptr[35] + 1] = -1
    p = write_h5ad(tmp_path / "cells.h5ad", m, var, obs[:40])
    msg = _fail(tmp_path, p, "--chunk-size", "16", model=bundle_dir)
    assert "rows 32-39" in msg and "negative, NaN or infinite" in msg


def test_mismatched_indptr(tmp_path, bundle_dir, example_counts):
    m, var, obs = example_counts
    p = write_h5ad(tmp_path / "cells.h5ad", m[:20].tocsr(), var, obs[:20])
    with h5py.File(p, "a") as f:
        ip = f["X/indptr"][()]
        del f["X/indptr"]
        f.create_dataset("X/indptr", data=ip[:-3])
    assert "indptr" in _fail(tmp_path, p, model=bundle_dir)


def test_indptr_not_monotone(tmp_path, bundle_dir, example_counts):
    m, var, obs = example_counts
    p = write_h5ad(tmp_path / "cells.h5ad", m[:20].tocsr(), var, obs[:20])
    with h5py.File(p, "a") as f:
        f["X/indptr"][5] = f["X/indptr"][7] + 10
    assert "indptr is not monotone" in _fail(tmp_path, p, model=bundle_dir)


def test_zero_cells(tmp_path, bundle_dir, example_counts):
    _, var, _ = example_counts
    p = write_h5ad(tmp_path / "cells.h5ad", sp.csr_matrix((0, len(var)), dtype=np.float32), var, [])
    assert "no cells" in _fail(tmp_path, p, model=bundle_dir)


def test_no_genes_matched(tmp_path, bundle_dir, example_counts):
    m, var, obs = example_counts
    p = write_h5ad(tmp_path / "cells.h5ad", m[:5].tocsr(), [f"X{i}" for i in range(len(var))],
                   obs[:5])
    msg = _fail(tmp_path, p, model=bundle_dir)
    assert "only 0 of" in msg and "100.0% missing" in msg and "--gene-column" in msg


def test_unknown_drug(tmp_path):
    msg = _fail(tmp_path, EXAMPLE, "--drug", "unobtainium", rc=3)
    assert "no model for drug 'unobtainium'" in msg and "available:" in msg


def test_tampered_onnx(tmp_path, bundle_dir):
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bad)
    blob = bytearray((bad / "model.onnx").read_bytes())
    blob[-5] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(blob))
    assert "fails its integrity check" in _fail(tmp_path, EXAMPLE, model=bad, rc=3)


def test_unknown_format_version(tmp_path, bundle_dir):
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bad)
    card = json.loads((bad / "card.json").read_text())
    card["format_version"] = 99
    (bad / "card.json").write_text(json.dumps(card))
    assert "format_version 99" in _fail(tmp_path, EXAMPLE, model=bad, rc=3)


def test_symlink_out_of_bundle_is_refused(tmp_path, bundle_dir):
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bad)
    outside = tmp_path / "elsewhere.onnx"
    (bad / "model.onnx").rename(outside)
    (bad / "model.onnx").symlink_to(outside)
    assert "outside the bundle folder" in _fail(tmp_path, EXAMPLE, model=bad, rc=3)


def test_no_model_named(tmp_path):
    assert "--drug NAME" in _fail(tmp_path, EXAMPLE)


def test_existing_output_is_kept(tmp_path, bundle_dir):
    out = tmp_path / "out.csv"
    out.write_text("keep me")
    proc = subprocess.run([*CLI, str(EXAMPLE), "--model", str(bundle_dir), "-o", str(out), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4 and "--force" in proc.stderr
    assert out.read_text() == "keep me"


def test_scaled_data_is_named_as_such(tmp_path, bundle_dir, example_counts):
    """sc.pp.scale output (z-scores, about half negative) is refused as scaled data, not counts."""
    m, var, obs = example_counts
    x = np.log1p(m[:30].toarray().astype(np.float64))
    z = ((x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1)).astype(np.float32)
    p = write_h5ad(tmp_path / "scaled.h5ad", sp.csr_matrix(z), var, obs[:30])
    msg = _fail(tmp_path, p, "--layer", "X", model=bundle_dir)
    assert "looks like scaled data" in msg and "sc.pp.scale" in msg and "raw/X" in msg
