"""HDF5 guards: an input file seen as a tree of nodes that never leads outside the file.

Files are untrusted. Paths are walked one link at a time (soft links followed inside the file,
external links refused untraversed); a dataset is read only once it is known to keep its values
in the file and to store every value it claims; attributes are read only once their stored type
and size are what AnnData writes (libhdf5 itself can crash converting a damaged type); every
failure of h5py on a damaged file becomes one ``InputError``. ``Tree`` is the interface the
encodings use, so that a zarr store (``zarr_store``) is read by the same code.
"""

import math
from pathlib import Path
from typing import Any, ClassVar, Protocol

import h5py
import numpy as np

from scdr.scoring.errors import InputError
from scdr.scoring.reader.base import short
from scdr.scoring.reader.heaps import check_global_heaps
from scdr.scoring.reader.limits import MAX_ATTR_VALUES, MAX_LINK_HOPS
from scdr.scoring.storage import RangeReader, range_reader

# what h5py raises for damaged or unreadable objects; turned into InputError at the boundary
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


class Tree(Protocol):
    """An open AnnData-like container: groups and arrays with attributes, read defensively."""

    path: Path
    root: Any
    kind: str  # what the input is, for messages ("HDF5", "a zarr store")
    errors: tuple[type[BaseException], ...]  # what its library raises on damaged input

    def lookup(self, start: Any, path: str) -> Any:
        """The node at ``path`` (relative to ``start``, or absolute), or None when absent."""

    def is_group(self, node: Any) -> bool:
        """Whether ``node`` is a group."""

    def is_array(self, node: Any) -> bool:
        """Whether ``node`` is an array (an HDF5 dataset)."""

    def keys(self, group: Any) -> list[str]:
        """The member names of ``group``."""

    def attr_str(self, node: Any, key: str) -> str | None:
        """String attribute ``key`` of ``node``, or None when absent."""

    def attr_numbers(self, node: Any, key: str) -> Any:
        """Numeric attribute ``key`` of ``node`` (a few values), or None when absent."""

    def check_stored(self, ds: Any, what: str) -> None:
        """Refuse an array that keeps values outside the input or cannot hold what it claims."""

    def name_type_ok(self, dtype: np.dtype) -> bool:
        """Whether names stored with this type can be read safely."""

    def read(self, ds: Any, selection: Any, what: str) -> np.ndarray:
        """``ds[selection]``, a failure reported as an InputError naming ``what``."""

    def read_range(self, ds: Any, lo: int, hi: int, what: str) -> np.ndarray:
        """``ds[lo:hi]`` of a 1-d array, as fast as the container allows."""

    def read_field(self, ds: Any, field: str, selection: Any, what: str) -> np.ndarray:
        """One field of a compound array (a legacy table)."""

    def direct_reader(self, ds: Any, what: str) -> RangeReader | None:
        """A reader of ranges straight from the file, or None."""

    def close(self) -> None:
        """Release the file or store."""


def open_h5(path: Path) -> "H5Tree":
    """Open an HDF5 file read-only, refusing one that libhdf5 could not read safely."""
    try:
        # read-only input: a lock that the file system cannot take (NFS, Lustre) is no reason to fail
        f = h5py.File(path, "r", locking="best-effort")
    except OSError as e:
        raise InputError(
            f"{path} is not a readable HDF5/h5ad file ({short(e)}); check that it is complete"
        ) from None
    try:
        check_global_heaps(f, path)
    except InputError:
        f.close()
        raise
    except H5_ERRORS as e:
        f.close()
        raise InputError(f"{path} could not be read as AnnData ({short(e)})") from None
    return H5Tree(f, path)


class H5Tree:
    """An open HDF5 file behind the ``Tree`` interface."""

    errors: ClassVar[tuple[type[BaseException], ...]] = H5_ERRORS
    kind = "HDF5"

    def __init__(self, f: h5py.File, path: Path) -> None:
        self.file, self.path, self.root = f, path, f  # the file is its root group

    def lookup(self, start: Any, path: str, hops: int = 0) -> Any:
        """The object at ``path`` (relative to ``start``, or absolute), or None when absent.

        Walks the path one link at a time so that nothing outside the file is ever opened: soft
        links are followed inside the file (at most ``MAX_LINK_HOPS``), external and user-defined
        links are refused without being traversed.
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
                if hops >= MAX_LINK_HOPS:
                    raise InputError(f"{node.name}/{name}: soft links nest too deep (a loop?)")
                target = links.get_val(key).decode("utf-8", errors="surrogateescape")
                node = self.lookup(node, target, hops + 1)
                if node is None:
                    return None
            else:
                raise InputError(
                    f"{join(node.name, name)} is an external link into another file; "
                    "scdr reads only the input file: save the data into it (e.g. anndata.write_h5ad)"
                )
        return node

    def is_group(self, node: Any) -> bool:
        """Whether ``node`` is a group."""
        return isinstance(node, h5py.Group)

    def is_array(self, node: Any) -> bool:
        """Whether ``node`` is a dataset."""
        return isinstance(node, h5py.Dataset)

    def keys(self, group: Any) -> list[str]:
        """The member names of ``group``."""
        return list(group)

    def attr_str(self, node: Any, key: str) -> str | None:
        """String attribute ``key`` of ``node``, or None when absent."""
        value = self._attr(node, key, (h5py.h5t.STRING,))
        if value is None:
            return None
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        return str(value)

    def attr_numbers(self, node: Any, key: str) -> Any:
        """Numeric attribute ``key`` of ``node`` (a few values), or None when absent."""
        return self._attr(node, key, (h5py.h5t.INTEGER, h5py.h5t.FLOAT))

    def check_stored(self, ds: h5py.Dataset, what: str) -> None:
        """Refuse a dataset whose values live outside the file, or that claims more values than
        it stores (never-written storage reads back as fill values: an incomplete or forged
        file)."""
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
                    f"{what} claims {ds.size:,} values but stores only {stored:,} of its "
                    f"{expected:,} chunks; the file is incomplete (an interrupted write?) or forged"
                )
        elif layout == h5py.h5d.CONTIGUOUS and ds.id.get_storage_size() == 0:
            raise InputError(f"{what} claims {ds.size:,} values but none were ever written; "
                             "the file is incomplete or forged")

    def name_type_ok(self, dtype: np.dtype) -> bool:
        """Whether names of this type can be read safely: strings (fixed or variable) or numbers,
        never variable-length sequences or references, whose conversion HDF5 may get wrong."""
        if dtype.kind in "SUiuf":
            return True
        return dtype.kind == "O" and h5py.check_string_dtype(dtype) is not None

    def read(self, ds: h5py.Dataset, selection: Any, what: str) -> np.ndarray:
        """``ds[selection]``, with a damaged file's read failure reported as an InputError."""
        try:
            return np.asarray(ds[selection])
        except H5_ERRORS as e:
            raise InputError(f"{what} cannot be read ({short(e)}); the file is damaged") from None

    def read_range(self, ds: h5py.Dataset, lo: int, hi: int, what: str) -> np.ndarray:
        """``ds[lo:hi]`` of a 1-d dataset through ``read_direct`` (about 1.5x faster than h5py's
        slicing on large ranges), with failures reported as ``read`` does."""
        out = np.empty(hi - lo, ds.dtype)
        if hi > lo:
            try:
                ds.read_direct(out, np.s_[lo:hi], np.s_[0 : hi - lo])
            except H5_ERRORS as e:
                raise InputError(f"{what} cannot be read ({short(e)}); the file is damaged") from None
        return out

    def read_field(self, ds: h5py.Dataset, field: str, selection: Any, what: str) -> np.ndarray:
        """One field of a compound dataset (a legacy table), only that field being read."""
        return self.read(ds.fields(field), selection, what)

    def direct_reader(self, ds: h5py.Dataset, what: str) -> RangeReader | None:
        """A reader of ``ds`` ranges straight from the file, when its layout allows one."""
        return range_reader(ds, str(self.path), what)

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    def _attr(self, node: h5py.HLObject, key: str, classes: tuple[int, ...]) -> Any:
        """Attribute ``key`` of ``node`` (None when absent), read only once its stored type is
        one of ``classes`` and it holds a few values."""
        try:
            if key not in node.attrs:
                return None
            attr = node.attrs.get_id(key)
            kind = attr.get_type().get_class()
            n_values = attr.get_space().get_simple_extent_npoints()
        except H5_ERRORS as e:
            raise InputError(f"attribute '{key}' of {node.name} cannot be read ({short(e)})") from None
        if kind not in classes or n_values > MAX_ATTR_VALUES:
            raise InputError(f"attribute '{key}' of {node.name} is not what AnnData stores there "
                             "(wrong type or size); the file is damaged")
        try:
            return node.attrs[key]
        except H5_ERRORS as e:
            raise InputError(f"attribute '{key}' of {node.name} cannot be read ({short(e)})") from None


def join(group: str | None, name: str) -> str:
    """``group/name`` with one slash."""
    return f"{(group or '').rstrip('/')}/{name}"
