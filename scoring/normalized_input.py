"""Check the ``--normalized`` claim on a sample of cells before anything is scored.

``--normalized`` promises log1p(CP10k): log1p of counts scaled to 10,000 per cell. Other common
matrices pass a value check but are not that, and flip calls silently: raw counts, CP10k without
the log, log1p(CPM), scanpy's default ``normalize_total`` (the median library size as target) or
z-scores. When the file holds every gene, ``expm1`` of a log1p-normalised row sums to the target
of its normalisation, which tells them apart:

* rows summing to the model's target: the claim holds; values are used as they are;
* rows summing to one other target (log1p(CPM), a median target): rescaled exactly, by scoring
  ``expm1`` of the values as counts (the library size then is that target), and said so;
* integers, values beyond any log1p, or negative values: refused with what they look like;
* row sums that vary (a file holding a subset of genes): the claim cannot be checked and is
  taken on trust, with a warning.
"""

from dataclasses import dataclass

import numpy as np

from scdr.scoring.errors import InputError
from scdr.scoring.reader import CountSource

SAMPLE_WINDOWS = 4  # windows of rows spread over the file
WINDOW_ROWS = 64
SAME_SUM = 0.01  # relative spread of row sums that counts as one target
MAX_LOG1P = float(np.log1p(1e7))  # no log1p-normalised value comes near (target <= 1e7)


@dataclass(frozen=True)
class NormalizedInput:
    """What the sample showed: whether to rescale, the rows' common sum, and what to tell."""

    rescale: bool  # score expm1(values) as counts: exact when every row sums to one target
    row_sum: float | None  # median expm1 row sum of the sample (None: no non-empty row)
    note: str | None  # a warning for the user, or None when the claim holds as given


def check_normalized(source: CountSource, target_sum: float) -> NormalizedInput:
    """Test a sample of ``source``'s rows against log1p(``target_sum``-normalised) values;
    InputError where they are something else."""
    data, sums = _sample(source)
    where = source.location
    if data.size == 0 or not np.all(np.isfinite(data)):  # the kernel names bad values by row
        return NormalizedInput(False, None, None)
    if np.any(data < 0):
        raise InputError(f"{where} holds negative values: it looks like scaled data (z-scores, "
                         "sc.pp.scale), not log1p(CP10k); give raw counts, or log1p(CP10k) values "
                         "with --normalized")
    if np.all(data == np.round(data)):
        raise InputError(f"{where} holds whole numbers only: it looks like raw counts, not "
                         "log1p(CP10k); drop --normalized")
    top = float(data.max())
    if top > MAX_LOG1P:
        plain = np.median(np.log1p(sums)) if sums.size else top
        raise InputError(f"{where} holds values up to {top:.4g}: not log-transformed (rows sum to "
                         f"~{np.expm1(plain):.3g}; CP10k without log1p?); apply log1p "
                         "(sc.pp.log1p) or give raw counts")
    row_sums = np.expm1(np.asarray(sums))
    median = float(np.median(row_sums))
    spread = float(np.max(np.abs(row_sums / median - 1))) if median > 0 else np.inf
    if spread > SAME_SUM:
        return NormalizedInput(False, median, (
            f"--normalized taken on trust: expm1 of the rows sums to {row_sums.min():.3g}-"
            f"{row_sums.max():.3g}, not to one target, so the file may hold a subset of genes "
            "and the claim of log1p(CP10k) cannot be checked"))
    if abs(median / target_sum - 1) <= SAME_SUM:
        return NormalizedInput(False, median, None)
    kind = "log1p(CPM)" if abs(median / 1e6 - 1) <= SAME_SUM else "log1p of normalize_total"
    return NormalizedInput(True, median, (
        f"rows sum to ~{median:.4g} after expm1: {kind} with target {median:.4g}, not "
        f"{target_sum:g}; rescaled exactly to log1p(CP10k) (every row sums to one target, so "
        "the file holds all genes)"))


def _sample(source: CountSource) -> tuple[np.ndarray, np.ndarray]:
    """Stored values of a few row windows spread over the file, and log1p(row sum of expm1)
    of each non-empty row (log scale keeps huge sums finite)."""
    n = source.n_obs
    starts = sorted({int(s) for s in np.linspace(0, max(n - WINDOW_ROWS, 0), SAMPLE_WINDOWS)})
    values, sums = [], []
    for start in starts:
        for chunk in source.chunks(WINDOW_ROWS, start, min(start + WINDOW_ROWS, n), prefetch=False):
            data = chunk.data.astype(np.float64)
            values.append(data)
            for lo, hi in zip(chunk.indptr[:-1], chunk.indptr[1:]):
                if hi > lo:
                    row = data[lo:hi]
                    sums.append(_log_sum_expm1(row))
    if not values:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(values), np.asarray(sums)


def _log_sum_expm1(row: np.ndarray) -> float:
    """log1p(sum(expm1(row))) without overflow for large values."""
    with np.errstate(over="ignore"):
        total = float(np.sum(np.expm1(row)))
    if np.isfinite(total):
        return float(np.log1p(total))
    top = float(row.max())
    return top + float(np.log(np.sum(np.exp(row - top))))
