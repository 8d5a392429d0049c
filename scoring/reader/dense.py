"""Dense matrices (``array`` 0.2.0, and the attribute-less datasets of anndata < 0.8), read in
slabs of rows and handed on as CSR."""

from collections.abc import Iterator
from typing import Any

import numpy as np

from scdr.scoring.errors import InputError
from scdr.scoring.reader import limits
from scdr.scoring.reader.base import Csr, FileSource, check_n_vars, concat_csr, dense_to_csr
from scdr.scoring.reader.guards import Tree
from scdr.scoring.reader.limits import SAMPLE_VALUES
from scdr.scoring.reader.registry import LEGACY, register


@register("array", "0.2.0", LEGACY)
class DenseSource(FileSource):
    """A 2-D numeric dataset, cells x features."""

    element = "array"

    @classmethod
    def inspect(cls, tree: Tree, node: Any, location: str) -> tuple[int, int]:
        """Rows and columns of the dataset ``node``, once it is a stored 2-D numeric matrix."""
        if node.ndim != 2:
            raise InputError(f"{location} is a {node.ndim}-D dataset; expected a 2-D matrix")
        if node.dtype.kind not in "iuf":
            raise InputError(f"{location} has dtype {node.dtype}; expected numbers")
        tree.check_stored(node, location)
        shape = (int(node.shape[0]), int(node.shape[1]))
        check_n_vars(shape[1], location)
        return shape

    def sample_values(self) -> np.ndarray:
        """The values of the first rows."""
        rows = max(1, min(self.n_obs, SAMPLE_VALUES // max(self.n_vars, 1)))
        return self.tree.read(self.node, slice(0, rows), self.location).ravel()

    def _read_blocks(self, start: int, stop: int) -> Iterator[tuple[int, int, Csr]]:
        step = max(1, limits._DENSE_BLOCK_VALUES // max(self.n_vars, 1))
        parts: list[Csr] = []
        first, held = start, 0
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            part = dense_to_csr(self.tree.read(self.node, slice(lo, hi), self.location))
            parts.append(part)
            held += part[0].shape[0]
            if held >= limits.BLOCK_ENTRIES and hi < stop:
                yield first, hi, concat_csr(parts)
                parts, first, held = [], hi, 0
        yield first, stop, concat_csr(parts)
