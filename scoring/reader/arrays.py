"""In-memory matrices (numpy or scipy sparse) as a count source.

``scipy.sparse`` is imported only when a sparse matrix is given: scoring a file never needs it,
and its import is a tenth of a second of ``scdr-score``'s start-up.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from scdr.scoring.errors import InputError
from scdr.scoring.reader.base import CountSource, Csr, dense_to_csr, short
from scdr.scoring.reader.counts import require_counts
from scdr.scoring.reader.limits import SAMPLE_VALUES

if TYPE_CHECKING:
    import scipy.sparse as sp


def from_arrays(
    matrix: np.ndarray | sp.spmatrix | sp.sparray,
    gene_names: list[str],
    cell_ids: list[str] | None = None,
    normalized: bool = False,
    groups: dict[str, Sequence[object]] | None = None,
) -> CountSource:
    """Wrap an in-memory cells x genes matrix (numpy or scipy sparse) as a count source;
    ``groups`` gives per-cell values of named columns (as obs columns do for a file)."""
    source = ArraySource(matrix, list(gene_names), cell_ids, groups)
    if not normalized:
        require_counts(source.sample_values(), "the matrix")
    return source


class ArraySource(CountSource):
    """A checked in-memory matrix with its gene names, cell ids and group columns."""

    def __init__(
        self, matrix: np.ndarray | sp.spmatrix | sp.sparray, var_names: list[str],
        cell_ids: list[str] | None, groups: dict[str, Sequence[object]] | None = None,
    ) -> None:
        if is_sparse(matrix):
            import scipy.sparse as sp

            self.matrix = sp.csr_matrix(matrix)
            if self.matrix.dtype.kind not in "iuf":
                raise InputError(f"matrix has dtype {self.matrix.dtype}; expected numbers")
            try:  # scipy's own slicing trusts indptr/indices: check them before any of it runs
                self.matrix.check_format(full_check=True)
            except ValueError as e:
                raise InputError(f"the sparse matrix is malformed ({short(e)})") from None
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
        """The first stored values."""
        if is_sparse(self.matrix):
            return self.matrix.data[:SAMPLE_VALUES]
        return self.matrix.ravel()[:SAMPLE_VALUES]

    def _read_rows(self, start: int, stop: int) -> Csr:
        if is_sparse(self.matrix):
            block = self.matrix[start:stop]
            block.sort_indices()
            return block.data, block.indices, block.indptr.astype(np.int64)
        return dense_to_csr(self.matrix[start:stop])

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


def is_sparse(matrix: object) -> bool:
    """Whether ``matrix`` is a scipy sparse matrix or array; without importing scipy.sparse,
    which a caller holding one has already done."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and bool(sparse.issparse(matrix))
