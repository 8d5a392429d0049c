"""10x Genomics feature-barcode matrices (Cell Ranger 3+ .h5): read exactly as stored, scored as
the same counts in an h5ad, non-expression features dropped, hostile variants refused in one line."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from helpers import EXAMPLE, write_h5ad

from scdr.scoring import score
from scdr.scoring.cli import score_command
from scdr.scoring.errors import EXIT_BAD_INPUT, InputError
from scdr.scoring.reader import open_counts

ANTIBODY = "Antibody Capture"


def write_tenx(path: Path, counts: sp.csr_matrix, ids: list, names: list | None = None,
               types: list[str] | None = None, barcodes: list | None = None,
               chunked: bool = False, flaw: str | None = None) -> Path:
    """Write ``counts`` (cells x features) in the layout of Cell Ranger 3+
    ``filtered_feature_bc_matrix.h5`` (names as str or bytes; ``names`` default to ``ids``),
    with at most one ``flaw`` planted."""
    m = sp.csr_matrix(counts)
    n_cells, n_features = m.shape
    names = names if names is not None else ids
    types = types if types is not None else ["Gene Expression"] * n_features
    barcodes = barcodes if barcodes is not None else [f"AAAC{i:06d}-1" for i in range(n_cells)]
    data, indices, indptr = m.data.astype(np.int32), m.indices.astype(np.int64), m.indptr.astype(np.int64)
    shape = np.array([n_features, n_cells], np.int32)
    if flaw == "shape_cells":
        shape[1] += 1
    elif flaw == "shape_features":  # the features table names more than the shape says
        shape[0] -= 1
    elif flaw == "indptr_not_monotone":
        indptr = indptr.copy()
        indptr[1], indptr[2] = indptr[-1], 0
    elif flaw == "indptr_past_data":
        indptr = indptr.copy()
        indptr[-1] = data.size + 5
    elif flaw == "index_out_of_range":
        indices = indices.copy()
        indices[0] = n_features + 3
    elif flaw == "features_long":
        ids, names, types = [*ids, "EXTRA"], [*names, "EXTRA"], [*types, "Gene Expression"]
    kw = {"chunks": True, "compression": "gzip"} if chunked else {}
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        if flaw == "data_never_written":
            g.create_dataset("data", shape=(1 << 40,), chunks=(1 << 12,), dtype=np.int32)
            g.create_dataset("indices", shape=(1 << 40,), chunks=(1 << 12,), dtype=np.int64)
            indptr = indptr.copy()
            indptr[-1] = 1 << 39
        else:
            g.create_dataset("data", data=data, **kw)
            g.create_dataset("indices", data=indices, **kw)
        g.create_dataset("indptr", data=indptr, **kw)
        g.create_dataset("shape", data=shape)
        if flaw != "barcodes_missing":
            g.create_dataset("barcodes", data=_fixed(barcodes))
        features = g.create_group("features")
        features.create_dataset("id", data=_fixed(ids))
        features.create_dataset("name", data=_fixed(names))
        features.create_dataset("feature_type", data=_fixed(types))
        features.create_dataset("genome", data=np.array(["GRCh38"] * len(ids), dtype="S"))
        features.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
    if flaw == "data_external_link":
        other = path.with_name(path.stem + "_target.h5")
        with h5py.File(other, "w") as f:
            f.create_dataset("data", data=data)
        with h5py.File(path, "a") as f:
            del f["matrix/data"]
            f["matrix/data"] = h5py.ExternalLink(str(other), "/data")
    return path


def _fixed(values: list) -> np.ndarray:
    """Fixed-length byte strings, as Cell Ranger stores names."""
    return np.array([v if isinstance(v, bytes) else v.encode() for v in values], dtype="S")


def _read_all(path: Path, chunk_size: int = 7, **kw: object) -> tuple[sp.csr_matrix, list[str], object]:
    with open_counts(path, **kw) as src:
        matrix, names = src.read_all(chunk_size)
        return matrix, names, src


@pytest.fixture(scope="module")
def small(example_counts: tuple) -> tuple[sp.csr_matrix, list[str], list[str]]:
    m, var, obs = example_counts
    return m[:30].tocsr(), var, obs[:30]


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_counts_read_back_exactly(tmp_path, small, chunked, chunk_size):
    m, var, obs = small
    path = write_tenx(tmp_path / "filtered_feature_bc_matrix.h5", m, var, barcodes=obs,
                      chunked=chunked)
    got, names, src = _read_all(path, chunk_size)
    assert src.location == "matrix" and names == obs and src.var_names == var
    assert got.shape == m.shape and (got != m).nnz == 0


def test_gene_column_name_gives_the_symbols(tmp_path, small):
    m, var, _obs = small
    path = write_tenx(tmp_path / "f.h5", m, [f"ID{i}" for i in range(len(var))], names=var)
    _, _, src = _read_all(path, gene_column="name")
    assert src.var_names == var
    with pytest.raises(InputError, match=r"no column 'feature_name'; columns: .*name"):
        open_counts(path, gene_column="feature_name")


def test_other_feature_types_are_dropped(tmp_path, small):
    m, var, obs = small
    rng = np.random.default_rng(0)
    extra = sp.csr_matrix(rng.integers(0, 50, size=(m.shape[0], 6)))
    mixed = sp.hstack([extra[:, :3], m, extra[:, 3:]]).tocsr()
    types = [ANTIBODY] * 3 + ["Gene Expression"] * m.shape[1] + ["CRISPR Guide Capture"] * 3
    ids = ["CD3", "CD4", "CD8", *var, "g1", "g2", "g3"]
    path = write_tenx(tmp_path / "f.h5", mixed, ids, types=types, barcodes=obs)
    for chunk_size in (1, 4, 100):
        got, names, src = _read_all(path, chunk_size)
        assert src.var_names == var and names == obs
        assert (got != m).nnz == 0
    assert "dropped 3 Antibody Capture, 3 CRISPR Guide Capture" in src.location
    only_antibodies = write_tenx(tmp_path / "ab.h5", extra, [f"A{i}" for i in range(6)],
                                 types=[ANTIBODY] * 6)
    with pytest.raises(InputError, match="no 'Gene Expression' features"):
        open_counts(only_antibodies)


def test_scores_equal_the_same_counts_in_an_h5ad(tmp_path, example_counts):
    m, var, obs = example_counts
    tenx = write_tenx(tmp_path / "sample.h5", m, var, barcodes=obs, chunked=True)
    expected = score(EXAMPLE, drug="cisplatin")
    got = score(tenx, drug="cisplatin")
    assert got.cell_ids == expected.cell_ids
    np.testing.assert_array_equal(got.probability, expected.probability)
    np.testing.assert_array_equal(got.zero_counts, expected.zero_counts)
    # symbols in features/name, other ids in features/id: --gene-column name
    renamed = write_tenx(tmp_path / "named.h5", m, [f"X{i}" for i in range(len(var))], names=var)
    np.testing.assert_array_equal(score(renamed, drug="cisplatin", gene_column="name").probability,
                                  expected.probability)
    # antibody features around the genes change nothing
    ab = sp.csr_matrix(np.full((m.shape[0], 2), 7))
    mixed = write_tenx(tmp_path / "mixed.h5", sp.hstack([ab, m]).tocsr(), ["CD3", "CD4", *var],
                       types=[ANTIBODY] * 2 + ["Gene Expression"] * len(var), barcodes=obs)
    np.testing.assert_array_equal(score(mixed, drug="cisplatin").probability,
                                  expected.probability)


def test_the_cli_scores_a_10x_file_by_its_structure(tmp_path, small):
    m, var, obs = small
    path = write_tenx(tmp_path / "cells.h5ad", m, var, barcodes=obs)  # the name does not matter
    h5ad = write_h5ad(tmp_path / "same.h5ad", m, var, obs)
    rows = []
    for p in (path, h5ad):
        out = tmp_path / f"{p.stem}.csv"
        result = CliRunner().invoke(score_command, [str(p), "--drug", "cisplatin", "-o", str(out),
                                                    "-q", "--force"])
        assert result.exit_code == 0, result.output
        rows.append(out.read_text())
    assert rows[0] == rows[1]


def test_layer_options(tmp_path, small):
    m, var, obs = small
    path = write_tenx(tmp_path / "f.h5", m, var, barcodes=obs)
    assert open_counts(path, layer="matrix").n_obs == m.shape[0]
    with pytest.raises(InputError, match="no matrix at 'X'; available: matrix"):
        open_counts(path, layer="X")
    lognorm = m.copy().astype(np.float32)
    lognorm.data = np.log1p(lognorm.data) + 0.5
    with h5py.File(path, "a") as f:
        del f["matrix/data"]
        f["matrix"].create_dataset("data", data=lognorm.data)
    with pytest.raises(InputError, match="not raw counts"):
        open_counts(path)
    assert open_counts(path, normalized=True).n_vars == m.shape[1]


@pytest.mark.parametrize("flaw, words", [
    ("shape_cells", "indptr has"),
    ("shape_features", "names 15,564 features but the matrix has 15,563"),
    ("features_long", "names 15,565 features but the matrix has 15,564"),
    ("indptr_not_monotone", "not monotone"),
    ("indptr_past_data", "indptr runs from"),
    ("barcodes_missing", "lacks the 'barcodes' dataset"),
    ("data_never_written", "incomplete"),
    ("data_external_link", "external link"),
])
def test_hostile_files_are_refused_in_one_line(tmp_path, small, flaw, words):
    m, var, obs = small
    path = write_tenx(tmp_path / "f.h5", m, var, barcodes=obs, flaw=flaw)
    with pytest.raises(InputError, match=words) as info:
        score(path, drug="cisplatin", chunk_size=5)
    assert "\n" not in str(info.value)
    result = CliRunner().invoke(score_command, [str(path), "--drug", "cisplatin",
                                                "-o", str(tmp_path / "o.csv"), "-q"])
    assert result.exit_code == EXIT_BAD_INPUT
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scdr-score: error: ") and words in lines[0]


def test_feature_index_out_of_range_is_refused_when_features_are_dropped(tmp_path, small):
    m, var, obs = small
    types = ["Gene Expression"] * (len(var) - 1) + [ANTIBODY]
    path = write_tenx(tmp_path / "f.h5", m, var, types=types, barcodes=obs,
                      flaw="index_out_of_range")
    with pytest.raises(InputError, match="feature index is out of range"):
        _read_all(path)


def test_an_incomplete_matrix_group_is_named(tmp_path, small):
    m, var, obs = small
    path = write_tenx(tmp_path / "f.h5", m, var, barcodes=obs)
    with h5py.File(path, "a") as f:
        del f["matrix/features/id"]
    with pytest.raises(InputError, match="features lacks the 'id' dataset"):
        open_counts(path)
    with h5py.File(path, "a") as f:
        del f["matrix/indices"]
    with pytest.raises(InputError, match="lacks a 1-D 'indices' dataset"):
        open_counts(path)
