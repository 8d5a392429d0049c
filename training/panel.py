"""Choose the gene panel (the model's input genes) from genes present in both domains.

Rule, in order:
1. Candidates: bulk genes that carry signal (not GDSC placeholders), whose symbol resolves to an
   Ensembl ID that no other bulk gene shares, and that every target file has (matched by Ensembl
   ID or symbol, upper case, version-free: the same keys `scoring` uses).
2. Gene sets are restricted to the candidates and size-filtered (`genesets.filter_sets`).
3. The panel is the union of the kept sets' members. If it is larger than `panel_size`, the
   `panel_size` genes with the highest variance over the training bulk lines are kept.
4. Sets are re-filtered on the final panel and genes left in no kept set are dropped, until
   stable, so every panel gene is reconstructed by at least one pathway node.
5. Knowledge nodes (`training.knowledge`: the drug's target genes and mechanism gene sets), when
   given, keep all their candidate genes in the panel whatever the cap; the target node needs one
   panel gene, a knowledge set `KNOWLEDGE_MIN_SIZE` (5). They come first in the pathway layer, and
   a general set that is also a knowledge node appears once, as the knowledge node.
   With `knowledge_only`, the panel is the knowledge genes alone and general sets are kept only
   where they pass the size filter on them.
Panel order is the bulk file's gene order.

Symbol -> Ensembl: HGNC approved symbol, else a unique HGNC previous symbol, else a unique HGNC
alias, else a unique GENCODE v22 symbol; `None` when none of these resolves.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from scdr.scoring.genes import normalize_gene_key
from scdr.training.data import BulkExpression, DataError
from scdr.training.genesets import MAX_SET_SIZE, MIN_SET_SIZE, PathwayMask, build_mask, filter_sets
from scdr.training.knowledge import KNOWLEDGE_MIN_SIZE, KNOWLEDGE_PREFIX, TARGET_PREFIX

DEFAULT_PANEL_SIZE = 2000


@dataclass(frozen=True)
class GenePanel:
    """The model's input genes in order, with identifiers and where they sit in the bulk matrix."""

    symbols: list[str]
    ensembl_ids: list[str | None]
    bulk_index: np.ndarray  # int [n_genes]: column of each panel gene in BulkExpression.values
    report: dict = field(default_factory=dict)  # counts at each step of the rule


@dataclass(frozen=True)
class GeneIds:
    """Symbol -> Ensembl ID lookups from the HGNC and GENCODE tables."""

    approved: dict[str, str | None]
    previous: dict[str, list[str]]
    alias: dict[str, list[str]]
    gencode: dict[str, list[str]]
    sources: list[str]

    def resolve(self, symbol: str) -> str | None:
        """Ensembl ID of a symbol by approved, previous, alias, then GENCODE; None if unknown."""
        ens = self.approved.get(symbol)
        if ens:
            return ens
        for table in (self.previous, self.alias, self.gencode):
            hits = set(table.get(symbol, []))
            if len(hits) == 1:
                return hits.pop()
        return None


def choose_panel(
    bulk: BulkExpression,
    train_lines: list[str],
    target_features: list[list[str]],
    gene_sets: dict[str, list[str]],
    gene_ids: GeneIds,
    panel_size: int = DEFAULT_PANEL_SIZE,
    min_size: int = MIN_SET_SIZE,
    max_size: int = MAX_SET_SIZE,
    knowledge: dict[str, list[str]] | None = None,
    knowledge_only: bool = False,
) -> tuple[GenePanel, PathwayMask]:
    """Apply the module's panel rule; return the panel and its pathway mask (knowledge nodes first)."""
    if panel_size < min_size:
        raise DataError(f"panel size {panel_size} is below the minimum set size {min_size}")
    if not target_features:
        raise DataError("at least one target single-cell file is needed to choose the panel")
    ensembl = [gene_ids.resolve(g) for g in bulk.genes]
    ens_counts = pd.Series([e for e in ensembl if e]).value_counts()
    target_keys = [{normalize_gene_key(f) for f in features} for features in target_features]
    report: dict[str, int] = {"bulk_genes": len(bulk.genes)}
    candidates = []
    n_signal = n_resolved = 0
    for j, (symbol, ens) in enumerate(zip(bulk.genes, ensembl, strict=True)):
        if bulk.placeholder[j]:
            continue
        n_signal += 1
        if not ens or ens_counts[ens] > 1:
            continue
        n_resolved += 1
        keys = {normalize_gene_key(symbol), normalize_gene_key(ens)}
        if all(keys & tk for tk in target_keys):
            candidates.append(j)
    report.update(signal=n_signal, unique_ensembl=n_resolved, in_all_targets=len(candidates))
    variance = bulk.rows(train_lines)[:, candidates].var(axis=0)
    order = {bulk.genes[j]: v for j, v in zip(candidates, variance, strict=True)}
    genes = [bulk.genes[j] for j in candidates]
    knowledge = knowledge or {}
    wanted = {g for members in knowledge.values() for g in members}
    required = {g for g in genes if g in wanted}
    report["knowledge_genes"] = len(required)
    if knowledge_only:
        if not required:
            raise DataError("knowledge_only panel: no knowledge gene is present in both domains")
        genes = [g for g in genes if g in required]
    sets = filter_sets(gene_sets, genes, min_size, max_size)
    report["sets_kept_on_candidates"] = len(sets)
    members = {g for inside in sets.values() for g in inside} | required
    genes = [g for g in genes if g in members]
    report["pathway_genes"] = len(genes)
    if len(genes) > panel_size:
        keep = set(sorted(genes, key=lambda g: (-order[g], g))[:panel_size]) | required
        genes = [g for g in genes if g in keep]
    while True:
        sets = filter_sets(sets, genes, min_size, max_size)
        members = {g for inside in sets.values() for g in inside} | required
        kept = [g for g in genes if g in members]
        if len(kept) == len(genes):
            break
        genes = kept
    nodes = _knowledge_nodes(knowledge, genes)
    sets = {k: v for k, v in sets.items() if KNOWLEDGE_PREFIX + k not in nodes}
    if not sets and not nodes:
        raise DataError(f"no gene set has {min_size}..{max_size} genes among the genes both domains share")
    in_nodes = {g for inside in [*sets.values(), *nodes.values()] for g in inside}
    genes = [g for g in genes if g in in_nodes]
    column = {g: j for j, g in enumerate(bulk.genes)}
    bulk_index = np.array([column[g] for g in genes], dtype=np.int64)
    report.update(panel=len(genes), pathways=len(sets) + len(nodes), knowledge_nodes=len(nodes))
    panel = GenePanel(
        symbols=genes,
        ensembl_ids=[ensembl[j] for j in bulk_index],
        bulk_index=bulk_index,
        report=report,
    )
    return panel, build_mask({**nodes, **sets}, genes)


def _knowledge_nodes(knowledge: dict[str, list[str]], genes: list[str]) -> dict[str, list[str]]:
    """Knowledge nodes restricted to the panel: the target node with >= 1 gene, sets with >= 5."""
    panel = set(genes)
    kept = {}
    for name, members in knowledge.items():
        inside = [g for g in members if g in panel]
        need = 1 if name.startswith(TARGET_PREFIX) else KNOWLEDGE_MIN_SIZE
        if len(inside) >= need:
            kept[name] = inside
    return kept


def load_gene_ids(paths: list[str | Path]) -> GeneIds:
    """Read HGNC (`symbol, ensembl_id, aliases, previous_symbols`) and GENCODE tables."""
    approved: dict[str, str | None] = {}
    previous: dict[str, list[str]] = {}
    alias: dict[str, list[str]] = {}
    gencode: dict[str, list[str]] = {}
    for path in map(Path, paths):
        frame = _read_table(path)
        columns = set(frame.columns)
        if {"symbol", "ensembl_id", "previous_symbols", "aliases"} <= columns:
            for sym, ens, prev, ali in frame[
                ["symbol", "ensembl_id", "previous_symbols", "aliases"]
            ].itertuples(index=False):
                approved[sym] = ens or None
                if ens:
                    for name in prev.split("|") if prev else []:
                        previous.setdefault(name, []).append(ens)
                    for name in ali.split("|") if ali else []:
                        alias.setdefault(name, []).append(ens)
        elif {"symbol", "ensembl_id"} <= columns:
            for sym, ens in frame[["symbol", "ensembl_id"]].itertuples(index=False):
                if sym and ens:
                    gencode.setdefault(sym, []).append(ens)
        else:
            raise DataError(f"gene table {path} lacks `symbol` and `ensembl_id` columns")
    if not approved and not gencode:
        raise DataError("no gene identifier table was given (--gene-ids)")
    return GeneIds(approved, previous, alias, gencode, [p.name for p in map(Path, paths)])


def _read_table(path: Path) -> pd.DataFrame:
    """A tab-separated table (plain or .gz) as strings, empty cells as ''."""
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read gene table {path}: {exc}") from exc
