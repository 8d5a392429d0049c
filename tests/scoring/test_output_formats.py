"""Output tables are what their names say: .csv(.gz), .tsv(.gz), .parquet, - for stdout; others refused."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pytest
from helpers import EXAMPLE

from scdr.scoring.errors import OutputError
from scdr.scoring.output import table_format

CLI = [sys.executable, "-m", "scdr.scoring.cli"]


def _cli(*args, check_rc=0):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, timeout=300)
    assert proc.returncode == check_rc, proc.stderr.decode()
    return proc


@pytest.fixture(scope="module")
def plain(tmp_path_factory, bundle_dir):
    """The plain CSV and TSV tables of the example, with pathway columns."""
    root = tmp_path_factory.mktemp("plain")
    for name in ("t.csv", "t.tsv"):
        _cli(EXAMPLE, "--model", bundle_dir, "-o", root / name, "--pathways", "-q")
    return root


@pytest.mark.parametrize("name", ["t.csv.gz", "t.tsv.gz", "T.CSV.GZ"])
def test_gzip_tables_hold_the_plain_bytes_and_are_reproducible(tmp_path, bundle_dir, plain, name):
    out = tmp_path / name
    _cli(EXAMPLE, "--model", bundle_dir, "-o", out, "--pathways", "-q")
    raw = out.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip, no modification time
    assert raw[3] & 0x08 == 0  # no file name in the header
    plain_name = "t.tsv" if ".tsv" in name.lower() else "t.csv"
    assert gzip.decompress(raw) == (plain / plain_name).read_bytes()
    again = tmp_path / f"again-{name}"
    _cli(EXAMPLE, "--model", bundle_dir, "-o", again, "--pathways", "-q")
    assert again.read_bytes() == raw


def test_parquet_table_has_the_csv_columns_and_values(tmp_path, bundle_dir, plain):
    pq = pytest.importorskip("pyarrow.parquet")
    import csv

    out = tmp_path / "t.parquet"
    _cli(EXAMPLE, "--model", bundle_dir, "-o", out, "--pathways", "-q")
    table = pq.read_table(out)
    with open(plain / "t.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert table.column_names == list(rows[0])
    assert table.column("cell_id").to_pylist() == [r["cell_id"] for r in rows]
    assert table.column("label").to_pylist() == [r["label"] for r in rows]
    np.testing.assert_allclose(table.column("probability").to_numpy(),
                               [float(r["probability"]) for r in rows], rtol=1e-5)
    last = table.column_names[-1]
    np.testing.assert_allclose(table.column(last).to_numpy(), [float(r[last]) for r in rows],
                               rtol=1e-5, atol=1e-6)


def test_dash_writes_the_csv_to_stdout_and_nothing_else(tmp_path, bundle_dir, plain):
    proc = _cli(EXAMPLE, "--model", bundle_dir, "-o", "-", "--pathways", "-q", "--summary",
                tmp_path / "s.json")
    assert proc.stdout == (plain / "t.csv").read_bytes()
    assert not list(tmp_path.glob("*.csv*"))


@pytest.mark.parametrize("name", ["t.xlsx", "t.csv.bz2", "t.h5ad", "t"])
def test_unknown_table_names_are_refused_before_scoring(tmp_path, bundle_dir, name):
    proc = _cli(EXAMPLE, "--model", bundle_dir, "-o", tmp_path / name, check_rc=4)  # output error
    err = proc.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "unknown table format" in err and ".csv.gz" in err
    assert list(tmp_path.iterdir()) == []


def test_stdout_takes_one_table_only(tmp_path, bundle_dir):
    proc = _cli(EXAMPLE, "--model", bundle_dir, "--model", bundle_dir, "-o", "-", check_rc=2)
    assert proc.stdout == b"" and "{drug}" in proc.stderr.decode()


def test_parquet_without_pyarrow_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(OutputError, match=r"needs pyarrow \(the parquet extra: pip install"):
        table_format(tmp_path / "x.parquet")
    assert table_format(tmp_path / "x.TSV").delimiter == "\t"


def test_every_output_path_is_named_on_stderr(tmp_path, bundle_dir):
    pytest.importorskip("matplotlib")
    out, rep = tmp_path / "t.csv.gz", tmp_path / "r.html"
    proc = _cli(EXAMPLE, "--model", bundle_dir, "-o", out, "--report", rep)
    err = proc.stderr.decode()
    assert f"-> {out}" in err and f"report -> {rep}" in err


def test_partial_coverage_and_summed_features_are_reported(tmp_path, bundle_dir, example_counts):
    """56% of the panel passes the 50% floor but is warned about; a gene fed twice is counted."""
    import json

    from helpers import write_h5ad

    m, var, obs = example_counts
    panel = json.loads((bundle_dir / "card.json").read_text())["genes"]["ensembl_ids"]
    keep_panel = set(panel[: int(0.56 * len(panel))])
    cols = [j for j, v in enumerate(var) if v in keep_panel or v not in set(panel)]
    names = [var[j] for j in cols]
    dup = names.index(panel[0])
    x = m.tocsc()[:, [*cols, cols[dup]]].tocsr()  # the first panel gene appears twice
    path = write_h5ad(tmp_path / "partial.h5ad", x, [*names, names[dup] + ".1"], obs)
    summary = tmp_path / "s.json"
    proc = _cli(path, "--model", bundle_dir, "-o", tmp_path / "t.csv", "--summary", summary)
    model = json.loads(summary.read_text())["models"][0]
    assert model["panel_genes_summed"] == 1
    assert any("only 5" in w and "below 80%" in w for w in model["warnings"])
    assert "warning: only" in proc.stderr.decode()


def test_a_reader_that_leaves_early_ends_the_run_quietly(tmp_path, bundle_dir):
    """`scdr-score ... -o - | head -1`: exit 141 as for SIGPIPE, no error line, a summary that says so."""
    import json

    summary = tmp_path / "s.json"
    proc = subprocess.Popen([*CLI, EXAMPLE, "--model", bundle_dir, "-o", "-", "--pathways", "-q",
                             "--chunk-size", "8", "--summary", summary],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"cell_id,")
    proc.stdout.close()
    assert proc.wait(timeout=300) == 141
    assert proc.stderr.read() == b""
    assert json.loads(summary.read_text())["error"] == "standard output closed by its reader"
