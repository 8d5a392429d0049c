"""Bounds the reader holds every input to.

``BLOCK_ENTRIES`` and ``_DENSE_BLOCK_VALUES`` are read as ``limits.NAME`` when used, so that a
test can lower them with ``monkeypatch.setattr(limits, ...)``.
"""

COUNT_LOCATIONS = ("layers/counts", "raw/X", "X")
MAX_FEATURES = 1 << 22  # features (genes, peaks) a file may name: var names are read whole
BLOCK_ENTRIES = 1 << 22  # stored values handed on at once, whatever the chunk size (memory bound)
MAX_NAME_BYTES = 1 << 16  # fixed-size bytes per stored name (or legacy compound record)
MAX_NAMES_TOTAL = 1 << 30  # bytes of a name table that is read whole (var names, categories)
MAX_VALUE = 1e30  # no count comes near; larger values would overflow float32 sums downstream
SAMPLE_VALUES = 100_000  # stored values read for the integer-counts test
CSC_BLOCK = 4_000_000  # stored entries scanned at once by the CSC reader
_DENSE_BLOCK_VALUES = 16_000_000  # values of a dense matrix read at once
MAX_LINK_HOPS = 16  # soft links followed in a row
MAX_ATTR_VALUES = 64  # values an attribute the reader reads may hold
SCAN_BLOCK = 16 << 20  # bytes read at once by the global heap scanner
MAX_CHUNK_BYTES = 1 << 31  # decoded bytes of one chunk of a zarr array
