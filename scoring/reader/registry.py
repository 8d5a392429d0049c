"""Matrix encodings, registered by ``(encoding-type, encoding-version)`` as anndata's IO registry
does, so that a version this reader was not written for is refused instead of guessed at.

Layouts from before AnnData stored encodings are registered under the version ``LEGACY`` and
chosen explicitly: a dataset without attributes is a dense matrix (anndata < 0.8), a group with
an ``h5sparse_format`` attribute is a sparse matrix (anndata < 0.7).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from scdr.scoring.errors import InputError
from scdr.scoring.reader.base import FileSource
from scdr.scoring.reader.guards import Tree

LEGACY = "legacy"

S = TypeVar("S", bound=type[FileSource])


@dataclass(frozen=True)
class Encoding:
    """An AnnData element encoding: its ``encoding-type`` and ``encoding-version`` attributes."""

    type: str
    version: str


_SOURCES: dict[Encoding, type[FileSource]] = {}
_LEGACY_SPARSE = {"csr": "csr_matrix", "csc": "csc_matrix"}  # h5sparse_format values


def register(encoding_type: str, *versions: str) -> Callable[[S], S]:
    """Class decorator: the source reads matrices stored as ``encoding_type`` at ``versions``."""

    def add(cls: S) -> S:
        for version in versions:
            key = Encoding(encoding_type, version)
            if key in _SOURCES:
                raise ValueError(f"{key} is registered twice")
            _SOURCES[key] = cls
        return cls

    return add


def source_for(tree: Tree, node: Any, location: str) -> type[FileSource]:
    """The registered source of the matrix at ``node``, from its encoding attributes."""
    if tree.is_array(node):
        element = "array"
    elif tree.is_group(node):
        element = "group"
    else:
        raise InputError(f"{location} is neither a matrix group nor a dataset")
    found = tree.attr_str(node, "encoding-type")
    if not found:
        legacy = _legacy_type(tree, node, element)
        if legacy is None:
            raise _unsupported(location, "none")
        return _SOURCES[Encoding(legacy, LEGACY)]
    versions = supported_versions(found, element)
    if not versions:
        raise _unsupported(location, found)
    version = tree.attr_str(node, "encoding-version")
    if version not in versions:
        raise InputError(
            f"{location} is {found} of encoding-version '{version or 'none'}', which scdr does "
            f"not read (supported: {', '.join(versions)}); the file may come from a newer anndata"
        )
    return _SOURCES[Encoding(found, version)]


def supported_versions(encoding_type: str, element: str) -> list[str]:
    """The versions of ``encoding_type`` (stored as a group or an array) registered, legacy
    layouts aside."""
    return sorted(key.version for key, cls in _SOURCES.items()
                  if key.type == encoding_type and key.version != LEGACY and cls.element == element)


def _legacy_type(tree: Tree, node: Any, element: str) -> str | None:
    if element == "array":
        return "array"
    return _LEGACY_SPARSE.get(tree.attr_str(node, "h5sparse_format") or "")


def _unsupported(location: str, found: str) -> InputError:
    return InputError(f"{location} has unsupported encoding '{found}'; "
                      "expected csr_matrix, csc_matrix or a dense array")
