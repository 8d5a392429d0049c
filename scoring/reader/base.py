"""The source API: a cells x features matrix with feature names, read in chunks of rows.

``CountSource`` is what scoring consumes; ``FileSource`` is the part every stored encoding
shares (a matrix element of an open ``Tree``, its var names and its obs names).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from scdr.scoring.errors import InputError
from scdr.scoring.reader import limits
from scdr.scoring.reader.limits import MAX_FEATURES, MAX_VALUE

if TYPE_CHECKING:
    import scipy.sparse as sp

    from scdr.scoring.reader.guards import Tree
    from scdr.scoring.reader.names import Names

Csr = tuple[np.ndarray, np.ndarray, np.ndarray]  # data, indices, indptr (from 0)


@dataclass
class Chunk:
    """Rows ``start:stop`` of the count matrix as CSR arrays (``indptr`` starts at 0)."""

    start: int
    stop: int
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    obs_names: list[str]
    obs_columns: dict[str, list[str]]


class CountSource:
    """A cells x features matrix with feature names, read chunk by chunk."""

    location: str
    n_obs: int
    n_vars: int
    var_names: list[str]

    def chunks(self, chunk_size: int, start: int = 0, stop: int | None = None,
               obs_columns: Sequence[str] = (), prefetch: bool = True) -> Iterator[Chunk]:
        """Yield the rows ``start:stop`` in chunks of at most ``chunk_size`` rows (fewer where
        they store more than ``BLOCK_ENTRIES`` entries), with the values of the named obs columns
        (as strings) for those rows. With ``prefetch`` the next chunk is read on a worker thread
        while the caller works on this one (same chunks, same order)."""
        chunks = self._chunks(chunk_size, start, stop, obs_columns)
        return prefetched(chunks) if prefetch else chunks

    def read_all(self, chunk_size: int = 8192) -> tuple[sp.csr_matrix, list[str]]:
        """Every row, read chunk by chunk as scoring reads it, as one float64 CSR (entries as
        stored, duplicates kept) with the cell ids: for callers that want the matrix whole."""
        import scipy.sparse as sp

        parts, cell_ids = [], []
        for chunk in self.chunks(chunk_size, prefetch=False):
            parts.append(sp.csr_matrix((chunk.data.astype(np.float64), chunk.indices, chunk.indptr),
                                       shape=(chunk.stop - chunk.start, self.n_vars)))
            cell_ids += chunk.obs_names
        matrix = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, self.n_vars))
        return matrix, cell_ids

    def sample_values(self) -> np.ndarray:
        """The first stored values, for the integer-counts test."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the underlying file, if any."""

    def __enter__(self) -> CountSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _chunks(self, chunk_size: int, start: int, stop: int | None,
                obs_columns: Sequence[str]) -> Iterator[Chunk]:
        stop = self.n_obs if stop is None else min(stop, self.n_obs)
        columns = {name: self._obs_column(name) for name in obs_columns}
        for lo in range(start, stop, chunk_size):
            hi = min(lo + chunk_size, stop)
            for a, b, (data, indices, indptr) in self._read_blocks(lo, hi):
                data = as_float(data)
                if data.size and float(data.max()) > MAX_VALUE:  # NaN passes: the kernel names it
                    raise InputError(f"{self.location}: rows {a}-{b - 1} hold a value of "
                                     f"{float(data.max()):.3g}, beyond any count (at most "
                                     f"{MAX_VALUE:.0e})")
                yield Chunk(a, b, data, as_index(indices), indptr,
                            self._obs_names(a, b), {k: c(a, b) for k, c in columns.items()})

    def _read_blocks(self, start: int, stop: int) -> Iterator[tuple[int, int, Csr]]:
        """Rows ``start:stop`` as ``(a, b, csr)`` blocks in order; one block unless overridden."""
        yield start, stop, self._read_rows(start, stop)

    def _read_rows(self, start: int, stop: int) -> Csr:
        raise NotImplementedError

    def _obs_names(self, start: int, stop: int) -> list[str]:
        raise NotImplementedError

    def _obs_column(self, name: str) -> Callable[[int, int], list[str]]:
        raise InputError(f"this input has no obs table, so no column '{name}'")


class FileSource(CountSource):
    """A matrix element of an open file or store; subclasses are registered by encoding."""

    element: ClassVar[str]  # "group" or "array": the kind of node the encoding is stored as
    rows_need_names: ClassVar[bool] = False  # only obs names confirm the number of rows

    def __init__(self, tree: Tree, location: str, node: Any, shape: tuple[int, int],
                 var_names: list[str], obs_index: Names) -> None:
        self.tree, self.location, self.node = tree, location, node
        self.n_obs, self.n_vars = shape
        self.var_names = var_names
        self._obs_index = obs_index

    @classmethod
    def inspect(cls, tree: Tree, node: Any, location: str) -> tuple[int, int]:
        """The ``(rows, columns)`` of the matrix at ``node``, once the sizes it claims agree
        with what it really stores."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the file or store."""
        self.tree.close()

    def _obs_names(self, start: int, stop: int) -> list[str]:
        return self._obs_index.slice(start, stop)

    def _obs_column(self, name: str) -> Callable[[int, int], list[str]]:
        from scdr.scoring.reader.names import frame_names

        column = frame_names(self.tree, "obs", name, what="obs")
        if len(column) != self.n_obs:
            raise InputError(f"obs column '{name}' has {len(column)} values for {self.n_obs} cells")
        return column.slice

    def _rows_error(self, start: int, stop: int, problem: str) -> InputError:
        return InputError(f"{self.location}: {problem} in rows {start}-{stop - 1}; "
                          "the file is corrupt")


def prefetched(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """The same chunks, each next one read on a worker thread while the caller works on the
    current one (direct reads and zlib release the interpreter lock); errors surface in order."""
    with ThreadPoolExecutor(1, thread_name_prefix="scdr-read") as pool:
        pending = pool.submit(next, chunks, None)
        while (chunk := pending.result()) is not None:
            pending = pool.submit(next, chunks, None)
            yield chunk


def split_rows(indptr: np.ndarray, budget: int | None = None) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges ``(a, b)`` of a CSR ``indptr`` holding at most ``budget`` entries
    each (``BLOCK_ENTRIES`` by default; a single row may hold more)."""
    budget = limits.BLOCK_ENTRIES if budget is None else budget
    a, n = 0, indptr.shape[0] - 1
    while a < n:
        b = int(np.searchsorted(indptr, indptr[a] + budget, side="right")) - 1
        b = min(max(b, a + 1), n)
        yield a, b
        a = b


def dense_to_csr(block: np.ndarray) -> Csr:
    """A dense block of rows as CSR arrays."""
    rows, cols = np.nonzero(block)
    indptr = np.zeros(block.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=block.shape[0]), out=indptr[1:])
    return block[rows, cols], cols.astype(np.int64), indptr


def concat_csr(parts: list[Csr]) -> Csr:
    """Consecutive CSR row blocks as one."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [p[2][-1] for p in parts[:-1]])
    indptr = np.concatenate([parts[0][2][:1]] + [p[2][1:] + o for p, o in zip(parts, offsets)])
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), indptr


def as_float(data: np.ndarray) -> np.ndarray:
    """Values as contiguous float32 or float64 (wider integers to float64)."""
    if data.dtype in (np.float32, np.float64):
        return np.ascontiguousarray(data)
    return data.astype(np.float64 if data.dtype.itemsize > 4 else np.float32)


def as_index(indices: np.ndarray) -> np.ndarray:
    """Column indices as contiguous int32 or int64."""
    if indices.dtype in (np.int32, np.int64):
        return np.ascontiguousarray(indices)
    return indices.astype(np.int64)  # uint64 past int64 wraps negative: the kernel reports it


def check_n_vars(n_vars: int, location: str) -> None:
    """Refuse more features (or names read whole) than the reader holds in memory."""
    if n_vars > MAX_FEATURES:
        raise InputError(
            f"{location} claims {n_vars:,} features or names; scdr reads at most {MAX_FEATURES:,} "
            "(they are held in memory): subset the features first"
        )


def short(e: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), at most 200 chars."""
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
