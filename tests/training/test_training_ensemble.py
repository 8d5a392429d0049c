"""training.ensemble: cross-fitting, Platt calibration, distillation and the exported student."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from scdr.training.ensemble import (
    Calibration,
    StudentConfig,
    distill,
    fit_calibrated,
    fit_ensemble,
    fold_calibration,
    platt,
    reliability,
    split_members,
)
from scdr.training.export import build_head_graph, build_model_graph
from scdr.training.module import ScdrModule
from scdr.training.train import TrainConfig, init_anchor, predict

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


def test_more_members_than_folds_repeat_the_split_and_average_the_out_of_fold_logits(monkeypatch):
    import scdr.training.ensemble as ensemble

    monkeypatch.setattr(ensemble, "FOLDS", 2)
    assert split_members(2) == (2, 1) and split_members(6) == (2, 3)
    with pytest.raises(ValueError, match="multiple of 2"):
        split_members(5)
    bulk, y, cells, mask = _synthetic(4)
    single = fit_ensemble(bulk, y, cells, mask, FAST, members=2)
    ens = fit_ensemble(bulk, y, cells, mask, FAST, members=4)
    assert len(ens.members) == 4 and ens.cv["folds"] == 2 and ens.cv["repeats"] == 2
    assert len(ens.cv["per_fold"]) == 4
    # the first split is a single cross-fitting's (same folds, same member seeds)
    np.testing.assert_array_equal(ens.fold, single.fold)
    for a, b in zip(ens.members[:2], single.members, strict=True):
        np.testing.assert_array_equal(predict(a, cells)["logit"], predict(b, cells)["logit"])
    # every line is held out once per split; its OOF logit is the mean of those members' logits
    logits = np.stack([predict(m, bulk)["logit"] for m in ens.members]).astype(np.float64)
    first = np.where(ens.fold == 0, logits[0], logits[1])
    second = 2 * ens.oof_logit - first  # the second split's member that left the line out
    assert np.all(np.isclose(second, logits[2], atol=1e-4) | np.isclose(second, logits[3], atol=1e-4))
    assert not np.allclose(second, first, atol=1e-4)  # the second split adds new members' views
    assert ens.cv["pooled_auroc"] == pytest.approx(roc_auc_score(y, ens.oof_logit))
    assert ens.calibration.n == len(y)


def test_the_student_follows_the_ensemble_and_exports_with_the_calibration_folded_in():
    bulk, y, cells, mask = _synthetic(1)
    ens = fit_ensemble(bulk, y, cells, mask, FAST, members=3)
    student, fidelity = distill(ens, bulk, cells, mask, FAST, StudentConfig())
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


def test_depth_pairs_teach_the_student_a_thinned_cells_full_depth_logit():
    bulk, y, cells, mask = _synthetic(5)
    ens = fit_ensemble(bulk, y, cells, mask, FAST, members=2)
    rng = np.random.default_rng(6)
    index = np.tile(np.arange(len(cells)), 2)  # two shallower copies of every cell
    noise = rng.standard_normal((len(index), cells.shape[1]))
    thinned = (0.3 * cells[index] + 0.8 * noise).astype(np.float32)
    full = ens.logit(cells)[index]
    opts = StudentConfig(epochs=40)
    plain, _ = distill(ens, bulk, cells, mask, FAST, opts)
    paired, fidelity = distill(ens, bulk, cells, mask, FAST, opts, pairs=(thinned, index))
    gap = {name: np.abs(predict(m, thinned)["logit"] - full).mean() for name, m in
           (("plain", plain), ("paired", paired))}  # fmt: skip
    assert gap["paired"] < 0.85 * gap["plain"]  # 0.365 -> 0.282 when written
    assert fidelity["cells"]["pearson_r"] > 0.9  # and it still follows the ensemble at full depth


def test_ensemble_training_is_deterministic_for_a_seed():
    bulk, y, cells, mask = _synthetic(2)
    a = fit_ensemble(bulk, y, cells, mask, FAST, members=2)
    b = fit_ensemble(bulk, y, cells, mask, FAST, members=2)
    np.testing.assert_array_equal(a.oof_logit, b.oof_logit)
    assert a.calibration.slope == b.calibration.slope


ANCHORED = TrainConfig(epochs=30, patience=0, hidden=16, head_hidden=8, alignment="none", lr=3e-3,
                       dropout=0.1, input_dropout=0.1, threads=1, anchor=True)


@pytest.mark.parametrize("head_hidden", [8, 0])
def test_an_anchored_network_exports_as_plain_layers_computing_the_same_logit(head_hidden):
    _, _, cells, mask = _synthetic(3)
    mask[:, 0] = False
    mask[:3, 0] = True  # node 0 = the 'target genes' 0..2
    module = ScdrModule(mask, hidden=16, head_hidden=head_hidden, anchor_node=0).eval()
    with torch.no_grad():
        module.anchor_raw.fill_(-0.4)
    x = torch.as_tensor(cells)
    with torch.no_grad():
        pathways = module.encode(x)
        logit = module.response_logit(pathways)
        # the node is the target genes' mean, and it reaches the logit with weight softplus(raw) > 0
        np.testing.assert_allclose(pathways[:, 0], cells[:, :3].mean(axis=1), atol=1e-6)
        extra = logit - module.head(pathways).squeeze(-1)
        weight = float(np.log1p(np.exp(-0.4)))
        np.testing.assert_allclose(extra, weight * pathways[:, 0], atol=1e-5)
    plain = module.plain()
    assert plain.anchor_node is None and plain.encoder[1].out_features == 18
    cpu = ["CPUExecutionProvider"]
    graph = ort.InferenceSession(build_model_graph(plain).SerializeToString(), providers=cpu)
    head = ort.InferenceSession(build_head_graph(plain).SerializeToString(), providers=cpu)
    _, onnx_logit, onnx_pathways = graph.run(None, {"expression": cells})
    np.testing.assert_allclose(onnx_pathways, pathways.numpy(), atol=1e-5)
    np.testing.assert_allclose(onnx_logit, logit.numpy(), atol=1e-5)
    np.testing.assert_allclose(head.run(None, {"pathways": onnx_pathways})[0], onnx_logit, atol=1e-5)


def test_the_anchor_starts_at_the_bulk_logistic_weight_and_never_turns_negative():
    rng = np.random.default_rng(4)
    mask = np.zeros((20, 3), bool)
    mask[:2, 0] = True
    mask[2:, 1:] = True
    x = rng.standard_normal((400, 20)).astype(np.float32)
    target = x[:, :2].mean(axis=1)
    for sign in (1.0, -1.0):
        y = (sign * target + rng.normal(0, 0.3, 400) > 0).astype(np.float32)
        module = ScdrModule(mask, hidden=8, head_hidden=4, anchor_node=0)
        init_anchor(module, x, y)
        expected = LogisticRegression(class_weight="balanced", max_iter=1000).fit(target[:, None], y)
        weight = module.anchor_weight().item()
        if sign > 0:
            assert weight == pytest.approx(expected.coef_[0, 0], rel=1e-4) and weight > 2
        else:
            assert weight == pytest.approx(0.05, rel=1e-4)  # floored: the target never lowers the logit


def test_an_anchored_ensemble_distils_into_an_anchored_student_and_ships_plain():
    bulk, y, cells, mask = _synthetic(5)
    mask[:, 0] = False
    mask[:5, 0] = True  # the label genes are the target node
    ens, student, fidelity = fit_calibrated(bulk, y, cells, mask, ANCHORED, members=3,
                                            student=StudentConfig(epochs=20), anchor_node=0)  # fmt: skip
    assert all(m.anchor_node == 0 and m.anchor_weight().item() > 0.05 for m in ens.members)
    assert student.anchor_node is None  # shipped as plain layers, calibration folded in
    assert fidelity["bulk"]["pearson_r"] > 0.9
    calibrated = ens.calibration.apply(ens.logit(bulk))
    assert np.corrcoef(predict(student, bulk)["logit"], calibrated)[0, 1] > 0.9
    # without the recipe switch the same call trains plain members
    plain = fit_ensemble(bulk, y, cells, mask, FAST, members=2, anchor_node=0)
    assert all(m.anchor_node is None for m in plain.members)
