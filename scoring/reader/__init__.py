"""Read the counts of an AnnData ``.h5ad``, a 10x Genomics ``.h5`` or an AnnData zarr store,
streaming row chunks, with h5py (and zarr for zarr stores) alone.

Follows the AnnData on-disk spec: each matrix encoding is read by the source registered for its
``(encoding-type, encoding-version)`` (``registry``; an unknown version is refused), and the
legacy pre-0.7/0.8 layouts (``h5sparse_format`` attributes, attribute-less dense datasets,
top-level ``raw.X``/``raw.var``, compound ``obs``/``var``) are read explicitly. Memory is bounded
by the chunk size: index arrays, data and cell names are read per chunk, and a chunk whose stored
entries exceed ``BLOCK_ENTRIES`` is handed on in smaller row blocks.

Inputs are untrusted: every size a file claims (``shape`` attributes, ``indptr``, dataset
extents) is checked against what it really stores before anything is allocated, and the reader
never leaves the input (external links, virtual datasets, external raw storage and links out of
a zarr directory are refused).

Modules, by concern: ``layout`` (open an input, pick the matrix), ``registry`` (encodings),
``sparse``, ``dense``, ``tenx`` (the sources), ``names`` (cell and feature names), ``guards``
and ``heaps`` (HDF5 safety), ``zarr_store``, ``arrays`` (in-memory matrices), ``counts`` (the
raw-counts test), ``base`` (the source API) and ``limits``.
"""

from scdr.scoring.reader.arrays import from_arrays
from scdr.scoring.reader.base import Chunk, CountSource
from scdr.scoring.reader.counts import looks_like_counts
from scdr.scoring.reader.layout import open_counts
from scdr.scoring.reader.limits import BLOCK_ENTRIES, COUNT_LOCATIONS, MAX_FEATURES
from scdr.scoring.reader.registry import Encoding, register

__all__ = [
    "BLOCK_ENTRIES", "COUNT_LOCATIONS", "MAX_FEATURES", "Chunk", "CountSource", "Encoding",
    "from_arrays", "looks_like_counts", "open_counts", "register",
]
