"""The libhdf5 global-heap scanner: refuse a file whose string storage would hang libhdf5.

Variable-length strings live in global heap collections. A damaged collection (found by
fuzzing: an object that does not move the parser forward, e.g. free space of size 0) sends
libhdf5 into an endless loop the first time a string is read, so collections are checked before
anything is read. They are found by their ``GCOL`` signature outside the raw storage of numeric
datasets, so the scan costs about the size of the file's metadata and names, not its data.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numba
import numpy as np

from scdr.scoring.errors import InputError
from scdr.scoring.reader.limits import SCAN_BLOCK

_LISTING_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


def check_global_heaps(f: h5py.File, path: Path) -> None:
    """Refuse ``f`` (open at ``path``) when one of its global heap collections is damaged."""
    size_len = f.id.get_create_plist().get_sizes()[1]
    with open(path, "rb") as fh:
        file_size = fh.seek(0, 2)
        for start, stop in _gaps(_raw_ranges(f), file_size):
            at = _damaged_heap(fh, start, stop, file_size, size_len)
            if at is not None:
                raise InputError(f"{path} has a damaged global heap (where strings are kept) at "
                                 f"byte {at:,}; the file is corrupt")


def _damaged_heap(fh: Any, start: int, stop: int, file_size: int, size_len: int) -> int | None:
    """Offset of the first damaged global heap collection that starts in ``[start, stop)``."""
    header = _align8(8 + size_len)  # signature, version, reserved, collection size
    pos = start
    while pos < stop:
        fh.seek(pos)
        block = fh.read(min(stop - pos, SCAN_BLOCK) + header)
        i = 0
        while True:
            at = block.find(b"GCOL", i)
            if at < 0 or pos + at >= stop:
                break
            head = block[at : at + header]
            size = int.from_bytes(head[8 : 8 + size_len], "little") if len(head) == header else 0
            if head[4:8] != b"\x01\x00\x00\x00" or not 4096 <= size <= file_size - pos - at:
                i = at + 4  # not a collection: the bytes merely spell GCOL
                continue
            if at + size <= len(block):
                heap = np.frombuffer(block, np.uint8, count=size, offset=at)
            else:
                fh.seek(pos + at)
                heap = np.frombuffer(fh.read(size), np.uint8)
            if not _heap_terminates(heap, header, _align8(8 + size_len), size_len):
                return pos + at
            i = at + size  # the collection's strings may spell GCOL: skip them
        pos += max(i, len(block) - header, 1)
    return None


@numba.njit(cache=True)
def _heap_terminates(heap, header, object_header, size_len):  # pragma: no cover
    """Whether libhdf5's walk over the objects of a global heap collection (``heap``, uint8)
    ends: every step must move forward and stay inside the collection."""
    end = heap.shape[0]
    p = header
    while p < end:
        if p + object_header > end:  # a tail too short for an object is free space
            return True
        index = np.int64(heap[p]) | (np.int64(heap[p + 1]) << 8)
        size = np.uint64(0)
        for k in range(size_len):
            size |= np.uint64(heap[p + 8 + k]) << np.uint64(8 * k)
        if size > np.uint64(end):
            return False
        n = np.int64(size)
        step = n if index == 0 else object_header + (n + 7) // 8 * 8
        if step == 0 or p + step > end:
            return False
        p += step
    return True


def _raw_ranges(f: h5py.File) -> list[tuple[int, int]]:
    """File byte ranges of the raw values of numeric datasets (none when they cannot be listed,
    so that the whole file is scanned)."""
    ranges: list[tuple[int, int]] = []
    base = f.userblock_size

    def visit(_name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "biufc":
            return
        layout = obj.id.get_create_plist().get_layout()
        if layout == h5py.h5d.CONTIGUOUS and obj.id.get_offset() is not None:
            offset = base + obj.id.get_offset()
            ranges.append((offset, offset + obj.id.get_storage_size()))
        elif layout == h5py.h5d.CHUNKED:
            obj.id.chunk_iter(lambda c: ranges.append(
                (base + c.byte_offset, base + c.byte_offset + c.size)))

    try:
        f.visititems(visit)
    except _LISTING_ERRORS:
        return []
    return ranges


def _gaps(ranges: list[tuple[int, int]], file_size: int) -> Iterator[tuple[int, int]]:
    """The parts of ``[0, file_size)`` outside ``ranges``."""
    pos = 0
    for lo, hi in sorted(ranges):
        if lo > pos:
            yield pos, min(lo, file_size)
        pos = max(pos, hi)
    if pos < file_size:
        yield pos, file_size


def _align8(n: int) -> int:
    return (n + 7) & ~7
