"""On the shipped cisplatin bundle and real cells: scoring's finite-difference integrated
gradients (no torch) against captum's autograd reference on the same ONNX weights."""

import numpy as np
import pytest
from helpers import EXAMPLE, ROOT, model_inputs

from scdr.scoring import score
from scdr.scoring.bundle import load_bundle
from scdr.scoring.engine import ExplainSettings
from scdr.scoring.explain import IntegratedGradients
from scdr.scoring.inference import make_session

pytest.importorskip("captum")
BUNDLE = ROOT / "exported_models" / "cisplatin"


@pytest.fixture(scope="module")
def table():
    return score(EXAMPLE, model=BUNDLE, explain=ExplainSettings(steps=32))


def test_onnx_replay_in_torch_matches_onnx_runtime(table):
    import torch

    from scdr.training.explain import onnx_as_torch

    head = onnx_as_torch(BUNDLE / "head.onnx")
    logit = head(torch.tensor(table.pathways, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(logit, table.logit, atol=1e-4)


def test_pathway_attributions_agree_with_captum(table):
    from scipy.stats import spearmanr

    from scdr.training.explain import captum_attributions

    ref = captum_attributions(BUNDLE, table.pathways, "pathway", steps=32)
    ours = table.attributions
    # Tolerance as in test_explain: float32 noise over 2h (h = 1e-3) away from ReLU kinks,
    # plus central differences across a kink at the few quadrature points within h of one.
    scale = np.abs(ref).max(axis=1, keepdims=True)
    err = np.abs(ours - ref) / scale
    assert np.median(err) < 1e-4 and err.max() < 0.03  # measured: 3e-7 and 0.008
    rho = np.array([spearmanr(a, r).statistic for a, r in zip(ours, ref)])
    assert np.all(rho >= 0.99), rho.min()


def test_gene_attributions_agree_with_captum_on_a_few_cells(example_counts):
    from scipy.stats import spearmanr

    from scdr.training.explain import captum_attributions

    m, var, _ = example_counts
    b = load_bundle(BUNDLE)
    x = model_inputs(b, m[:3], var)
    ours = IntegratedGradients(make_session(b.model_bytes), np.zeros(x.shape[1], np.float32),
                               16).attribute_features(x)
    ref = captum_attributions(BUNDLE, x, "gene", steps=16)
    for a, r in zip(ours.values, ref):
        assert spearmanr(a, r).statistic >= 0.99
        assert np.abs(a - r).max() <= 0.05 * np.abs(r).max()


@pytest.mark.parametrize("baseline", ["bulk_mean", "single_cell_mean"])
def test_stored_reference_baselines_are_complete(baseline):
    from scdr.training.explain import captum_attributions

    b = load_bundle(BUNDLE)
    ref_vector = np.asarray(b.card["reference_pathways"][baseline], dtype=np.float32)
    t = score(EXAMPLE, model=BUNDLE, explain=ExplainSettings(steps=32, baseline=baseline))
    assert np.median(t.ig_gap) < 0.01  # sums to logit(cell) - logit(reference)
    ref = captum_attributions(BUNDLE, t.pathways[:20], "pathway", baseline=ref_vector, steps=32)
    np.testing.assert_allclose(t.attributions[:20], ref, atol=0.03 * np.abs(ref).max())
