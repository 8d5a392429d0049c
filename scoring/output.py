"""Per-cell tables and JSON summaries, written to a temporary file and renamed into place."""

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from scoring.errors import OutputError

FLOAT_FORMAT = "%.6g"


def default_output_path(input_path: Path, drug: str) -> Path:
    """``<stem>.scdr.<drug>.csv`` next to the input."""
    return input_path.with_name(f"{input_path.stem}.scdr.{drug}.csv")


def check_output_path(path: Path, force: bool) -> None:
    """Refuse to overwrite without ``force`` and fail early when the folder does not exist."""
    if path.exists() and not force:
        raise OutputError(f"{path} exists; pass --force to overwrite it")
    if path.exists() and path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name for the output")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")


class TableWriter:
    """Rows of one drug's predictions, streamed into a temp file that ``commit`` renames."""

    def __init__(self, path: Path, pathway_names: list[str] | None) -> None:
        self.path = path
        self.pathway_names = pathway_names
        self._tmp: IO[str] | None = None
        self._tmp_path: Path | None = None
        self._writer: Any = None

    def open(self) -> None:
        """Create the temporary file beside the target and write the header."""
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                        dir=self.path.parent)
        except OSError as e:
            raise OutputError(f"cannot write in {self.path.parent} ({e.strerror})") from None
        self._tmp_path = Path(name)
        self._tmp = os.fdopen(fd, "w", newline="", encoding="utf-8")
        delimiter = "\t" if self.path.suffix.lower() in (".tsv", ".txt") else ","
        self._writer = csv.writer(self._tmp, delimiter=delimiter, lineterminator="\n")
        header = ["cell_id", "probability", "label", "zero_counts"]
        if self.pathway_names is not None:
            header += [f"pathway:{n}" for n in self.pathway_names]
        self._writer.writerow(header)

    def write(self, cell_ids: list[str], probability: np.ndarray, label: np.ndarray,
              zero_counts: np.ndarray, pathways: np.ndarray) -> None:
        """Append one chunk of rows."""
        probs = [FLOAT_FORMAT % p for p in probability.tolist()]
        zeros = ["true" if z else "false" for z in zero_counts.tolist()]
        if self.pathway_names is None:
            self._writer.writerows(zip(cell_ids, probs, label.tolist(), zeros))
            return
        path_strs = np.char.mod(FLOAT_FORMAT, pathways).tolist()
        self._writer.writerows(
            [c, p, lab, z, *row]
            for c, p, lab, z, row in zip(cell_ids, probs, label.tolist(), zeros, path_strs)
        )

    def commit(self) -> None:
        """Flush, fsync and rename the temp file onto the target."""
        assert self._tmp is not None
        self._tmp.flush()
        os.fsync(self._tmp.fileno())
        self._tmp.close()
        os.replace(self._tmp_path, self.path)
        self._tmp = None

    def abort(self) -> None:
        """Remove the temp file; the target is left as it was."""
        if self._tmp is not None:
            self._tmp.close()
            self._tmp = None
        if self._tmp_path is not None:
            self._tmp_path.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` as indented JSON through a temp file and a rename."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
