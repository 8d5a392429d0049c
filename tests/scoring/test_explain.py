"""Integrated gradients in scoring (Numba + finite differences) against captum and theory."""

import h5py
import numpy as np
import pytest
from helpers import EXAMPLE, head_logit, model_inputs, weights, write_bundle

from scdr.scoring import score
from scdr.scoring.bundle import load_bundle
from scdr.scoring.engine import ExplainSettings
from scdr.scoring.explain import IntegratedGradients, quadrature
from scdr.scoring.inference import make_session


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory, bundle_dir):
    """The test bundle's panel with a ReLU-MLP head, so the path integral is not trivial."""
    b = load_bundle(bundle_dir)
    return write_bundle(tmp_path_factory.mktemp("mlp") / "mlpdrug", b.symbols, b.ensembl_ids,
                        n_pathways=12, seed=3, head_hidden=16, drug="mlpdrug", aliases=())


@pytest.fixture(scope="module")
def mlp_pathways(mlp_bundle):
    return score(EXAMPLE, model=mlp_bundle).pathways[:60]


def _captum_ig(pathways, bundle, steps, method="gausslegendre"):
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")
    w = {k: torch.tensor(v, dtype=torch.float64) for k, v in weights(bundle).items()}

    def head(p):
        return (torch.relu(p @ w["W2"] + w["b2"]) @ w["W3"]).squeeze(-1)

    ig = captum_attr.IntegratedGradients(head)
    x = torch.tensor(pathways, dtype=torch.float64)
    return ig.attribute(x, baselines=torch.zeros_like(x), n_steps=steps, method=method).numpy()


def _ig(bundle, steps, rule):
    b = load_bundle(bundle)
    session = make_session(b.head_bytes)
    return IntegratedGradients(session, np.zeros(len(b.pathway_names), np.float32), steps, rule)


def test_pathway_attributions_match_captum(mlp_bundle, mlp_pathways):
    from scipy.stats import spearmanr

    ours = _ig(mlp_bundle, 64, "gauss-legendre").attribute(mlp_pathways).values
    ref = _captum_ig(mlp_pathways, mlp_bundle, 64)
    # Tolerance: away from ReLU kinks the two agree to float32 noise over 2h (median error
    # ~1e-4 of the largest attribution); a quadrature point within h of a kink gets a central
    # difference across the kink where autograd takes one side, which moves that cell's
    # attributions by up to ~2% of its largest one. 3% bounds both.
    scale = np.abs(ref).max(axis=1, keepdims=True)
    err = np.abs(ours - ref) / scale
    assert err.max() <= 0.03 and np.median(err) <= 1e-3
    for a, r in zip(ours, ref):
        if np.ptp(r) > 0:
            assert spearmanr(a, r).statistic >= 0.99


def _mean_gap(bundle, pathways, steps, rule):
    """Mean over cells of |sum of attributions - (f(x) - f(baseline))|."""
    a = _ig(bundle, steps, rule).attribute(pathways)
    return float(np.abs(a.values.sum(axis=1) - (a.logit - a.baseline_logit)).mean())


@pytest.mark.parametrize("rule", ["left", "midpoint", "gauss-legendre"])
def test_completeness_gap_shrinks_as_steps_grow(mlp_bundle, mlp_pathways, rule):
    gaps = [_mean_gap(mlp_bundle, mlp_pathways, s, rule) for s in (4, 16, 64)]
    assert gaps[0] > gaps[1] > gaps[2]


def test_gauss_legendre_reaches_a_gap_with_fewer_steps_than_left(tmp_path, bundle_dir):
    # a smooth (tanh) head: the quadrature rule, not ReLU kinks, decides the error
    b = load_bundle(bundle_dir)
    smooth = write_bundle(tmp_path / "tanh", b.symbols, b.ensembl_ids, n_pathways=12, seed=4,
                          head_hidden=16, head_activation="Tanh", aliases=())
    pathways = score(EXAMPLE, model=smooth).pathways[:60]
    gauss_8 = _mean_gap(smooth, pathways, 8, "gauss-legendre")
    assert gauss_8 < _mean_gap(smooth, pathways, 128, "left")


def test_linear_head_is_exact_whatever_the_rule(bundle_dir):
    b = load_bundle(bundle_dir)
    p = score(EXAMPLE, model=bundle_dir).pathways[:30]
    w = weights(bundle_dir)
    want = p * w["W2"].ravel()[None, :]
    for rule in ("left", "right", "midpoint", "trapezoid", "gauss-legendre"):
        got = IntegratedGradients(make_session(b.head_bytes),
                                  np.zeros(p.shape[1], np.float32), 4, rule).attribute(p)
        np.testing.assert_allclose(got.values, want, rtol=1e-3, atol=1e-4)
        assert got.gap.max() < 1e-3


@pytest.mark.parametrize("rule", ["left", "right", "midpoint", "trapezoid", "gauss-legendre"])
def test_quadrature_weights_integrate_polynomials(rule):
    a, w = quadrature(rule, 12)
    assert abs(w.sum() - 1) < 1e-12 and np.all((a >= 0) & (a <= 1))
    assert abs(np.dot(w, a) - 0.5) < 0.05  # integral of t on [0, 1]


def test_same_attributions_whatever_chunk_and_batch(mlp_bundle, monkeypatch):
    import scdr.scoring.explain as ex

    settings = ExplainSettings(steps=8)
    ref = score(EXAMPLE, model=mlp_bundle, explain=settings, chunk_size=10_000)
    monkeypatch.setattr(ex, "_BATCH_VALUES", 5_000)  # a few cells per ONNX Runtime call
    small = score(EXAMPLE, model=mlp_bundle, explain=settings, chunk_size=7)
    np.testing.assert_allclose(small.attributions, ref.attributions, rtol=1e-5, atol=1e-6)
    w = weights(mlp_bundle)
    delta = head_logit(ref.pathways.astype(np.float64), w) - head_logit(
        np.zeros((1, ref.pathways.shape[1])), w)
    np.testing.assert_allclose(ref.attributions.sum(axis=1), delta,
                               atol=2e-3 + 0.05 * np.abs(delta).max())


def test_gene_level_matches_captum_on_a_few_cells(mlp_bundle, example_counts):
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")
    from scipy.stats import spearmanr

    m, var, _ = example_counts
    b = load_bundle(mlp_bundle)
    x = model_inputs(b, m[:3], var)
    session = make_session(b.model_bytes)
    ours = IntegratedGradients(session, np.zeros(x.shape[1], np.float32), 16,
                               "gauss-legendre").attribute_features(x)
    w = {k: torch.tensor(v, dtype=torch.float64) for k, v in weights(mlp_bundle).items()}

    def model(e):
        p = e @ w["W1"] + w["b1"]
        return (torch.relu(p @ w["W2"] + w["b2"]) @ w["W3"]).squeeze(-1)

    xt = torch.tensor(x, dtype=torch.float64)
    ref = captum_attr.IntegratedGradients(model).attribute(
        xt, baselines=torch.zeros_like(xt), n_steps=16, method="gausslegendre").numpy()
    for a, r in zip(ours.values, ref):
        assert spearmanr(a, r).statistic >= 0.99
        assert np.abs(a - r).max() <= 0.03 * np.abs(r).max()


def test_cli_explain_outputs(tmp_path, mlp_bundle):
    import csv
    import subprocess
    import sys

    out = tmp_path / "t.csv"
    ex = tmp_path / "attr.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "scdr.scoring.cli", str(EXAMPLE), "--model", str(mlp_bundle), "-o",
         str(out), "--explain", "--explain-out", str(ex), "--groupby", "cell_line",
         "--explain-genes", "p1_A1,p1_A10", "--steps", "8", "-q"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert {"top_pathways", "ig_gap"} <= set(rows[0])
    with h5py.File(ex) as f:
        attr = f["attributions"][()]
        assert attr.shape == (len(rows), 12)
        assert [c.decode() for c in f["cell_id"][()]] == [r["cell_id"] for r in rows]
        assert [c.decode() for c in f["genes/cell_id"][()]] == ["p1_A1", "p1_A10"]
        assert f["genes/attributions"].shape[0] == 2
    groups = list(csv.DictReader((tmp_path / "attr.by_group.csv").open()))
    lines = {(g["grouping"], g["group"]) for g in groups}
    assert ("cell_line", "HCC827") in lines and ("predicted_label", "resistant") in lines
    a549 = [i for i, r in enumerate(rows) if r["cell_id"].startswith("p1_")]
    assert a549  # every row came back
    hcc = [float(g["mean_attribution"]) for g in groups if g["group"] == "HCC827"]
    assert len(hcc) == 12


def test_top_pathways_name_those_pushing_towards_each_call_strongest_first():
    """The chunk-wide join equals the per-cell definition, ties and all-negative cells included."""
    from scdr.scoring.engine import TOP_PATHWAYS, _top_pathways

    rng = np.random.default_rng(4)
    attr = np.round(rng.standard_normal((500, 6)), 1).astype(np.float32)  # rounding makes ties
    attr[:20] = -np.abs(attr[:20])  # nothing pushes these sensitive cells' way
    sensitive = rng.random(500) < 0.5
    sensitive[:20] = True
    names = [f"P{j}" for j in range(6)]
    got = _top_pathways(attr, sensitive, names)
    for i in range(500):
        signed = attr[i] if sensitive[i] else -attr[i]
        order = np.argsort(-signed, kind="stable")[:TOP_PATHWAYS]
        assert got[i] == ";".join(names[j] for j in order if signed[j] > 0)
    assert got[:20] == [""] * 20


def test_top_pathways_are_chosen_as_a_stable_sort_would_choose_them():
    """The top-k kernel behind ``top_pathways`` keeps argsort's order, ties to the lower column."""
    from scdr.scoring.engine import top_k_stable

    rng = np.random.default_rng(3)
    for trial in range(60):
        n, d = int(rng.integers(1, 40)), int(rng.integers(1, 60))
        if trial % 2:  # many ties, signed zeros among them
            values = rng.integers(-2, 3, (n, d)).astype(np.float32)
            values[values == 0] = np.where(rng.random(int((values == 0).sum())) < 0.5, -0.0, 0.0)
        else:
            values = rng.standard_normal((n, d)).astype(np.float32)
        for k in range(min(d, 4) + 1):
            want = np.argsort(-values, axis=1, kind="stable")[:, :k]
            np.testing.assert_array_equal(top_k_stable(values, k), want)
