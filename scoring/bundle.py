"""Find, verify and describe model bundles (``exported_models/<drug>/``: ONNX graphs + card)."""

import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from scdr.scoring.errors import BundleError
from scdr.scoring.normalize import Normalization

FORMAT = "scdr-bundle"
FORMAT_VERSIONS = (1,)
REQUIRED_FILES = ("model.onnx", "head.onnx")
FD_FILE = "head_fd.onnx"  # optional: pathways -> slopes of the head, for fast explanations
MAX_CARD_BYTES = 64 << 20
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its card, normalisation recipe and the exact bytes of its graphs."""

    path: Path
    card: dict[str, Any]
    normalization: Normalization
    model_bytes: bytes
    head_bytes: bytes
    fd_bytes: bytes | None = None  # head_fd.onnx: the head's finite differences, when shipped

    @property
    def drug(self) -> str:
        """Canonical drug name (the folder name)."""
        return str(self.card["drug"])

    @property
    def symbols(self) -> list[str]:
        """Panel gene symbols in model input order."""
        return list(self.card["genes"]["symbols"])

    @property
    def ensembl_ids(self) -> list[str | None]:
        """Panel Ensembl IDs in model input order (None where unknown)."""
        return list(self.card["genes"]["ensembl_ids"])

    @property
    def pathway_names(self) -> list[str]:
        """Names of the latent pathway nodes, in output order."""
        return list(self.card["pathways"]["names"])

    @property
    def threshold(self) -> float:
        """P(sensitive) at or above which a cell is called sensitive."""
        return float(self.card["threshold"]["value"])

    @property
    def fd_step(self) -> float | None:
        """The finite-difference step baked into head_fd.onnx (None without one)."""
        return float(self.card["files"][FD_FILE]["fd_step"]) if self.fd_bytes is not None else None

    @property
    def sha256(self) -> dict[str, str]:
        """sha256 of each graph, as verified at load."""
        return {name: entry["sha256"] for name, entry in self.card["files"].items()}


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle folder, refusing unknown formats and any file whose sha256 differs."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"model bundle not found: {root} is not a folder")
    card = read_card(root)
    files = card.get("files")
    if not isinstance(files, dict) or any(name not in files for name in REQUIRED_FILES):
        raise BundleError(f"{root}/card.json must list {', '.join(REQUIRED_FILES)} with sha256")
    blobs = {}
    for name, entry in files.items():
        blob = _verified_bytes(root, name, entry)
        if name.endswith(".onnx"):
            refuse_external_data(blob, root / name)
        if name in REQUIRED_FILES or name == FD_FILE:
            blobs[name] = blob
    normalization = _normalization(card, root)
    if FD_FILE in blobs and not _fd_step_ok(files[FD_FILE]):
        raise BundleError(f"{root}/card.json: {FD_FILE} needs an fd_step between 1e-6 and 0.1")
    return Bundle(root, card, normalization, blobs["model.onnx"], blobs["head.onnx"],
                  blobs.get(FD_FILE))


def _fd_step_ok(entry: dict[str, Any]) -> bool:
    step = entry.get("fd_step")
    return _real(step) and 1e-6 <= step <= 0.1


def read_card(root: Path) -> dict[str, Any]:
    """Parse and check ``card.json`` (format, version, panel and pathway fields)."""
    card_path = _inside(root, "card.json")
    try:
        text = _read_regular(card_path, root, MAX_CARD_BYTES).decode("utf-8")
        card = json.loads(text)
    except FileNotFoundError:
        raise BundleError(f"{root} is not a model bundle: card.json is missing") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise BundleError(f"{card_path} is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise BundleError(f"{card_path} is not an scdr bundle card (format != '{FORMAT}')")
    version = card.get("format_version")
    if version not in FORMAT_VERSIONS:
        raise BundleError(
            f"{card_path} has format_version {version!r}; this scdr reads "
            f"{', '.join(map(str, FORMAT_VERSIONS))}: upgrade scdr or re-export the model"
        )
    try:
        genes = card["genes"]
        symbols, ensembl_ids = genes["symbols"], genes["ensembl_ids"]
        if not _str_list(symbols) or not symbols or len(ensembl_ids) != len(symbols):
            raise BundleError(f"{card_path}: genes.symbols and genes.ensembl_ids differ or are empty")
        if not _str_list(ensembl_ids, none_ok=True):
            raise BundleError(f"{card_path}: genes.ensembl_ids must be strings or null")
        names = card["pathways"]["names"]
        if not _str_list(names) or not names:
            raise BundleError(f"{card_path}: pathways.names must be a non-empty list of strings")
        threshold = card["threshold"]["value"]
        if not _real(threshold) or not 0.0 <= threshold <= 1.0:
            raise BundleError(f"{card_path}: threshold.value must be a probability, not {threshold!r}")
        if not isinstance(card["drug"], str) or not card["drug"]:
            raise BundleError(f"{card_path}: drug must be a non-empty string")
        if not _str_list(card.get("aliases", [])):
            raise BundleError(f"{card_path}: aliases must be a list of strings")
    except (KeyError, TypeError) as e:
        raise BundleError(f"{card_path} lacks a required field ({e})") from None
    return card


def refuse_external_data(blob: bytes, path: Path) -> None:
    """Refuse an ONNX graph with a tensor stored outside the file (external data), which would
    make the runtime read other files; read from the protobuf wire format, so scoring needs no
    ``onnx`` package."""
    try:
        name = _external_tensor(blob)
    except _MalformedError as e:
        raise BundleError(f"{path} is not a valid ONNX model ({e})") from None
    if name is not None:
        raise BundleError(
            f"{path} keeps tensor '{name}' as external data (in a separate file); scdr loads only "
            "self-contained graphs: re-export with the weights inside the file "
            "(onnx.save_model(model, path, save_as_external_data=False))"
        )


def bundled_models_dir() -> Path:
    """The folder of bundles shipped with the package."""
    from scdr import exported_models

    return Path(exported_models.__file__).resolve().parent


def list_bundles(root: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Every bundle folder under ``root`` (default: the shipped ones) with its card, by name."""
    root = bundled_models_dir() if root is None else root
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and (p / "card.json").is_file()):
        try:
            found.append((sub, read_card(sub)))
        except BundleError:
            continue
    return found


def list_models(root: Path | None = None) -> list[dict[str, Any]]:
    """One summary per bundle under ``root`` (default: the shipped ones), as ``scdr-models`` prints it."""
    rows = []
    for path, card in list_bundles(root):
        metrics = card.get("metrics", {})
        rows.append({
            "drug": card["drug"],
            "aliases": card.get("aliases", []),
            "genes": len(card["genes"]["symbols"]),
            "pathways": len(card["pathways"]["names"]),
            "pathway_source": card["pathways"].get("source", ""),
            "threshold": card["threshold"]["value"],
            "bulk_cv_auroc": (metrics.get("bulk_cross_validation") or {}).get("auroc_mean"),
            "description": card.get("description", ""),
            "path": str(path),
        })
    return rows


def find_bundle(drug: str, root: Path | None = None) -> Path:
    """The bundle whose drug name or alias equals ``drug`` (case-insensitive)."""
    bundles = list_bundles(root)
    key = drug.strip().casefold()
    for path, card in bundles:
        names = [card["drug"], path.name, *card.get("aliases", [])]
        if key in (str(n).casefold() for n in names):
            return path
    available = ", ".join(card["drug"] for _, card in bundles) or "none"
    raise BundleError(f"no model for drug '{drug}'; available: {available} (or use --model DIR)")


def _verified_bytes(root: Path, name: str, entry: Any) -> bytes:
    path = _inside(root, name)
    expected = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(expected, str) or not _SHA256.match(expected):
        raise BundleError(f"{root}/card.json gives no valid sha256 for {name}")
    try:
        blob = _read_regular(path, root)
    except FileNotFoundError:
        raise BundleError(f"{root} is incomplete: {name} is missing") from None
    actual = hashlib.sha256(blob).hexdigest()
    if actual != expected.lower():
        raise BundleError(
            f"{path} fails its integrity check (sha256 {actual[:12]}… != card {expected[:12]}…); "
            "the bundle was modified or is damaged: reinstall or re-export it"
        )
    return blob


def _inside(root: Path, name: str) -> Path:
    """``root/name``, refusing names or symlinks that lead outside the bundle folder."""
    base = root.resolve()
    path = (root / name).resolve()
    if path.parent != base:
        raise BundleError(f"{root}: '{name}' points outside the bundle folder; refusing it")
    return path


def _read_regular(path: Path, root: Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file at ``path`` (already resolved), opened without following a
    symlink swapped in since and without blocking on a FIFO; FileNotFoundError passes through."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise BundleError(f"{root}: {path.name} cannot be opened ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{root}: {path.name} is not a regular file; refusing it")
        if limit is not None and info.st_size > limit:
            raise BundleError(f"{root}: {path.name} is {info.st_size:,} bytes (at most {limit:,})")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    except OSError as e:
        raise BundleError(f"{root} is incomplete: {path.name} cannot be read ({e.strerror})") \
            from None
    finally:
        os.close(fd)


def _str_list(value: Any, none_ok: bool = False) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, str) or (none_ok and v is None) for v in value)


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _normalization(card: dict[str, Any], root: Path) -> Normalization:
    norm = card.get("normalization")
    n = len(card["genes"]["symbols"])
    if not isinstance(norm, dict):
        raise BundleError(f"{root}/card.json has no normalization section")
    try:
        mean = norm.get("gene_mean")
        std = norm.get("gene_std")
        gene_mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        gene_std = None if std is None else np.asarray(std, dtype=np.float64)
        target = norm.get("target_sum")
        clip = norm.get("clip")
        for key, value in (("target_sum", target), ("clip", clip)):
            if value is not None and not (_real(value) and value > 0):
                raise BundleError(f"{root}/card.json: {key} must be a positive number or null")
        recipe = Normalization(
            target_sum=None if target is None else float(target),
            log1p=bool(norm["log1p"]),
            accepts_normalized=bool(norm.get("accepts_normalized", False)),
            cell_zscore=bool(norm["cell_zscore"]),
            gene_mean=gene_mean,
            gene_std=gene_std,
            clip=None if clip is None else float(clip),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{root}/card.json: bad normalization field ({e})") from None
    if (gene_mean is None) != (gene_std is None):
        raise BundleError(f"{root}/card.json: gene_mean and gene_std come together")
    if gene_mean is not None and (gene_mean.shape != (n,) or gene_std.shape != (n,)):
        raise BundleError(f"{root}/card.json: gene_mean/gene_std must have {n} entries")
    if gene_std is not None and not (np.all(np.isfinite(gene_std)) and np.all(gene_std > 0)):
        raise BundleError(f"{root}/card.json: gene_std must be finite and positive")
    if gene_mean is not None and not np.all(np.isfinite(gene_mean)):
        raise BundleError(f"{root}/card.json: gene_mean must be finite")
    if norm.get("depth_stats") is not None:
        recipe = replace(recipe, **_depth_stats(norm["depth_stats"], n, f"{root}/card.json"))
    return recipe


def _depth_stats(block: Any, n: int, where: str) -> dict[str, np.ndarray]:
    """Step 5b's grid: ascending detection rates in [0, 1] and, per rate, finite gene means and
    positive SDs for every panel gene."""
    try:
        rate = np.asarray(block["detection_rate"], dtype=np.float64)
        mean = np.asarray(block["gene_mean"], dtype=np.float64)
        std = np.asarray(block["gene_std"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: bad normalization.depth_stats ({e})") from None
    k = rate.shape[0] if rate.ndim == 1 else 0
    if k < 2 or not (np.all(np.isfinite(rate)) and np.all(np.diff(rate) > 0)
                     and rate[0] >= 0 and rate[-1] <= 1):
        raise BundleError(f"{where}: depth_stats.detection_rate must be 2 or more increasing "
                          "rates in [0, 1]")
    if mean.shape != (k, n) or std.shape != (k, n):
        raise BundleError(f"{where}: depth_stats.gene_mean/gene_std must be {k} rows of {n}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise BundleError(f"{where}: depth_stats must be finite, with positive gene_std")
    return {"depth_rate": rate, "depth_mean": mean, "depth_std": std}


# --- ONNX wire format: just enough to find tensors stored as external data --------------------

# per message kind, the fields that hold messages which can (transitively) hold tensors
_ONNX_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},  # ModelProto
    "training": {1: "graph", 2: "graph"},  # TrainingInfoProto
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # GraphProto
    "node": {5: "attribute"},  # NodeProto
    "function": {7: "node", 11: "attribute"},  # FunctionProto
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},  # SparseTensorProto
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_MAX_NESTING = 64


class _MalformedError(Exception):
    """The bytes are not a well-formed protobuf message."""


def _external_tensor(blob: bytes) -> str | None:
    """Name of a tensor of a ModelProto stored as external data, or None when there is none."""
    stack = [("model", 0, len(blob), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > _MAX_NESTING:
            raise _MalformedError("graphs nest too deep")
        if kind == "tensor":
            name, external = "?", False
            for field, wire, a, b in _wire_fields(blob, start, end):
                if field == _TENSOR_NAME and wire == 2:
                    name = blob[a:b].decode("utf-8", errors="replace")
                elif field == _TENSOR_EXTERNAL_DATA or (
                        field == _TENSOR_DATA_LOCATION and wire == 0 and a == 1):
                    external = True
            if external:
                return name
            continue
        schema = _ONNX_SCHEMA[kind]
        for field, wire, a, b in _wire_fields(blob, start, end):
            if wire == 2 and field in schema:
                stack.append((schema[field], a, b, depth + 1))
    return None


def _wire_fields(blob: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field, wire type, a, b)`` per field of the message in ``blob[pos:end]``: for
    length-delimited fields the payload is ``blob[a:b]``, for varints ``a`` is the value."""
    while pos < end:
        key, pos = _varint(blob, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _MalformedError("field number 0")
        if wire == 0:
            value, pos = _varint(blob, pos, end)
            yield field, wire, value, pos
        elif wire == 2:
            size, pos = _varint(blob, pos, end)
            if pos + size > end:
                raise _MalformedError("a field runs past the end of its message")
            yield field, wire, pos, pos + size
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _MalformedError("a field runs past the end of its message")
        else:
            raise _MalformedError(f"unsupported wire type {wire}")


def _varint(blob: bytes, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while shift < 70:
        if pos >= end:
            raise _MalformedError("truncated varint")
        byte = blob[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise _MalformedError("varint too long")
