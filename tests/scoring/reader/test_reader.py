"""The h5py reader: every encoding and location gives the same cells, whatever the chunk size."""

import h5py
import numpy as np
import pytest
from helpers import EXAMPLE, SHARED_DATA, write_h5ad

from scdr.scoring.errors import InputError
from scdr.scoring.reader import open_counts


def _read_all(path, chunk_size=64, **kw):
    with open_counts(path, **kw) as src:
        matrix, names = src.read_all(chunk_size)
        return matrix, names, src.var_names, src.location


@pytest.fixture(scope="module")
def small(example_counts):
    m, var, obs = example_counts
    return m[:40].tocsr(), var, obs[:40]


@pytest.mark.parametrize("encoding", ["csr", "csc", "dense"])
@pytest.mark.parametrize("location", ["X", "raw/X", "layers/counts"])
def test_encodings_and_locations_read_the_same_counts(tmp_path, small, encoding, location):
    m, var, obs = small
    lognorm = m.copy()
    lognorm.data = np.log1p(lognorm.data) + 0.5  # non-integer: must not be taken for counts
    path = write_h5ad(tmp_path / "f.h5ad", m, var, obs, encoding=encoding, location=location,
                      x_placeholder=lognorm)
    got, names, genes, where = _read_all(path, chunk_size=7)
    assert where == location
    assert names == obs and genes == var
    assert (got != m).nnz == 0


@pytest.mark.parametrize("chunk_size", [1, 7, 10_000])
def test_chunking_of_the_example_is_exact(example_counts, chunk_size):
    m, _var, obs = example_counts
    got, names, _, where = _read_all(EXAMPLE, chunk_size=chunk_size)
    assert where == "X" and names == obs
    assert (got != m).nnz == 0


def test_layer_option_overrides_auto_choice(tmp_path, small):
    m, var, obs = small
    doubled = m * 2
    path = write_h5ad(tmp_path / "f.h5ad", m, var, obs, location="layers/counts",
                      x_placeholder=doubled)
    assert _read_all(path)[3] == "layers/counts"
    got, *_ , where = _read_all(path, layer="X")
    assert where == "X" and (got != doubled).nnz == 0


def test_normalised_only_file_is_refused_with_advice(tmp_path, small):
    m, var, obs = small
    lognorm = m.copy()
    lognorm.data = np.log1p(lognorm.data).astype(np.float32)
    path = write_h5ad(tmp_path / "f.h5ad", lognorm, var, obs)
    with pytest.raises(InputError, match=r"look normalised.*--normalized"):
        open_counts(path)
    with open_counts(path, normalized=True) as src:
        assert src.location == "X"


def test_gene_column_is_used_for_names(tmp_path, small):
    m, var, obs = small
    symbols = [f"S{i}" for i in range(len(var))]
    path = write_h5ad(tmp_path / "f.h5ad", m, var, obs, var_columns={"feature_name": symbols})
    with open_counts(path, gene_column="feature_name") as src:
        assert src.var_names == symbols
    with pytest.raises(InputError, match="no column 'nope'"):
        open_counts(path, gene_column="nope")


def test_legacy_layout_written_like_anndata_0_6(tmp_path, small):
    m, var, obs = small
    path = tmp_path / "legacy.h5ad"
    with h5py.File(path, "w") as f:
        g = f.create_group("X")
        g.attrs["h5sparse_format"] = "csr"
        g.attrs["h5sparse_shape"] = np.array(m.shape)
        for k in ("data", "indices", "indptr"):
            g.create_dataset(k, data=getattr(m, k))
        f.create_dataset("var", data=np.array([(v.encode(),) for v in var],
                                              dtype=[("index", "S20")]))
        f.create_dataset("obs", data=np.array([(o.encode(),) for o in obs],
                                              dtype=[("index", "S40")]))
    got, names, genes, _ = _read_all(path, chunk_size=9)
    assert names == obs and genes == var and (got != m).nnz == 0


@pytest.mark.skipif(not (SHARED_DATA / "singlecell/formats").is_dir(), reason="../shared/data absent")
def test_scanpy_legacy_pbmc68k_is_refused_then_read_as_normalised():
    path = SHARED_DATA / "singlecell/formats/10x_pbmc68k_reduced.h5ad"
    with pytest.raises(InputError, match=r"no raw counts.*raw/X.*X"):
        open_counts(path)
    got, names, genes, where = _read_all(path, layer="raw/X", normalized=True)
    assert where == "raw/X" and got.shape == (700, 765)
    assert len(names) == 700 and "HES4" in genes
    assert got.data.min() >= 0 and got.data.max() < 7
