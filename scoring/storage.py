"""Element ranges of 1-d HDF5 datasets read straight from the file, for the CSR hot path.

h5py reads on one thread and holds the interpreter lock while it does, so it can neither inflate
gzip chunks in parallel nor overlap reading with the Numba and ONNX Runtime work. For the layouts
that matter (contiguous, or chunked with no filter, deflate, or shuffle + deflate) the chunk
addresses are listed once from HDF5, then chunks are read with ``os.pread`` and inflated by
``zlib`` in a thread pool (both release the lock), and unfiltered values are handed out as views
of the memory-mapped file (no copy at all). Every address and size comes from an untrusted
file, so each is checked against the file before use; any layout this module does not handle
(other filters, unallocated chunks, big-endian values) gets ``None`` from ``range_reader`` and
the caller keeps h5py's path.
"""

import contextlib
import mmap
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from scdr.scoring.errors import InputError

THREADS = max(1, min(4, os.cpu_count() or 1))  # inflating threads for gzip files
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+; EINVAL elsewhere


def range_reader(ds: h5py.Dataset, path: str, what: str) -> "RangeReader | None":
    """A direct reader for ``ds`` (a 1-d numeric dataset of the open file at ``path``), or None
    when its layout is one that only h5py should read."""
    try:
        return _plan(ds, path, what)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError):
        return None  # anything HDF5 will not describe plainly stays on h5py's path


@dataclass
class RangeReader:
    """Reads ``[lo, hi)`` of one dataset; ``extents`` are (first element, file offset, stored
    bytes, filter mask) per chunk in element order, all checked against the file's size."""

    path: str
    what: str
    dtype: np.dtype
    n: int
    chunk: int  # elements per chunk (n for a contiguous dataset)
    extents: list[tuple[int, int, int, int]]
    shuffle: bool
    deflate: bool
    _fd: int = -1
    _pool: ThreadPoolExecutor | None = None
    _map: mmap.mmap | None = None
    _mapped: list[list[tuple[int, int]]] = field(default_factory=list)  # byte ranges per read

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Elements ``lo:hi``: a read-only view of the mapped file where the values are stored
        unfiltered, else a new array; an InputError when the stored bytes are damaged."""
        if hi <= lo:
            return np.empty(0, self.dtype)
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDONLY)
        if not (self.deflate or self.shuffle):
            return self._view(lo, hi)
        out = np.empty(hi - lo, self.dtype)
        first, last = lo // self.chunk, (hi - 1) // self.chunk
        jobs = [(k, lo, hi, out) for k in range(first, last + 1)]
        if self.deflate and len(jobs) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="scdr-inflate")
            for _ in self._pool.map(self._read_chunk, jobs):
                pass
        else:
            for job in jobs:
                self._read_chunk(job)
        return out

    def close(self) -> None:
        """Close the file descriptor and the mapping, and stop the inflating threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._map is not None:
            with contextlib.suppress(BufferError):  # views still alive: the GC unmaps it later
                self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _view(self, lo: int, hi: int) -> np.ndarray:
        """Unfiltered values straight from the page cache: one view when the chunks holding
        ``lo:hi`` lie end to end in the file (always, for a contiguous dataset), else the pieces
        joined. Pages handed out two reads ago are dropped from this process (they stay cached),
        so resident memory stays bounded by two chunks however large the file."""
        size = self.dtype.itemsize
        runs: list[list[int]] = []  # [file offset, elements]
        for k in range(lo // self.chunk, (hi - 1) // self.chunk + 1):
            start, offset, _, _ = self.extents[k]
            a, b = max(lo, start), min(hi, start + self.chunk, self.n)
            at = offset + (a - start) * size
            if runs and runs[-1][0] + runs[-1][1] * size == at:
                runs[-1][1] += b - a
            else:
                runs.append([at, b - a])
        end = max(at + n * size for at, n in runs)
        if os.fstat(self._fd).st_size < end:
            raise InputError(f"{self.what}: the file shrank while it was being read")
        if self._map is None:
            self._map = mmap.mmap(self._fd, 0, prot=mmap.PROT_READ)
        ranges = [(at, at + n * size) for at, n in runs]
        self._advise(MADV_POPULATE_READ, ranges)  # map the pages now, on the reading thread
        views = [np.frombuffer(self._map, self.dtype, count=n, offset=at) for at, n in runs]
        self._release(ranges)
        return views[0] if len(views) == 1 else np.concatenate(views)

    def _release(self, ranges: list[tuple[int, int]]) -> None:
        self._mapped.append(ranges)
        while len(self._mapped) > 2:
            self._advise(mmap.MADV_DONTNEED, self._mapped.pop(0))

    def _advise(self, option: int, ranges: list[tuple[int, int]]) -> None:
        """madvise the mapping over byte ranges (widened to whole pages); advice the kernel
        does not know is ignored."""
        assert self._map is not None
        for start, stop in ranges:
            page = start - start % mmap.PAGESIZE
            with contextlib.suppress(OSError, ValueError):
                self._map.madvise(option, page, stop - page)

    def _read_chunk(self, job: tuple[int, int, int, np.ndarray]) -> None:
        k, lo, hi, out = job
        start, offset, stored, mask = self.extents[k]
        a, b = max(lo, start), min(hi, start + self.chunk, self.n)  # elements wanted from chunk k
        size = self.dtype.itemsize
        dest = out[a - lo : b - lo].view(np.uint8)
        if mask & self._all_filters == self._all_filters:  # every filter skipped: stored raw
            if stored != self.chunk * size:
                raise InputError(f"{self.what}: a chunk holds {stored:,} bytes, not "
                                 f"{self.chunk * size:,}; the file is damaged")
            _pread_into(self._fd, dest, offset + (a - start) * size, self.what)
            return
        raw = _pread(self._fd, stored, offset, self.what)
        if self.deflate and not mask & self._deflate_bit:
            try:
                raw = zlib.decompress(raw, bufsize=self.chunk * size)
            except zlib.error:
                raise InputError(f"{self.what}: a gzip chunk cannot be inflated; the file is "
                                 "damaged") from None
        if len(raw) != self.chunk * size:
            raise InputError(f"{self.what}: a chunk holds {len(raw):,} bytes, not "
                             f"{self.chunk * size:,}; the file is damaged")
        values = np.frombuffer(raw, np.uint8)
        if self.shuffle and not mask & 1:
            values = values.reshape(size, self.chunk).T.reshape(-1)
        dest[:] = values[(a - start) * size : (b - start) * size]

    @property
    def _deflate_bit(self) -> int:
        return 1 << (1 if self.shuffle else 0)

    @property
    def _all_filters(self) -> int:
        return (1 if self.shuffle else 0) | (self._deflate_bit if self.deflate else 0)


def _plan(ds: h5py.Dataset, path: str, what: str) -> RangeReader | None:
    if ds.ndim != 1 or ds.dtype.kind not in "iuf" or ds.dtype.byteorder not in "=<|":
        return None
    n, size = ds.shape[0], ds.dtype.itemsize
    file_size = os.path.getsize(path)
    base = ds.file.userblock_size
    plist = ds.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        if n == 0 or offset is None or base + offset + n * size > file_size:
            return None
        return RangeReader(path, what, ds.dtype, n, n, [(0, base + offset, n * size, 0)],
                           shuffle=False, deflate=False)
    if layout != h5py.h5d.CHUNKED or ds.chunks is None:
        return None
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if filters not in ([], [h5py.h5z.FILTER_DEFLATE], [h5py.h5z.FILTER_SHUFFLE],
                       [h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE]):
        return None
    chunk = ds.chunks[0]
    expected = -(-n // chunk)
    found: list[Any] = []
    ds.id.chunk_iter(found.append)
    if chunk < 1 or len(found) != expected:
        return None  # unallocated chunks read as the fill value: leave them to h5py
    extents = []
    for info in sorted(found, key=lambda c: c.chunk_offset[0]):
        start, offset, stored = info.chunk_offset[0], base + info.byte_offset, info.size
        if start != len(extents) * chunk or offset < 0 or offset + stored > file_size:
            return None
        if not filters and stored != chunk * size:
            return None
        extents.append((start, offset, stored, info.filter_mask))
    return RangeReader(path, what, ds.dtype, n, chunk, extents,
                       shuffle=h5py.h5z.FILTER_SHUFFLE in filters,
                       deflate=h5py.h5z.FILTER_DEFLATE in filters)


def _pread(fd: int, size: int, offset: int, what: str) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise InputError(f"{what}: the file ends inside a chunk; it is truncated")
    return data


def _pread_into(fd: int, dest: np.ndarray, offset: int, what: str) -> None:
    view = memoryview(dest)
    while view.nbytes:
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            raise InputError(f"{what}: the file ends inside a chunk; it is truncated")
        view, offset = view[got:], offset + got
