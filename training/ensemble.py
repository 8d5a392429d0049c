"""Stable, calibrated models: a cross-fitted ensemble, Platt calibration, one distilled student.

    bulk lines -> K stratified folds; member k trains on the other K-1 folds (its own inner
                  split early-stops it) and predicts fold k   -> out-of-fold logit of every line
                  (more than FOLDS members: the K-fold split is repeated with new shuffles, and a
                  line's out-of-fold logit is the mean over the repeats)
    out-of-fold logits + labels -> Platt scaling at the real class prior (what `label` means)
    ensemble (mean of member logits) -> student of today's size, trained to match it on bulk
                  lines, target cells and mixtures of the two -> calibration folded into its head

Why: one network trained with one seed swings by up to 0.24 AUROC on cells; the mean of K
members does not, and the student keeps scoring as cheap as one network (the bundle stays one
`model.onnx` and one attribution path whose attributions sum to the logit difference). The
out-of-fold logits are also the bulk cross-validation of the recipe, so nothing is fitted twice.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from torch import nn

from scdr.training.module import ScdrModule
from scdr.training.train import Logger, TrainConfig, _metrics, configure_torch, fit, predict

DEFAULT_MEMBERS = 5
FOLDS = 5  # folds of one cross-fitting; more members repeat it with a new split
RELIABILITY_BINS = 10


@dataclass(frozen=True)
class Calibration:
    """Platt scaling of a logit: calibrated logit = slope * logit + intercept."""

    slope: float
    intercept: float
    n: int
    n_sensitive: int
    reliability: list[dict] = field(default_factory=list)  # per bin: mean predicted, observed, n
    brier: float = math.nan  # of the calibrated out-of-fold probabilities

    def apply(self, logit: np.ndarray) -> np.ndarray:
        """Calibrated logits."""
        return self.slope * np.asarray(logit, np.float64) + self.intercept

    def to_card(self) -> dict:
        """The card's `calibration` block."""
        return {
            "method": "Platt scaling (logistic regression of the label on the logit)",
            "fitted_on": "out-of-fold logits of the cross-fitted members on the training bulk "
            "lines, at the real class prior (no class weights)",
            "slope": self.slope,
            "intercept": self.intercept,
            "lines": self.n,
            "sensitive_lines": self.n_sensitive,
            "prior": self.n_sensitive / self.n if self.n else math.nan,
            "brier": self.brier,
            "reliability": self.reliability,
        }


@dataclass
class Ensemble:
    """K cross-fitted members, their out-of-fold logits and the calibration fitted on them."""

    members: list[ScdrModule]
    oof_logit: np.ndarray  # float [lines]: each line scored by the members that did not see it
    fold: np.ndarray  # int [lines]: the line's fold in the first split
    calibration: Calibration
    cv: dict
    seconds: float

    def logit(self, x: np.ndarray) -> np.ndarray:
        """Uncalibrated ensemble logit: the mean of the members' logits."""
        return np.mean([predict(m, x)["logit"] for m in self.members], axis=0)


def fit_ensemble(
    bulk_x: np.ndarray,
    y: np.ndarray,
    cells_x: np.ndarray,
    mask: np.ndarray,
    config: TrainConfig,
    members: int = DEFAULT_MEMBERS,
    log: Logger | None = None,
    anchor_node: int | None = None,
) -> Ensemble:
    """Cross-fit `members` networks over stratified folds of the bulk lines; calibrate on their OOF.

    Up to FOLDS members are one K-fold split (K = members); more must be a multiple of FOLDS and
    repeat the FOLDS-fold split with new shuffles, which averages out more of the seed-to-seed
    swing that adversarial alignment leaves in each member."""
    folds, repeats = split_members(members)
    started = time.perf_counter()
    oof_runs = np.full((repeats, len(y)), np.nan)
    fold = np.full(len(y), -1)
    nets, per_fold = [], []
    for r in range(repeats):
        # repeat 0 is the split (and the member seeds) of a single cross-fitting
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed + 7919 * r)
        for k, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
            j = r * folds + k
            member_config = replace(config, seed=config.seed * 1000 + j)
            result = fit(bulk_x[train], y[train], cells_x, mask, member_config, anchor_node=anchor_node)
            nets.append(result.module)
            oof_runs[r, test] = predict(result.module, bulk_x[test])["logit"]
            if r == 0:
                fold[test] = k
            metrics = _metrics(y[test], oof_runs[r, test])
            metrics["best_epoch"] = result.best_epoch
            per_fold.append(metrics)
            if log is not None:
                log(f"member {j + 1}/{members}: held-out fold AUROC {metrics['auroc']:.3f} "
                    f"AUPR {metrics['aupr']:.3f} (best epoch {result.best_epoch})")  # fmt: skip
    oof = oof_runs.mean(axis=0)
    calibration = platt(oof, y)
    aurocs = np.array([m["auroc"] for m in per_fold])
    auprs = np.array([m["aupr"] for m in per_fold])
    pooled = _metrics(y, oof)
    cv = {
        "folds": folds,
        "repeats": repeats,
        "what": "each member's held-out fold (the members are the cross-validation models); pooled: "
        "each line's out-of-fold logit, averaged over the repeats",
        "auroc_mean": float(aurocs.mean()),
        "auroc_sd": float(aurocs.std(ddof=1)),
        "aupr_mean": float(auprs.mean()),
        "aupr_sd": float(auprs.std(ddof=1)),
        "pooled_auroc": pooled["auroc"],
        "pooled_aupr": pooled["aupr"],
        "per_fold": per_fold,
    }
    return Ensemble(nets, oof, fold, calibration, cv, time.perf_counter() - started)


def split_members(members: int) -> tuple[int, int]:
    """(folds, repeats) of an ensemble of `members`: one split up to FOLDS, else repeats of FOLDS."""
    if members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {members}")
    if members <= FOLDS:
        return members, 1
    if members % FOLDS:
        raise ValueError(f"more than {FOLDS} members must be a multiple of {FOLDS} (repeats of a "
                         f"{FOLDS}-fold split), got {members}")  # fmt: skip
    return FOLDS, members // FOLDS


def platt(logit: np.ndarray, y: np.ndarray) -> Calibration:
    """Fit Platt scaling of `logit` to labels `y` (unweighted: the real prior) and its diagnostics."""
    x = np.asarray(logit, np.float64).reshape(-1, 1)
    y = np.asarray(y).astype(int)
    model = LogisticRegression(C=1e6, max_iter=1000).fit(x, y)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    prob = 1.0 / (1.0 + np.exp(-(slope * x[:, 0] + intercept)))
    return Calibration(
        slope=slope,
        intercept=intercept,
        n=len(y),
        n_sensitive=int(y.sum()),
        reliability=reliability(prob, y),
        brier=float(np.mean((prob - y) ** 2)),
    )


def reliability(prob: np.ndarray, y: np.ndarray, bins: int = RELIABILITY_BINS) -> list[dict]:
    """Reliability diagram rows: equal-width probability bins with mean predicted and observed."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append({"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "n": int(inside.sum()),
                         "mean_predicted": float(prob[inside].mean()),
                         "observed": float(np.mean(y[inside]))})  # fmt: skip
    return rows


@dataclass(frozen=True)
class StudentConfig:
    """How the student is trained to match the ensemble (its architecture is the members')."""

    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    w_recon: float = 1.0
    mix_fraction: float = 0.5  # extra rows per batch that mix a bulk line with a cell
    pair_fraction: float = 0.5  # extra rows per batch of thinned cells (with depth pairs)


def distill(
    ensemble: Ensemble,
    bulk_x: np.ndarray,
    cells_x: np.ndarray,
    mask: np.ndarray,
    config: TrainConfig,
    student: StudentConfig | None = None,
    log: Logger | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[ScdrModule, dict]:
    """Train one network of the members' size to reproduce the ensemble logit; return it and its fidelity.

    With ``pairs`` (thinned target cells and the index of each one's full-depth row in
    ``cells_x``, `training.depth.depth_pairs`), each batch also holds thinned cells whose target
    is the ensemble's logit on the same cell at full depth: the student learns to keep a cell's
    call when it is sequenced less deeply."""
    opts = student or StudentConfig()
    configure_torch(config)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    module = ScdrModule(mask, config.hidden, config.head_hidden, opts.dropout, domain_hidden=0,
                        input_dropout=opts.dropout, anchor_node=ensemble.members[0].anchor_node)  # fmt: skip
    teachers = [m.cpu().eval() for m in ensemble.members]
    if module.anchor_node is not None:  # start at the members' mean anchor weight
        with torch.no_grad():
            module.anchor_raw.copy_(torch.stack([t.anchor_raw for t in teachers]).mean())
    xb = torch.as_tensor(bulk_x, dtype=torch.float32)
    xc = torch.as_tensor(cells_x, dtype=torch.float32)
    x_all = torch.cat([xb, xc])
    optimizer = torch.optim.AdamW(
        [p for n, p in module.named_parameters() if not n.startswith("domain_classifier")],
        lr=opts.lr, weight_decay=opts.weight_decay,
    )  # fmt: skip
    steps = math.ceil(len(x_all) / opts.batch_size)
    n_mix = int(opts.batch_size * opts.mix_fraction)
    n_pair = int(opts.batch_size * opts.pair_fraction) if pairs is not None else 0
    if n_pair:
        xp = torch.as_tensor(pairs[0], dtype=torch.float32)
        with torch.no_grad():  # the ensemble's logit of each thinned cell at full depth
            full = torch.stack([t.response_logit(t.encode(xc)) for t in teachers]).mean(0)
        yp = full[torch.as_tensor(pairs[1], dtype=torch.long)]
    for epoch in range(1, opts.epochs + 1):
        module.train()
        order = torch.randperm(len(x_all), generator=generator)
        total = 0.0
        for step in range(steps):
            batch = x_all[order[step * opts.batch_size : (step + 1) * opts.batch_size]]
            if n_mix:
                a = xb[torch.randint(len(xb), (n_mix,), generator=generator)]
                c = xc[torch.randint(len(xc), (n_mix,), generator=generator)]
                lam = torch.rand(n_mix, 1, generator=generator)
                batch = torch.cat([batch, lam * a + (1 - lam) * c])
            with torch.no_grad():
                target = torch.stack([t.response_logit(t.encode(batch)) for t in teachers]).mean(0)
            n_batch = len(batch)
            if n_pair:
                k = torch.randint(len(xp), (n_pair,), generator=generator)
                batch, target = torch.cat([batch, xp[k]]), torch.cat([target, yp[k]])
            z = module.encode(batch)
            loss = nn.functional.mse_loss(module.response_logit(z), target)
            loss = loss + opts.w_recon * nn.functional.mse_loss(module.decoder(z[:n_batch]), batch[:n_batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        if log is not None and (epoch % 20 == 0 or epoch == opts.epochs):
            log(f"student epoch {epoch}/{opts.epochs}: loss {total / steps:.4f}")
    module = module.eval()
    return module, fidelity(module, ensemble, bulk_x, cells_x)


def fidelity(student: ScdrModule, ensemble: Ensemble, bulk_x: np.ndarray, cells_x: np.ndarray) -> dict:
    """How closely the student's logit follows the ensemble's, per domain (Pearson r, max |diff|)."""
    out = {}
    for name, x in (("bulk", bulk_x), ("cells", cells_x)):
        s = predict(student, x)["logit"].astype(np.float64)
        t = ensemble.logit(x).astype(np.float64)
        r = float(np.corrcoef(s, t)[0, 1]) if len(x) > 2 and s.std() > 0 and t.std() > 0 else math.nan
        out[name] = {"pearson_r": r, "max_abs_diff": float(np.abs(s - t).max()) if len(x) else 0.0,
                     "rows": len(x)}  # fmt: skip
    return out


def fit_calibrated(
    bulk_x: np.ndarray,
    y: np.ndarray,
    cells_x: np.ndarray,
    mask: np.ndarray,
    config: TrainConfig,
    members: int = DEFAULT_MEMBERS,
    student: StudentConfig | None = None,
    log: Logger | None = None,
    anchor_node: int | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Ensemble, ScdrModule, dict]:
    """The whole recipe: cross-fitted ensemble, distilled student with the calibration folded in.

    Returns the ensemble (its CV and calibration), the network a bundle holds (plain layers: an
    anchored student is rewritten by `ScdrModule.plain`), and its fidelity. ``pairs``: see
    `distill`."""
    say = log or (lambda _msg: None)
    folds, repeats = split_members(members)
    say(f"cross-fitting {members} members over {folds} stratified folds of the bulk lines"
        + (f", {repeats} splits" if repeats > 1 else ""))
    ensemble = fit_ensemble(bulk_x, y, cells_x, mask, config, members, log=log, anchor_node=anchor_node)
    cv, cal = ensemble.cv, ensemble.calibration
    say(f"out-of-fold AUROC {cv['auroc_mean']:.3f} +- {cv['auroc_sd']:.3f}, "
        f"AUPR {cv['aupr_mean']:.3f} +- {cv['aupr_sd']:.3f}; Platt slope {cal.slope:.3f} "
        f"intercept {cal.intercept:.3f}")  # fmt: skip
    say("distilling the ensemble into one network"
        + (f" (with {len(pairs[0])} thinned target cells)" if pairs is not None else ""))
    module, fidelity = distill(ensemble, bulk_x, cells_x, mask, config, student, log=log, pairs=pairs)
    say(f"student fidelity to the ensemble: r = {fidelity['bulk']['pearson_r']:.4f} on bulk, "
        f"{fidelity['cells']['pearson_r']:.4f} on cells")  # fmt: skip
    if module.anchor_node is not None:
        say(f"student anchor weight on the target node: {module.anchor_weight().item():.3f}")
    return ensemble, fold_calibration(module.plain(), cal), fidelity


def fold_calibration(module: ScdrModule, calibration: Calibration) -> ScdrModule:
    """Fold the Platt slope and intercept into the head's last linear layer (the graph is unchanged)."""
    last = module.head[-1]
    with torch.no_grad():
        last.weight.mul_(calibration.slope)
        last.bias.mul_(calibration.slope).add_(calibration.intercept)
    return module
