"""10x Genomics feature-barcode matrices: Cell Ranger 3+ ``filtered_feature_bc_matrix.h5``.

The group ``matrix`` holds a CSC matrix of features x cells (``data``, ``indices``, ``indptr``,
a ``shape`` dataset), the cell ``barcodes`` and ``features/{id,name,feature_type,genome}``. Its
columns are cells, so it is exactly a CSR matrix of cells x features and is streamed as one,
with the checks of the AnnData CSR reader. Feature names are the Ensembl ids (``features/id``);
``gene_column`` picks another ``features`` dataset (``name``: the symbols). Only features of
type "Gene Expression" are kept: antibody capture, CRISPR guide and other features are dropped
(the location names how many), since no model was trained on them.
"""

from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from scdr.scoring.errors import InputError
from scdr.scoring.reader.base import CountSource, Csr, as_index, check_n_vars
from scdr.scoring.reader.counts import require_counts
from scdr.scoring.reader.guards import Tree
from scdr.scoring.reader.names import dataset_names
from scdr.scoring.reader.sparse import CsrSource, check_extents, checked_shape, sparse_parts

LOCATION = "matrix"
GENE_EXPRESSION = "Gene Expression"
_WHAT = "a 10x Genomics matrix"


def is_tenx(tree: Tree) -> bool:
    """Whether the input is laid out as a 10x Genomics matrix (a top-level ``matrix`` group)."""
    return tree.is_group(tree.lookup(tree.root, LOCATION))


def open_tenx(tree: Tree, layer: str | None, gene_column: str | None,
              normalized: bool) -> CountSource:
    """The gene expression counts of a 10x Genomics matrix, checked as the AnnData reader does."""
    if layer is not None and layer.strip("/") != LOCATION:
        raise InputError(f"{tree.path} is {_WHAT}: it has no matrix at '{layer}'; "
                         f"available: {LOCATION}")
    source = TenxSource.open(tree, tree.lookup(tree.root, LOCATION), gene_column)
    if not normalized:
        require_counts(source.sample_values(), f"'{LOCATION}'")
    return source


class TenxSource(CsrSource):
    """The cells x features CSR view of a 10x matrix, gene expression features only."""

    _keep: np.ndarray | None = None  # new column of each stored feature (-1: dropped), or None
    _n_stored = 0

    @classmethod
    def open(cls, tree: Tree, node: Any, gene_column: str | None) -> "TenxSource":
        """Check the ``matrix`` group against what it stores and open it."""
        parts = sparse_parts(tree, node, LOCATION, _WHAT)
        n_features, n_cells = _shape(tree, node)
        check_n_vars(n_features, LOCATION)
        check_extents(tree, parts, LOCATION, (n_cells, n_features), n_cells)
        barcodes = _member(tree, node, "barcodes", "cell barcodes")
        obs_index = dataset_names(tree, barcodes, "obs", whole=False)
        if len(obs_index) != n_cells:
            raise InputError(f"{LOCATION} has {n_cells:,} cells but {LOCATION}/barcodes names "
                             f"{len(obs_index):,}; the file is inconsistent")
        features = _member(tree, node, "features", "feature table", group=True)
        names = _feature_column(tree, features, gene_column or "id", n_features, gene_column)
        kinds = (_feature_column(tree, features, "feature_type", n_features, None)
                 if tree.lookup(features, "feature_type") is not None else None)
        keep, location = _gene_expression(kinds, n_features)
        var_names = [n for n, k in zip(names, keep) if k] if keep is not None else names
        source = cls(tree, location, node, (n_cells, len(var_names)), var_names, obs_index)
        source._n_stored = n_features
        if keep is not None:
            source._keep = np.where(keep, np.cumsum(keep) - 1, -1).astype(np.int64)
        return source

    def _read_blocks(self, start: int, stop: int) -> Iterator[tuple[int, int, Csr]]:
        keep = self._keep
        for a, b, (data, indices, indptr) in super()._read_blocks(start, stop):
            if keep is None:
                yield a, b, (data, indices, indptr)
                continue
            indices = as_index(indices)
            if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= self._n_stored):
                raise self._rows_error(a, b, "a feature index is out of range")
            columns = keep[indices]
            kept = columns >= 0
            before = np.zeros(kept.size + 1, np.int64)
            np.cumsum(kept, out=before[1:])
            yield a, b, (data[kept], columns[kept], before[indptr])

    def _stored_columns(self) -> int:
        return self._n_stored


def _shape(tree: Tree, node: Any) -> tuple[int, int]:
    """``(features, cells)`` from the ``shape`` dataset."""
    ds = tree.lookup(node, "shape")
    if not tree.is_array(ds) or ds.ndim != 1 or ds.shape[0] != 2 or ds.dtype.kind not in "iu":
        raise InputError(f"{LOCATION} has no 2-D integer 'shape' dataset; "
                         f"it is not a complete 10x Genomics matrix")
    tree.check_stored(ds, f"{LOCATION}/shape")
    return checked_shape(tree.read(ds, slice(None), f"{LOCATION}/shape"), LOCATION,
                         "'shape' dataset")


def _member(tree: Tree, node: Any, key: str, what: str, group: bool = False) -> Any:
    member = tree.lookup(node, key)
    if not (tree.is_group(member) if group else tree.is_array(member)):
        kind = "group" if group else "dataset"
        raise InputError(f"{LOCATION} lacks the '{key}' {kind} ({what}); "
                         "it is not a complete 10x Genomics matrix")
    return member


def _feature_column(tree: Tree, features: Any, key: str, n_features: int,
                    asked: str | None) -> list[str]:
    """All values of ``features/key``, once it names exactly the matrix's features."""
    ds = tree.lookup(features, key)
    if not tree.is_array(ds):
        if asked is not None:
            columns = [k for k in tree.keys(features) if tree.is_array(tree.lookup(features, k))]
            raise InputError(f"{LOCATION}/features has no column '{asked}'; columns: "
                             f"{', '.join(columns) or 'none'}")
        raise InputError(f"{LOCATION}/features lacks the '{key}' dataset; "
                         "it is not a complete 10x Genomics matrix")
    names = dataset_names(tree, ds, "var", whole=True)
    if len(names) != n_features:
        raise InputError(f"{LOCATION}/features/{key} names {len(names):,} features but the "
                         f"matrix has {n_features:,}; the file is inconsistent")
    return names.read_all()


def _gene_expression(kinds: list[str] | None, n_features: int) -> tuple[np.ndarray | None, str]:
    """Which features to keep (None: all) and the location that says what was dropped."""
    if kinds is None or all(k == GENE_EXPRESSION for k in kinds):
        return None, LOCATION
    keep = np.array([k == GENE_EXPRESSION for k in kinds], bool)
    dropped = Counter(k for k in kinds if k != GENE_EXPRESSION)
    if not keep.any():
        raise InputError(f"{LOCATION} holds no '{GENE_EXPRESSION}' features (only "
                         f"{', '.join(sorted(dropped))}); scdr scores gene expression")
    listed = ", ".join(f"{n:,} {k}" for k, n in sorted(dropped.items()))
    return keep, f"{LOCATION} ({GENE_EXPRESSION} only; dropped {listed} of {n_features:,} features)"
