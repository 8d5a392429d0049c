"""The bundle's normalisation in numpy, exactly as `exported_models/README.md` specifies it.

Single cells go through steps 1-7 (library size over all features, panel gather with duplicate
features summed, scale and log1p, z-score within the cell over the present panel genes, gene
standardisation, clip, absent genes to 0). Bulk rows, already log-scale and z-scored within each
line, go through steps 4-7 on their panel values. Everything is computed in float64 and returned
as float32, as `scoring` does.

Gene standardisation (step 5) uses per-domain statistics during training: bulk rows with means
and SDs over the training bulk lines, cells with means and SDs over the (unlabelled) target
cells. The card carries the single-cell statistics, which is what `scoring` applies to cells.

A rank recipe (``Normalization.rank``) replaces step 3 by each profile's average ranks over its
present panel genes, then z-scores them as step 4 does: ranks do not see a platform's scale or a
cell's depth beyond which genes are detected. Scoring does not read such cards yet.

Sequencing depth shifts every gene's standardised value (fewer detected genes: more zeros, larger
non-zero values), so the card may also carry statistics of the target cells thinned to lower depths
(`training/depth.py`); scoring then standardises each cell with the statistics interpolated at its
own detection rate (step 5b), and calls do not drift with the protocol's depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from scdr.scoring.card import Normalization

MIN_GENE_STD = 1e-8


@dataclass(frozen=True)
class NormalizedCells:
    """Panel vectors of one file's cells, with the per-file and per-cell masks."""

    values: np.ndarray  # float32 [n_cells, n_panel]
    present: np.ndarray  # bool [n_panel]: panel genes the file has
    zero_counts: np.ndarray  # bool [n_cells]: library size 0, vector all zero


def normalize_cells(
    counts: sp.spmatrix,
    features: list[str],
    symbols: list[str],
    ensembl_ids: list[str | None],
    norm: Normalization,
) -> NormalizedCells:
    """Steps 1-7 for raw counts [cells x features] onto the panel; float64 math, float32 out."""
    scaled, present, zero = scale_cells(counts, features, symbols, ensembl_ids, norm)
    rate = None if norm.depth_rate is None else detection_rate(counts, features, symbols, ensembl_ids)
    return NormalizedCells(standardize(scaled, present, zero, norm, rate), present, zero)


def detection_rate(counts: sp.spmatrix, features: list[str], symbols: list[str],
                   ensembl_ids: list[str | None]) -> np.ndarray:
    """Step 5b's depth measure: per cell, the fraction of the panel genes present in the file
    that have a positive count (0 when none is present)."""
    y, present = _gather_panel(sp.csr_matrix(counts, dtype=np.float64), features, symbols, ensembl_ids)
    if not present.any():
        return np.zeros(y.shape[0])
    return (y[:, present] > 0).sum(axis=1) / present.sum()


def scale_cells(
    counts: sp.spmatrix,
    features: list[str],
    symbols: list[str],
    ensembl_ids: list[str | None],
    norm: Normalization,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1-4: library size, gather, scale, log1p, cell z-score (float64, absent genes 0)."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    y, present = _gather_panel(counts, features, symbols, ensembl_ids)
    zero = library == 0
    if norm.rank:  # ranks of the counts are those of any per-cell monotone scaling of them
        y = within_row_ranks(y, present)
    elif norm.target_sum is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            y = y * norm.target_sum / library[:, None]
    if norm.log1p and not norm.rank:
        y = np.log1p(y)
    y[zero] = 0.0
    y[:, ~present] = 0.0
    if norm.cell_zscore:
        y = _cell_zscore(y, present)
    return y, present, zero


def _gather_panel(counts: sp.csr_matrix, features: list[str], symbols: list[str],
                  ensembl_ids: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: the counts summed into panel order [cells x panel] (absent genes 0) and the mask
    of panel genes the file has."""
    gene_map = match_features(features, symbols, ensembl_ids)
    rows = np.flatnonzero(gene_map >= 0)
    gather = sp.csr_matrix((np.ones(rows.size), (rows, gene_map[rows])),
                           shape=(len(features), len(symbols)))
    present = np.zeros(len(symbols), dtype=bool)
    present[gene_map[rows]] = True
    return np.asarray((counts @ gather).todense(), dtype=np.float64), present


def standardize(y: np.ndarray, present: np.ndarray, zero: np.ndarray, norm: Normalization,
                rate: np.ndarray | None = None) -> np.ndarray:
    """Steps 5-7: gene standardisation, clip, absent genes and empty cells to 0; float32 out.
    With the cells' detection ``rate`` and depth statistics in ``norm``, step 5b replaces step 5
    (scoring does this; training standardises its target cells with the pooled statistics)."""
    y = np.array(y, dtype=np.float64, copy=True)
    if rate is not None and norm.depth_rate is not None:
        y = depth_standardize(y, norm, rate)
    elif norm.gene_mean is not None and norm.gene_std is not None:
        y = (y - norm.gene_mean) / norm.gene_std
    if norm.clip is not None:
        np.clip(y, -norm.clip, norm.clip, out=y)
    y[:, ~present] = 0.0
    y[zero] = 0.0
    return y.astype(np.float32)


def depth_standardize(y: np.ndarray, norm: Normalization, rate: np.ndarray) -> np.ndarray:
    """Step 5b: each cell standardised with the two grid rows around its detection rate and the
    results blended linearly in the rate (the end row beyond the grid)."""
    grid = norm.depth_rate
    r = np.clip(np.asarray(rate, float), grid[0], grid[-1])
    k = np.clip(np.searchsorted(grid, r, side="right") - 1, 0, len(grid) - 2)
    t = ((r - grid[k]) / (grid[k + 1] - grid[k]))[:, None]
    lo = (y - norm.depth_mean[k]) / norm.depth_std[k]
    hi = (y - norm.depth_mean[k + 1]) / norm.depth_std[k + 1]
    return (1 - t) * lo + t * hi


def normalize_bulk(values: np.ndarray, norm: Normalization) -> np.ndarray:
    """Steps 4-7 for bulk panel values [lines x panel] (every gene present)."""
    y = np.asarray(values, dtype=np.float64)
    present = np.ones(y.shape[1], dtype=bool)
    if norm.rank:
        y = within_row_ranks(y, present)
    if norm.cell_zscore:
        y = _cell_zscore(y, present)
    return standardize(y, present, np.zeros(y.shape[0], dtype=bool), norm)


def gene_stats(blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Per-gene mean and population SD over (values, present, zero) blocks, present genes only."""
    n_panel = blocks[0][0].shape[1]
    total = np.zeros(n_panel)
    total_sq = np.zeros(n_panel)
    count = np.zeros(n_panel)
    for y, present, zero in blocks:
        kept = y[~zero]
        total[present] += kept[:, present].sum(axis=0)
        total_sq[present] += (kept[:, present] ** 2).sum(axis=0)
        count[present] += kept.shape[0]
    safe = np.maximum(count, 1)
    mean = total / safe
    std = np.sqrt(np.maximum(total_sq / safe - mean**2, 0.0))
    std[std < MIN_GENE_STD] = 1.0
    return mean, std


def match_features(features: list[str], symbols: list[str], ensembl_ids: list[str | None]) -> np.ndarray:
    """Panel index of each file feature by symbol or Ensembl key; -1 if none. Scoring's own
    matcher, so both halves map genes identically."""
    from scdr.scoring.genes import match_genes

    return match_genes(features, symbols, ensembl_ids).gene_map.astype(np.int64)


def within_row_ranks(y: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Step 3 of rank recipes: each row's average ranks (1..n, ties shared) over the present
    columns, absent columns 0. Invariant to any monotone per-row scale, so microarray and count
    profiles, deep or shallow, meet on one scale."""
    from scipy.stats import rankdata

    out = np.zeros_like(y, dtype=np.float64)
    if present.any() and y.shape[0]:
        out[:, present] = rankdata(y[:, present], method="average", axis=1)
    return out


def _cell_zscore(y: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Step 4: z-score each row over the present columns (population SD; SD 0 gives 0)."""
    out = np.zeros_like(y)
    if not present.any():
        return out
    sub = y[:, present]
    mean = sub.mean(axis=1, keepdims=True)
    centred = sub - mean
    sd = np.sqrt((centred**2).mean(axis=1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, centred / sd, 0.0)
    out[:, present] = z
    return out
