"""Find, verify and describe model bundles (``exported_models/<drug>/``: ONNX graphs + card)."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scoring.errors import BundleError
from scoring.normalize import Normalization

FORMAT = "scdr-bundle"
FORMAT_VERSIONS = (1,)
REQUIRED_FILES = ("model.onnx", "head.onnx")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its card, normalisation recipe and the exact bytes of its graphs."""

    path: Path
    card: dict[str, Any]
    normalization: Normalization
    model_bytes: bytes
    head_bytes: bytes

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
        blobs[name] = _verified_bytes(root, name, entry)
    normalization = _normalization(card, root)
    return Bundle(root, card, normalization, blobs["model.onnx"], blobs["head.onnx"])


def read_card(root: Path) -> dict[str, Any]:
    """Parse and check ``card.json`` (format, version, panel and pathway fields)."""
    card_path = _inside(root, "card.json")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{root} is not a model bundle: card.json is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{card_path} is not valid JSON ({e})") from None
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
        n = len(genes["symbols"])
        if n == 0 or len(genes["ensembl_ids"]) != n:
            raise BundleError(f"{card_path}: genes.symbols and genes.ensembl_ids differ or are empty")
        if not card["pathways"]["names"]:
            raise BundleError(f"{card_path}: pathways.names is empty")
        float(card["threshold"]["value"])
        str(card["drug"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{card_path} lacks a required field ({e})") from None
    return card


def bundled_models_dir() -> Path:
    """The folder of bundles shipped with the package."""
    import exported_models

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
    if not isinstance(expected, str):
        raise BundleError(f"{root}/card.json gives no sha256 for {name}")
    try:
        blob = path.read_bytes()
    except OSError:
        raise BundleError(f"{root} is incomplete: {name} cannot be read") from None
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
    if recipe.target_sum is not None and not recipe.target_sum > 0:
        raise BundleError(f"{root}/card.json: target_sum must be positive")
    return recipe
