"""AnnData zarr stores (a directory, or a zip file) behind the ``Tree`` interface, so that the
encodings registered for HDF5 read them unchanged. Needs the ``zarr`` extra.

The HDF5 guards that apply are kept: attributes are read only when they have the type and size
AnnData writes, a directory store may not hold links that lead out of it, a chunk may not decode
to more than ``MAX_CHUNK_BYTES``, and every failure of zarr on a damaged store becomes one
``InputError``. Chunks that are absent are not refused as they are in HDF5: zarr leaves out
chunks that hold only the fill value, so an absent chunk is valid data.
"""

import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from scdr.scoring.errors import InputError
from scdr.scoring.reader.base import short
from scdr.scoring.reader.limits import MAX_ATTR_VALUES, MAX_CHUNK_BYTES
from scdr.scoring.storage import RangeReader

ZARR_METADATA = (".zgroup", "zarr.json")  # the root of a zarr v2 or v3 store
_ZIP_MAGIC = b"PK\x03\x04"


def open_zarr(path: Path) -> "ZarrTree":
    """Open the zarr store at ``path`` (a directory or a zip file) read-only."""
    try:
        import zarr
    except ImportError:
        raise InputError(f"{path} is a zarr store; reading it needs zarr: "
                         'pip install "scdr[zarr]"') from None
    store: Any = None
    try:
        if path.is_dir():
            _refuse_links_out(path)
            store = zarr.storage.LocalStore(path, read_only=True)
        else:
            store = zarr.storage.ZipStore(path, mode="r")
        root = zarr.open_group(store, mode="r", use_consolidated=False)
    except InputError:
        raise
    except Exception as e:  # zarr and its codecs raise many kinds on a damaged store
        if store is not None:
            store.close()
        kind = "directory" if path.is_dir() else "zip file"
        raise InputError(f"{path} is not a readable zarr store ({kind}: {short(e)})") from None
    return ZarrTree(root, store, path)


def is_zarr_dir(path: Path) -> bool:
    """Whether the directory ``path`` is the root of a zarr store."""
    return any((path / name).is_file() for name in ZARR_METADATA)


def is_zip(path: Path) -> bool:
    """Whether the file ``path`` is a zip file (the container of a zipped zarr store)."""
    with open(path, "rb") as fh:
        return fh.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC


class ZarrTree:
    """An open zarr store behind the ``Tree`` interface."""

    errors: ClassVar[tuple[type[BaseException], ...]] = (Exception,)
    kind = "a zarr store"

    def __init__(self, root: Any, store: Any, path: Path) -> None:
        self.root, self.store, self.path = root, store, path

    def lookup(self, start: Any, path: str) -> Any:
        """The node at ``path`` (relative to ``start``, or absolute), or None when absent."""
        node = self.root if path.startswith("/") else start
        for name in (p for p in path.split("/") if p):
            if not self.is_group(node) or name in (".", ".."):
                return None
            try:
                node = node.get(name)
            except Exception as e:
                raise InputError(f"{_name(node).rstrip('/')}/{name} cannot be read ({short(e)}); "
                                 "the store is damaged") from None
            if node is None:
                return None
        return node

    def is_group(self, node: Any) -> bool:
        """Whether ``node`` is a group."""
        import zarr

        return isinstance(node, zarr.Group)

    def is_array(self, node: Any) -> bool:
        """Whether ``node`` is an array."""
        import zarr

        return isinstance(node, zarr.Array)

    def keys(self, group: Any) -> list[str]:
        """The member names of ``group``."""
        return sorted(group.keys())

    def attr_str(self, node: Any, key: str) -> str | None:
        """String attribute ``key`` of ``node``, or None when absent."""
        value = self._attr(node, key)
        if value is not None and not isinstance(value, str):
            raise _bad_attr(node, key)
        return value

    def attr_numbers(self, node: Any, key: str) -> Any:
        """Numeric attribute ``key`` of ``node`` (a few values), or None when absent."""
        value = self._attr(node, key)
        if value is None:
            return None
        values = value if isinstance(value, list) else [value]
        if len(values) > MAX_ATTR_VALUES or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise _bad_attr(node, key)
        return np.asarray(value)

    def check_stored(self, ds: Any, what: str) -> None:
        """Refuse an array whose chunks would each decode to more than ``MAX_CHUNK_BYTES``."""
        chunk_bytes = math.prod(ds.chunks) * ds.dtype.itemsize
        if chunk_bytes > MAX_CHUNK_BYTES:
            raise InputError(f"{what} is stored in chunks of {chunk_bytes:,} bytes; scdr reads "
                             f"chunks of at most {MAX_CHUNK_BYTES:,}")

    def name_type_ok(self, dtype: np.dtype) -> bool:
        """Whether names of this type can be read: strings or numbers."""
        return dtype.kind in "SUiufTO"

    def read(self, ds: Any, selection: Any, what: str) -> np.ndarray:
        """``ds[selection]``, with a damaged store's read failure reported as an InputError."""
        try:
            return np.asarray(ds[selection])
        except Exception as e:
            raise InputError(f"{what} cannot be read ({short(e)}); the store is damaged") from None

    def read_range(self, ds: Any, lo: int, hi: int, what: str) -> np.ndarray:
        """``ds[lo:hi]`` of a 1-d array."""
        return self.read(ds, slice(lo, hi), what)

    def read_field(self, ds: Any, field: str, selection: Any, what: str) -> np.ndarray:
        """Refused: legacy compound tables exist only in HDF5 files."""
        raise InputError(f"{what} is a compound table, which scdr reads only from HDF5 files")

    def direct_reader(self, ds: Any, what: str) -> RangeReader | None:
        """None: zarr arrays are read through zarr."""
        return None

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    def _attr(self, node: Any, key: str) -> Any:
        try:
            return node.attrs.get(key)
        except Exception as e:
            raise InputError(f"attribute '{key}' of {_name(node)} cannot be read "
                             f"({short(e)}); the store is damaged") from None


def _refuse_links_out(root: Path) -> None:
    """Refuse a directory store holding a symbolic link that resolves outside it."""
    top = os.path.realpath(root)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            entry = os.path.join(folder, name)
            if os.path.islink(entry):
                target = os.path.realpath(entry)
                if os.path.commonpath([top, target]) != top:
                    raise InputError(f"{entry} is a link out of the zarr store; scdr reads only "
                                     "the input store: copy the data into it")


def _name(node: Any) -> str:
    return str(getattr(node, "name", "") or "/")


def _bad_attr(node: Any, key: str) -> InputError:
    return InputError(f"attribute '{key}' of {_name(node)} is not what AnnData stores there "
                      "(wrong type or size); the store is damaged")
