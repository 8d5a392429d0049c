"""Gene sets: read GMT files and build the pathway x gene membership mask over the panel.

Size filters (documented defaults): a set is kept when it has at least `min_size` (10) and at
most `max_size` (500) member genes among the candidate genes. Sets below 10 give pathway nodes
that reconstruct too few genes to mean anything; sets above 500 (GO roots, whole-metabolism
Reactome sets) are not specific. Duplicate set names keep the first occurrence.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scdr.training.data import DataError

MIN_SET_SIZE = 10
MAX_SET_SIZE = 500
_KNOWN_SOURCES = {
    "h.all.v7.0.symbols.gmt": "MSigDB Hallmark v7.0 (h.all.v7.0.symbols.gmt)",
    "ReactomePathways.gmt": "Reactome pathways (ReactomePathways.gmt)",
    "enrichr.GO_Biological_Process_2021.gmt": "GO Biological Process 2021, Enrichr library",
}


@dataclass(frozen=True)
class PathwayMask:
    """Which panel gene belongs to which pathway: the decoder's sparsity pattern."""

    names: list[str]  # pathway names, in latent order
    genes: list[str]  # panel gene symbols, in input order
    mask: np.ndarray  # bool [n_genes, n_pathways]

    @property
    def sizes(self) -> np.ndarray:
        """Number of panel genes per pathway."""
        return self.mask.sum(axis=0)


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Parse a GMT file (plain or .gz): name, description, then gene symbols, tab-separated."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    sets: dict[str, list[str]] = {}
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                fields = line.rstrip("\r\n").split("\t")
                if len(fields) < 3 or not fields[0].strip():
                    if line.strip():
                        raise DataError(f"{path}:{number} is not a GMT line (name, desc, genes)")
                    continue
                genes = list(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
                sets.setdefault(fields[0].strip(), genes)
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"cannot read gene sets {path}: {exc}") from exc
    if not sets:
        raise DataError(f"gene set file {path} holds no sets")
    return sets


def filter_sets(
    gene_sets: dict[str, list[str]],
    genes: list[str],
    min_size: int = MIN_SET_SIZE,
    max_size: int = MAX_SET_SIZE,
) -> dict[str, list[str]]:
    """Sets restricted to `genes`, keeping those with min_size..max_size members there."""
    universe = set(genes)
    kept = {}
    for name, members in gene_sets.items():
        inside = [g for g in members if g in universe]
        if min_size <= len(inside) <= max_size:
            kept[name] = inside
    return kept


def build_mask(gene_sets: dict[str, list[str]], genes: list[str]) -> PathwayMask:
    """Membership mask of the given (already filtered) sets over `genes`, set order kept."""
    index = {g: i for i, g in enumerate(genes)}
    names = list(gene_sets)
    mask = np.zeros((len(genes), len(names)), dtype=bool)
    for j, name in enumerate(names):
        for g in gene_sets[name]:
            if g in index:
                mask[index[g], j] = True
    return PathwayMask(names=names, genes=list(genes), mask=mask)


def pathway_source(path: str | Path) -> str:
    """Human-readable source of a GMT file, from its name."""
    name = Path(path).name
    stem = name[:-3] if name.endswith(".gz") else name
    return _KNOWN_SOURCES.get(stem, f"gene sets from {name}")
