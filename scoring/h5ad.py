"""Read the counts of an AnnData ``.h5ad`` with h5py alone, streaming row chunks.

Follows the AnnData on-disk spec: the reader dispatches on the ``encoding-type`` attribute
(``csr_matrix``, ``csc_matrix``, dense 2-D dataset) and understands the legacy pre-0.7 layout
(``h5sparse_format`` attributes, top-level ``raw.X``/``raw.var``, compound ``obs``/``var``).
Memory is bounded by the chunk size: index arrays, data and cell names are read per chunk, and a
chunk whose stored entries exceed ``BLOCK_ENTRIES`` is handed on in smaller row blocks.

Files are untrusted: every size a file claims (``shape`` attributes, ``indptr``, dataset extents)
is checked against what it really stores before anything is allocated, and the reader never
leaves the input file (external links, virtual datasets and external raw storage are refused).
"""

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numba
import numpy as np
import scipy.sparse as sp

from scdr.scoring.errors import InputError
from scdr.scoring.storage import range_reader

COUNT_LOCATIONS = ("layers/counts", "raw/X", "X")
MAX_FEATURES = 1 << 22  # features (genes, peaks) a file may name: var names are read whole
BLOCK_ENTRIES = 1 << 25  # stored entries handed on at once, whatever the chunk size
MAX_NAME_BYTES = 1 << 16  # fixed-size bytes per stored name (or legacy compound record)
MAX_NAMES_TOTAL = 1 << 30  # bytes of a name table that is read whole (var names, categories)
MAX_VALUE = 1e30  # no count comes near; larger values would overflow float32 sums downstream
_SAMPLE_VALUES = 100_000
_CSC_BLOCK = 4_000_000
_DENSE_BLOCK_VALUES = 16_000_000
_MAX_LINK_HOPS = 16
_MAX_ATTR_VALUES = 64
_SCAN_BLOCK = 16 << 20
# what h5py raises for damaged or unreadable objects; turned into InputError at the boundary
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


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
        return _prefetched(chunks) if prefetch else chunks

    def _chunks(self, chunk_size: int, start: int, stop: int | None,
                obs_columns: Sequence[str]) -> Iterator[Chunk]:
        stop = self.n_obs if stop is None else min(stop, self.n_obs)
        columns = {name: self._obs_column(name) for name in obs_columns}
        for lo in range(start, stop, chunk_size):
            hi = min(lo + chunk_size, stop)
            for a, b, (data, indices, indptr) in self._read_blocks(lo, hi):
                data = _as_float(data)
                if data.size and float(data.max()) > MAX_VALUE:  # NaN passes: the kernel names it
                    raise InputError(f"{self.location}: rows {a}-{b - 1} hold a value of "
                                     f"{float(data.max()):.3g}, beyond any count (at most "
                                     f"{MAX_VALUE:.0e})")
                yield Chunk(a, b, data, _as_index(indices), indptr,
                            self._obs_names(a, b), {k: c(a, b) for k, c in columns.items()})

    def sample_values(self) -> np.ndarray:
        """The first stored values, for the integer-counts test."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the underlying file, if any."""

    def __enter__(self) -> "CountSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_blocks(
        self, start: int, stop: int
    ) -> Iterator[tuple[int, int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        """Rows ``start:stop`` as ``(a, b, csr)`` blocks in order; one block unless overridden."""
        yield start, stop, self._read_rows(start, stop)

    def _read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _obs_names(self, start: int, stop: int) -> list[str]:
        raise NotImplementedError

    def _obs_column(self, name: str) -> Callable[[int, int], list[str]]:
        raise InputError(f"this input has no obs table, so no column '{name}'")


def open_counts(
    path: str | Path,
    layer: str | None = None,
    gene_column: str | None = None,
    normalized: bool = False,
) -> CountSource:
    """Open an h5ad and pick the matrix to score.

    Without ``layer``, the first of ``layers/counts``, ``raw/X``, ``X`` that holds integer counts
    is used; with ``normalized=True`` it is ``X`` (already log-normalised values).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if not path.is_file():
        raise InputError(f"input is not a file: {path}")
    try:
        # read-only input: a lock that the file system cannot take (NFS, Lustre) is no reason to fail
        f = h5py.File(path, "r", locking="best-effort")
    except OSError as e:
        raise InputError(
            f"{path} is not a readable HDF5/h5ad file ({_short(e)}); check that it is complete"
        ) from None
    try:
        _check_global_heaps(f, path)
        return _open_in(f, path, layer, gene_column, normalized)
    except InputError:
        f.close()
        raise
    except _H5_ERRORS as e:
        f.close()
        raise InputError(f"{path} could not be read as AnnData ({_short(e)})") from None


def from_arrays(
    matrix: np.ndarray | sp.spmatrix | sp.sparray,
    gene_names: list[str],
    cell_ids: list[str] | None = None,
    normalized: bool = False,
    groups: dict[str, Sequence[object]] | None = None,
) -> CountSource:
    """Wrap an in-memory cells x genes matrix (numpy or scipy sparse) as a count source;
    ``groups`` gives per-cell values of named columns (as obs columns do for a file)."""
    source = _ArraySource(matrix, list(gene_names), cell_ids, groups)
    if not normalized:
        _require_counts(source.sample_values(), "the matrix")
    return source


# --- file layout -----------------------------------------------------------------------------


def _open_in(
    f: h5py.File, path: Path, layer: str | None, gene_column: str | None, normalized: bool
) -> CountSource:
    if all(_lookup(f, name) is None for name in ("X", "raw", "raw.X", "layers")):
        raise InputError(f"{path} is HDF5 but not AnnData: it has no X, raw or layers")
    if layer is not None:
        location = _canonical_location(layer)
        node, var_path = _locate(f, location)
        if node is None:
            raise InputError(
                f"{path} has no matrix at '{layer}'; available: {', '.join(_available(f)) or 'none'}"
            )
        source = _file_source(f, path, location, node, var_path, gene_column)
        if not normalized:
            _require_counts(source.sample_values(), f"'{location}'")
        return source
    if normalized:
        node, var_path = _locate(f, "X")
        if node is None:
            raise InputError(f"{path} has no X; name the normalised matrix with --layer")
        return _file_source(f, path, "X", node, var_path, gene_column)
    tried = []
    for location in COUNT_LOCATIONS:
        node, var_path = _locate(f, location)
        if node is None:
            continue
        source = _file_source(f, path, location, node, var_path, gene_column)
        sample = source.sample_values()
        if looks_like_counts(sample):
            return source
        tried.append(f"{location} (e.g. {_first_non_count(sample):.4g})")
    if not tried:
        raise InputError(f"{path} has no count matrix in {', '.join(COUNT_LOCATIONS)}")
    raise InputError(
        f"{path} holds no raw counts: {'; '.join(tried)} look normalised. "
        "Name the counts with --layer, or pass --normalized if X is log1p(CP10k)"
    )


def _canonical_location(layer: str) -> str:
    if layer in ("X", "raw/X", "raw.X") or layer.startswith("layers/"):
        return "raw/X" if layer == "raw.X" else layer
    return f"layers/{layer}"


def _locate(f: h5py.File, location: str) -> tuple[Any, str]:
    if location == "raw/X":
        raw = _lookup(f, "raw")
        if isinstance(raw, h5py.Group) and _lookup(raw, "X") is not None:
            return _lookup(raw, "X"), "raw/var"
        legacy = _lookup(f, "raw.X")
        return (legacy, "raw.var") if legacy is not None else (None, "")
    if location.startswith("layers/"):
        layers = _lookup(f, "layers")
        if isinstance(layers, h5py.Group):
            node = _lookup(layers, location.split("/", 1)[1])
            if node is not None:
                return node, "var"
        return None, ""
    node = _lookup(f, "X")
    return (node, "var") if node is not None else (None, "")


def _available(f: h5py.File) -> list[str]:
    found = [loc for loc in ("X", "raw/X") if _locate(f, loc)[0] is not None]
    layers = _lookup(f, "layers")
    if isinstance(layers, h5py.Group):
        found += [f"layers/{k}" for k in layers]
    return found


def _lookup(start: h5py.Group, path: str, hops: int = 0) -> Any:
    """The object at ``path`` (relative to ``start``, or absolute), or None when absent.

    Walks the path one link at a time so that nothing outside the file is ever opened: soft links
    are followed inside the file (at most ``_MAX_LINK_HOPS``), external and user-defined links are
    refused without being traversed.
    """
    node: Any = start.file["/"] if path.startswith("/") else start
    for name in (p for p in path.split("/") if p and p != "."):
        if not isinstance(node, h5py.Group):
            return None
        key = name.encode("utf-8", errors="surrogateescape")
        links = node.id.links
        if not links.exists(key):
            return None
        kind = links.get_info(key).type
        if kind == h5py.h5l.TYPE_HARD:
            node = node[key]
        elif kind == h5py.h5l.TYPE_SOFT:
            if hops >= _MAX_LINK_HOPS:
                raise InputError(f"{node.name}/{name}: soft links nest too deep (a loop?)")
            target = links.get_val(key).decode("utf-8", errors="surrogateescape")
            node = _lookup(node, target, hops + 1)
            if node is None:
                return None
        else:
            raise InputError(
                f"{_join(node.name, name)} is an external link into another file; "
                "scdr reads only the input file: save the data into it (e.g. anndata.write_h5ad)"
            )
    return node


def _file_source(
    f: h5py.File,
    path: Path,
    location: str,
    node: Any,
    var_path: str,
    gene_column: str | None,
) -> "CountSource":
    encoding, shape = _encoding(node, location)
    var_index = _Index(f, var_path, gene_column, what="var")
    if len(var_index) != shape[1]:
        raise InputError(
            f"{location} has {shape[1]} columns but {var_path} names {len(var_index)} genes"
        )
    var_names = var_index.read_all()
    obs_index = _Index(f, "obs", None, what="obs")
    if len(obs_index) not in (shape[0], 0):
        raise InputError(f"{location} has {shape[0]} rows but obs names {len(obs_index)} cells")
    if encoding == "csc" and shape[0] and not len(obs_index):
        # only the shape attribute would back the number of cells: nothing stored confirms it
        raise InputError(f"{location} is CSC with {shape[0]:,} rows but the file names no cells "
                         "(obs), so the row count cannot be checked")
    cls = {"csr": _CsrSource, "csc": _CscSource, "dense": _DenseSource}[encoding]
    return cls(f, path, location, node, shape, var_names, obs_index)


def _encoding(node: Any, location: str) -> tuple[str, tuple[int, int]]:
    """``(csr|csc|dense, shape)`` of the matrix at ``node``, once its claimed sizes agree with
    the datasets it really stores."""
    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise InputError(f"{location} is a {node.ndim}-D dataset; expected a 2-D matrix")
        if node.dtype.kind not in "iuf":
            raise InputError(f"{location} has dtype {node.dtype}; expected numbers")
        _check_stored(node, location)
        shape = (int(node.shape[0]), int(node.shape[1]))
        _check_n_vars(shape[1], location)
        return "dense", shape
    if not isinstance(node, h5py.Group):
        raise InputError(f"{location} is neither a matrix group nor a dataset")
    enc = _attr_str(node, "encoding-type") or {"csr": "csr_matrix", "csc": "csc_matrix"}.get(
        _attr_str(node, "h5sparse_format") or "", ""
    )
    if enc not in ("csr_matrix", "csc_matrix"):
        raise InputError(
            f"{location} has unsupported encoding '{enc or 'none'}'; "
            "expected csr_matrix, csc_matrix or a dense array"
        )
    parts = {key: _lookup(node, key) for key in ("data", "indices", "indptr")}
    for key, ds in parts.items():
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 1:
            raise InputError(f"{location} is {enc} but lacks a 1-D '{key}' dataset")
    data, indices, indptr = parts["data"], parts["indices"], parts["indptr"]
    if data.dtype.kind not in "iuf":
        raise InputError(f"{location}/data has dtype {data.dtype}; expected numbers")
    if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise InputError(f"{location}: indices and indptr must be integers")
    n_obs, n_vars = _shape_attr(node, location)
    _check_n_vars(n_vars, location)
    major = n_obs if enc == "csr_matrix" else n_vars
    if data.shape[0] != indices.shape[0]:
        raise InputError(f"{location}: data and indices differ in length")
    if indptr.shape[0] != major + 1:
        raise InputError(
            f"{location}: indptr has {indptr.shape[0]} entries but the shape {n_obs}x{n_vars} "
            f"needs {major + 1}; the file is inconsistent"
        )
    for key, ds in parts.items():
        _check_stored(ds, f"{location}/{key}")
    first = int(_read(indptr, slice(0, 1), f"{location}/indptr")[0])
    last = int(_read(indptr, slice(major, major + 1), f"{location}/indptr")[0])
    if first != 0 or not 0 <= last <= data.shape[0]:
        raise InputError(
            f"{location}: indptr runs from {first} to {last} but data has {data.shape[0]} "
            "entries (it must start at 0 and stay inside data); the file is corrupt"
        )
    return ("csr" if enc == "csr_matrix" else "csc"), (n_obs, n_vars)


def _shape_attr(node: h5py.Group, location: str) -> tuple[int, int]:
    numbers = (h5py.h5t.INTEGER, h5py.h5t.FLOAT)
    raw = _attr(node, "shape", numbers)
    if raw is None:
        raw = _attr(node, "h5sparse_shape", numbers)
    shape = np.asarray(raw) if raw is not None else np.zeros(0)
    if shape.shape != (2,) or shape.dtype.kind not in "iuf" or not np.all(np.isfinite(shape)):
        raise InputError(f"{location} has no 2-D integer 'shape' attribute")
    if np.any(shape != np.floor(shape)) or np.any(shape < 0) or np.any(shape > 2**62):
        raise InputError(f"{location} has an impossible shape {tuple(shape.tolist())}")
    return int(shape[0]), int(shape[1])


def _check_n_vars(n_vars: int, location: str) -> None:
    if n_vars > MAX_FEATURES:
        raise InputError(
            f"{location} claims {n_vars:,} features or names; scdr reads at most {MAX_FEATURES:,} "
            "(they are held in memory): subset the features first"
        )


def _check_stored(ds: h5py.Dataset, what: str) -> None:
    """Refuse a dataset whose values live outside the file, or that claims more values than it
    stores (never-written storage reads back as fill values: an incomplete or forged file)."""
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise InputError(f"{what} is a virtual dataset (its values live in other files); "
                         "scdr reads only the input file")
    if dcpl.get_external_count() > 0:
        raise InputError(f"{what} keeps its values in external raw files; "
                         "scdr reads only the input file")
    if ds.size == 0:
        return
    if layout == h5py.h5d.CHUNKED:
        expected = math.prod(-(-s // c) for s, c in zip(ds.shape, ds.chunks))
        stored = ds.id.get_num_chunks()
        if stored < expected:
            raise InputError(
                f"{what} claims {ds.size:,} values but stores only {stored:,} of its {expected:,} "
                "chunks; the file is incomplete (an interrupted write?) or forged"
            )
    elif layout == h5py.h5d.CONTIGUOUS and ds.id.get_storage_size() == 0:
        raise InputError(f"{what} claims {ds.size:,} values but none were ever written; "
                         "the file is incomplete or forged")


def _check_global_heaps(f: h5py.File, path: Path) -> None:
    """Refuse a file whose global heap collections (where variable-length strings live) would
    send libhdf5 into an endless loop when a string is read (found by fuzzing: a collection
    whose next object does not move the parser forward, e.g. free space of size 0).

    The collections are found by their ``GCOL`` signature outside the raw storage of numeric
    datasets, so the scan costs about the size of the file's metadata and names, not its data.
    """
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
        block = fh.read(min(stop - pos, _SCAN_BLOCK) + header)
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
    except _H5_ERRORS:
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


class _Index:
    """Names of obs or var (the dataframe index, or a named column), read whole or by slice."""

    def __init__(self, f: h5py.File, path: str, column: str | None, what: str) -> None:
        self.what = what
        self.dataset: h5py.Dataset | h5py.Group | None = None
        self.field: str | None = None
        self._codes: h5py.Dataset | None = None
        self._categories: list[str] = []
        node = _lookup(f, path)
        if node is None:
            if column is not None:
                raise InputError(f"the file has no {what} table, so no column '{column}'")
            return
        if isinstance(node, h5py.Dataset):  # legacy compound table
            fields = node.dtype.names or ()
            name = column or "index"
            if name not in fields:
                raise InputError(
                    f"{path} has no column '{name}'; columns: {', '.join(fields) or 'none'}"
                )
            self.field = name
            self.dataset = self._checked(node, what == "var")
            return
        if not isinstance(node, h5py.Group):
            raise InputError(f"{path} is neither a dataframe group nor a table")
        name = column or _attr_str(node, "_index") or "_index"
        target = _lookup(node, name)
        if target is None:
            if column is not None:
                cols = [k for k in node if k != "__categories"]
                raise InputError(f"{path} has no column '{column}'; columns: {', '.join(cols)}")
            return
        if isinstance(target, h5py.Group):  # categorical column
            codes, cats = _lookup(target, "codes"), _lookup(target, "categories")
            if not isinstance(codes, h5py.Dataset) or not isinstance(cats, h5py.Dataset):
                raise InputError(f"{what} column {target.name} is neither strings nor categorical")
            if codes.dtype.kind not in "iu":
                raise InputError(f"{what} column {target.name} has non-integer category codes")
            self._codes = self._checked(codes, what == "var")
            self._categories = _decode(_read(self._checked(cats, True), slice(None), cats.name))
        elif not isinstance(target, h5py.Dataset):
            raise InputError(f"{what} column {path}/{name} is not a dataset")
        else:
            self._checked(target, what == "var")
        self.dataset = target

    def _checked(self, ds: h5py.Dataset, whole: bool) -> h5py.Dataset:
        """``ds`` once it is a 1-D dataset, really stored, of bounded size (``whole``: it is read
        at once, so its length is capped too)."""
        if ds.ndim != 1:
            raise InputError(f"{self.what} names {ds.name} are {ds.ndim}-D; expected 1-D")
        if not _name_dtype(ds.dtype if self.field is None or ds.dtype.names is None
                           else ds.dtype[self.field]):
            raise InputError(f"{self.what} names {ds.name} have type {ds.dtype}; expected strings "
                             "or numbers")
        if ds.dtype.itemsize > MAX_NAME_BYTES:
            raise InputError(f"{self.what} names {ds.name} take {ds.dtype.itemsize:,} bytes each; "
                             f"scdr reads at most {MAX_NAME_BYTES:,}")
        if whole:
            _check_n_vars(int(ds.shape[0]), str(ds.name))
            if ds.shape[0] * ds.dtype.itemsize > MAX_NAMES_TOTAL:
                raise InputError(f"{self.what} names {ds.name} take more than "
                                 f"{MAX_NAMES_TOTAL:,} bytes; scdr reads at most that")
        _check_stored(ds, str(ds.name))
        return ds

    def __len__(self) -> int:
        if self._codes is not None:
            return int(self._codes.shape[0])
        return 0 if self.dataset is None else int(self.dataset.shape[0])

    def read_all(self) -> list[str]:
        """All names."""
        return self.slice(0, len(self))

    def slice(self, start: int, stop: int) -> list[str]:
        """Names ``start:stop``; positions when the file stores none."""
        ds = self.dataset
        if ds is None:
            return [str(i) for i in range(start, stop)]
        if self._codes is not None:  # categorical column
            cats = self._categories
            codes = _read(self._codes, slice(start, stop), ds.name).astype(np.int64, copy=False)
            return [cats[c] if 0 <= c < len(cats) else "" for c in codes.tolist()]
        if self.field is not None:  # read only the named field of a legacy compound table
            return _decode(_read(ds.fields(self.field), slice(start, stop), ds.name))
        return _decode(_read(ds, slice(start, stop), ds.name))


def _decode(values: np.ndarray) -> list[str]:
    out = []
    for v in values.tolist():
        if isinstance(v, bytes):
            out.append(v.decode("utf-8", errors="replace"))
        else:
            out.append(str(v))
    return out


def _attr(node: h5py.HLObject, key: str, classes: tuple[int, ...]) -> Any:
    """Attribute ``key`` of ``node`` (None when absent), read only once its stored type is one of
    ``classes`` and it holds a few values: HDF5 itself can crash converting a damaged type."""
    try:
        if key not in node.attrs:
            return None
        attr = node.attrs.get_id(key)
        kind = attr.get_type().get_class()
        n_values = attr.get_space().get_simple_extent_npoints()
    except _H5_ERRORS as e:
        raise InputError(f"attribute '{key}' of {node.name} cannot be read ({_short(e)})") from None
    if kind not in classes or n_values > _MAX_ATTR_VALUES:
        raise InputError(f"attribute '{key}' of {node.name} is not what AnnData stores there "
                         "(wrong type or size); the file is damaged")
    try:
        return node.attrs[key]
    except _H5_ERRORS as e:
        raise InputError(f"attribute '{key}' of {node.name} cannot be read ({_short(e)})") from None


def _attr_str(node: h5py.HLObject, key: str) -> str | None:
    value = _attr(node, key, (h5py.h5t.STRING,))
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _read(ds: h5py.Dataset, selection: Any, what: str) -> np.ndarray:
    """``ds[selection]``, with a damaged file's read failure reported as an InputError."""
    try:
        return np.asarray(ds[selection])
    except _H5_ERRORS as e:
        raise InputError(f"{what} cannot be read ({_short(e)}); the file is damaged") from None


def _read_range(ds: h5py.Dataset, lo: int, hi: int, what: str) -> np.ndarray:
    """``ds[lo:hi]`` of a 1-d dataset through ``read_direct`` (about 1.5x faster than h5py's
    slicing on large ranges), with failures reported as ``_read`` does."""
    out = np.empty(hi - lo, ds.dtype)
    if hi > lo:
        try:
            ds.read_direct(out, np.s_[lo:hi], np.s_[0 : hi - lo])
        except _H5_ERRORS as e:
            raise InputError(f"{what} cannot be read ({_short(e)}); the file is damaged") from None
    return out


def _name_dtype(dtype: np.dtype) -> bool:
    """Whether names of this type can be read safely: strings (fixed or variable) or numbers,
    never variable-length sequences or references, whose conversion HDF5 may get wrong."""
    if dtype.kind in "SUiuf":
        return True
    return dtype.kind == "O" and h5py.check_string_dtype(dtype) is not None


def _join(group: str | None, name: str) -> str:
    return f"{(group or '').rstrip('/')}/{name}"


# --- sources ---------------------------------------------------------------------------------


class _H5Source(CountSource):
    def __init__(
        self,
        f: h5py.File,
        path: Path,
        location: str,
        node: Any,
        shape: tuple[int, int],
        var_names: list[str],
        obs_index: _Index,
    ) -> None:
        self.file, self.path, self.location, self.node = f, path, location, node
        if isinstance(node, h5py.Group):  # resolved once: the same datasets _encoding checked
            self.data, self.indices, self.indptr = (
                _lookup(node, key) for key in ("data", "indices", "indptr"))
        self.n_obs, self.n_vars = shape
        self.var_names = var_names
        self._obs_index = obs_index

    def close(self) -> None:
        self.file.close()

    def _obs_names(self, start: int, stop: int) -> list[str]:
        return self._obs_index.slice(start, stop)

    def _obs_column(self, name: str) -> Callable[[int, int], list[str]]:
        column = _Index(self.file, "obs", name, what="obs")
        if len(column) != self.n_obs:
            raise InputError(f"obs column '{name}' has {len(column)} values for {self.n_obs} cells")
        return column.slice

    def sample_values(self) -> np.ndarray:
        n = min(_SAMPLE_VALUES, self.data.shape[0])
        return _read(self.data, slice(0, n), f"{self.location}/data")

    def _rows_error(self, start: int, stop: int, problem: str) -> InputError:
        return InputError(f"{self.location}: {problem} in rows {start}-{stop - 1}; "
                          "the file is corrupt")


class _CsrSource(_H5Source):
    """CSR rows: ``data`` and ``indices`` by ``indptr`` ranges, read straight from the file where
    their layout allows (``scoring.storage``), else by h5py."""

    _direct: dict[str, Any] | None = None

    def close(self) -> None:
        for reader in (self._direct or {}).values():
            if reader is not None:
                reader.close()
        super().close()

    def _range(self, name: str, lo: int, hi: int) -> np.ndarray:
        if self._direct is None:
            self._direct = {key: range_reader(getattr(self, key), str(self.path),
                                              f"{self.location}/{key}")
                            for key in ("data", "indices")}
        reader = self._direct[name]
        if reader is None:
            return _read_range(getattr(self, name), lo, hi, f"{self.location}/{name}")
        return reader.read(lo, hi)

    def _read_blocks(
        self, start: int, stop: int
    ) -> Iterator[tuple[int, int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        where = f"{self.location}/indptr"
        indptr = _read(self.indptr, slice(start, stop + 1), where).astype(np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        sizes = np.diff(indptr)
        # uint64 pointers past int64 wrap negative, so every bad pointer shows up here
        if lo < 0 or hi > self.data.shape[0] or np.any(sizes < 0):
            raise self._rows_error(start, stop, "indptr is not monotone or points outside data")
        if sizes.size and int(sizes.max()) > self.n_vars:
            row = start + int(np.argmax(sizes))
            raise InputError(f"{self.location}: row {row} stores {int(sizes.max()):,} entries for "
                             f"{self.n_vars:,} genes; the file is corrupt")
        for a, b in _split_rows(indptr, BLOCK_ENTRIES):
            p0, p1 = int(indptr[a]), int(indptr[b])
            data, indices = self._range("data", p0, p1), self._range("indices", p0, p1)
            yield start + a, start + b, (data, indices, indptr[a : b + 1] - p0)


class _CscSource(_H5Source):
    """CSC is column-major: every chunk of rows scans all stored entries once (see README)."""

    _colptr: np.ndarray | None = None

    def _read_blocks(
        self, start: int, stop: int
    ) -> Iterator[tuple[int, int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        counts = np.zeros(stop - start, np.int64)
        block = self._scan(start, stop, counts)
        if block is not None:
            yield start, stop, block
            return
        # more entries than one block holds: split the rows by the counts of the first scan
        indptr = np.zeros(stop - start + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        for a, b in _split_rows(indptr, BLOCK_ENTRIES):
            sub = self._scan(start + a, start + b, np.zeros(b - a, np.int64), limit=False)
            assert sub is not None
            yield start + a, start + b, sub

    def _colptr_checked(self) -> np.ndarray:
        if self._colptr is None:
            colptr = _read(self.indptr, slice(None), f"{self.location}/indptr")
            colptr = colptr.astype(np.int64)
            if np.any(np.diff(colptr) < 0):
                raise InputError(f"{self.location}: indptr is not monotone; the file is corrupt")
            self._colptr = colptr
        return self._colptr

    def _scan(self, start: int, stop: int, counts: np.ndarray,
              limit: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Entries of rows ``start:stop`` as CSR, counting them per row into ``counts``; None
        (after a full counting scan) when they exceed ``BLOCK_ENTRIES`` and ``limit`` is set."""
        colptr = self._colptr_checked()
        nnz = int(colptr[-1])
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        kept = 0
        over = False
        for p0 in range(0, nnz, _CSC_BLOCK):
            p1 = min(p0 + _CSC_BLOCK, nnz)
            idx = _read(self.indices, slice(p0, p1), f"{self.location}/indices")
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
            over = over or (limit and kept > BLOCK_ENTRIES and stop - start > 1)
            if over:
                rows, cols, vals = [], [], []  # keep counting only
                continue
            rows.append(r)
            cols.append(np.searchsorted(colptr, p0 + pos, side="right") - 1)
            data = _read(self.data, slice(p0, p1), f"{self.location}/data")
            vals.append(data[pos])
        if over:
            return None
        indptr = np.zeros(stop - start + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        if not rows:
            dtype = self.data.dtype
            return np.zeros(0, dtype), np.zeros(0, np.int64), indptr
        r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        order = np.lexsort((c, r))
        return v[order], c[order], indptr


class _DenseSource(_H5Source):
    def sample_values(self) -> np.ndarray:
        rows = max(1, min(self.n_obs, _SAMPLE_VALUES // max(self.n_vars, 1)))
        return _read(self.node, slice(0, rows), self.location).ravel()

    def _read_blocks(
        self, start: int, stop: int
    ) -> Iterator[tuple[int, int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        step = max(1, _DENSE_BLOCK_VALUES // max(self.n_vars, 1))
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        first, held = start, 0
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            part = _dense_to_csr(_read(self.node, slice(lo, hi), self.location))
            parts.append(part)
            held += part[0].shape[0]
            if held >= BLOCK_ENTRIES and hi < stop:
                yield first, hi, _concat_csr(parts)
                parts, first, held = [], hi, 0
        yield first, stop, _concat_csr(parts)


class _ArraySource(CountSource):
    def __init__(
        self, matrix: np.ndarray | sp.spmatrix | sp.sparray, var_names: list[str],
        cell_ids: list[str] | None, groups: dict[str, Sequence[object]] | None = None,
    ) -> None:
        if sp.issparse(matrix):
            self.matrix = sp.csr_matrix(matrix)
            if self.matrix.dtype.kind not in "iuf":
                raise InputError(f"matrix has dtype {self.matrix.dtype}; expected numbers")
            try:  # scipy's own slicing trusts indptr/indices: check them before any of it runs
                self.matrix.check_format(full_check=True)
            except ValueError as e:
                raise InputError(f"the sparse matrix is malformed ({_short(e)})") from None
        else:
            self.matrix = np.asarray(matrix)
            if self.matrix.ndim != 2:
                raise InputError(f"expected a 2-D cells x genes matrix, got {self.matrix.ndim}-D")
            if self.matrix.dtype.kind not in "iuf":
                raise InputError(f"matrix has dtype {self.matrix.dtype}; expected numbers")
        self.n_obs, self.n_vars = (int(s) for s in self.matrix.shape)
        if len(var_names) != self.n_vars:
            raise InputError(f"{len(var_names)} gene names for {self.n_vars} matrix columns")
        if cell_ids is not None and len(cell_ids) != self.n_obs:
            raise InputError(f"{len(cell_ids)} cell ids for {self.n_obs} matrix rows")
        self.var_names = [str(v) for v in var_names]
        self.cell_ids = None if cell_ids is None else [str(c) for c in cell_ids]
        self.groups = {k: [str(v) for v in vals] for k, vals in (groups or {}).items()}
        self.location = "array"

    def sample_values(self) -> np.ndarray:
        if sp.issparse(self.matrix):
            return self.matrix.data[:_SAMPLE_VALUES]
        return self.matrix.ravel()[:_SAMPLE_VALUES]

    def _read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if sp.issparse(self.matrix):
            block = self.matrix[start:stop]
            block.sort_indices()
            return block.data, block.indices, block.indptr.astype(np.int64)
        return _dense_to_csr(self.matrix[start:stop])

    def _obs_names(self, start: int, stop: int) -> list[str]:
        if self.cell_ids is None:
            return [str(i) for i in range(start, stop)]
        return self.cell_ids[start:stop]

    def _obs_column(self, name: str) -> Callable[[int, int], list[str]]:
        if name not in self.groups:
            raise InputError(f"no values given for group column '{name}'")
        values = self.groups[name]
        if len(values) != self.n_obs:
            raise InputError(f"group column '{name}' has {len(values)} values for {self.n_obs} cells")
        return lambda lo, hi: values[lo:hi]


# --- helpers ---------------------------------------------------------------------------------


def _prefetched(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """The same chunks, each next one read on a worker thread while the caller works on the
    current one (direct reads and zlib release the interpreter lock); errors surface in order."""
    with ThreadPoolExecutor(1, thread_name_prefix="scdr-read") as pool:
        pending = pool.submit(next, chunks, None)
        while (chunk := pending.result()) is not None:
            pending = pool.submit(next, chunks, None)
            yield chunk


def _split_rows(indptr: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges ``(a, b)`` of a CSR ``indptr`` holding at most ``budget`` entries
    each (a single row may hold more)."""
    a, n = 0, indptr.shape[0] - 1
    while a < n:
        b = int(np.searchsorted(indptr, indptr[a] + budget, side="right")) - 1
        b = min(max(b, a + 1), n)
        yield a, b
        a = b


def _dense_to_csr(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(block)
    indptr = np.zeros(block.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=block.shape[0]), out=indptr[1:])
    return block[rows, cols], cols.astype(np.int64), indptr


def _concat_csr(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [p[2][-1] for p in parts[:-1]])
    indptr = np.concatenate([parts[0][2][:1]] + [p[2][1:] + o for p, o in zip(parts, offsets)])
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), indptr


def _as_float(data: np.ndarray) -> np.ndarray:
    if data.dtype in (np.float32, np.float64):
        return np.ascontiguousarray(data)
    return data.astype(np.float64 if data.dtype.itemsize > 4 else np.float32)


def _as_index(indices: np.ndarray) -> np.ndarray:
    if indices.dtype in (np.int32, np.int64):
        return np.ascontiguousarray(indices)
    return indices.astype(np.int64)  # uint64 past int64 wraps negative: the kernel reports it


def looks_like_counts(sample: np.ndarray) -> bool:
    """True when the stored values are non-negative integers (raw counts), ignoring NaN/inf."""
    if sample.size == 0 or sample.dtype.kind in "iu":
        return True
    finite = sample[np.isfinite(sample)]
    return bool(np.all(finite == np.round(finite)) and np.all(finite >= 0))


def _first_non_count(sample: np.ndarray) -> float:
    bad = sample[(sample != np.round(sample)) | (sample < 0)]
    return float(bad[0]) if bad.size else float("nan")


def _require_counts(sample: np.ndarray, where: str) -> None:
    if sample.size and sample.dtype.kind == "f" and np.nanmin(sample) < 0:
        share = float(np.mean(sample[np.isfinite(sample)] < 0))
        scaled = (f"; {share:.0%} of the values read are negative, so it looks like scaled data "
                  "(z-scores, e.g. scanpy's sc.pp.scale)") if share >= 0.05 else ""
        raise InputError(
            f"{where} holds negative values (e.g. {float(np.nanmin(sample)):.4g}){scaled}; "
            "counts and log-normalised values are never negative: point --layer at the raw counts"
            " (e.g. layers/counts or raw/X)"
        )
    if not looks_like_counts(sample):
        raise InputError(
            f"{where} holds non-integer or negative values (e.g. {_first_non_count(sample):.4g}), "
            "not raw counts; pass --normalized if it is log1p(CP10k)"
        )


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
