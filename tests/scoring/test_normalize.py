"""The Numba normaliser agrees with the numpy reference of the contract, on real cells."""

import dataclasses
import json

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import reference_normalize

from scdr.scoring.bundle import load_bundle
from scdr.scoring.genes import match_genes
from scdr.scoring.normalize import normalize_chunk


def _run(m: sp.csr_matrix, gene_map, present, recipe, normalized_input=False):
    return normalize_chunk(m.data, m.indices, m.indptr.astype(np.int64), gene_map, present,
                           recipe, normalized_input=normalized_input)


def test_parity_with_reference_on_example_cells(example_counts, bundle_dir):
    m, var, _ = example_counts
    bundle = load_bundle(bundle_dir)
    match = match_genes(var, bundle.symbols, bundle.ensembl_ids)
    assert 0.9 < match.coverage < 1.0  # the 20 absent genes are really absent
    got, status = _run(m, match.gene_map, match.present, bundle.normalization)
    card_norm = json.loads((bundle_dir / "card.json").read_text())["normalization"]
    want, zero = reference_normalize(m.toarray(), match.gene_map, match.n_panel, card_norm)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
    assert not zero.any() and (status == 0).all()
    assert np.all(got[:, ~match.present] == 0)
    assert got.dtype == np.float32 and np.isfinite(got).all()


def test_duplicate_features_are_summed_and_zero_cells_flagged(bundle_dir):
    bundle = load_bundle(bundle_dir)
    recipe = bundle.normalization
    n_panel = len(bundle.symbols)
    # features: panel gene 0 twice (e.g. two IDs for one symbol), panel gene 1, an unmapped gene
    gene_map = np.array([0, 0, 1, -1] + [-1] * 0, dtype=np.int32)
    present = np.zeros(n_panel, bool)
    present[[0, 1]] = True
    dense = np.array([[3, 4, 1, 10], [0, 0, 0, 0], [0, 0, 0, 5]], dtype=np.float32)
    got, status = _run(sp.csr_matrix(dense), gene_map, present, recipe)
    card = json.loads((bundle_dir / "card.json").read_text())["normalization"]
    want, zero = reference_normalize(dense, gene_map, n_panel, card)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert status.tolist() == [0, 1, 0]
    assert zero.tolist() == [False, True, False]
    assert np.all(got[1] == 0)


def test_normalized_input_skips_scale_and_log(example_counts, bundle_dir):
    m, var, _ = example_counts
    bundle = load_bundle(bundle_dir)
    match = match_genes(var, bundle.symbols, bundle.ensembl_ids)
    lognorm = m.multiply(1e4 / m.sum(axis=1)).tocsr()
    lognorm.data = np.log1p(lognorm.data).astype(np.float32)
    from_counts, _ = _run(m, match.gene_map, match.present, bundle.normalization)
    from_lognorm, _ = _run(lognorm, match.gene_map, match.present, bundle.normalization, True)
    np.testing.assert_allclose(from_lognorm, from_counts, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_bad_values_raise(bundle_dir, bad):
    from scdr.scoring.errors import InputError

    bundle = load_bundle(bundle_dir)
    n_panel = len(bundle.symbols)
    present = np.zeros(n_panel, bool)
    present[0] = True
    m = sp.csr_matrix(np.array([[1.0, 2.0], [bad, 1.0]], dtype=np.float32))
    with pytest.raises(InputError, match="negative, NaN or infinite"):
        _run(m, np.array([0, -1], np.int32), present, bundle.normalization)


def test_vectorised_log1p_is_as_accurate_as_float32_log():
    """The polynomial log1p agrees with float64 log1p as closely as np.log(1 + x) in float32."""
    from scdr.scoring.normalize import _log1p_inplace

    x = np.concatenate([np.linspace(0, 2, 200_001), np.geomspace(2, 1e7, 200_001)]).astype(np.float32)
    got = x.copy()
    _log1p_inplace(got)
    want = np.log1p(x.astype(np.float64))
    plain = np.log(np.float32(1) + x).astype(np.float64)
    err, plain_err = np.abs(got - want), np.abs(plain - want)
    assert np.all(err <= np.maximum(2 * plain_err, 4e-7 * np.maximum(want, 1.0)))


def test_depth_statistics_follow_each_cells_detection_rate(example_counts, bundle_dir, tmp_path):
    """Step 5b: with depth statistics in the card, every cell is standardised with the gene
    statistics at its own detection rate (interpolated, clamped at the grid's ends), as the
    contract's reference computes; thinned copies of the cells span the grid."""
    import shutil

    m, var, _ = example_counts
    rng = np.random.default_rng(0)
    thin = m.copy()
    thin.data = rng.binomial(thin.data.astype(np.int64), 0.05).astype(np.float32)
    thin.eliminate_zeros()
    cells = sp.vstack([m, thin]).tocsr()
    folder = tmp_path / "bundle"
    shutil.copytree(bundle_dir, folder)
    card = json.loads((folder / "card.json").read_text())
    n = len(card["genes"]["symbols"])
    match = match_genes(var, card["genes"]["symbols"], card["genes"]["ensembl_ids"])
    dense = cells.toarray()
    gathered = np.zeros((dense.shape[0], n))
    np.add.at(gathered.T, match.gene_map[match.gene_map >= 0], dense.T[match.gene_map >= 0])
    rates = (gathered[:, match.present] > 0).mean(axis=1)
    grid = np.quantile(rates, [0.05, 0.25, 0.45])  # cells below, between and above the grid rows
    card["normalization"]["depth_stats"] = {
        "detection_rate": grid.tolist(),
        "gene_mean": rng.normal(0, 0.5, (3, n)).tolist(),
        "gene_std": rng.uniform(0.5, 2.0, (3, n)).tolist(),
    }
    (folder / "card.json").write_text(json.dumps(card))
    recipe = load_bundle(folder).normalization
    got, status = _run(cells, match.gene_map, match.present, recipe)
    want, zero = reference_normalize(dense, match.gene_map, match.n_panel, card["normalization"])
    assert (rates < grid[0]).any() and (rates > grid[-1]).any()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-5)
    assert (status == 0).all() and not zero.any()
    without, _ = _run(cells, match.gene_map, match.present, load_bundle(bundle_dir).normalization)
    assert np.abs(got - without).max() > 0.1  # the grid is used, not the card's single row


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(detection_rate=[0.3, 0.2]), "increasing"),
    (lambda d: d.update(detection_rate=[0.1]), "2 or more"),
    (lambda d: d.update(gene_mean=d["gene_mean"][:1]), "rows of"),
    (lambda d: d["gene_std"][1].__setitem__(0, 0.0), "positive gene_std"),
])
def test_bad_depth_statistics_refuse_the_bundle(bundle_dir, tmp_path, edit, words):
    import shutil

    from scdr.scoring.errors import BundleError

    folder = tmp_path / "bundle"
    shutil.copytree(bundle_dir, folder)
    card = json.loads((folder / "card.json").read_text())
    n = len(card["genes"]["symbols"])
    depth = {"detection_rate": [0.1, 0.4], "gene_mean": [[0.0] * n] * 2, "gene_std": [[1.0] * n, [1.0] * n]}
    depth["gene_std"] = [list(r) for r in depth["gene_std"]]
    edit(depth)
    card["normalization"]["depth_stats"] = depth
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match=words):
        load_bundle(folder)


def test_each_recipe_is_normalised_with_its_own_statistics_when_two_alternate(example_counts, bundle_dir):
    """The per-recipe grid is worked out once: two bundles' recipes scored chunk after chunk
    (as one pass with several models does) must each keep their own statistics."""
    m, var, _ = example_counts
    bundle = load_bundle(bundle_dir)
    match = match_genes(var, bundle.symbols, bundle.ensembl_ids)
    one = bundle.normalization
    other = dataclasses.replace(one, gene_mean=None, gene_std=None, depth_rate=None,
                                depth_mean=None, depth_std=None)  # identity gene statistics
    first_one, _ = _run(m, match.gene_map, match.present, one)
    first_other, _ = _run(m, match.gene_map, match.present, other)
    assert not np.allclose(first_one, first_other)
    for _ in range(2):
        again_one, _ = _run(m, match.gene_map, match.present, one)
        again_other, _ = _run(m, match.gene_map, match.present, other)
        np.testing.assert_array_equal(again_one, first_one)
        np.testing.assert_array_equal(again_other, first_other)
