"""Per-model aggregates for the report, fed chunk by chunk, in memory bounded independently of
the file size: a fixed histogram of P(sensitive), per-group counts, fine histograms and attribution
sums for at most ``MAX_GROUPS`` groups (later values are pooled as ``OTHER``), and at most
``MAX_EMBEDDING_POINTS`` cells kept for the embedding."""

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BINS = np.linspace(0.0, 1.0, 51)
FINE_BINS = 1000  # per-group histogram of P(sensitive) for the violins (resolution 0.001)
MAX_EMBEDDING_POINTS = 50_000
MAX_GROUPS = 500  # groups tracked per drug; values first seen after these are pooled
MAX_SHOWN_GROUPS = 30  # violins and heatmap columns (the largest groups)
OTHER = "(other values)"


class ReportCollector:
    """Per-model aggregates for the report, fed chunk by chunk like the table writers."""

    def __init__(self, drug: str, pathway_names: list[str], n_cells: int, groupby: str | None,
                 threshold: float, card: dict[str, Any] | None = None) -> None:
        self.drug = drug
        self.pathway_names = pathway_names
        self.groupby = groupby
        self.threshold = threshold
        self.card = card  # None: read from the bundle folder the run summary names
        self.histogram = np.zeros(len(BINS) - 1, np.int64)
        self.groups: dict[str, GroupStats] = {}
        self.groups_pooled = False
        self._known: set[str] = set()
        self.attr_sums: dict[str, np.ndarray] = {}
        self.attr_counts: dict[str, int] = {}
        self.stride = max(1, -(-n_cells // MAX_EMBEDDING_POINTS))
        self.sample_rows: list[np.ndarray] = []
        self.sample_probs: list[np.ndarray] = []
        self.sample_groups: list[np.ndarray] = []
        self._row = 0

    def open(self) -> None:
        """Nothing to open: aggregates live in memory."""

    def write(self, res: Any) -> None:
        """Add one chunk's predictions to the aggregates."""
        prob = np.clip(np.nan_to_num(res.probability.astype(np.float64)), 0.0, 1.0)
        self.histogram += np.histogram(prob, bins=BINS)[0]
        sensitive = res.label == "sensitive"
        attributions = res.attributions
        if attributions is not None:
            for label in ("sensitive", "resistant"):
                rows = res.label == label
                total = attributions[rows].sum(axis=0, dtype=np.float64)
                self.attr_sums[label] = self.attr_sums.get(label, 0) + total
                self.attr_counts[label] = self.attr_counts.get(label, 0) + int(rows.sum())
        values = None
        if self.groupby is not None:
            values = np.array([self._group_key(str(v)) for v in res.groups[self.groupby]], object)
            self._add_groups(values, prob, sensitive, attributions)
        rows = np.arange(self._row, self._row + len(prob))
        keep = rows % self.stride == 0
        self.sample_rows.append(rows[keep])
        self.sample_probs.append(prob[keep])
        if values is not None:
            self.sample_groups.append(values[keep])
        self._row += len(prob)

    @property
    def rows_seen(self) -> int:
        """How many cells have been added so far."""
        return self._row

    def commit(self) -> None:
        """Nothing to flush."""

    def abort(self) -> None:
        """Nothing to remove."""

    def _group_key(self, value: str) -> str:
        if value in self._known:
            return value
        if len(self._known) < MAX_GROUPS - 1:
            self._known.add(value)
            return value
        self.groups_pooled = True
        return OTHER

    def _add_groups(self, values: np.ndarray, prob: np.ndarray, sensitive: np.ndarray,
                    attributions: np.ndarray | None) -> None:
        fine = np.minimum((prob * FINE_BINS).astype(np.int64), FINE_BINS - 1)
        names, inverse = np.unique(values.astype(str), return_inverse=True)
        for k, name in enumerate(names.tolist()):
            rows = inverse == k
            stats = self.groups.setdefault(name, GroupStats())
            stats.n += int(rows.sum())
            stats.sensitive += int(sensitive[rows].sum())
            stats.hist += np.bincount(fine[rows], minlength=FINE_BINS)
            stats.low = min(stats.low, float(prob[rows].min()))
            stats.high = max(stats.high, float(prob[rows].max()))
            if attributions is not None:
                total = attributions[rows].sum(axis=0, dtype=np.float64)
                stats.attr_sum = total if stats.attr_sum is None else stats.attr_sum + total


@dataclass
class GroupStats:
    """One group's running aggregates: counts, a fine histogram of P(sensitive), attributions."""

    n: int = 0
    sensitive: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(FINE_BINS, np.int64))
    low: float = math.inf
    high: float = -math.inf
    attr_sum: np.ndarray | None = None


def shown_groups(col: ReportCollector) -> list[str]:
    """The largest ``MAX_SHOWN_GROUPS`` groups, in natural name order."""
    largest = sorted(col.groups, key=lambda g: (-col.groups[g].n, g))[:MAX_SHOWN_GROUPS]
    return sorted(largest, key=natural_key)


def hist_quantile(hist: np.ndarray, q: float) -> float:
    """Quantile of the values a fine histogram counts (bin centre)."""
    cum = np.cumsum(hist)
    k = int(np.searchsorted(cum, q * cum[-1], side="left")) if cum[-1] else 0
    return (min(k, FINE_BINS - 1) + 0.5) / FINE_BINS


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``cluster2`` before ``cluster10``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part)
                 for part in re.split(r"(\d+)", name) if part)
