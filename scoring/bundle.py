"""Find, verify and describe model bundles (``exported_models/<drug>/``: ONNX graphs + card)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scdr.scoring.card import (
    ARRAYS_FILE,
    FD_FILE,
    REQUIRED_FILES,
    Card,
    Normalization,
    normalization_of,
    read_card,
    read_verified,
)
from scdr.scoring.errors import BundleError
from scdr.scoring.onnx_scan import MalformedError, external_tensor


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its card, normalisation recipe and the exact bytes of its graphs."""

    path: Path
    card: Card
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
        if name == ARRAYS_FILE:  # verified and read by read_card
            continue
        blob = read_verified(root, name, entry)
        if name.endswith(".onnx"):
            refuse_external_data(blob, root / name)
        if name in REQUIRED_FILES or name == FD_FILE:
            blobs[name] = blob
    normalization = normalization_of(card, f"{root}/card.json")
    if FD_FILE in blobs and not _fd_step_ok(files[FD_FILE]):
        raise BundleError(f"{root}/card.json: {FD_FILE} needs an fd_step between 1e-6 and 0.1")
    return Bundle(root, card, normalization, blobs["model.onnx"], blobs["head.onnx"],
                  blobs.get(FD_FILE))


def _fd_step_ok(entry: dict[str, Any]) -> bool:
    step = entry.get("fd_step")
    return isinstance(step, float | int) and not isinstance(step, bool) and 1e-6 <= step <= 0.1



def refuse_external_data(blob: bytes, path: Path) -> None:
    """Refuse an ONNX graph with a tensor stored outside the file (external data), which would
    make the runtime read other files; read from the protobuf wire format, so scoring needs no
    ``onnx`` package."""
    try:
        name = external_tensor(blob)
    except MalformedError as e:
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


def list_bundles(root: Path | None = None) -> list[tuple[Path, Card]]:
    """Every bundle folder under ``root`` (default: the shipped ones) with its card, by name."""
    root = bundled_models_dir() if root is None else root
    return _readable(sorted(root.iterdir()))


def _readable(folders: list[Path]) -> list[tuple[Path, Card]]:
    """The folders of ``folders`` holding a card that reads, with their cards, in order."""
    found = []
    for sub in folders:
        if sub.is_dir() and (sub / "card.json").is_file():
            try:
                found.append((sub, read_card(sub)))
            except BundleError:
                continue
    return found


def list_models(root: Path | None = None) -> list[dict[str, Any]]:
    """One summary per bundle under ``root`` (default: the shipped ones), as ``scdr-models`` prints it;
    the evaluation figures are read as the report reads them (``report.evidence.card_evidence``)."""
    from scdr.scoring.report.evidence import card_evidence

    rows = []
    for path, card in list_bundles(root):
        evidence = card_evidence(card)
        marker = evidence.baselines.get("marker", {})
        rows.append({
            "drug": card["drug"],
            "aliases": card.get("aliases", []),
            "genes": len(card["genes"]["symbols"]),
            "pathways": len(card["pathways"]["names"]),
            "pathway_source": card["pathways"].get("source", ""),
            "threshold": card["threshold"]["value"],
            "bulk_cv_auroc": evidence.bulk_cv[0] if evidence.bulk_cv else None,
            "cells_auroc": (evidence.single_cell or {}).get("auroc"),
            "marker_auroc": marker.get("auroc"),
            "marker_genes": marker.get("genes", []),
            "description": card.get("description", ""),
            "path": str(path),
        })
    return rows


def find_bundle(drug: str, root: Path | None = None) -> Path:
    """The bundle whose drug name or alias equals ``drug`` (case-insensitive). A folder named
    after the drug is taken without reading the other cards (they are read for aliases only)."""
    root = bundled_models_dir() if root is None else root
    key = drug.strip().casefold()
    named = _readable(sorted(p for p in root.iterdir() if p.name.casefold() == key))
    if named:
        return named[0][0]
    bundles = list_bundles(root)
    for path, card in bundles:
        names = [card["drug"], path.name, *card.get("aliases", [])]
        if key in (str(n).casefold() for n in names):
            return path
    available = ", ".join(card["drug"] for _, card in bundles) or "none"
    raise BundleError(f"no model for drug '{drug}'; available: {available} (or use --model DIR)")








