"""training.ensemble: cross-fitting, Platt calibration, distillation and the exported student."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.metrics import roc_auc_score

from scdr.training.ensemble import (
    Calibration,
    StudentConfig,
    distill,
    fit_ensemble,
    fold_calibration,
    platt,
    reliability,
)
from scdr.training.export import build_head_graph, build_model_graph
from scdr.training.train import TrainConfig, predict

FAST = TrainConfig(epochs=30, patience=0, hidden=16, head_hidden=8, alignment="none", lr=3e-3,
                   dropout=0.1, input_dropout=0.1, threads=1)


def _synthetic(seed: int = 0, genes: int = 60, pathways: int = 6):
    """Bulk rows whose label depends on the first genes, cells shifted off them, a pathway mask."""
    rng = np.random.default_rng(seed)
    mask = rng.random((genes, pathways)) < 0.2
    mask[np.arange(genes), rng.integers(0, pathways, genes)] = True
    bulk = rng.standard_normal((200, genes)).astype(np.float32)
    y = (bulk[:, :5].sum(axis=1) + rng.normal(0, 1, 200) > 2.0).astype(np.float32)
    cells = (0.6 * rng.standard_normal((120, genes)) + 0.3).astype(np.float32)
    return bulk, y, cells, mask


def test_platt_recovers_a_known_calibration_at_the_real_prior():
    rng = np.random.default_rng(0)
    logit = rng.normal(0, 2, 20000)
    true = 0.5 * logit - 2.0  # a rare class: prior about 15%
    y = rng.random(20000) < 1 / (1 + np.exp(-true))
    cal = platt(logit, y)
    assert cal.slope == pytest.approx(0.5, abs=0.03) and cal.intercept == pytest.approx(-2.0, abs=0.06)
    assert cal.n == 20000 and cal.n_sensitive == int(y.sum())
    prob = 1 / (1 + np.exp(-cal.apply(logit)))
    assert prob.mean() == pytest.approx(y.mean(), abs=0.005)  # calibrated at the real prior
    for row in cal.reliability:  # every well-filled bin is on the diagonal
        if row["n"] > 500:
            assert row["observed"] == pytest.approx(row["mean_predicted"], abs=0.03)
    assert cal.to_card()["prior"] == pytest.approx(y.mean())


def test_reliability_bins_count_every_row_once():
    prob = np.array([0.0, 0.05, 0.15, 0.5, 0.95, 1.0])
    y = np.array([0, 0, 1, 1, 1, 1])
    rows = reliability(prob, y)
    assert sum(r["n"] for r in rows) == len(prob)
    assert rows[0] == {"bin": "0.0-0.1", "n": 2, "mean_predicted": 0.025, "observed": 0.0}
    assert rows[-1]["bin"] == "0.9-1.0" and rows[-1]["n"] == 2


def test_cross_fitted_members_give_out_of_fold_logits_for_every_line():
    bulk, y, cells, mask = _synthetic()
    ens = fit_ensemble(bulk, y, cells, mask, FAST, members=3)
    assert len(ens.members) == 3 and np.isfinite(ens.oof_logit).all()
    assert sorted(np.unique(ens.fold)) == [0, 1, 2]
    for k, member in enumerate(ens.members):  # a line's OOF logit comes from the member that left it out
        held = ens.fold == k
        np.testing.assert_allclose(predict(member, bulk[held])["logit"], ens.oof_logit[held], atol=1e-5)
    assert ens.cv["pooled_auroc"] == pytest.approx(roc_auc_score(y, ens.oof_logit))
    assert ens.cv["pooled_auroc"] > 0.7  # the signal is learnable out of fold
    assert ens.calibration.n == len(y)
    mean = np.mean([predict(m, cells)["logit"] for m in ens.members], axis=0)
    np.testing.assert_allclose(ens.logit(cells), mean, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        fit_ensemble(bulk, y, cells, mask, FAST, members=1)


def test_the_student_follows_the_ensemble_and_exports_with_the_calibration_folded_in():
    bulk, y, cells, mask = _synthetic(1)
    ens = fit_ensemble(bulk, y, cells, mask, FAST, members=3)
    student, fidelity = distill(ens, bulk, cells, mask, FAST, StudentConfig(epochs=40))
    assert fidelity["bulk"]["pearson_r"] > 0.95 and fidelity["cells"]["pearson_r"] > 0.9
    raw = predict(student, cells)["logit"].astype(np.float64)
    cal = Calibration(slope=0.7, intercept=-1.5, n=len(y), n_sensitive=int(y.sum()))
    fold_calibration(student, cal)
    out = predict(student, cells)
    np.testing.assert_allclose(out["logit"], 0.7 * raw - 1.5, atol=1e-5)
    # the exported graphs carry the calibrated logit: model.onnx and head.onnx agree with torch,
    # so attributions over head.onnx still sum to the (calibrated) logit difference
    cpu = ["CPUExecutionProvider"]
    model = ort.InferenceSession(build_model_graph(student).SerializeToString(), providers=cpu)
    head = ort.InferenceSession(build_head_graph(student).SerializeToString(), providers=cpu)
    prob, logit, pathways = model.run(None, {"expression": cells})
    np.testing.assert_allclose(logit, out["logit"], atol=1e-5)
    np.testing.assert_allclose(head.run(None, {"pathways": pathways})[0], logit, atol=1e-5)
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-logit.astype(np.float64))), atol=1e-6)
    with torch.no_grad():
        assert student.head[-1].weight.abs().sum() > 0


def test_ensemble_training_is_deterministic_for_a_seed():
    bulk, y, cells, mask = _synthetic(2)
    a = fit_ensemble(bulk, y, cells, mask, FAST, members=2)
    b = fit_ensemble(bulk, y, cells, mask, FAST, members=2)
    np.testing.assert_array_equal(a.oof_logit, b.oof_logit)
    assert a.calibration.slope == b.calibration.slope
