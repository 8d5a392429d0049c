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


@numba.njit(parallel=True, cache=True)
def _normalize_csr(data, indices, indptr, gene_map, present, target_sum, do_log1p,
                   cell_zscore, gene_mean, gene_std, clip, out, status):  # pragma: no cover
    """Per cell: accumulate panel counts, log-transform the touched genes, then one
    vectorisable pass ``z = y * a_g + b_g`` (z-score and gene affine folded, absent genes 0)."""
    n_cells = indptr.shape[0] - 1
    n_panel = out.shape[1]
    n_vars = gene_map.shape[0]
    n_present = 0
    for g in range(n_panel):
        n_present += present[g]
    # per-gene factors with the absent-gene mask folded in: z = ((y - mu) / sd - m_g) / s_g
    scale_g = np.zeros(n_panel)
    shift_g = np.zeros(n_panel)
    for g in range(n_panel):
        if present[g]:
            if gene_mean.shape[0] == n_panel:
                scale_g[g] = 1.0 / gene_std[g]
                shift_g[g] = -gene_mean[g] / gene_std[g]
            else:
                scale_g[g] = 1.0
    lo_clip = -clip if clip > 0.0 else -np.inf
    hi_clip = clip if clip > 0.0 else np.inf
    for i in numba.prange(n_cells):
        row = out[i]
        row[:] = 0.0
        touched = np.empty(indptr[i + 1] - indptr[i], np.int64)
        n_touched = 0
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
            if p >= 0 and v > 0.0:
                if row[p] == 0.0:
                    touched[n_touched] = p
                    n_touched += 1
                row[p] += v
        if st != 0:
            status[i] = st
            continue
        if lib <= 0.0:
            row[:] = 0.0
            status[i] = 1
            continue
        vals = np.empty(n_touched, np.float32)
        scale = target_sum / lib if target_sum > 0.0 else 1.0
        for t in range(n_touched):
            vals[t] = np.float32(row[touched[t]] * scale)
        if do_log1p:
            _log1p_inplace(vals)
        s1 = 0.0
        s2 = 0.0
        for t in range(n_touched):
            y = np.float64(vals[t])
            row[touched[t]] = vals[t]
            s1 += y
            s2 += y * y
        mean = 0.0
        inv_sd = 1.0
        if cell_zscore and n_present > 0:
            mean = s1 / n_present
            var = s2 / n_present - mean * mean
            inv_sd = 1.0 / np.sqrt(var) if var > 0.0 else 0.0
        for g in range(n_panel):
            a = scale_g[g] * inv_sd
            z = row[g] * a + (shift_g[g] - mean * a)
            row[g] = min(max(z, lo_clip), hi_clip)
        status[i] = 0


@numba.njit(cache=True, fastmath={"afn", "contract"})
def _log1p_inplace(vals):  # pragma: no cover
    """log(1 + x) over a contiguous buffer; vectorises (x >= 0 here, so log1p's small-x care
    is not needed beyond float32 rounding)."""
    one = np.float32(1.0)
    for t in range(vals.shape[0]):
        vals[t] = np.log(one + vals[t])
