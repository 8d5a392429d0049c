"""training.depth: thinned copies of the target cells paired with their full-depth rows."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from scdr.training import depth
from scdr.training.depth import depth_pairs, keep_for_genes, thin
from scdr.training.normalize import Normalization, scale_cells, standardize


def _targets(seed: int = 0):
    """Two files of cells; each cell has one 'ID gene' with a count no thinning can remove, and
    some cells have no counts at all (they have no row in cells_x)."""
    rng = np.random.default_rng(seed)
    files = []
    for n_cells in (7, 5):
        dense = rng.poisson(3.0, (n_cells, 40)).astype(float) * (rng.random((n_cells, 40)) < 0.6)
        dense[:, :12] = 0.0
        ids = rng.permutation(12)[:n_cells]
        dense[np.arange(n_cells), ids] = 1e6
        dense[rng.random(n_cells) < 0.3] = 0.0  # empty cells
        files.append(sp.csr_matrix(dense))
    features = [f"G{i}" for i in range(40)]
    return files, [features, features], features


def test_each_thinned_row_is_paired_with_the_same_cell_at_full_depth():
    files, features, symbols = _targets()
    norm = Normalization(target_sum=1e4, log1p=True, cell_zscore=False, clip=None)
    ids: list[str | None] = [None] * len(symbols)
    full = []
    for c, f in zip(files, features, strict=True):
        y, present, zero = scale_cells(c, f, symbols, ids, norm)
        full.append(standardize(y, present, zero, norm)[~zero])
    cells_x = np.concatenate(full)
    assert len(cells_x) < sum(c.shape[0] for c in files)  # empty cells are skipped in the index
    x, index = depth_pairs(files, features, symbols, ids, norm)
    assert x.dtype == np.float32 and x.shape[1] == len(symbols) and len(x) == len(index)
    assert len(x) == len(depth.PAIR_DEPTHS) * len(cells_x)  # ID genes keep every cell counted
    np.testing.assert_array_equal(np.argmax(x, axis=1), np.argmax(cells_x[index], axis=1))
    assert np.all((x > 0).sum(axis=1) <= (cells_x[index] > 0).sum(axis=1))  # fewer genes, never more


def test_more_draws_are_new_thinnings_of_the_same_cells():
    files, features, symbols = _targets()
    norm = Normalization(target_sum=1e4, log1p=True, cell_zscore=False, clip=None)
    ids: list[str | None] = [None] * len(symbols)
    one, one_index = depth_pairs(files, features, symbols, ids, norm)
    three, three_index = depth_pairs(files, features, symbols, ids, norm, draws=3)
    assert len(three) == 3 * len(one)
    np.testing.assert_array_equal(three[: len(one)], one)  # the first draw is the one-draw pairs
    np.testing.assert_array_equal(three_index, np.tile(one_index, 3))
    second = three[len(one) : 2 * len(one)]
    assert not np.array_equal(second, one)  # a new draw thins differently


def test_keep_for_genes_hits_the_asked_detection():
    rng = np.random.default_rng(1)
    counts = sp.csr_matrix(rng.poisson(2.0, (300, 500)) * (rng.random((300, 500)) < 0.5), dtype=float)
    detected = np.diff(counts.indptr).mean()
    keep = keep_for_genes(counts, 0.45 * detected)
    thinned = thin(counts, keep, np.random.default_rng(2))
    assert abs(np.diff(thinned.indptr).mean() / detected - 0.45) < 0.02
