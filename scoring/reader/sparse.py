"""Compressed sparse matrices (``csr_matrix``, ``csc_matrix`` 0.1.0 and the legacy h5sparse
layout): sizes checked against what is stored before anything is read, rows streamed by chunk.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np

from scdr.scoring.errors import InputError
from scdr.scoring.reader import limits
from scdr.scoring.reader.base import Csr, FileSource, check_n_vars, split_rows
from scdr.scoring.reader.guards import Tree
from scdr.scoring.reader.limits import CSC_BLOCK, SAMPLE_VALUES
from scdr.scoring.reader.registry import LEGACY, register

PARTS = ("data", "indices", "indptr")


def sparse_parts(tree: Tree, node: Any, location: str, enc: str) -> dict[str, Any]:
    """The ``data``, ``indices`` and ``indptr`` datasets of the sparse group ``node``, once they
    are 1-D and of number types."""
    parts = {key: tree.lookup(node, key) for key in PARTS}
    for key, ds in parts.items():
        if not tree.is_array(ds) or ds.ndim != 1:
            raise InputError(f"{location} is {enc} but lacks a 1-D '{key}' dataset")
    if parts["data"].dtype.kind not in "iuf":
        raise InputError(f"{location}/data has dtype {parts['data'].dtype}; expected numbers")
    if parts["indices"].dtype.kind not in "iu" or parts["indptr"].dtype.kind not in "iu":
        raise InputError(f"{location}: indices and indptr must be integers")
    return parts


def check_extents(tree: Tree, parts: dict[str, Any], location: str, shape: tuple[int, int],
                  major: int) -> None:
    """Refuse sparse arrays whose lengths disagree with ``shape`` (``major`` rows of ``indptr``)
    or with each other, that are not all stored, or whose ``indptr`` leaves ``data``."""
    data, indices, indptr = (parts[key] for key in PARTS)
    if data.shape[0] != indices.shape[0]:
        raise InputError(f"{location}: data and indices differ in length")
    if indptr.shape[0] != major + 1:
        raise InputError(
            f"{location}: indptr has {indptr.shape[0]} entries but the shape {shape[0]}x{shape[1]} "
            f"needs {major + 1}; the file is inconsistent"
        )
    for key, ds in parts.items():
        tree.check_stored(ds, f"{location}/{key}")
    first = int(tree.read(indptr, slice(0, 1), f"{location}/indptr")[0])
    last = int(tree.read(indptr, slice(major, major + 1), f"{location}/indptr")[0])
    if first != 0 or not 0 <= last <= data.shape[0]:
        raise InputError(
            f"{location}: indptr runs from {first} to {last} but data has {data.shape[0]} "
            "entries (it must start at 0 and stay inside data); the file is corrupt"
        )


def shape_attr(tree: Tree, node: Any, location: str) -> tuple[int, int]:
    """The ``shape`` (or legacy ``h5sparse_shape``) attribute, once it is two whole numbers."""
    raw = tree.attr_numbers(node, "shape")
    if raw is None:
        raw = tree.attr_numbers(node, "h5sparse_shape")
    return checked_shape(raw, location, "'shape' attribute")


def checked_shape(raw: Any, location: str, what: str) -> tuple[int, int]:
    """``raw`` as ``(rows, columns)``, once it is two finite whole numbers in range."""
    shape = np.asarray(raw) if raw is not None else np.zeros(0)
    if shape.shape != (2,) or shape.dtype.kind not in "iuf" or not np.all(np.isfinite(shape)):
        raise InputError(f"{location} has no 2-D integer {what}")
    if np.any(shape != np.floor(shape)) or np.any(shape < 0) or np.any(shape > 2**62):
        raise InputError(f"{location} has an impossible shape {tuple(shape.tolist())}")
    return int(shape[0]), int(shape[1])


class _SparseSource(FileSource):
    element = "group"
    encoding = ""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # resolved once: the same datasets inspect() checked
        self.data, self.indices, self.indptr = (self.tree.lookup(self.node, k) for k in PARTS)

    @classmethod
    def inspect(cls, tree: Tree, node: Any, location: str) -> tuple[int, int]:
        """Rows and columns of the sparse group ``node``, checked against what it stores."""
        parts = sparse_parts(tree, node, location, cls.encoding)
        n_obs, n_vars = shape_attr(tree, node, location)
        check_n_vars(n_vars, location)
        major = n_obs if cls.encoding == "csr_matrix" else n_vars
        check_extents(tree, parts, location, (n_obs, n_vars), major)
        return n_obs, n_vars

    def sample_values(self) -> np.ndarray:
        """The first stored values."""
        n = min(SAMPLE_VALUES, self.data.shape[0])
        return self.tree.read(self.data, slice(0, n), f"{self.location}/data")


@register("csr_matrix", "0.1.0", LEGACY)
class CsrSource(_SparseSource):
    """CSR rows: ``data`` and ``indices`` by ``indptr`` ranges, read straight from the file where
    their layout allows (``scoring.storage``), else through the tree."""

    encoding = "csr_matrix"
    _direct: dict[str, Any] | None = None

    def close(self) -> None:
        """Close the direct readers and the file."""
        for reader in (self._direct or {}).values():
            if reader is not None:
                reader.close()
        super().close()

    def _range(self, name: str, lo: int, hi: int) -> np.ndarray:
        if self._direct is None:
            self._direct = {key: self.tree.direct_reader(getattr(self, key),
                                                         f"{self.location}/{key}")
                            for key in ("data", "indices")}
        reader = self._direct[name]
        if reader is None:
            return self.tree.read_range(getattr(self, name), lo, hi, f"{self.location}/{name}")
        return reader.read(lo, hi)

    def _read_blocks(self, start: int, stop: int) -> Iterator[tuple[int, int, Csr]]:
        indptr = self.tree.read(self.indptr, slice(start, stop + 1), f"{self.location}/indptr")
        indptr = indptr.astype(np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        sizes = np.diff(indptr)
        # uint64 pointers past int64 wrap negative, so every bad pointer shows up here
        if lo < 0 or hi > self.data.shape[0] or np.any(sizes < 0):
            raise self._rows_error(start, stop, "indptr is not monotone or points outside data")
        if sizes.size and int(sizes.max()) > self._stored_columns():
            row = start + int(np.argmax(sizes))
            raise InputError(f"{self.location}: row {row} stores {int(sizes.max()):,} entries for "
                             f"{self._stored_columns():,} genes; the file is corrupt")
        for a, b in split_rows(indptr):
            p0, p1 = int(indptr[a]), int(indptr[b])
            data, indices = self._range("data", p0, p1), self._range("indices", p0, p1)
            yield start + a, start + b, (data, indices, indptr[a : b + 1] - p0)

    def _stored_columns(self) -> int:
        """Columns the stored indices address (more than ``n_vars`` where some are dropped)."""
        return self.n_vars


@register("csc_matrix", "0.1.0", LEGACY)
class CscSource(_SparseSource):
    """CSC is column-major: every chunk of rows scans all stored entries once (see README)."""

    encoding = "csc_matrix"
    rows_need_names = True
    _colptr: np.ndarray | None = None

    def _read_blocks(self, start: int, stop: int) -> Iterator[tuple[int, int, Csr]]:
        counts = np.zeros(stop - start, np.int64)
        block = self._scan(start, stop, counts)
        if block is not None:
            yield start, stop, block
            return
        # more entries than one block holds: split the rows by the counts of the first scan
        indptr = np.zeros(stop - start + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        for a, b in split_rows(indptr):
            sub = self._scan(start + a, start + b, np.zeros(b - a, np.int64), limit=False)
            assert sub is not None
            yield start + a, start + b, sub

    def _colptr_checked(self) -> np.ndarray:
        if self._colptr is None:
            colptr = self.tree.read(self.indptr, slice(None), f"{self.location}/indptr")
            colptr = colptr.astype(np.int64)
            if np.any(np.diff(colptr) < 0):
                raise InputError(f"{self.location}: indptr is not monotone; the file is corrupt")
            self._colptr = colptr
        return self._colptr

    def _scan(self, start: int, stop: int, counts: np.ndarray, limit: bool = True) -> Csr | None:
        """Entries of rows ``start:stop`` as CSR, counting them per row into ``counts``; None
        (after a full counting scan) when they exceed ``BLOCK_ENTRIES`` and ``limit`` is set."""
        colptr = self._colptr_checked()
        nnz = int(colptr[-1])
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        kept = 0
        over = False
        for p0 in range(0, nnz, CSC_BLOCK):
            p1 = min(p0 + CSC_BLOCK, nnz)
            idx = self.tree.read(self.indices, slice(p0, p1), f"{self.location}/indices")
            if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.n_obs):
                raise InputError(f"{self.location}: row index out of range; the file is corrupt")
            pos = np.flatnonzero((idx >= start) & (idx < stop))
            if not pos.size:
                continue
            r = idx[pos].astype(np.int64) - start
            counts += np.bincount(r, minlength=stop - start)
            if int(counts.max()) > self.n_vars:
                row = start + int(np.argmax(counts))
                raise InputError(f"{self.location}: row {row} stores more entries than the "
                                 f"{self.n_vars:,} genes; the file is corrupt")
            kept += pos.size
            over = over or (limit and kept > limits.BLOCK_ENTRIES and stop - start > 1)
            if over:
                rows, cols, vals = [], [], []  # keep counting only
                continue
            rows.append(r)
            cols.append(np.searchsorted(colptr, p0 + pos, side="right") - 1)
            data = self.tree.read(self.data, slice(p0, p1), f"{self.location}/data")
            vals.append(data[pos])
        if over:
            return None
        indptr = np.zeros(stop - start + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        if not rows:
            return np.zeros(0, self.data.dtype), np.zeros(0, np.int64), indptr
        r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        order = np.lexsort((c, r))
        return v[order], c[order], indptr
