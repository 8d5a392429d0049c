"""training network: structural decoder mask, gradient reversal, MMD, determinism, alignment."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import ROOT

from scdr.training.module import MaskedLinear, ScdrModule, dann_scale, grad_reverse, mmd
from scdr.training.train import (
    TrainConfig,
    domain_mixing_auroc,
    fit,
    predict,
    resolve_device,
    split_validation,
)

DATA = ROOT.parent / "shared" / "data"


def _synthetic(seed: int = 0, genes: int = 120, pathways: int = 12):
    """Small random bulk/cell matrices, labels with signal, and a sparse pathway mask."""
    rng = np.random.default_rng(seed)
    mask = rng.random((genes, pathways)) < 0.15
    mask[np.arange(genes), rng.integers(0, pathways, genes)] = True
    bulk = rng.standard_normal((160, genes)).astype(np.float32)
    y = (bulk[:, :10].sum(axis=1) + rng.normal(0, 1, 160) > 1).astype(np.float32)
    cells = (0.5 * rng.standard_normal((140, genes)) + 0.7).astype(np.float32)
    return bulk, y, cells, mask


def test_masked_weights_stay_exactly_zero_after_optimizer_steps():
    bulk, y, cells, mask = _synthetic()
    module = ScdrModule(mask, hidden=32, head_hidden=8)
    before = module.decoder.weight.detach().clone()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.5)
    x = torch.from_numpy(bulk)
    for _ in range(25):
        out = module(x)
        loss = ((out["reconstruction"] - x) ** 2).mean() + out["logit"].pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = module.decoder.weight.detach()
    off = torch.from_numpy(~mask)
    assert torch.count_nonzero(after[off]) == 0
    assert not torch.equal(after[~off], before[~off])  # the allowed weights did train
    assert module.decoder.values.numel() == int(mask.sum())  # no parameter exists off the mask
    # and through the full training loop (AdamW + weight decay + every loss term)
    result = fit(bulk, y, cells, mask, TrainConfig(epochs=2, patience=0, hidden=16, w_align=1.0))
    assert torch.count_nonzero(result.module.decoder.weight.detach()[off]) == 0


def test_masked_linear_gradient_is_confined_to_the_mask():
    mask = torch.tensor([[True, False, False], [False, True, True]])
    layer = MaskedLinear(mask)
    x = torch.randn(5, 3, requires_grad=True)
    layer(x).sum().backward()
    assert layer.values.grad.shape == (3,)
    w = layer.weight.detach()
    assert w[0, 1] == 0 and w[0, 2] == 0 and w[1, 0] == 0
    expected = x.detach() @ w.T + layer.bias.detach()
    torch.testing.assert_close(layer(x.detach()), expected)


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    reversed_ = grad_reverse(x, 0.7)
    torch.testing.assert_close(reversed_, x)  # identity forward
    (reversed_ * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.7 * w)
    x.grad = None
    (x * w).sum().backward()
    torch.testing.assert_close(x.grad, w)
    assert dann_scale(0.0) == 0.0 and dann_scale(1.0) == pytest.approx(1.0, abs=1e-4)


def test_mmd_is_zero_for_equal_samples_and_grows_with_shift():
    a = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    assert float(mmd(a, a)) == pytest.approx(0.0, abs=1e-6)
    near, far = float(mmd(a, a + 0.1)), float(mmd(a, a + 3.0))
    assert 0 < near < far


def test_fit_is_deterministic_given_the_seed():
    bulk, y, cells, mask = _synthetic()
    config = TrainConfig(epochs=2, patience=0, hidden=16, head_hidden=4)
    a = fit(bulk, y, cells, mask, config).module.state_dict()
    b = fit(bulk, y, cells, mask, config).module.state_dict()
    c = fit(bulk, y, cells, mask, replace(config, seed=1)).module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_early_stopping_keeps_the_best_validation_epoch():
    bulk, y, cells, mask = _synthetic()
    config = TrainConfig(epochs=40, patience=3, hidden=16, lr=1e-2, alignment="none")
    result = fit(bulk, y, cells, mask, config)
    losses = [h["val_loss"] for h in result.history]
    assert result.epochs_run < 40
    assert result.best_epoch == 1 + int(np.argmin(losses))
    assert result.epochs_run - result.best_epoch >= 3
    assert result.val_metrics["n"] == len(result.val_index)
    train, val = split_validation(y, 0.25, 0)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(y)
    assert abs(y[val].mean() - y.mean()) < 0.05  # stratified


def test_without_early_stopping_every_line_trains_for_every_epoch():
    bulk, y, cells, mask = _synthetic()
    result = fit(bulk, y, cells, mask, TrainConfig(epochs=4, patience=0, hidden=16, val_fraction=0.25))
    assert len(result.val_index) == 0 and np.array_equal(result.train_index, np.arange(len(y)))
    assert result.epochs_run == result.best_epoch == 4 and len(result.history) == 4
    assert result.val_metrics == {}
    # the lines a validation split would hold out change the network: they are trained on
    held_out = fit(bulk, y, cells, mask, TrainConfig(epochs=4, patience=1000, hidden=16))
    assert len(held_out.val_index) > 0
    a, b = result.module.state_dict(), held_out.module.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError):
        resolve_device("tpu")


@pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent (CI has it)")
def test_alignment_mixes_real_bulk_and_real_cells():
    """Domain classifier AUROC on the pathway layer falls with alignment (real GDSC vs plates)."""
    from scdr.training.pipeline import TrainingInputs, prepare

    data = prepare(
        TrainingInputs(
            drug="cisplatin",
            bulk_expression=DATA / "bulk" / "gdsc_expression.csv.gz",
            ic50=[DATA / "bulk" / "GDSC2_IC50.csv.gz"],
            targets=[DATA / "singlecell" / f"sc_celseq2_5cl_p{i}.h5ad" for i in (1, 2, 3)],
            genesets=DATA / "genesets" / "h.all.v7.0.symbols.gmt",
            gene_ids=[DATA / "genes" / "hgnc_genes.tsv.gz"],
            panel_size=400,
        )
    )
    config = TrainConfig(epochs=15, patience=0, hidden=64, w_align=1.0)
    mixing = {}
    for alignment in ("none", "adversarial", "mmd"):
        result = fit(data.bulk_x, data.y, data.cells_x, data.mask.mask, replace(config, alignment=alignment))
        mixing[alignment] = domain_mixing_auroc(
            predict(result.module, data.bulk_x)["pathways"],
            predict(result.module, data.cells_x)["pathways"],
        )
    print(mixing)
    assert mixing["adversarial"] < mixing["none"] - 0.05, mixing
    assert mixing["mmd"] < mixing["none"] - 0.05, mixing
