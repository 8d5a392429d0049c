"""Memory is bounded by bytes, not by cells: a chunk of deep cells is handed on in blocks of at
most BLOCK_ENTRIES stored values (whatever --chunk-size says), and scoring gives the same table."""

import numpy as np
import scipy.sparse as sp
from helpers import write_h5ad

from scdr.scoring import score
from scdr.scoring.reader import open_counts
from scdr.scoring.reader.limits import BLOCK_ENTRIES

MAX_BLOCK_BYTES = 64 << 20  # values and indices of one block, at the widest types (8 + 8 bytes)


def test_the_default_block_keeps_deep_chunks_within_64_mb():
    assert BLOCK_ENTRIES * 16 <= MAX_BLOCK_BYTES


def test_a_chunk_of_deep_cells_is_split_by_stored_values(tmp_path, bundle_dir, example_counts):
    m, var, _ = example_counts
    reps = -(-3 * BLOCK_ENTRIES // m.nnz)  # the plate tiled past three blocks
    deep = sp.vstack([m] * reps).tocsr().astype(np.float32)
    path = write_h5ad(tmp_path / "deep.h5ad", deep, var, [f"c{i}" for i in range(deep.shape[0])])
    with open_counts(path) as src:
        sizes = [(c.stop - c.start, c.data.size) for c in src.chunks(deep.shape[0])]
    assert len(sizes) >= 3 and all(n <= BLOCK_ENTRIES or rows == 1 for rows, n in sizes)
    assert sum(rows for rows, _ in sizes) == deep.shape[0]
    whole = score(path, model=bundle_dir, chunk_size=deep.shape[0])
    small = score(path, model=bundle_dir, chunk_size=97)
    np.testing.assert_array_equal(whole.probability, small.probability)
