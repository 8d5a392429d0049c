"""Whether stored values are raw counts: the test that picks the matrix to score."""

import numpy as np

from scdr.scoring.errors import InputError


def looks_like_counts(sample: np.ndarray) -> bool:
    """True when the stored values are non-negative integers (raw counts), ignoring NaN/inf."""
    if sample.size == 0 or sample.dtype.kind in "iu":
        return True
    finite = sample[np.isfinite(sample)]
    return bool(np.all(finite == np.round(finite)) and np.all(finite >= 0))


def require_counts(sample: np.ndarray, where: str) -> None:
    """Refuse values that are not raw counts, naming scaled data (z-scores) as such."""
    if sample.size and sample.dtype.kind == "f" and np.nanmin(sample) < 0:
        share = float(np.mean(sample[np.isfinite(sample)] < 0))
        scaled = (f"; {share:.0%} of the values read are negative, so it looks like scaled data "
                  "(z-scores, e.g. scanpy's sc.pp.scale)") if share >= 0.05 else ""
        raise InputError(
            f"{where} holds negative values (e.g. {float(np.nanmin(sample)):.4g}){scaled}; "
            "counts and log-normalised values are never negative: point --layer at the raw counts"
            " (e.g. layers/counts or raw/X)"
        )
    if not looks_like_counts(sample):
        raise InputError(
            f"{where} holds non-integer or negative values (e.g. {first_non_count(sample):.4g}), "
            "not raw counts; pass --normalized if it is log1p(CP10k)"
        )


def first_non_count(sample: np.ndarray) -> float:
    """The first value that is not a non-negative integer (NaN when there is none)."""
    bad = sample[(sample != np.round(sample)) | (sample < 0)]
    return float(bad[0]) if bad.size else float("nan")
