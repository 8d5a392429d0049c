"""Deterministic output: the same input, model and version give byte-identical files across runs
(separate processes, different hash seeds), thread counts and chunk sizes; the run summary
records the versions and hashes an audit needs."""

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import h5py
import numba
import numpy as np
import onnxruntime
import pytest
import scipy
import scipy.sparse as sp
from click.testing import CliRunner
from helpers import EXAMPLE, write_h5ad

from scdr import scoring
from scdr.scoring import score
from scdr.scoring.bundle import load_bundle
from scdr.scoring.cli import score_command
from scdr.scoring.engine import ExplainSettings, ReadOptions, score_file

CLI = [sys.executable, "-m", "scdr.scoring.cli"]


@pytest.fixture(scope="module")
def tiled(tmp_path_factory, example_counts) -> Path:
    """The example plate four times over (1,188 cells), so threads have work to split."""
    m, var, obs = example_counts
    big = sp.vstack([m] * 4).tocsr()
    names = [f"{o}_{k}" for k in range(4) for o in obs]
    return write_h5ad(tmp_path_factory.mktemp("tiled") / "tiled.h5ad", big, var, names)


def _files(outputs: list[Path]) -> dict[str, bytes]:
    """The bytes of each output, and of the datasets of attribution files (HDF5 containers
    themselves may carry object addresses that are no part of the result)."""
    out = {}
    for path in outputs:
        if path.suffix == ".h5":
            with h5py.File(path, "r") as f:
                for key in ("attributions", "logit", "relative_gap"):
                    out[f"{path.name}:{key}"] = f[key][()].tobytes()
                for key in ("cell_id", "pathway"):
                    out[f"{path.name}:{key}"] = repr(f[key][()].tolist()).encode()
            group_csv = path.with_name(f"{path.stem}.by_group.csv")
            out[group_csv.name] = group_csv.read_bytes()
        else:
            out[path.name] = path.read_bytes()
    return out


def _cli_run(folder: Path, bundle: Path, seed: str, *extra: str) -> dict[str, bytes]:
    folder.mkdir()
    table, attributions = folder / "pred.csv", folder / "attr.h5"
    env = {**os.environ, "PYTHONHASHSEED": seed}
    proc = subprocess.run([*CLI, str(EXAMPLE), "--model", str(bundle), "-o", str(table),
                           "--pathways", "--explain", "--explain-out", str(attributions), "-q",
                           *extra], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return _files([table, attributions])


def test_two_runs_in_separate_processes_are_byte_identical(tmp_path, bundle_dir):
    first = _cli_run(tmp_path / "a", bundle_dir, "1")
    second = _cli_run(tmp_path / "b", bundle_dir, "2", "--threads", "1", "--chunk-size", "50")
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name


def test_threads_and_chunk_sizes_do_not_change_a_byte(tmp_path, tiled, bundle_dir):
    bundle = load_bundle(bundle_dir)
    seen: dict[tuple[int, int], dict[str, bytes]] = {}
    for threads, chunk_size in ((1, 10_000), (2, 10_000), (2, 7), (1, 333)):
        folder = tmp_path / f"t{threads}_c{chunk_size}"
        folder.mkdir()
        table, attributions = folder / "pred.csv", folder / "attr.h5"
        score_file(tiled, [bundle], [table], ReadOptions(chunk_size=chunk_size, threads=threads),
                   pathways=True, explain=ExplainSettings(steps=8),
                   explain_outputs=[attributions])
        seen[(threads, chunk_size)] = _files([table, attributions])
    reference = seen.pop((1, 10_000))
    for key, files in seen.items():
        for name in reference:
            assert files[name] == reference[name], (key, name)


def test_python_api_arrays_are_bit_identical_across_threads_and_chunks(tiled, bundle_dir):
    ref = score(tiled, model=bundle_dir, chunk_size=10_000, threads=1)
    for threads, chunk_size in ((2, 10_000), (2, 29)):
        got = score(tiled, model=bundle_dir, chunk_size=chunk_size, threads=threads)
        assert got.cell_ids == ref.cell_ids
        for name in ("probability", "logit", "pathways", "zero_counts", "label"):
            assert np.array_equal(getattr(got, name), getattr(ref, name)), (threads, name)


def test_summary_records_versions_hashes_and_the_input(tmp_path, bundle_dir):
    summary = tmp_path / "run.json"
    result = CliRunner().invoke(score_command, [
        str(EXAMPLE), "--model", str(bundle_dir), "-o", str(tmp_path / "p.csv"),
        "--summary", str(summary), "-q", "--threads", "1", "--chunk-size", "100"])
    assert result.exit_code == 0, result.stderr
    s = json.loads(summary.read_text())
    assert s["versions"] == {
        "scdr": scoring.__version__, "python": ".".join(map(str, sys.version_info[:3])),
        "numpy": np.__version__, "scipy": scipy.__version__, "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version, "numba": numba.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    stat = EXAMPLE.stat()
    assert s["input_size_bytes"] == stat.st_size
    assert datetime.fromisoformat(s["input_mtime"]).timestamp() == pytest.approx(stat.st_mtime)
    assert (s["chunk_size"], s["threads"]) == (100, 1)
    model = s["models"][0]
    for name in ("model.onnx", "head.onnx"):
        assert model["sha256"][name] == hashlib.sha256((bundle_dir / name).read_bytes()).hexdigest()
    assert model["providers"] == ["CPUExecutionProvider"] or "CUDAExecutionProvider" in model[
        "providers"]
