"""Drug-mechanism knowledge: each shipped drug's targets, mechanism and knowledge gene sets.

The table is curated by hand from public sources (named per drug). Its gene sets are named
exactly as in the public GMT files the project documents (Reactome `ReactomePathways.gmt`,
Enrichr `GO_Biological_Process_2021`, MSigDB Hallmark v7.0); `knowledge_nodes` looks them up in
the files given to training and returns the pathway-layer nodes the model adds for the drug:
one node for the drug's target genes (when any is expressed in both domains) and one per
knowledge set, so that the sparse decoder carries the mechanism and attributions can name it.
A set name missing from every given file is an error, not a silent skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scdr.training.data import DataError
from scdr.training.genesets import read_gmt

TARGET_PREFIX = "TARGET: "
KNOWLEDGE_PREFIX = "KNOWLEDGE: "
KNOWLEDGE_MIN_SIZE = 5  # panel genes a knowledge set needs to become a node


@dataclass(frozen=True)
class DrugKnowledge:
    """What is known of one drug's action: protein targets, mechanism, gene sets, sources."""

    drug: str  # folder name, as in training.drugs
    targets: tuple[str, ...]  # HGNC symbols of the protein targets (empty: no protein target)
    mechanism: str
    gene_sets: tuple[str, ...]  # exact set names in the Reactome / GO-BP / Hallmark GMTs
    sources: tuple[str, ...]


_EGFR_SETS = (
    "Signaling by EGFR",
    "Signaling by ERBB2",
    "epidermal growth factor receptor signaling pathway (GO:0007173)",
    "ERBB signaling pathway (GO:0038127)",
)
_DNA_DAMAGE_SETS = (
    "HALLMARK_DNA_REPAIR",
    "Fanconi Anemia Pathway",
    "Nucleotide Excision Repair",
    "interstrand cross-link repair (GO:0036297)",
    "DNA Double-Strand Break Repair",
    "G2/M DNA damage checkpoint",
)
KNOWLEDGE: tuple[DrugKnowledge, ...] = (
    DrugKnowledge(
        "cisplatin",
        (),
        "platinum compound: forms intra- and inter-strand DNA cross-links; cells die unless "
        "nucleotide-excision, Fanconi/interstrand cross-link and homologous-recombination repair "
        "remove them; no protein target",
        (*_DNA_DAMAGE_SETS, "Mismatch Repair", "TP53 Regulates Transcription of DNA Repair Genes"),
        ("DrugBank DB00515", "Siddik 2003, Oncogene 22:7265 (cisplatin mode of action and resistance)"),
    ),
    DrugKnowledge(
        "erlotinib",
        ("EGFR",),
        "reversible ATP-competitive EGFR kinase inhibitor (1st generation); active against "
        "EGFR-activated (exon-19 deletion, L858R) and EGFR-amplified lines",
        _EGFR_SETS,
        ("DrugBank DB00530", "ChEMBL CHEMBL553", "Lynch et al. 2004, NEJM 350:2129"),
    ),
    DrugKnowledge(
        "gefitinib",
        ("EGFR",),
        "reversible ATP-competitive EGFR kinase inhibitor (1st generation); same target and "
        "sensitising lesions as erlotinib",
        _EGFR_SETS,
        ("DrugBank DB00317", "ChEMBL CHEMBL939", "Paez et al. 2004, Science 304:1497"),
    ),
    DrugKnowledge(
        "afatinib",
        ("EGFR", "ERBB2", "ERBB4"),
        "irreversible pan-ERBB kinase inhibitor (2nd generation): covalent on EGFR, HER2 and HER4",
        (*_EGFR_SETS, "Signaling by ERBB4"),
        ("DrugBank DB08916", "ChEMBL CHEMBL1173655", "Li et al. 2008, Oncogene 27:4702"),
    ),
    DrugKnowledge(
        "osimertinib",
        ("EGFR",),
        "irreversible EGFR kinase inhibitor (3rd generation), selective for sensitising and "
        "T790M-mutant EGFR over wild type",
        _EGFR_SETS,
        ("DrugBank DB09330", "ChEMBL CHEMBL3353410", "Cross et al. 2014, Cancer Discov 4:1046"),
    ),
    DrugKnowledge(
        "crizotinib",
        ("ALK", "MET", "ROS1"),
        "ATP-competitive ALK, MET and ROS1 kinase inhibitor; active against ALK/ROS1 fusions "
        "and MET-amplified lines",
        ("Signaling by MET", "MET Receptor Activation",
         "hepatocyte growth factor receptor signaling pathway (GO:0048012)", "Signaling by EGFR"),
        ("DrugBank DB08865", "ChEMBL CHEMBL601719", "Kwak et al. 2010, NEJM 363:1693"),
    ),
    DrugKnowledge(
        "docetaxel",
        ("TUBB", "TUBB4B", "BCL2"),
        "taxane: binds beta-tubulin and stabilises microtubules, arresting mitosis; BCL2 "
        "phosphorylation is a documented secondary target",
        ("HALLMARK_MITOTIC_SPINDLE", "Kinesins", "mitotic spindle assembly (GO:0090307)",
         "microtubule polymerization or depolymerization (GO:0031109)",
         "Mitotic Spindle Checkpoint"),
        ("DrugBank DB01248", "ChEMBL CHEMBL92", "Jordan & Wilson 2004, Nat Rev Cancer 4:253"),
    ),
    DrugKnowledge(
        "plx-4720",
        ("BRAF",),
        "selective inhibitor of BRAF V600E kinase; blocks MAPK signalling in BRAF-mutant cells",
        ("Signaling by high-kinase activity BRAF mutants", "Signaling by BRAF and RAF fusions",
         "Oncogenic MAPK signaling", "RAF/MAP kinase cascade", "HALLMARK_KRAS_SIGNALING_UP"),
        ("ChEMBL CHEMBL1230020", "Tsai et al. 2008, PNAS 105:3041"),
    ),
    DrugKnowledge(
        "i-bet-762",
        ("BRD2", "BRD3", "BRD4"),
        "BET bromodomain inhibitor: displaces BRD2/3/4 from acetylated chromatin and represses "
        "MYC-driven and super-enhancer transcription",
        ("HALLMARK_MYC_TARGETS_V1", "HALLMARK_MYC_TARGETS_V2", "histone acetylation (GO:0016573)",
         "chromatin remodeling (GO:0006338)"),
        ("ChEMBL CHEMBL2036808", "Nicodeme et al. 2010, Nature 468:1119",
         "Delmore et al. 2011, Cell 146:904 (BET inhibition represses MYC)"),
    ),
    DrugKnowledge(
        "sorafenib",
        ("RAF1", "BRAF", "KDR", "FLT4", "PDGFRB", "KIT", "FLT3"),
        "multi-kinase inhibitor of RAF kinases and of the VEGF, PDGF, KIT and FLT3 receptors",
        ("RAF/MAP kinase cascade", "Signaling by VEGF", "Signaling by PDGF", "Signaling by SCF-KIT",
         "HALLMARK_ANGIOGENESIS"),
        ("DrugBank DB00398", "ChEMBL CHEMBL1336", "Wilhelm et al. 2004, Cancer Res 64:7099"),
    ),
    DrugKnowledge(
        "etoposide",
        ("TOP2A", "TOP2B"),
        "topoisomerase II poison: traps the TOP2-DNA cleavage complex, leaving double-strand "
        "breaks; TOP2A level sets how many complexes are trapped",
        ("DNA topological change (GO:0006265)", "DNA Double-Strand Break Repair",
         "G2/M DNA damage checkpoint", "HALLMARK_G2M_CHECKPOINT", "HALLMARK_DNA_REPAIR"),
        ("DrugBank DB00773", "ChEMBL CHEMBL44", "Nitiss 2009, Nat Rev Cancer 9:338"),
    ),
    DrugKnowledge(
        "vorinostat",
        ("HDAC1", "HDAC2", "HDAC3", "HDAC6"),
        "pan-HDAC inhibitor (hydroxamate): class I and IIb histone deacetylases; re-opens "
        "chromatin and induces cell-cycle arrest and apoptosis",
        ("HDACs deacetylate histones", "histone deacetylation (GO:0016575)",
         "Chromatin modifying enzymes", "HALLMARK_APOPTOSIS"),
        ("DrugBank DB02546", "ChEMBL CHEMBL98", "Marks & Breslow 2007, Nat Biotechnol 25:84"),
    ),
)


def find_knowledge(drug: str) -> DrugKnowledge | None:
    """The table row of a drug (its folder name, case-insensitive), else None."""
    key = drug.lower()
    for row in KNOWLEDGE:
        if row.drug == key:
            return row
    return None


def knowledge_nodes(drug: str, gmt_paths: list[str | Path]) -> dict[str, list[str]]:
    """The drug's knowledge nodes, node name -> member symbols: the target node, then its sets.

    Sets are looked up by exact name in `gmt_paths` (first file that has it); a drug without a
    table row, or a set found in none of the files, is a DataError naming what is missing.
    """
    row = find_knowledge(drug)
    if row is None:
        raise DataError(
            f"no mechanism knowledge for {drug!r}: add a row to training/knowledge.py "
            "(targets, mechanism, gene sets, sources)"
        )
    nodes: dict[str, list[str]] = {}
    if row.targets:
        nodes[target_node_name(row.targets)] = list(row.targets)
    libraries = [(Path(p).name, read_gmt(p)) for p in gmt_paths]
    for name in row.gene_sets:
        hit = next((sets[name] for _, sets in libraries if name in sets), None)
        if hit is None:
            files = ", ".join(n for n, _ in libraries) or "no files"
            raise DataError(f"knowledge set {name!r} of {drug} is in none of the gene-set files ({files})")
        nodes[KNOWLEDGE_PREFIX + name] = hit
    return nodes


def target_node_name(targets: tuple[str, ...] | list[str]) -> str:
    """The pathway-layer name of a drug's target node, e.g. 'TARGET: EGFR, ERBB2'."""
    return TARGET_PREFIX + ", ".join(targets)


def target_node(names: list[str]) -> int | None:
    """Index of the target node among pathway-layer names, or None when the drug has none."""
    return next((i for i, name in enumerate(names) if name.startswith(TARGET_PREFIX)), None)


def card_block(drug: str, nodes_in_model: list[str]) -> dict:
    """The card's `knowledge` block: targets, mechanism, sources and the nodes the model kept."""
    row = find_knowledge(drug)
    if row is None:
        return {}
    return {
        "targets": list(row.targets),
        "mechanism": row.mechanism,
        "sources": list(row.sources),
        "gene_sets": list(row.gene_sets),
        "nodes_in_model": [n for n in nodes_in_model if n.startswith((TARGET_PREFIX, KNOWLEDGE_PREFIX))],
    }
