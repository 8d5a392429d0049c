"""AnnData zarr stores (directory or zip) are read through the same encoding registry as h5ad:
an object written with anndata scores the same from its zarr store as from its h5ad."""

import json
import os
import shutil
import sys
import warnings

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import EXAMPLE, write_h5ad

from scdr.scoring import score
from scdr.scoring.errors import InputError
from scdr.scoring.reader import open_counts

zarr = pytest.importorskip("zarr")
ad = pytest.importorskip("anndata")


def _write_zarr(adata, path, zarr_format=2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = ad.settings.zarr_write_format
        ad.settings.zarr_write_format = zarr_format
        try:
            adata.write_zarr(path)
        finally:
            ad.settings.zarr_write_format = previous
    return path


@pytest.fixture(scope="module")
def example():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ad.read_h5ad(EXAMPLE)


@pytest.fixture(scope="module")
def expected():
    return score(EXAMPLE, drug="cisplatin")


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("encoding", ["csr", "csc", "dense"])
def test_a_zarr_store_scores_as_its_h5ad(tmp_path, example, expected, zarr_format, encoding):
    adata = example.copy()
    if encoding == "csc":
        adata.X = sp.csc_matrix(adata.X)
    elif encoding == "dense":
        adata.X = adata.X.toarray()
    path = _write_zarr(adata, tmp_path / "cells.zarr", zarr_format)
    got = score(path, drug="cisplatin", chunk_size=100)
    assert got.cell_ids == expected.cell_ids
    np.testing.assert_array_equal(got.probability, expected.probability)
    with open_counts(path) as src:
        m = sp.vstack([sp.csr_matrix((c.data, c.indices, c.indptr), shape=(c.stop - c.start,
                                                                           src.n_vars))
                       for c in src.chunks(64)])
        assert src.var_names == list(example.var_names) and src.location == "X"
    assert (m != sp.csr_matrix(example.X)).nnz == 0


def test_a_zipped_store_and_counts_in_layers(tmp_path, example, expected):
    adata = example.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.astype(np.float32)
    adata.X.data = np.log1p(adata.X.data) + 0.5  # normalised: the counts must come from layers
    adata.obs["line"] = adata.obs["cell_line"].astype("category")
    folder = _write_zarr(adata, tmp_path / "cells.zarr")
    archive = shutil.make_archive(str(tmp_path / "cells.zarr"), "zip", folder)
    for path in (folder, archive):
        with open_counts(path) as src:
            assert src.location == "layers/counts"
            chunk = next(src.chunks(300, obs_columns=["line"]))
            assert chunk.obs_columns["line"] == list(adata.obs["line"].astype(str))
        np.testing.assert_array_equal(score(path, drug="cisplatin").probability,
                                      expected.probability)


def test_an_unknown_version_is_refused_in_a_store_too(tmp_path, example):
    path = _write_zarr(example, tmp_path / "cells.zarr")
    attrs = json.loads((path / "X" / ".zattrs").read_text())
    attrs["encoding-version"] = "0.2.0"
    (path / "X" / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(InputError, match=r"X is csr_matrix of encoding-version '0\.2\.0'"):
        open_counts(path)


def test_hostile_stores_are_refused_in_one_line(tmp_path, example):
    path = _write_zarr(example[:20].copy(), tmp_path / "cells.zarr")
    attrs = json.loads((path / "X" / ".zattrs").read_text())
    attrs["shape"] = [21, example.n_vars]
    (path / "X" / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(InputError, match="indptr has 21 entries"):
        open_counts(path)
    attrs["shape"] = "twenty by many"
    (path / "X" / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(InputError, match="attribute 'shape' of /X is not what AnnData stores"):
        open_counts(path)
    # a chunk file that is not what its codec wrote
    attrs["shape"] = [20, example.n_vars]
    (path / "X" / ".zattrs").write_text(json.dumps(attrs))
    for chunk in (path / "X" / "data").iterdir():
        if not chunk.name.startswith("."):
            chunk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match="cannot be read") as info:
        open_counts(path)
    assert "\n" not in str(info.value)


def test_links_out_of_a_store_are_refused(tmp_path, example):
    path = _write_zarr(example[:20].copy(), tmp_path / "cells.zarr")
    outside = tmp_path / "elsewhere"
    shutil.move(path / "X" / "data", outside)
    os.symlink(outside, path / "X" / "data")
    with pytest.raises(InputError, match="link out of the zarr store"):
        open_counts(path)


def test_a_folder_that_is_no_store_and_a_zip_that_is_none(tmp_path, small_h5ad):
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not a file"):
        open_counts(tmp_path / "plain")
    (tmp_path / "a.txt").write_text("x")
    archive = shutil.make_archive(str(tmp_path / "other"), "zip", tmp_path, "a.txt")
    with pytest.raises(InputError, match="not a readable zarr store"):
        open_counts(archive)
    assert open_counts(small_h5ad).n_obs == 5  # HDF5 stays HDF5


def test_without_zarr_the_extra_is_named(tmp_path, example, monkeypatch):
    path = _write_zarr(example[:5].copy(), tmp_path / "cells.zarr")
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr now raises ImportError
    with pytest.raises(InputError, match=r'pip install "scdr\[zarr\]"') as info:
        open_counts(path)
    assert "\n" not in str(info.value)


@pytest.fixture
def small_h5ad(tmp_path, example_counts):
    m, var, obs = example_counts
    path = write_h5ad(tmp_path / "small.h5ad", m[:5].tocsr(), var, obs[:5])
    with h5py.File(path, "r") as f:
        assert "X" in f
    return path
