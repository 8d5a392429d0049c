"""Raw counts of a CSR chunk -> the model's normalised panel, in one fused parallel Numba pass.

The recipe is the card's (see ``exported_models/README.md``): library size over all genes of the
cell, scale to ``target_sum``, log1p, gather into panel order (summing features that map to the
same panel gene), z-score within the cell over the present panel genes, per-gene affine, clip.
"""

from dataclasses import dataclass

import numba
import numpy as np

from scoring.errors import InputError

STATUS_OK = 0
STATUS_ZERO_COUNTS = 1
STATUS_BAD_VALUE = 2
STATUS_BAD_INDEX = 3


@dataclass(frozen=True)
class Normalization:
    """The card's normalisation recipe, as arrays ready for the kernel."""

    target_sum: float | None
    log1p: bool
    accepts_normalized: bool
    cell_zscore: bool
    gene_mean: np.ndarray | None
    gene_std: np.ndarray | None
    clip: float | None


def normalize_chunk(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    gene_map: np.ndarray,
    present: np.ndarray,
    recipe: Normalization,
    normalized_input: bool = False,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise the rows of a CSR chunk into ``out`` [n_cells, n_panel] float32.

    Returns ``(out, status)``; status is 0, or 1 for a zero-count cell (its row is all zero).
    Raises InputError on negative/NaN/inf values or feature indices outside ``gene_map``.
    """
    n_cells, n_panel = indptr.shape[0] - 1, present.shape[0]
    if out is None or out.shape[0] < n_cells or out.shape[1] != n_panel:
        out = np.empty((n_cells, n_panel), dtype=np.float32)
    out = out[:n_cells]
    status = np.empty(n_cells, dtype=np.int8)
    skip_scale = normalized_input or recipe.target_sum is None
    empty = np.zeros(0, dtype=np.float64)
    _normalize_csr(
        data, indices, indptr, gene_map, present.astype(np.uint8),
        -1.0 if skip_scale else float(recipe.target_sum),
        recipe.log1p and not normalized_input,
        recipe.cell_zscore,
        empty if recipe.gene_mean is None else recipe.gene_mean,
        empty if recipe.gene_std is None else recipe.gene_std,
        -1.0 if recipe.clip is None else float(recipe.clip),
        out, status,
    )
    bad = np.flatnonzero(status >= STATUS_BAD_VALUE)
    if bad.size:
        row = int(bad[0])
        if status[row] == STATUS_BAD_VALUE:
            raise InputError(
                f"cell {row} of the chunk has negative, NaN or infinite values; "
                "counts must be finite and non-negative"
            )
        raise InputError(f"cell {row} of the chunk has a gene index outside the var table")
    return out, status


@numba.njit(parallel=True, cache=True, fastmath=False)
def _normalize_csr(data, indices, indptr, gene_map, present, target_sum, do_log1p,
                   cell_zscore, gene_mean, gene_std, clip, out, status):  # pragma: no cover
    n_cells = indptr.shape[0] - 1
    n_panel = out.shape[1]
    n_vars = gene_map.shape[0]
    n_present = 0
    for g in range(n_panel):
        n_present += present[g]
    has_affine = gene_mean.shape[0] == n_panel
    for i in numba.prange(n_cells):
        row = out[i]
        for g in range(n_panel):
            row[g] = 0.0
        lib = 0.0
        st = 0
        for k in range(indptr[i], indptr[i + 1]):
            v = data[k]
            j = indices[k]
            if not (v >= 0.0) or v == np.inf:
                st = 2
                break
            if j < 0 or j >= n_vars:
                st = 3
                break
            lib += v
            p = gene_map[j]
            if p >= 0:
                row[p] += v
        if st != 0:
            status[i] = st
            continue
        if lib <= 0.0:
            for g in range(n_panel):
                row[g] = 0.0
            status[i] = 1
            continue
        scale = target_sum / lib if target_sum > 0.0 else 1.0
        s1 = 0.0
        s2 = 0.0
        for g in range(n_panel):
            x = np.float64(row[g])
            if x != 0.0:
                y = x * scale
                if do_log1p:
                    y = np.log1p(y)
                row[g] = y
                s1 += y
                s2 += y * y
        mean = 0.0
        inv_sd = 1.0
        if cell_zscore and n_present > 0:
            mean = s1 / n_present
            var = s2 / n_present - mean * mean
            inv_sd = 1.0 / np.sqrt(var) if var > 0.0 else 0.0
        for g in range(n_panel):
            if present[g] == 0:
                row[g] = 0.0
                continue
            z = (np.float64(row[g]) - mean) * inv_sd
            if has_affine:
                z = (z - gene_mean[g]) / gene_std[g]
            if clip > 0.0:
                if z > clip:
                    z = clip
                elif z < -clip:
                    z = -clip
            row[g] = z
        status[i] = 0
