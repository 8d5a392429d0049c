"""Match a file's gene names to a model's panel: symbols or Ensembl IDs, case and version tolerant."""

import re
from dataclasses import dataclass

import numpy as np

_ENSEMBL = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?(_PAR_Y)?$")


@dataclass(frozen=True)
class GeneMatch:
    """Where each file feature lands in the panel, and which panel genes the file has."""

    gene_map: np.ndarray  # int32 [n_features]: panel index, or -1 when not in the panel
    present: np.ndarray  # bool [n_panel]
    n_panel: int

    @property
    def n_matched(self) -> int:
        """Number of panel genes found in the file."""
        return int(self.present.sum())

    @property
    def coverage(self) -> float:
        """Fraction of the panel found in the file."""
        return self.n_matched / self.n_panel if self.n_panel else 0.0

    @property
    def n_summed(self) -> int:
        """Panel genes fed by more than one file feature (their counts are summed)."""
        hits = self.gene_map[self.gene_map >= 0]
        return int((np.bincount(hits, minlength=self.n_panel) > 1).sum()) if hits.size else 0


def match_genes(
    features: list[str], symbols: list[str], ensembl_ids: list[str | None]
) -> GeneMatch:
    """Map file features onto the panel by Ensembl ID (version-free) or symbol (case-free).

    Several features that land on the same panel gene are all mapped to it (their counts are
    summed by the normaliser), as happens when Ensembl IDs collapse to one symbol.
    """
    by_key: dict[str, int] = {}
    for i, sym in enumerate(symbols):
        by_key.setdefault(normalize_gene_key(sym), i)
    for i, ens in enumerate(ensembl_ids):
        if ens:
            by_key.setdefault(normalize_gene_key(ens), i)
    gene_map = np.full(len(features), -1, dtype=np.int32)
    for j, name in enumerate(features):
        gene_map[j] = by_key.get(normalize_gene_key(name), -1)
    present = np.zeros(len(symbols), dtype=bool)
    present[gene_map[gene_map >= 0]] = True
    return GeneMatch(gene_map=gene_map, present=present, n_panel=len(symbols))


def normalize_gene_key(name: str) -> str:
    """Comparison key of a gene name: upper case, Ensembl version and PAR suffix removed."""
    key = name.strip().upper()
    m = _ENSEMBL.match(key)
    return m.group(1) if m else key
