"""Gene statistics of the target cells at lower sequencing depths (the card's step 5b).

A model's single-cell gene statistics come from its target files; a droplet dataset scored later
detects fewer genes per cell, which shifts every standardised value and moves calls across the
threshold. Thinning the target counts binomially (what shallower sequencing of the same cells
does) gives the statistics at each depth, indexed by the cells' mean detection rate; scoring
interpolates them at each cell's own rate. Label-free: only the unlabelled targets are used.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from scdr.training.normalize import Normalization, detection_rate, gene_stats, scale_cells, standardize

KEEP_FRACTIONS = (1.0, 0.5, 0.25, 0.12, 0.06, 0.03)  # of each count; 1.0 = the files as they are
SEED = 0
# depth pairs: each target thinned to these fractions of its cells' mean detected genes (on the
# CEL-seq2 plates, 5,517 genes: about 2,500 and 1,000, the depths of depth_robustness.py)
PAIR_DEPTHS = (0.45, 0.18)
PAIR_SEED = 100  # draw r at depth k thins with seed PAIR_SEED + r * len(PAIR_DEPTHS) + k: not
# the seeds of the depth check


def depth_stats(
    counts: list[sp.spmatrix],
    features: list[list[str]],
    symbols: list[str],
    ensembl_ids: list[str | None],
    base: Normalization,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detection rates [K] (ascending) and gene means and SDs [K x panel] of the target cells
    thinned to each of ``KEEP_FRACTIONS``; the last (full-depth) row is the card's
    ``gene_mean``/``gene_std``."""
    rng = np.random.default_rng(SEED)
    rates, means, stds = [], [], []
    for keep in KEEP_FRACTIONS:
        blocks, level_rates = [], []
        for c, f in zip(counts, features, strict=True):
            thinned = thin(sp.csr_matrix(c), keep, rng)
            y, present, zero = scale_cells(thinned, f, symbols, ensembl_ids, base)
            blocks.append((y, present, zero))
            level_rates.append(detection_rate(thinned, f, symbols, ensembl_ids)[~zero])
        mean, std = gene_stats(blocks)
        rates.append(float(np.concatenate(level_rates).mean()))
        means.append(mean)
        stds.append(std)
    order = np.argsort(rates)
    if np.any(np.diff(np.asarray(rates)[order]) <= 0):
        raise ValueError("thinning did not lower the detection rate: targets too sparse for depth statistics")
    return np.asarray(rates)[order], np.asarray(means)[order], np.asarray(stds)[order]


def depth_pairs(
    counts: list[sp.spmatrix],
    features: list[list[str]],
    symbols: list[str],
    ensembl_ids: list[str | None],
    norm: Normalization,
    draws: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The target cells thinned to each of ``PAIR_DEPTHS``, ``draws`` independent times,
    normalised as the scorer normalises them (depth statistics at each cell's own rate), and for
    each thinned row the index of the same cell among the targets' cells with counts (the rows of
    ``Prepared.cells_x``).

    The student learns to give a thinned cell the ensemble's logit for the same cell at full
    depth, so that shallower data keep the calls (label-free: only the unlabelled targets). More
    draws show it more of the thinning noise around each cell, so that it learns the cell rather
    than one thinned copy."""
    files = [sp.csr_matrix(c) for c in counts]
    has_counts = [np.asarray(c.sum(axis=1)).ravel() != 0 for c in files]  # scale_cells' zero, negated
    starts = np.cumsum([0] + [int(h.sum()) for h in has_counts[:-1]])
    # each cell's row among the targets' cells with counts
    positions = [start + np.cumsum(h) - 1 for start, h in zip(starts, has_counts, strict=True)]
    # per depth and file: the same keep probability for every draw
    keeps = [[_keep_for_depth(c, h, depth) for c, h in zip(files, has_counts, strict=True)]
             for depth in PAIR_DEPTHS]
    rows, index = [], []
    for r, k in itertools.product(range(draws), range(len(PAIR_DEPTHS))):
        rng = np.random.default_rng(PAIR_SEED + r * len(PAIR_DEPTHS) + k)
        for c, f, keep, position in zip(files, features, keeps[k], positions, strict=True):
            thinned = thin(c, keep, rng)
            y, present, zero = scale_cells(thinned, f, symbols, ensembl_ids, norm)
            rate = detection_rate(thinned, f, symbols, ensembl_ids)
            x = standardize(y, present, zero, norm, rate=rate)
            rows.append(x[~zero])
            index.append(position[~zero])
    return np.concatenate(rows).astype(np.float32), np.concatenate(index).astype(np.int64)


def _keep_for_depth(counts: sp.csr_matrix, has_counts: np.ndarray, depth: float) -> float:
    """The keep probability under which the cells with counts keep ``depth`` of their mean
    detected genes (1 when no cell has counts)."""
    detected = np.diff(counts.indptr)[has_counts]
    return keep_for_genes(counts[has_counts], depth * float(detected.mean())) if detected.size else 1.0


def keep_for_genes(counts: sp.csr_matrix, genes: float) -> float:
    """Binomial keep-probability under which the cells keep ``genes`` detected genes on average."""
    c = counts.data.astype(np.float64)
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        detected = (1 - (1 - mid) ** c).sum() / counts.shape[0]
        lo, hi = (mid, hi) if detected < genes else (lo, mid)
    return (lo + hi) / 2


def thin(counts: sp.csr_matrix, keep: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Shallower sequencing of the same cells: each count kept with probability ``keep``
    (integer counts; non-integers rounded first)."""
    if keep >= 1.0:
        return counts
    out = counts.copy()
    out.data = rng.binomial(np.rint(out.data).astype(np.int64), keep).astype(np.float64)
    out.eliminate_zeros()
    return out


def add_depth_stats(bundle_dir: str | Path, targets: list[str | Path]) -> dict:
    """Give an existing bundle its depth statistics (no retraining; the ONNX files are untouched).
    ``targets`` are the files it was trained on; each must match the card's recorded sha256."""
    from scdr.scoring.card import read_card, write_card
    from scdr.training.data import load_single_cell, sha256_file

    root = Path(bundle_dir)
    card = read_card(root)
    recorded = {t["file"]: t["sha256"] for t in card["training"]["data"]["targets"]}
    paths = [Path(p) for p in targets]
    if sorted(p.name for p in paths) != sorted(recorded):
        raise ValueError(f"{root} was trained on {sorted(recorded)}, not {[p.name for p in paths]}")
    for p in paths:
        if sha256_file(p) != recorded[p.name]:
            raise ValueError(f"{p} differs from the file {root} was trained on (sha256)")
    cells = [load_single_cell(p) for p in paths]
    genes, spec = card["genes"], card["normalization"]
    base = Normalization(target_sum=spec["target_sum"], log1p=spec["log1p"],
                         cell_zscore=spec["cell_zscore"], clip=spec["clip"],
                         rank=bool(spec.get("rank", False)))
    rate, mean, std = depth_stats([c.counts for c in cells], [c.features for c in cells],
                                  genes["symbols"], genes["ensembl_ids"], base)
    if not (np.array_equal(mean[-1], spec["gene_mean"]) and np.array_equal(std[-1], spec["gene_std"])):
        raise ValueError(f"{root}: the targets do not reproduce the card's gene statistics")
    spec["depth_stats"] = base.with_depth_stats(rate, mean, std).to_card()["depth_stats"]
    return write_card(root, card)
