"""Read the counts of an AnnData ``.h5ad`` with h5py alone, streaming row chunks.

Follows the AnnData on-disk spec: the reader dispatches on the ``encoding-type`` attribute
(``csr_matrix``, ``csc_matrix``, dense 2-D dataset) and understands the legacy pre-0.7 layout
(``h5sparse_format`` attributes, top-level ``raw.X``/``raw.var``, compound ``obs``/``var``).
Memory is bounded by the chunk size: index arrays, data and cell names are read per chunk.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from scoring.errors import InputError

COUNT_LOCATIONS = ("layers/counts", "raw/X", "X")
_SAMPLE_VALUES = 100_000
_CSC_BLOCK = 4_000_000
_DENSE_BLOCK_VALUES = 16_000_000


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
               obs_columns: Sequence[str] = ()) -> Iterator[Chunk]:
        """Yield the rows ``start:stop`` in chunks of at most ``chunk_size`` rows, with the
        values of the named obs columns (as strings) for those rows."""
        stop = self.n_obs if stop is None else min(stop, self.n_obs)
        columns = {name: self._obs_column(name) for name in obs_columns}
        for lo in range(start, stop, chunk_size):
            hi = min(lo + chunk_size, stop)
            data, indices, indptr = self._read_rows(lo, hi)
            yield Chunk(lo, hi, _as_float(data), _as_index(indices), indptr,
                        self._obs_names(lo, hi), {k: c(lo, hi) for k, c in columns.items()})

    def sample_values(self) -> np.ndarray:
        """The first stored values, for the integer-counts test."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the underlying file, if any."""

    def __enter__(self) -> "CountSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(
            f"{path} is not a readable HDF5/h5ad file ({_short(e)}); check that it is complete"
        ) from None
    try:
        return _open_in(f, path, layer, gene_column, normalized)
    except InputError:
        f.close()
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
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
    if "X" not in f and "raw" not in f and "raw.X" not in f and "layers" not in f:
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
        if _looks_like_counts(sample):
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


def _locate(f: h5py.File, location: str) -> tuple[h5py.Group | h5py.Dataset | None, str]:
    if location == "raw/X":
        if "raw" in f and isinstance(f["raw"], h5py.Group) and "X" in f["raw"]:
            return f["raw"]["X"], "raw/var"
        if "raw.X" in f:
            return f["raw.X"], "raw.var"
        return None, ""
    if location.startswith("layers/"):
        name = location.split("/", 1)[1]
        if "layers" in f and isinstance(f["layers"], h5py.Group) and name in f["layers"]:
            return f["layers"][name], "var"
        return None, ""
    return (f["X"], "var") if "X" in f else (None, "")


def _available(f: h5py.File) -> list[str]:
    found = [loc for loc in ("X", "raw/X") if _locate(f, loc)[0] is not None]
    if "layers" in f and isinstance(f["layers"], h5py.Group):
        found += [f"layers/{k}" for k in f["layers"]]
    return found


def _file_source(
    f: h5py.File,
    path: Path,
    location: str,
    node: h5py.Group | h5py.Dataset,
    var_path: str,
    gene_column: str | None,
) -> "CountSource":
    encoding, shape = _encoding(node, location)
    var_names = _Index(f, var_path, gene_column, what="var").read_all()
    if len(var_names) != shape[1]:
        raise InputError(
            f"{location} has {shape[1]} columns but {var_path} names {len(var_names)} genes"
        )
    obs_index = _Index(f, "obs", None, what="obs")
    if len(obs_index) not in (shape[0], 0):
        raise InputError(f"{location} has {shape[0]} rows but obs names {len(obs_index)} cells")
    cls = {"csr": _CsrSource, "csc": _CscSource, "dense": _DenseSource}[encoding]
    return cls(f, path, location, node, shape, var_names, obs_index)


def _encoding(node: h5py.Group | h5py.Dataset, location: str) -> tuple[str, tuple[int, int]]:
    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise InputError(f"{location} is a {node.ndim}-D dataset; expected a 2-D matrix")
        if node.dtype.kind not in "iuf":
            raise InputError(f"{location} has dtype {node.dtype}; expected numbers")
        return "dense", (int(node.shape[0]), int(node.shape[1]))
    enc = _attr_str(node, "encoding-type") or {"csr": "csr_matrix", "csc": "csc_matrix"}.get(
        _attr_str(node, "h5sparse_format") or "", ""
    )
    if enc not in ("csr_matrix", "csc_matrix"):
        raise InputError(
            f"{location} has unsupported encoding '{enc or 'none'}'; "
            "expected csr_matrix, csc_matrix or a dense array"
        )
    for key in ("data", "indices", "indptr"):
        if key not in node or not isinstance(node[key], h5py.Dataset) or node[key].ndim != 1:
            raise InputError(f"{location} is {enc} but lacks a 1-D '{key}' dataset")
    shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
    if shape is None or len(shape) != 2:
        raise InputError(f"{location} is {enc} but has no 2-D 'shape' attribute")
    n_obs, n_vars = (int(s) for s in shape)
    if n_obs < 0 or n_vars < 0:
        raise InputError(f"{location} has a negative shape {tuple(shape)}")
    data, indices, indptr = node["data"], node["indices"], node["indptr"]
    major = n_obs if enc == "csr_matrix" else n_vars
    if data.shape[0] != indices.shape[0]:
        raise InputError(f"{location}: data and indices differ in length")
    if indptr.shape[0] != major + 1:
        raise InputError(
            f"{location}: indptr has {indptr.shape[0]} entries but the shape {n_obs}x{n_vars} "
            f"needs {major + 1}; the file is inconsistent"
        )
    if data.dtype.kind not in "iuf" or indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise InputError(f"{location}: data, indices and indptr must be numeric")
    last = int(indptr[-1]) if major >= 0 else 0
    if last < 0 or last > data.shape[0] or int(indptr[0]) != 0:
        raise InputError(f"{location}: indptr points outside data ({last} > {data.shape[0]})")
    return ("csr" if enc == "csr_matrix" else "csc"), (n_obs, n_vars)


class _Index:
    """Names of obs or var (the dataframe index, or a named column), read whole or by slice."""

    def __init__(self, f: h5py.File, path: str, column: str | None, what: str) -> None:
        self.what = what
        self.dataset: h5py.Dataset | h5py.Group | None = None
        self.field: str | None = None
        if path not in f:
            if column is not None:
                raise InputError(f"the file has no {what} table, so no column '{column}'")
            return
        node = f[path]
        if isinstance(node, h5py.Dataset):  # legacy compound table
            fields = node.dtype.names or ()
            name = column or "index"
            if name not in fields:
                raise InputError(
                    f"{path} has no column '{name}'; columns: {', '.join(fields) or 'none'}"
                )
            self.dataset, self.field = node, name
            return
        name = column or _attr_str(node, "_index") or "_index"
        if name not in node:
            if column is not None:
                cols = [k for k in node if k != "__categories"]
                raise InputError(f"{path} has no column '{column}'; columns: {', '.join(cols)}")
            return
        self.dataset = node[name]

    def __len__(self) -> int:
        ds = self.dataset
        if ds is None:
            return 0
        if isinstance(ds, h5py.Group):
            return int(ds["codes"].shape[0]) if "codes" in ds else 0
        return int(ds.shape[0]) if ds.ndim == 1 else 0

    def read_all(self) -> list[str]:
        """All names."""
        return self.slice(0, len(self))

    def slice(self, start: int, stop: int) -> list[str]:
        """Names ``start:stop``; positions when the file stores none."""
        ds = self.dataset
        if ds is None:
            return [str(i) for i in range(start, stop)]
        if isinstance(ds, h5py.Group):  # categorical column
            if "codes" not in ds or "categories" not in ds:
                raise InputError(f"{self.what} column {ds.name} is neither strings nor categorical")
            cats = _decode(ds["categories"][()])
            codes = ds["codes"][start:stop]
            return [cats[c] if 0 <= c < len(cats) else "" for c in codes]
        values = ds[start:stop]
        if self.field is not None:
            values = values[self.field]
        return _decode(values)


def _decode(values: np.ndarray) -> list[str]:
    out = []
    for v in values.tolist():
        if isinstance(v, bytes):
            out.append(v.decode("utf-8", errors="replace"))
        else:
            out.append(str(v))
    return out


def _attr_str(node: h5py.HLObject, key: str) -> str | None:
    value = node.attrs.get(key)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# --- sources ---------------------------------------------------------------------------------


class _H5Source(CountSource):
    def __init__(
        self,
        f: h5py.File,
        path: Path,
        location: str,
        node: h5py.Group | h5py.Dataset,
        shape: tuple[int, int],
        var_names: list[str],
        obs_index: _Index,
    ) -> None:
        self.file, self.path, self.location, self.node = f, path, location, node
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
        return self.node["data"][: min(_SAMPLE_VALUES, self.node["data"].shape[0])]


class _CsrSource(_H5Source):
    def _read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indptr = self.node["indptr"][start : stop + 1].astype(np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        if lo < 0 or hi > self.node["data"].shape[0] or np.any(np.diff(indptr) < 0):
            raise InputError(
                f"{self.location}: indptr is not monotone or points outside data "
                f"in rows {start}-{stop - 1}; the file is corrupt"
            )
        data = self.node["data"][lo:hi]
        indices = self.node["indices"][lo:hi]
        return data, indices, indptr - lo


class _CscSource(_H5Source):
    """CSC is column-major: every chunk of rows scans all stored entries once (see README)."""

    def _read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        colptr = self.node["indptr"][()].astype(np.int64)
        if np.any(np.diff(colptr) < 0):
            raise InputError(f"{self.location}: indptr is not monotone; the file is corrupt")
        nnz = int(colptr[-1])
        rows, cols, vals = [], [], []
        for p0 in range(0, nnz, _CSC_BLOCK):
            p1 = min(p0 + _CSC_BLOCK, nnz)
            idx = self.node["indices"][p0:p1]
            if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.n_obs):
                raise InputError(f"{self.location}: row index out of range; the file is corrupt")
            pos = np.flatnonzero((idx >= start) & (idx < stop))
            if pos.size:
                rows.append(idx[pos].astype(np.int64) - start)
                cols.append(np.searchsorted(colptr, p0 + pos, side="right") - 1)
                vals.append(self.node["data"][p0:p1][pos])
        if not rows:
            return np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(stop - start + 1, np.int64)
        r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        order = np.lexsort((c, r))
        indptr = np.zeros(stop - start + 1, np.int64)
        np.cumsum(np.bincount(r, minlength=stop - start), out=indptr[1:])
        return v[order], c[order], indptr


class _DenseSource(_H5Source):
    def sample_values(self) -> np.ndarray:
        rows = max(1, min(self.n_obs, _SAMPLE_VALUES // max(self.n_vars, 1)))
        return np.asarray(self.node[:rows]).ravel()

    def _read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        step = max(1, _DENSE_BLOCK_VALUES // max(self.n_vars, 1))
        parts = [_dense_to_csr(np.asarray(self.node[lo : min(lo + step, stop)]))
                 for lo in range(start, stop, step)]
        return _concat_csr(parts)


class _ArraySource(CountSource):
    def __init__(
        self, matrix: np.ndarray | sp.spmatrix | sp.sparray, var_names: list[str],
        cell_ids: list[str] | None, groups: dict[str, Sequence[object]] | None = None,
    ) -> None:
        if sp.issparse(matrix):
            self.matrix = sp.csr_matrix(matrix)
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
        self.var_names = var_names
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
    return indices.astype(np.int64)


def _looks_like_counts(sample: np.ndarray) -> bool:
    if sample.size == 0 or sample.dtype.kind in "iu":
        return True
    finite = sample[np.isfinite(sample)]
    return bool(np.all(finite == np.round(finite)) and np.all(finite >= 0))


def _first_non_count(sample: np.ndarray) -> float:
    bad = sample[(sample != np.round(sample)) | (sample < 0)]
    return float(bad[0]) if bad.size else float("nan")


def _require_counts(sample: np.ndarray, where: str) -> None:
    if sample.size and sample.dtype.kind == "f" and np.nanmin(sample) < 0:
        raise InputError(
            f"{where} holds negative values (e.g. {float(np.nanmin(sample)):.4g}); "
            "counts and log-normalised values are never negative: point --layer at the raw counts"
        )
    if not _looks_like_counts(sample):
        raise InputError(
            f"{where} holds non-integer or negative values (e.g. {_first_non_count(sample):.4g}), "
            "not raw counts; pass --normalized if it is log1p(CP10k)"
        )


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
