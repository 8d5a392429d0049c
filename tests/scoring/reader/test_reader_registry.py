"""The encoding registry: matrices are read by (encoding-type, encoding-version); a known type at
a version the reader was not written for is refused in one line, never guessed at."""

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from helpers import write_h5ad

from scdr.scoring.cli import score_command
from scdr.scoring.errors import EXIT_BAD_INPUT, InputError
from scdr.scoring.reader import Encoding, open_counts, registry
from scdr.scoring.reader.sparse import CsrSource


@pytest.fixture(scope="module")
def small(example_counts):
    m, var, obs = example_counts
    return m[:20].tocsr(), var, obs[:20]


def _read(path, **kw):
    with open_counts(path, **kw) as src:
        return sp.vstack([sp.csr_matrix((c.data, c.indices, c.indptr),
                                        shape=(c.stop - c.start, src.n_vars))
                          for c in src.chunks(6)]).tocsr()


@pytest.mark.parametrize("encoding, version, supported", [
    ("csr", "0.2.0", "0.1.0"),
    ("csc", "1.0.0", "0.1.0"),
    ("csr", None, "0.1.0"),
    ("dense", "0.3.0", "0.2.0"),
])
def test_an_unknown_version_of_a_known_encoding_is_refused(tmp_path, small, encoding, version,
                                                           supported):
    m, var, obs = small
    path = write_h5ad(tmp_path / "f.h5ad", m, var, obs, encoding=encoding)
    with h5py.File(path, "a") as f:
        if encoding == "dense":
            f["X"].attrs["encoding-type"] = "array"
        if version is None:
            del f["X"].attrs["encoding-version"]
        else:
            f["X"].attrs["encoding-version"] = version
    kind = "array" if encoding == "dense" else f"{encoding}_matrix"
    message = (f"X is {kind} of encoding-version '{version or 'none'}', which scdr does not read "
               f"(supported: {supported})")
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        open_counts(path)
    assert "\n" not in str(info.value)


def test_the_cli_names_the_version_in_one_line(tmp_path, small, bundle_dir):
    m, var, obs = small
    path = write_h5ad(tmp_path / "f.h5ad", m, var, obs)
    with h5py.File(path, "a") as f:
        f["X"].attrs["encoding-version"] = "0.9.0"
    result = CliRunner().invoke(score_command, [str(path), "--model", str(bundle_dir),
                                                "-o", str(tmp_path / "o.csv"), "-q"])
    assert result.exit_code == EXIT_BAD_INPUT
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "csr_matrix of encoding-version '0.9.0'" in lines[0], result.stderr


def test_dense_array_0_2_0_and_attributeless_legacy_dense_read_alike(tmp_path, small):
    m, var, obs = small
    path = write_h5ad(tmp_path / "f.h5ad", m, var, obs, encoding="dense")
    legacy = _read(path)
    with h5py.File(path, "a") as f:
        f["X"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    assert (legacy != m).nnz == 0 and (_read(path) != m).nnz == 0


def test_an_unknown_encoding_type_is_refused(tmp_path, small):
    m, var, obs = small
    path = write_h5ad(tmp_path / "f.h5ad", m, var, obs, encoding="dense")
    with h5py.File(path, "a") as f:
        f["X"].attrs.update({"encoding-type": "awkward-array", "encoding-version": "0.1.0"})
    with pytest.raises(InputError, match="unsupported encoding 'awkward-array'"):
        open_counts(path)


def test_the_registry_lists_and_extends(tmp_path, small, monkeypatch):
    assert registry.supported_versions("csr_matrix", "group") == ["0.1.0"]
    assert registry.supported_versions("array", "array") == ["0.2.0"]
    assert registry.supported_versions("csr_matrix", "array") == []
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("csr_matrix", "0.1.0")(CsrSource)
    m, var, obs = small
    path = write_h5ad(tmp_path / "f.h5ad", m, var, obs)
    with h5py.File(path, "a") as f:
        f["X"].attrs["encoding-version"] = "0.1.1"
    with pytest.raises(InputError, match=r"supported: 0\.1\.0"):
        open_counts(path)
    # a reader for a new version is one registration
    monkeypatch.setitem(registry._SOURCES, Encoding("csr_matrix", "0.1.1"), CsrSource)
    assert (_read(path) != m).nnz == 0


def test_legacy_h5sparse_layout_is_chosen_explicitly(tmp_path, small):
    m, var, obs = small
    path = write_h5ad(tmp_path / "f.h5ad", m, var, obs)
    with h5py.File(path, "a") as f:
        x = f["X"]
        shape = x.attrs["shape"]
        for key in ("encoding-type", "encoding-version", "shape"):
            del x.attrs[key]
        x.attrs["h5sparse_format"] = "csr"
        x.attrs["h5sparse_shape"] = shape
    assert (_read(path) != m).nnz == 0
    with h5py.File(path, "a") as f:
        f["X"].attrs["h5sparse_format"] = "bsr"
    with pytest.raises(InputError, match="unsupported encoding 'none'"):
        open_counts(path)
    np.testing.assert_array_equal(m.shape, shape)
