"""training.knowledge: the curated drug table, its gene sets in the public GMTs, the shipped cards."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import ROOT

from scdr.scoring.card import read_card
from scdr.training.data import DataError
from scdr.training.drugs import DRUGS
from scdr.training.knowledge import (
    KNOWLEDGE,
    KNOWLEDGE_PREFIX,
    TARGET_PREFIX,
    find_knowledge,
    knowledge_nodes,
    target_node,
    target_node_name,
)

DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent (CI has it)")
GMT_FILES = ("ReactomePathways.gmt.gz", "enrichr.GO_Biological_Process_2021.gmt.gz", "h.all.v7.0.symbols.gmt")
GMTS = [DATA / "genesets" / name for name in GMT_FILES]


def test_every_shipped_drug_has_a_row_with_mechanism_targets_and_sources():
    assert [row.drug for row in KNOWLEDGE] == [spec.name for spec in DRUGS]
    for spec in DRUGS:
        row = find_knowledge(spec.name)
        assert row is not None and row.mechanism and row.sources and row.gene_sets
        assert row.targets or "no protein target" in row.mechanism  # cisplatin acts on DNA
        assert len(set(row.gene_sets)) == len(row.gene_sets)
    assert find_knowledge("ERLOTINIB").targets == ("EGFR",)
    assert find_knowledge("not-a-drug") is None
    assert target_node_name(("ALK", "MET")) == "TARGET: ALK, MET"


@needs_data
def test_targets_are_approved_hgnc_symbols():
    approved = set(pd.read_csv(DATA / "genes" / "hgnc_genes.tsv.gz", sep="\t", usecols=["symbol"])["symbol"])
    for row in KNOWLEDGE:
        assert set(row.targets) <= approved, row.drug


@needs_data
def test_every_knowledge_set_is_found_in_the_public_gene_set_files():
    for row in KNOWLEDGE:
        nodes = knowledge_nodes(row.drug, GMTS)
        expected = ([target_node_name(row.targets)] if row.targets else []) + [
            KNOWLEDGE_PREFIX + name for name in row.gene_sets
        ]
        assert list(nodes) == expected
        assert all(len(genes) >= 5 for name, genes in nodes.items() if name.startswith(KNOWLEDGE_PREFIX))


def test_a_missing_set_or_drug_is_an_error_naming_it(tmp_path: Path):
    gmt = tmp_path / "one.gmt"
    gmt.write_text("Signaling by EGFR\tR-HSA-177929\tEGFR\tGRB2\tSOS1\n")
    with pytest.raises(DataError, match="Signaling by ERBB2"):
        knowledge_nodes("erlotinib", [gmt])
    with pytest.raises(DataError, match="no mechanism knowledge for 'aspirin'"):
        knowledge_nodes("aspirin", [gmt])


@pytest.mark.parametrize("spec", DRUGS, ids=lambda s: s.name)
def test_shipped_card_lists_its_knowledge_nodes_first_in_the_pathway_layer(spec):
    card = read_card(ROOT / "exported_models" / spec.name)
    knowledge = card["knowledge"]
    row = find_knowledge(spec.name)
    assert knowledge["targets"] == list(row.targets) and knowledge["mechanism"] == row.mechanism
    nodes = knowledge["nodes_in_model"]
    assert any(n.startswith(KNOWLEDGE_PREFIX) for n in nodes)  # at least one knowledge set made the panel
    assert card["pathways"]["names"][: len(nodes)] == nodes
    assert all(n.startswith((TARGET_PREFIX, KNOWLEDGE_PREFIX)) for n in nodes)
    assert card["calibration"]["method"].startswith("Platt")
    has_target = any(n.startswith(TARGET_PREFIX) for n in nodes)
    assert target_node(card["pathways"]["names"]) == (0 if has_target else None)
