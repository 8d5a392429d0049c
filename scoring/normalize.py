"""Raw counts of a CSR chunk -> the model's normalised panel, in one fused parallel Numba pass.

The recipe is the card's (see ``exported_models/README.md``): library size over all genes of the
cell, scale to ``target_sum``, log1p, gather into panel order (summing features that map to the
same panel gene), z-score within the cell over the present panel genes, per-gene standardisation
(at the cell's own detection rate when the card has depth statistics), clip.
"""


import numba
import numpy as np

from scdr.scoring.card import Normalization
from scdr.scoring.errors import InputError

STATUS_OK = 0
STATUS_ZERO_COUNTS = 1
STATUS_BAD_VALUE = 2
STATUS_BAD_INDEX = 3
SCRATCH = 16  # accumulator slots for genes outside the panel


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
    _normalize_csr(
        data, indices, indptr, gene_map, present.astype(np.uint8),
        -1.0 if skip_scale else float(recipe.target_sum),
        recipe.log1p and not normalized_input,
        recipe.cell_zscore,
        *_stats_grid(recipe, n_panel),
        -1.0 if recipe.clip is None else float(recipe.clip),
        out, status, 8 * numba.get_num_threads(),
    )
    bad = np.flatnonzero(status >= STATUS_BAD_VALUE)
    if bad.size:
        row = int(bad[0])
        if status[row] == STATUS_BAD_VALUE:
            values = np.asarray(data[indptr[row]:indptr[row + 1]])
            scaled = np.isfinite(values).all() and np.mean(values < 0) >= 0.05
            hint = (" (it looks like scaled data, z-scores as scanpy's sc.pp.scale writes: give "
                    "raw counts or log1p(CP10k) values with --normalized)") if scaled else ""
            raise InputError(
                f"cell {row} of the chunk has negative, NaN or infinite values{hint}; "
                "counts must be finite and non-negative"
            )
        raise InputError(f"cell {row} of the chunk has a gene index outside the var table")
    return out, status


_GRIDS: dict[int, tuple[Normalization, int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}


def _stats_grid(recipe: Normalization, n_panel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_affine_grid`` of a recipe, worked out once per recipe rather than once per chunk (the
    recipe is kept with its grid, so its id cannot be reused while the entry exists)."""
    hit = _GRIDS.get(id(recipe))
    if hit is None or hit[0] is not recipe or hit[1] != n_panel:
        if len(_GRIDS) >= 16:
            _GRIDS.clear()
        hit = _GRIDS[id(recipe)] = (recipe, n_panel, _affine_grid(recipe, n_panel))
    return hit[2]


def _affine_grid(recipe: Normalization, n_panel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 5 as a grid over detection rate of affines ``z = y * a + b`` (a = 1/SD, b = -mean/SD):
    the card's depth rows, or its one row of gene statistics (identity without) at rate 0."""
    if recipe.depth_rate is not None:
        rate, mean, std = recipe.depth_rate, recipe.depth_mean, recipe.depth_std
    elif recipe.gene_mean is not None:
        rate, mean, std = np.zeros(1), recipe.gene_mean[None], recipe.gene_std[None]
    else:
        rate, mean, std = np.zeros(1), np.zeros((1, n_panel)), np.ones((1, n_panel))
    return (np.asarray(rate, np.float64), np.asarray(1.0 / std, np.float32),
            np.asarray(-mean / std, np.float32))


@numba.njit(parallel=True, cache=True)
def _normalize_csr(data, indices, indptr, gene_map, present, target_sum, do_log1p,
                   cell_zscore, grid_rate, grid_scale, grid_shift, clip, out, status,
                   n_blocks):  # pragma: no cover
    """Per cell, each stored entry is touched once by a vectorised check-and-sum pass and once
    by a branch-free gather (genes outside the panel land in scratch slots); then the touched
    panel genes are log-transformed and one vectorised pass z-scores the cell, standardises each
    gene with the statistics at the cell's detection rate and clips (absent genes 0)."""
    n_cells = indptr.shape[0] - 1
    n_panel = out.shape[1]
    n_vars = gene_map.shape[0]
    # panel index, or one of SCRATCH slots past the panel: spreading the genes outside the
    # panel over several slots keeps their adds from queuing on one memory location. Unsigned
    # like every index below: Numba adds a negative-index wraparound test to each signed lookup,
    # which doubled the cost of this gather
    slot = np.empty(n_vars, np.uint32)
    for j in range(n_vars):
        slot[j] = gene_map[j] if gene_map[j] >= 0 else n_panel + j % SCRATCH
    n_present = 0
    keep = np.zeros(n_panel, np.float32)  # absent genes end at 0
    for g in range(n_panel):
        n_present += present[g]
        keep[g] = present[g]
    lo_clip = np.float32(-clip if clip > 0.0 else -np.inf)
    hi_clip = np.float32(clip if clip > 0.0 else np.inf)
    # cells in contiguous blocks, one per task: each block allocates its scratch rows once
    n_blocks = min(n_cells, max(1, n_blocks))
    for blk in numba.prange(n_blocks):
        acc = np.empty(n_panel + SCRATCH, np.float32)
        touched = np.empty(n_panel, np.uint32)
        vals = np.empty(n_panel, np.float32)
        for i in range(blk * n_cells // n_blocks, (blk + 1) * n_cells // n_blocks):
            status[i] = _normalize_cell(data, indices, indptr[i], indptr[i + 1], n_vars, slot,
                                        target_sum, do_log1p, cell_zscore, n_present, keep,
                                        grid_rate, grid_scale, grid_shift, lo_clip, hi_clip, acc,
                                        touched, vals, out[i])


@numba.njit(cache=True, inline="always")
def _normalize_cell(data, indices, lo, hi, n_vars, slot, target_sum, do_log1p, cell_zscore,
                    n_present, keep, grid_rate, grid_scale, grid_shift, lo_clip, hi_clip, acc,
                    touched, vals, row):  # pragma: no cover
    """One cell into ``row``; returns its status."""
    n_panel = row.shape[0]
    lib, bad_value, bad_index = _check_and_sum(data[lo:hi], indices[lo:hi], n_vars)
    if bad_value or bad_index:
        row[:] = 0.0
        return 2 if bad_value else 3
    if lib <= 0.0:
        row[:] = 0.0
        return 1
    acc[:] = 0.0
    for k in range(lo, hi):
        acc[slot[np.uint64(indices[k])]] += data[k]  # indices were checked in range above
    n_touched = 0
    for g in range(n_panel):
        touched[n_touched] = g
        n_touched += acc[g] > 0.0
    scale = np.float32(target_sum / lib if target_sum > 0.0 else 1.0)
    for t in range(n_touched):
        vals[t] = acc[touched[t]] * scale
    if do_log1p:
        _log1p_inplace(vals[:n_touched])
    s1 = 0.0
    s2 = 0.0
    for t in range(n_touched):
        y = np.float64(vals[t])
        acc[touched[t]] = vals[t]
        s1 += y
        s2 += y * y
    mean = 0.0
    inv_sd = 1.0
    if cell_zscore and n_present > 0:
        mean = s1 / n_present
        var = s2 / n_present - mean * mean
        inv_sd = 1.0 / np.sqrt(var) if var > 0.0 else 0.0
    k, t = _grid_position(grid_rate, n_touched / n_present if n_present > 0 else 0.0)
    k1 = min(k + 1, grid_rate.shape[0] - 1)
    _standardize_clip(acc, np.float32(inv_sd), np.float32(mean * inv_sd), grid_scale[k],
                      grid_scale[k1], grid_shift[k], grid_shift[k1], np.float32(t), keep, lo_clip,
                      hi_clip, row)
    return 0


@numba.njit(cache=True)
def _grid_position(grid, r):  # pragma: no cover
    """Row ``k`` and weight ``t`` of rate ``r`` between grid rows k and k+1 (clamped at the ends)."""
    n = grid.shape[0]
    if n == 1 or r <= grid[0]:
        return 0, 0.0
    if r >= grid[n - 1]:
        return n - 1, 0.0
    k = 0
    while grid[k + 1] <= r:
        k += 1
    return k, (r - grid[k]) / (grid[k + 1] - grid[k])


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _check_and_sum(values, idx, n_vars):  # pragma: no cover
    """Library size of one cell, and whether any value is negative/NaN/inf or any index is
    outside ``[0, n_vars)``; branch-free so that it vectorises."""
    lib = 0.0
    bad_v = 0
    bad_j = 0
    for k in range(values.shape[0]):
        v = values[k]
        lib += v
        bad_v |= not (v >= 0.0 and v < np.inf)
        bad_j |= np.uint64(idx[k]) >= np.uint64(n_vars)
    return lib, bad_v != 0, bad_j != 0


@numba.njit(cache=True, fastmath={"contract"})
def _standardize_clip(y, inv_sd, mean_inv_sd, a_lo, a_hi, b_lo, b_hi, t, keep, lo, hi,
                      row):  # pragma: no cover
    """``row[g] = clip((y[g] * inv_sd - mean_inv_sd) * a_g + b_g) * keep[g]``: the cell's
    z-score, then the gene affines of two grid rows blended at weight ``t``; vectorises."""
    for g in range(row.shape[0]):
        a = a_lo[g] + t * (a_hi[g] - a_lo[g])
        b = b_lo[g] + t * (b_hi[g] - b_lo[g])
        z = (y[g] * inv_sd - mean_inv_sd) * a + b
        row[g] = min(max(z, lo), hi) * keep[g]


@numba.njit(cache=True, fastmath={"contract"})
def _log1p_inplace(vals):  # pragma: no cover
    """log(1 + x) in place for x >= 0, float32, as Cephes' logf computes log: exponent and
    mantissa from the bits, a degree-9 polynomial on [sqrt(1/2), sqrt(2)). Branch-free, so it
    vectorises (LLVM has no vector log without SVML); within 1e-6 relative of float64 log1p
    wherever float32's 1 + x is, i.e. no less accurate than ``np.log(1 + x)``."""
    bits = vals.view(np.int32)
    for t in range(vals.shape[0]):
        vals[t] = np.float32(1.0) + vals[t]
    for t in range(vals.shape[0]):
        b = bits[t]
        e = np.float32((b >> 23) - 127)
        bits[t] = (b & 0x007FFFFF) | 0x3F800000  # mantissa as a float in [1, 2)
        m = vals[t]
        big = m > np.float32(1.41421356)
        m = m * np.float32(0.5) if big else m
        e = e + np.float32(1.0) if big else e
        x = m - np.float32(1.0)
        z = x * x
        y = np.float32(7.0376836292e-2)
        y = y * x - np.float32(1.1514610310e-1)
        y = y * x + np.float32(1.1676998740e-1)
        y = y * x - np.float32(1.2420140846e-1)
        y = y * x + np.float32(1.4249322787e-1)
        y = y * x - np.float32(1.6668057665e-1)
        y = y * x + np.float32(2.0000714765e-1)
        y = y * x - np.float32(2.4999993993e-1)
        y = y * x + np.float32(3.3333331174e-1)
        y = y * x * z + np.float32(-2.12194440e-4) * e - np.float32(0.5) * z
        vals[t] = x + y + np.float32(0.693359375) * e
