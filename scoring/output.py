"""Per-cell tables and JSON summaries, written to a temporary file and renamed into place
(`scoring.atomic`).

A table's format is its name's suffix (`table_format`): .csv, .tsv/.txt, the same gzipped
(.csv.gz, .tsv.gz; no name or time in the gzip header, so a rerun writes the same bytes) or
.parquet (needs pyarrow); `-` is CSV on standard output. Any other suffix is refused.
"""

import contextlib
import csv
import gzip
import io
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from scdr.scoring.atomic import publish, publish_text
from scdr.scoring.errors import OutputError
from scdr.scoring.numbers import FLOAT_FORMAT, format_column, format_rows

STDOUT = "-"
GZIP_LEVEL = 6


@dataclass(frozen=True)
class TableFormat:
    """How a table is written: delimiter, gzip or parquet."""

    delimiter: str
    gzip: bool = False
    parquet: bool = False


TABLE_FORMATS: dict[str, TableFormat] = {
    ".csv": TableFormat(","),
    ".tsv": TableFormat("\t"),
    ".txt": TableFormat("\t"),
    ".csv.gz": TableFormat(",", gzip=True),
    ".tsv.gz": TableFormat("\t", gzip=True),
    ".parquet": TableFormat(",", parquet=True),
}


def table_format(path: Path) -> TableFormat:
    """The format a table's name asks for; OutputError for a suffix no writer knows."""
    if str(path) == STDOUT:
        return TABLE_FORMATS[".csv"]
    name = path.name.lower()
    for suffix in sorted(TABLE_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            fmt = TABLE_FORMATS[suffix]
            if fmt.parquet:
                _require_pyarrow(path)
            return fmt
    raise OutputError(f"cannot write {path}: unknown table format; name it with one of "
                      f"{', '.join(TABLE_FORMATS)} (or - for standard output)")


def _require_pyarrow(path: Path) -> None:
    """Parquet tables need pyarrow; say how to get it."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise OutputError(f"writing {path.name} needs pyarrow (the parquet extra: pip install "
                          "'scdr[parquet]'), or name the output .csv, .tsv or .csv.gz") from None


def default_output_path(input_path: Path, drug: str) -> Path:
    """``<stem>.scdr.<drug>.csv`` next to the input."""
    return input_path.with_name(f"{input_path.stem}.scdr.{drug}.csv")


def table_delimiter(path: Path) -> str:
    """Tab for .tsv/.txt(.gz) outputs, comma otherwise."""
    return table_format(path).delimiter


def table_header(pathway_names: list[str] | None, explain: bool) -> list[str]:
    """Column names of a prediction table."""
    header = ["cell_id", "probability", "label", "zero_counts"]
    if explain:
        header += ["top_pathways", "ig_gap"]
    if pathway_names is not None:
        header += [f"pathway:{n}" for n in pathway_names]
    return header


def check_output_path(path: Path, force: bool) -> None:
    """Refuse to overwrite without ``force`` and fail early when the folder does not exist."""
    if path.exists() and not force:
        raise OutputError(f"{path} exists; pass --force to overwrite it")
    if path.exists() and path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name for the output")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")


class TableWriter:
    """Rows of one drug's predictions, streamed into a temp file that ``commit`` renames.

    With ``header=False`` it writes a part (rows only) of a table assembled later, formatted
    exactly as the whole table would be.
    """

    def __init__(self, path: Path, pathway_names: list[str] | None, explain: bool = False,
                 header: bool = True, delimiter: str | None = None) -> None:
        self.path = path
        self.pathway_names = pathway_names
        self.explain = explain
        self.header = header
        self.format = table_format(path) if delimiter is None else TableFormat(delimiter)
        self.delimiter = self.format.delimiter
        self._special = re.compile(f'[{re.escape(self.delimiter)}"\r\n]')  # what csv quotes
        self._quoted: dict[str, str] = {}
        self.worst_gap = 0.0
        self.gap_sum = 0.0
        self.n_rows = 0
        self._tmp: IO[str] | None = None
        self._tmp_path: Path | None = None
        self._writer: Any = None
        self._raw: IO[bytes] | None = None  # the temp file under a gzip or parquet stream
        self._parquet: Any = None

    def open(self) -> None:
        """Create the temporary file beside the target (or take stdout) and write the header."""
        if str(self.path) == STDOUT:
            self._tmp = sys.stdout
        else:
            try:
                fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                            dir=self.path.parent)
            except OSError as e:
                raise OutputError(f"cannot write in {self.path.parent} ({e.strerror})") from None
            self._tmp_path = Path(name)
            if self.format.parquet:
                self._raw = os.fdopen(fd, "wb")
                return
            if self.format.gzip:
                self._raw = os.fdopen(fd, "wb")
                packed = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0,
                                       compresslevel=GZIP_LEVEL)
                self._tmp = io.TextIOWrapper(packed, encoding="utf-8", newline="")
            else:
                self._tmp = os.fdopen(fd, "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._tmp, delimiter=self.delimiter, lineterminator="\n")
        if self.header:
            self._writer.writerow(table_header(self.pathway_names, self.explain))

    def write(self, res: Any) -> None:
        """Append the rows of one chunk's ``ChunkResult``."""
        if self.format.parquet:
            self._write_parquet(res)
            return
        plain = self._plain(res.cell_ids)  # else the csv module writes the chunk (quoted ids)
        columns = [res.cell_ids, format_column(res.probability),
                   res.label.tolist(), ["true" if z else "false" for z in res.zero_counts.tolist()]]
        if self.explain:
            gaps = res.ig_gap.astype(np.float64)
            self.worst_gap = max(self.worst_gap, float(gaps.max(initial=0.0)))
            self.gap_sum += float(gaps.sum())
            top = res.top_pathways
            if plain:  # a chunk's cells share few distinct lists: quote each once
                quoted = {t: self._field(t) for t in set(top)}
                top = list(map(quoted.__getitem__, top))
            columns += [top, format_column(res.ig_gap)]
        self.n_rows += len(res.cell_ids)
        tails = format_rows(res.pathways, self.delimiter) if self.pathway_names is not None else None
        if not plain:
            rows = zip(*columns) if tails is None else \
                ([*row, *tail.split(self.delimiter)] for row, tail in zip(zip(*columns), tails))
            self._writer.writerows(rows)
            return
        if tails is not None:
            columns.append(tails)
        lines = [self.delimiter.join(row) for row in zip(*columns)]
        if lines:
            self._tmp.write("\n".join(lines) + "\n")

    def _plain(self, ids: Any) -> bool:
        """Whether every cell id is a string the csv module would write as it is."""
        try:
            return self._special.search("".join(ids)) is None
        except TypeError:  # not strings: the csv module formats them
            return False

    def _field(self, text: str) -> str:
        """``text`` as the csv module writes it in a row (quoted where it must be), remembered:
        the top-pathway strings of a run repeat."""
        quoted = self._quoted.get(text)
        if quoted is None:
            quoted = text
            if self._special.search(text):
                buf = io.StringIO()
                csv.writer(buf, delimiter=self.delimiter, lineterminator="\n").writerow([text])
                quoted = buf.getvalue()[:-1]
            if len(self._quoted) < 100_000:
                self._quoted[text] = quoted
        return quoted

    def _write_parquet(self, res: Any) -> None:
        """Append one chunk as a Parquet row group (float32 values as computed, not rounded)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns: dict[str, Any] = {
            "cell_id": pa.array(list(res.cell_ids), pa.string()),
            "probability": pa.array(np.asarray(res.probability, np.float32)),
            "label": pa.array(res.label.tolist(), pa.string()),
            "zero_counts": pa.array(np.asarray(res.zero_counts, bool)),
        }
        if self.explain:
            gaps = res.ig_gap.astype(np.float64)
            self.worst_gap = max(self.worst_gap, float(gaps.max(initial=0.0)))
            self.gap_sum += float(gaps.sum())
            columns["top_pathways"] = pa.array(list(res.top_pathways), pa.string())
            columns["ig_gap"] = pa.array(np.asarray(res.ig_gap, np.float32))
        if self.pathway_names is not None:
            values = np.asarray(res.pathways, np.float32)
            for j, name in enumerate(self.pathway_names):
                columns[f"pathway:{name}"] = pa.array(values[:, j])
        batch = pa.table(columns)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._raw, batch.schema)
        self._parquet.write_table(batch)
        self.n_rows += len(res.cell_ids)

    def commit(self) -> None:
        """Flush, fsync and rename the temp file onto the target (stdout: flush only)."""
        if str(self.path) == STDOUT:
            assert self._tmp is not None
            self._tmp.flush()
            self._tmp = None
            return
        if self.format.parquet and self._parquet is None:  # no rows: still a valid, empty table
            self._write_parquet_schema_only()
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._tmp is not None:
            self._tmp.flush()
            if self._raw is None:
                os.fsync(self._tmp.fileno())
            self._tmp.close()  # closes the gzip stream too (its trailer), not the raw file
        raw = self._raw
        if raw is not None:
            raw.flush()
            os.fsync(raw.fileno())
            raw.close()
        self._tmp = None
        self._raw = None
        publish(self._tmp_path, self.path)
        self._tmp_path = None

    def _write_parquet_schema_only(self) -> None:
        """An empty Parquet table with the full column list."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        header = table_header(self.pathway_names, self.explain)
        types = {"cell_id": pa.string(), "label": pa.string(), "zero_counts": pa.bool_(),
                 "top_pathways": pa.string()}
        schema = pa.schema([(h, types.get(h, pa.float32())) for h in header])
        self._parquet = pq.ParquetWriter(self._raw, schema)

    def abort(self) -> None:
        """Remove the temp file; the target is left as it was."""
        if str(self.path) == STDOUT:
            self._tmp = None
            return
        for stream in (self._parquet, self._tmp, self._raw):
            if stream is not None:
                with contextlib.suppress(Exception):  # a half-written stream, on the way out
                    stream.close()
        self._parquet = self._tmp = self._raw = None
        if self._tmp_path is not None:
            self._tmp_path.unlink(missing_ok=True)


class ExplainWriter:
    """Attributions of one drug: an HDF5 file (cells x pathways, plus gene-level rows for the
    selected cells) and a CSV of mean attribution per pathway by predicted label and group."""

    def __init__(self, path: Path, n_cells: int, pathway_names: list[str], gene_symbols: list[str],
                 attrs: dict[str, Any], groupby: str | None) -> None:
        self.path = path
        self.group_csv = path.with_name(f"{path.stem}.by_group.csv")
        self.n_cells = n_cells
        self.pathway_names = pathway_names
        self.gene_symbols = gene_symbols
        self.attrs = attrs
        self.groupby = groupby
        self._sums: dict[tuple[str, str], np.ndarray] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._file: Any = None
        self._tmp_path: Path | None = None
        self._row = 0
        self._genes: list[tuple[str, np.ndarray]] = []

    def open(self) -> None:
        """Create the temporary HDF5 file with datasets sized for every cell."""
        import h5py

        check_output_path(self.group_csv, True)
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                        dir=self.path.parent)
        except OSError as e:
            raise OutputError(f"cannot write in {self.path.parent} ({e.strerror})") from None
        os.close(fd)
        self._tmp_path = Path(name)
        f = h5py.File(name, "w")
        self._file = f
        n, p = self.n_cells, len(self.pathway_names)
        chunk_rows = max(1, min(n, 4096))
        f.create_dataset("cell_id", shape=(n,), dtype=h5py.string_dtype())
        f.create_dataset("attributions", shape=(n, p), dtype="float32", chunks=(chunk_rows, p))
        f.create_dataset("logit", shape=(n,), dtype="float32")
        f.create_dataset("relative_gap", shape=(n,), dtype="float32")
        f.create_dataset("pathway", data=np.array(self.pathway_names, dtype=object),
                         dtype=h5py.string_dtype())
        f.attrs.update({k: v for k, v in self.attrs.items() if v is not None})
        f.attrs["description"] = (
            "Integrated-gradients attributions of the sensitivity logit to the pathway layer; "
            "rows sum to logit - baseline_logit up to relative_gap")

    def write(self, res: Any) -> None:
        """Store one chunk's attributions and add them to the group means."""
        lo, hi = self._row, self._row + len(res.cell_ids)
        f = self._file
        f["cell_id"][lo:hi] = np.array(res.cell_ids, dtype=object)
        f["attributions"][lo:hi] = res.attributions
        f["logit"][lo:hi] = res.logit
        f["relative_gap"][lo:hi] = res.ig_gap
        self._row = hi
        self._add_groups("predicted_label", res.label.tolist(), res.attributions)
        if self.groupby is not None:
            self._add_groups(self.groupby, res.groups[self.groupby], res.attributions)
        self._genes.extend(res.gene_attributions)

    def commit(self) -> None:
        """Write the gene-level rows, close, rename, then write the group CSV atomically."""
        import h5py

        f = self._file
        if self._genes:
            g = f.create_group("genes")
            g.create_dataset("cell_id", data=np.array([c for c, _ in self._genes], dtype=object),
                             dtype=h5py.string_dtype())
            g.create_dataset("gene", data=np.array(self.gene_symbols, dtype=object),
                             dtype=h5py.string_dtype())
            g.create_dataset("attributions", data=np.stack([v for _, v in self._genes]))
        f.close()
        self._file = None
        publish(self._tmp_path, self.path)
        self._tmp_path = None
        self._write_group_csv()

    def abort(self) -> None:
        """Close and remove the temporary file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp_path is not None:
            self._tmp_path.unlink(missing_ok=True)
            self._tmp_path = None

    def _add_groups(self, grouping: str, values: list[str], attributions: np.ndarray) -> None:
        values_arr = np.asarray(values, dtype=object)
        for value in dict.fromkeys(values):
            rows = values_arr == value
            key = (grouping, value)
            total = attributions[rows].sum(axis=0, dtype=np.float64)
            self._sums[key] = self._sums.get(key, 0) + total
            self._counts[key] = self._counts.get(key, 0) + int(rows.sum())

    def _write_group_csv(self) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["grouping", "group", "n_cells", "pathway", "mean_attribution"])
        for key in sorted(self._sums):
            mean = self._sums[key] / self._counts[key]
            for pname, v in zip(self.pathway_names, mean.tolist()):
                w.writerow([key[0], key[1], self._counts[key], pname, FLOAT_FORMAT % v])
        publish_text(self.group_csv, buf.getvalue())
