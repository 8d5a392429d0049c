"""The bundle card, defined once: format name and version, its files, its arrays, and how it is
read, checked and written. Scoring reads cards with it and training writes them with it.

A card (``card.json``) is a page a person reads. Since format version 2 its numeric arrays (gene
statistics, the depth grid, reference pathway activities) live in ``arrays.npz`` beside it, listed
with its sha256 like the ONNX graphs; ``read_card`` puts them back at their places, so the card a
program sees is the same for versions 1 and 2. Bundle files are untrusted: every file is read as a
regular file inside the bundle folder, checked against its sha256, and the npz without pickle.
"""

import hashlib
import io
import json
import math
import os
import re
import stat
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np

from scdr.scoring.atomic import publish_bytes
from scdr.scoring.errors import BundleError

FORMAT = "scdr-bundle"
FORMAT_VERSION = 2  # written; READABLE_VERSIONS are read
READABLE_VERSIONS = (1, 2)
CARD_FILE = "card.json"
MODEL_FILE = "model.onnx"  # expression -> probability, logit, pathways
HEAD_FILE = "head.onnx"  # pathways -> logit, for attributions
FD_FILE = "head_fd.onnx"  # optional: pathways -> slopes of the head, for fast explanations
ARRAYS_FILE = "arrays.npz"  # format 2: the card's numeric arrays
REQUIRED_FILES = (MODEL_FILE, HEAD_FILE)
# the card fields (dotted paths) that format 2 keeps in ARRAYS_FILE, when the card has them
ARRAY_FIELDS = (
    "normalization.gene_mean",
    "normalization.gene_std",
    "normalization.depth_stats.detection_rate",
    "normalization.depth_stats.gene_mean",
    "normalization.depth_stats.gene_std",
    "reference_pathways.bulk_mean",
    "reference_pathways.single_cell_mean",
    "training.bulk_gene_stats.gene_mean",
    "training.bulk_gene_stats.gene_std",
)
MAX_CARD_BYTES = 64 << 20
MAX_ARRAY_BYTES = 256 << 20
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # a fixed member time: the same arrays give the same bytes


class Genes(TypedDict):
    """The panel, in model input order."""

    symbols: list[str]
    ensembl_ids: list[str | None]  # None where no Ensembl ID is known


class Pathways(TypedDict):
    """The latent pathway nodes, in output order, and where their gene sets come from."""

    names: list[str]
    source: NotRequired[str]


class Threshold(TypedDict):
    """P(sensitive) at or above which a cell is labelled sensitive, and how it was chosen."""

    value: float
    rule: NotRequired[str]


class FileEntry(TypedDict):
    """A bundle file: its sha256, and what its reader needs to know."""

    sha256: str
    fd_step: NotRequired[float]  # head_fd.onnx: the finite-difference step baked in
    arrays: NotRequired[list[str]]  # arrays.npz: the card fields it holds


class Card(TypedDict):
    """``card.json`` as ``read_card`` returns it (arrays in place): the fields scoring relies on
    are typed; training, metrics, knowledge and calibration are free-form records for readers."""

    format: str  # FORMAT
    format_version: int  # one of READABLE_VERSIONS
    drug: str  # lower-case name, the folder name
    aliases: list[str]
    description: str
    genes: Genes
    normalization: dict[str, Any]  # Normalization.to_card(); checked by normalization_of
    pathways: Pathways
    reference_pathways: NotRequired[dict[str, list[float]]]  # attribution baselines
    threshold: Threshold
    training: NotRequired[dict[str, Any]]
    metrics: NotRequired[dict[str, Any]]
    knowledge: NotRequired[dict[str, Any]]
    calibration: NotRequired[dict[str, Any]]
    files: dict[str, FileEntry]


@dataclass(frozen=True)
class Normalization:
    """The card's ``normalization`` block: the recipe that turns counts into model inputs."""

    target_sum: float | None = 10000.0
    log1p: bool = True
    cell_zscore: bool = True
    rank: bool = False  # steps 3-4 on within-cell ranks of the panel counts (training only so far)
    gene_mean: np.ndarray | None = None  # float64 [n_panel]
    gene_std: np.ndarray | None = None  # float64 [n_panel]
    clip: float | None = 10.0
    accepts_normalized: bool = True
    depth_rate: np.ndarray | None = None  # float64 [K], ascending detection rates (step 5b)
    depth_mean: np.ndarray | None = None  # float64 [K, n_panel]
    depth_std: np.ndarray | None = None  # float64 [K, n_panel]

    def with_gene_stats(self, mean: np.ndarray, std: np.ndarray) -> "Normalization":
        """A copy with step-5 statistics set."""
        return replace(self, gene_mean=np.asarray(mean, float), gene_std=np.asarray(std, float))

    def with_depth_stats(self, rate: np.ndarray, mean: np.ndarray, std: np.ndarray) -> "Normalization":
        """A copy with step-5b statistics (one row per detection rate) set."""
        return replace(self, depth_rate=np.asarray(rate, float), depth_mean=np.asarray(mean, float),
                       depth_std=np.asarray(std, float))

    def to_card(self) -> dict[str, Any]:
        """The card's ``normalization`` object (JSON-ready)."""
        return {
            "target_sum": self.target_sum,
            "log1p": self.log1p,
            "accepts_normalized": self.accepts_normalized,
            "cell_zscore": self.cell_zscore,
            **({"rank": True} if self.rank else {}),
            "gene_mean": None if self.gene_mean is None else [float(x) for x in self.gene_mean],
            "gene_std": None if self.gene_std is None else [float(x) for x in self.gene_std],
            "clip": self.clip,
            **({} if self.depth_rate is None else {"depth_stats": {
                "detection_rate": [float(x) for x in self.depth_rate],
                "gene_mean": [[float(x) for x in row] for row in self.depth_mean],
                "gene_std": [[float(x) for x in row] for row in self.depth_std],
            }}),
        }


def read_card(root: Path) -> Card:
    """Parse and check ``root/card.json`` (format, version, panel, pathways, threshold); for
    format 2, put the verified arrays of ``arrays.npz`` back at their places."""
    card_path = _inside(root, CARD_FILE)
    try:
        text = read_regular(card_path, root, MAX_CARD_BYTES).decode("utf-8")
        card = json.loads(text)
    except FileNotFoundError:
        raise BundleError(f"{root} is not a model bundle: card.json is missing") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise BundleError(f"{card_path} is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise BundleError(f"{card_path} is not an scdr bundle card (format != '{FORMAT}')")
    version = card.get("format_version")
    if version not in READABLE_VERSIONS:
        raise BundleError(
            f"{card_path} has format_version {version!r}; this scdr reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade scdr (pip install -U scdr) or "
            "re-export the model with this version's scdr-train"
        )
    if version >= 2:
        _merge_arrays(card, root)
    _check_fields(card, card_path)
    return card


def write_card(root: Path, card: Card | dict[str, Any]) -> Card:
    """Write ``card`` as format 2: its arrays into ``arrays.npz`` (deterministic bytes), the rest
    into ``card.json`` (written last, so a bundle is complete once its card is there). Returns the
    card as ``read_card`` will read it; the ONNX entries of ``files`` must already be there."""
    full = json.loads(json.dumps(_jsonable(card), allow_nan=False))  # a deep, JSON-only copy
    full["format"], full["format_version"] = FORMAT, FORMAT_VERSION
    card = json.loads(json.dumps(full))
    arrays = {name: np.asarray(value, dtype=np.float64)
              for name in ARRAY_FIELDS if (value := _pop(card, name)) is not None}
    files = dict(card.get("files", {}))
    files.pop(ARRAYS_FILE, None)
    if arrays:
        blob = npz_bytes(arrays)
        publish_bytes(root / ARRAYS_FILE, blob)
        files[ARRAYS_FILE] = {"sha256": hashlib.sha256(blob).hexdigest(), "arrays": sorted(arrays)}
    card["files"] = full["files"] = files
    publish_bytes(root / CARD_FILE, (json.dumps(card, indent=1, allow_nan=False) + "\n").encode("utf-8"))
    return full


def normalization_of(card: Card, where: str) -> Normalization:
    """The card's normalisation recipe, checked (shapes, finite values, positive SDs)."""
    norm = card.get("normalization")
    n = len(card["genes"]["symbols"])
    if not isinstance(norm, dict):
        raise BundleError(f"{where} has no normalization section")
    if norm.get("rank"):
        raise BundleError(f"{where} wants within-cell rank inputs, which this scdr version does not "
                          "score; use a bundle without normalization.rank")
    try:
        mean, std = norm.get("gene_mean"), norm.get("gene_std")
        gene_mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        gene_std = None if std is None else np.asarray(std, dtype=np.float64)
        target, clip = norm.get("target_sum"), norm.get("clip")
        for key, value in (("target_sum", target), ("clip", clip)):
            if value is not None and not (_real(value) and value > 0):
                raise BundleError(f"{where}: {key} must be a positive number or null")
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
        raise BundleError(f"{where}: bad normalization field ({e})") from None
    if (gene_mean is None) != (gene_std is None):
        raise BundleError(f"{where}: gene_mean and gene_std come together")
    if gene_mean is not None and (gene_mean.shape != (n,) or gene_std.shape != (n,)):
        raise BundleError(f"{where}: gene_mean/gene_std must have {n} entries")
    if gene_std is not None and not (np.all(np.isfinite(gene_std)) and np.all(gene_std > 0)):
        raise BundleError(f"{where}: gene_std must be finite and positive")
    if gene_mean is not None and not np.all(np.isfinite(gene_mean)):
        raise BundleError(f"{where}: gene_mean must be finite")
    if norm.get("depth_stats") is not None:
        rate, dmean, dstd = _depth_stats(norm["depth_stats"], n, where)
        recipe = recipe.with_depth_stats(rate, dmean, dstd)
    return recipe


def read_verified(root: Path, name: str, entry: Any) -> bytes:
    """The bytes of bundle file ``name``, which must match the sha256 the card gives for it."""
    path = _inside(root, name)
    expected = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(expected, str) or not _SHA256.match(expected):
        raise BundleError(f"{root}/card.json gives no valid sha256 for {name}")
    try:
        blob = read_regular(path, root)
    except FileNotFoundError:
        raise BundleError(f"{root} is incomplete: {name} is missing") from None
    actual = hashlib.sha256(blob).hexdigest()
    if actual != expected.lower():
        raise BundleError(
            f"{path} fails its integrity check (sha256 {actual[:12]}… != card {expected[:12]}…); "
            "the bundle was modified or is damaged: reinstall or re-export it"
        )
    return blob


def read_regular(path: Path, root: Path, limit: int | None = None) -> bytes:
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


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` of ``arrays`` whose bytes depend on the arrays alone (sorted
    members, fixed member times), so a re-export of the same model gives the same sha256."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME), member.getvalue())
    return buffer.getvalue()


def _merge_arrays(card: dict[str, Any], root: Path) -> None:
    files = card.get("files")
    entry = files.get(ARRAYS_FILE) if isinstance(files, dict) else None
    if entry is None:
        return
    where = f"{root}/{ARRAYS_FILE}"
    blob = read_verified(root, ARRAYS_FILE, entry)
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            infos = zf.infolist()
            names = [i.filename.removesuffix(".npy") for i in infos]
            if sorted(names) != sorted(entry.get("arrays", [])) or not set(names) <= set(ARRAY_FIELDS):
                raise BundleError(f"{where} holds {sorted(names)}, not the arrays its card lists")
            if sum(i.file_size for i in infos) > MAX_ARRAY_BYTES:
                raise BundleError(f"{where} unpacks to more than {MAX_ARRAY_BYTES:,} bytes")
            for info, name in zip(infos, names):
                with zf.open(info) as fh:
                    value = np.lib.format.read_array(fh, allow_pickle=False)
                if value.dtype != np.float64:
                    raise BundleError(f"{where}: {name} is {value.dtype}, not float64")
                _put(card, name, value.tolist())
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise BundleError(f"{where} is not a valid npz ({str(e)[:200]})") from None


def _check_fields(card: dict[str, Any], card_path: Path) -> None:
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


def _depth_stats(block: Any, n: int, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    return rate, mean, std


def _inside(root: Path, name: str) -> Path:
    """``root/name``, refusing names or symlinks that lead outside the bundle folder."""
    base = root.resolve()
    path = (root / name).resolve()
    if path.parent != base:
        raise BundleError(f"{root}: '{name}' points outside the bundle folder; refusing it")
    return path


def _pop(card: dict[str, Any], dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    node: Any = card
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    return node.pop(leaf, None) if isinstance(node, dict) else None


def _put(card: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = card
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[leaf] = value


def _jsonable(value: object) -> object:
    """Numpy scalars and arrays to Python; NaN and infinities to None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _str_list(value: Any, none_ok: bool = False) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, str) or (none_ok and v is None) for v in value)


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
