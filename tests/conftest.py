"""Shared fixtures: the example plate's counts and a test bundle over its genes."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import EXAMPLE, write_bundle


@pytest.fixture(scope="session")
def example_counts() -> tuple[sp.csr_matrix, list[str], list[str]]:
    """(counts CSR, var names, obs names) of the bundled example, read with h5py."""
    with h5py.File(EXAMPLE, "r") as f:
        x = f["X"]
        m = sp.csr_matrix((x["data"][()], x["indices"][()], x["indptr"][()]),
                          shape=tuple(x.attrs["shape"]))
        var = [v.decode() for v in f["var/_index"][()]]
        obs = [v.decode() for v in f["obs/_index"][()]]
    return m, var, obs


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, example_counts) -> Path:
    """A bundle over 300 expressed genes of the example plus 20 genes it does not have."""
    m, var, _ = example_counts
    detected = np.asarray((m > 0).sum(axis=0)).ravel()
    order = np.argsort(-detected, kind="stable")
    genes = [var[j] for j in order[:300] if not var[j].startswith("ERCC")]
    absent = [f"ENSG9{i:010d}" for i in range(20)]
    ensembl = genes + absent
    symbols = [f"SYM{i}" for i in range(len(ensembl))]
    rng = np.random.default_rng(1)
    mean = 0.3 * rng.standard_normal(len(ensembl))
    std = 0.5 + rng.random(len(ensembl))
    return write_bundle(tmp_path_factory.mktemp("bundle") / "testdrug", symbols, ensembl,
                        gene_mean=mean, gene_std=std)
