"""The training loop: class-balanced response loss on bulk, reconstruction on both, alignment.

One step draws a bulk batch (shuffled, without replacement within an epoch) and a batch of
target cells (with replacement), and minimises

    w_response * BCE(logit, label; pos_weight = n_resistant / n_sensitive)
  + w_recon    * (MSE(decoder(bulk)) + MSE(decoder(cells))) / 2
  + w_align    * alignment

where alignment is 'adversarial' (the domain classifier's BCE behind a gradient reversal whose
strength ramps as in DANN over the first `align_warmup` epochs, then stays 1; the classifier
itself first takes `critic_steps` Adam steps on the batch's latents, so that it keeps up with the
encoder), 'mmd' (Gaussian-kernel MMD between the two latents) or 'none'. Early stopping watches
the class-balanced response loss on a stratified bulk validation split; the best weights are kept
in memory (no files, no pickles). With patience 0 there is no early stopping and so no validation
split: every line trains, every epoch runs and the last weights are kept (with few sensitive lines
the split holds a handful of them, and the epoch it picks moves a lot between seeds).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from torch import nn

from scdr.training.module import ALIGNMENTS, ScdrModule, dann_scale, mmd

Logger = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Architecture, optimisation and loss-weight options (defaults: see README's sweep)."""

    alignment: str = "adversarial"
    w_response: float = 1.0
    w_recon: float = 1.0
    w_align: float = 1.0
    hidden: int = 64
    head_hidden: int = 32
    dropout: float = 0.5
    input_dropout: float = 0.5
    lr: float = 3e-4
    weight_decay: float = 1e-2
    batch_size: int = 64
    epochs: int = 200
    patience: int = 20  # epochs without validation improvement; 0 = no early stopping
    domain_hidden: int = 64  # domain classifier hidden units (0 = linear)
    critic_lr_scale: float = 10.0  # the domain classifier's Adam lr, relative to lr
    critic_steps: int = 5  # domain-classifier updates per training step, before the encoder's
    align_warmup: int = 10  # epochs over which the reversal strength ramps to 1 (DANN schedule)
    anchor: bool = False  # anchor the logit on the drug's target node (ScdrModule.anchor_node)
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    threads: int = 2

    def to_card(self) -> dict:
        """Options as a JSON-ready dict."""
        return asdict(self)


@dataclass
class FitResult:
    """A trained module (best weights, eval mode, on the CPU) and how it got there."""

    module: ScdrModule
    best_epoch: int
    epochs_run: int
    val_metrics: dict
    train_index: np.ndarray
    val_index: np.ndarray
    device: str
    seconds: float
    history: list[dict] = field(default_factory=list)


def fit(
    bulk_x: np.ndarray,
    y: np.ndarray,
    cells_x: np.ndarray,
    mask: np.ndarray,
    config: TrainConfig,
    val_index: np.ndarray | None = None,
    log: Logger | None = None,
    anchor_node: int | None = None,
) -> FitResult:
    """Train on bulk lines (labels y) and unlabelled cells; early-stop on a bulk validation split.

    `anchor_node` (the target node's column of `mask`) is used when `config.anchor` is set."""
    if config.alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {config.alignment!r}")
    started = time.perf_counter()
    device = configure_torch(config)
    if val_index is None:  # without early stopping nothing needs holding out
        val_index = (split_validation(y, config.val_fraction, config.seed)[1] if config.patience > 0
                     else np.empty(0, np.int64))
    train_index = np.setdiff1d(np.arange(len(y)), val_index)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    module = ScdrModule(
        mask,
        config.hidden,
        config.head_hidden,
        config.dropout,
        domain_hidden=config.domain_hidden,
        input_dropout=config.input_dropout,
        anchor_node=anchor_node if config.anchor else None,
    ).to(device)
    if module.anchor_node is not None:
        init_anchor(module, bulk_x[train_index], y[train_index])
    critic = list(module.domain_classifier.parameters())
    critic_ids = {id(p) for p in critic}
    optimizer = torch.optim.AdamW(
        [p for p in module.parameters() if id(p) not in critic_ids],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    critic_optimizer = torch.optim.Adam(critic, lr=config.lr * config.critic_lr_scale)
    xb = torch.as_tensor(bulk_x[train_index], dtype=torch.float32, device=device)
    yb = torch.as_tensor(y[train_index], dtype=torch.float32, device=device)
    xc = torch.as_tensor(cells_x, dtype=torch.float32, device=device)
    xv = torch.as_tensor(bulk_x[val_index], dtype=torch.float32, device=device)
    yv = torch.as_tensor(y[val_index], dtype=torch.float32, device=device)
    pos_weight = _pos_weight(y[train_index], device)
    steps = math.ceil(len(train_index) / config.batch_size)
    warmup = max(1, steps * config.align_warmup)
    best_loss, best_epoch, best_state, wait = math.inf, 0, None, 0
    history: list[dict] = []
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        module.train()
        sums = np.zeros(4)
        order = torch.randperm(len(train_index), generator=generator).to(device)
        for step in range(steps):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            cells = torch.randint(len(xc), (config.batch_size,), generator=generator).to(device)
            progress = min(1.0, ((epoch - 1) * steps + step) / warmup)
            if config.alignment == "adversarial":
                _train_critic(module, critic_optimizer, xb[batch], xc[cells], config.critic_steps)
            losses = _step_losses(module, xb[batch], yb[batch], xc[cells], pos_weight, config, progress)
            loss = config.w_response * losses[0] + config.w_recon * losses[1] + config.w_align * losses[2]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += [loss.item(), *(v.item() for v in losses)]
        val_loss, val_auroc = _validate(module, xv, yv, pos_weight) if len(val_index) else (math.nan,) * 2
        record = dict(zip(("loss", "response", "recon", "align"), sums / steps, strict=True))
        record.update(epoch=epoch, val_loss=val_loss, val_auroc=val_auroc)
        history.append(record)
        if val_loss < best_loss - 1e-4:
            best_loss, best_epoch, wait = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            wait += 1
        if log is not None:
            log(
                f"epoch {epoch:3d}/{config.epochs} loss {record['loss']:.4f} "
                f"(response {record['response']:.4f} recon {record['recon']:.4f} "
                f"align {record['align']:.4f}) val loss {val_loss:.4f} "
                f"AUROC {val_auroc:.3f} best {best_loss:.4f} @ {best_epoch}"
            )
        if 0 < config.patience <= wait:
            break
    if config.patience > 0 and best_state is not None:
        module.load_state_dict(best_state)
    else:
        best_epoch = epoch
    module = module.cpu().eval()
    val_metrics = evaluate(module, bulk_x[val_index], y[val_index]) if len(val_index) else {}
    return FitResult(
        module=module,
        best_epoch=best_epoch,
        epochs_run=epoch,
        val_metrics=val_metrics,
        train_index=train_index,
        val_index=val_index,
        device=str(device),
        seconds=time.perf_counter() - started,
        history=history,
    )


def init_anchor(module: ScdrModule, bulk_x: np.ndarray, y: np.ndarray) -> None:
    """Start the anchor weight at a class-balanced logistic regression of the labels on the target
    node alone (floored at 0.05), so that its strength is learned from bulk, not set by an init."""
    target = (bulk_x @ module.anchor_genes.cpu().numpy()).reshape(-1, 1)
    model = LogisticRegression(class_weight="balanced", max_iter=1000).fit(target, y.astype(int))
    weight = max(float(model.coef_[0, 0]), 0.05)
    with torch.no_grad():
        module.anchor_raw.fill_(math.log(math.expm1(weight)))  # softplus inverse


def domain_mixing_auroc(bulk_z: np.ndarray, cell_z: np.ndarray, seed: int = 0) -> float:
    """Cross-validated AUROC of a logistic domain classifier on latents (0.5 = fully mixed)."""
    x = np.concatenate([bulk_z, cell_z]).astype(np.float64)
    d = np.concatenate([np.zeros(len(bulk_z)), np.ones(len(cell_z))])
    x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    scores = cross_val_predict(LogisticRegression(max_iter=2000), x, d, cv=folds, method="decision_function")
    return float(roc_auc_score(d, scores))


def evaluate(module: ScdrModule, x: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> dict:
    """AUROC, AUPR and balanced accuracy at `threshold` of P(sensitive) on labelled rows."""
    logit = predict(module, x)["logit"]
    metrics = _metrics(y, logit)
    call = 1.0 / (1.0 + np.exp(-logit)) >= threshold
    positive = y == 1
    sensitivity = float(call[positive].mean()) if positive.any() else float("nan")
    specificity = float((~call[~positive]).mean()) if (~positive).any() else float("nan")
    metrics.update(
        threshold=threshold,
        sensitivity=sensitivity,
        specificity=specificity,
        balanced_accuracy=(sensitivity + specificity) / 2,
    )
    return metrics


def predict(module: ScdrModule, x: np.ndarray, batch: int = 4096) -> dict[str, np.ndarray]:
    """Eval-mode logits, probabilities and pathway activities of rows of `x` (CPU, float32)."""
    module = module.eval()
    device = next(module.parameters()).device
    logits, pathways = [], []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            xt = torch.as_tensor(x[start : start + batch], dtype=torch.float32, device=device)
            z = module.encode(xt)
            pathways.append(z.cpu().numpy())
            logits.append(module.response_logit(z).cpu().numpy())
    logit = np.concatenate(logits) if logits else np.zeros(0, np.float32)
    return {
        "logit": logit,
        "probability": 1.0 / (1.0 + np.exp(-logit.astype(np.float64))),
        "pathways": np.concatenate(pathways) if pathways else np.zeros((0, module.n_pathways)),
    }


def split_validation(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random split of row indices into (train, validation)."""
    rng = np.random.default_rng(seed)
    val = []
    for cls in np.unique(y):
        rows = np.flatnonzero(y == cls)
        rng.shuffle(rows)
        val.append(rows[: max(1, round(fraction * len(rows)))])
    val_index = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(y)), val_index), val_index


def configure_torch(config: TrainConfig) -> torch.device:
    """Seed, thread count and deterministic kernels; resolve --device auto|cpu|cuda."""
    device = resolve_device(config.device)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(max(1, config.threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    np.random.seed(config.seed % (2**32))
    torch.manual_seed(config.seed)
    return device


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def stderr_logger(message: str) -> None:
    """Progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def _train_critic(
    module: ScdrModule, optimizer: torch.optim.Optimizer, xb: torch.Tensor, xc: torch.Tensor, n: int
) -> None:
    """n updates of the domain classifier alone on the current (fixed) latents of both batches."""
    with torch.no_grad():
        z = torch.cat([module.encode(xb), module.encode(xc)])
    domain = torch.cat([torch.zeros(len(xb)), torch.ones(len(xc))]).to(z.device)
    for _ in range(n):
        optimizer.zero_grad(set_to_none=True)
        logit = module.domain_classifier(z).squeeze(-1)
        nn.functional.binary_cross_entropy_with_logits(logit, domain).backward()
        optimizer.step()


def _step_losses(
    module: ScdrModule,
    xb: torch.Tensor,
    yb: torch.Tensor,
    xc: torch.Tensor,
    pos_weight: torch.Tensor,
    config: TrainConfig,
    progress: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Response, reconstruction and alignment losses of one bulk batch and one cell batch."""
    zb = module.encode(xb)
    zc = module.encode(xc)
    response = nn.functional.binary_cross_entropy_with_logits(
        module.response_logit(zb), yb, pos_weight=pos_weight
    )
    recon = 0.5 * (
        nn.functional.mse_loss(module.decoder(zb), xb) + nn.functional.mse_loss(module.decoder(zc), xc)
    )
    if config.alignment == "adversarial":
        z = torch.cat([zb, zc])
        domain = torch.cat([torch.zeros(len(zb)), torch.ones(len(zc))]).to(z.device)
        align = nn.functional.binary_cross_entropy_with_logits(
            module.domain_logit(z, dann_scale(progress)), domain
        )
    elif config.alignment == "mmd":
        align = mmd(zb, zc)
    else:
        align = torch.zeros((), device=xb.device)
    return response, recon, align


def _validate(
    module: ScdrModule, x: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor
) -> tuple[float, float]:
    """Class-balanced response loss and AUROC on the validation split (eval mode)."""
    module.eval()
    with torch.no_grad():
        logit = module.response_logit(module.encode(x))
        loss = nn.functional.binary_cross_entropy_with_logits(logit, y, pos_weight=pos_weight)
    return float(loss), _metrics(y.cpu().numpy(), logit.cpu().numpy())["auroc"]


def _metrics(y: np.ndarray, scores: np.ndarray) -> dict:
    """AUROC and AUPR (average precision) with the counts behind them."""
    y = np.asarray(y)
    both = len(np.unique(y)) == 2
    return {
        "auroc": float(roc_auc_score(y, scores)) if both else float("nan"),
        "aupr": float(average_precision_score(y, scores)) if both else float("nan"),
        "n": len(y),
        "n_sensitive": int((y == 1).sum()),
    }


def _pos_weight(y: np.ndarray, device: torch.device) -> torch.Tensor:
    """n_negative / n_positive, so both classes weigh the same in the response loss."""
    n_pos = float((y == 1).sum())
    n_neg = float(len(y) - n_pos)
    return torch.tensor(n_neg / max(n_pos, 1.0), dtype=torch.float32, device=device)
