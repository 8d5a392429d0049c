"""The network: shared encoder -> pathway layer -> (masked decoder, response head, domain critic).

    expression [n, genes] -> Dropout -> Linear -> ReLU -> Dropout -> Linear -> pathways [n, P]
    pathways -> MaskedLinear (pathway p reconstructs only its member genes) -> expression
    pathways -> head (Linear [-> ReLU -> Linear]) -> logit [n]
    (anchored) pathway t := mean of the drug's target genes; logit += softplus(a) * pathway t
    pathways -> gradient reversal -> domain classifier -> bulk/cell logit (alignment 'adversarial')

Each pathway-layer node is one gene set: the decoder's weight exists only where the gene belongs
to the set (a parameter vector over the mask's nonzeros, scattered into the dense weight), so
masked weights are exactly zero by construction, whatever the optimiser does.

An anchored module (`anchor_node` = the drug's target node) fixes that node's activity to the mean
of its member genes' inputs and adds it to the logit with a learned non-negative weight: the
drug's target expression, which on cells outranks most bulk-learned signals (the marker baseline),
gets a path the rest of the network cannot bend (an evaluated candidate, not shipped). `plain()`
rewrites it exactly as an unanchored module (two more hidden units in the encoder and in the
head), which is what is exported.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

ALIGNMENTS = ("adversarial", "mmd", "none")


class ScdrModule(nn.Module):
    """Shared encoder with a pathway layer, pathway-masked decoder, response head, domain critic."""

    def __init__(
        self,
        mask: np.ndarray,
        hidden: int = 64,
        head_hidden: int = 32,
        dropout: float = 0.5,
        domain_hidden: int = 64,
        input_dropout: float = 0.0,
        anchor_node: int | None = None,
    ) -> None:
        super().__init__()
        n_genes, n_pathways = mask.shape
        self.n_genes = n_genes
        self.n_pathways = n_pathways
        self.anchor_node = anchor_node
        if anchor_node is not None:
            members = np.asarray(mask, dtype=bool)[:, anchor_node]
            if not members.any():
                raise ValueError(f"anchor node {anchor_node} has no member gene")
            weights = torch.as_tensor(members / members.sum(), dtype=torch.float32)
            self.register_buffer("anchor_genes", weights)
            self.anchor_raw = nn.Parameter(torch.zeros(()))
        self.encoder = nn.Sequential(
            nn.Dropout(input_dropout),
            nn.Linear(n_genes, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_pathways),
        )
        self.decoder = MaskedLinear(torch.as_tensor(np.asarray(mask, dtype=bool)))
        if head_hidden > 0:
            self.head = nn.Sequential(
                nn.Linear(n_pathways, head_hidden), nn.ReLU(), nn.Linear(head_hidden, 1)
            )
        else:
            self.head = nn.Sequential(nn.Linear(n_pathways, 1))
        if domain_hidden > 0:
            self.domain_classifier = nn.Sequential(
                nn.Linear(n_pathways, domain_hidden), nn.ReLU(), nn.Linear(domain_hidden, 1)
            )
        else:
            self.domain_classifier = nn.Sequential(nn.Linear(n_pathways, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pathway activities, response logit and reconstruction of a batch."""
        pathways = self.encode(x)
        return {
            "pathways": pathways,
            "logit": self.response_logit(pathways),
            "reconstruction": self.decoder(pathways),
        }

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised panel expression -> pathway activities (the shared latent)."""
        pathways = self.encoder(x)
        if self.anchor_node is None:
            return pathways
        target = x @ self.anchor_genes
        column = torch.arange(self.n_pathways, device=x.device) == self.anchor_node
        return torch.where(column, target.unsqueeze(-1), pathways)

    def response_logit(self, pathways: torch.Tensor) -> torch.Tensor:
        """Pathway activities -> sensitivity logit [n] (what head.onnx computes)."""
        logit = self.head(pathways).squeeze(-1)
        if self.anchor_node is None:
            return logit
        return logit + self.anchor_weight() * pathways[:, self.anchor_node]

    def anchor_weight(self) -> torch.Tensor:
        """The anchor's non-negative weight on the logit (softplus of a free parameter)."""
        return nn.functional.softplus(self.anchor_raw)

    def plain(self) -> ScdrModule:
        """This network as an unanchored module computing the same function (eval mode, CPU).

        s = relu(s) - relu(-s): the fixed target node becomes two encoder hidden units (+-w) and
        the anchor term two head hidden units (+-a), so export and attribution see plain layers."""
        if self.anchor_node is None:
            return self
        src = self.cpu().eval()
        t, hidden = self.anchor_node, src.encoder[1].out_features
        head_hidden = src.head[0].out_features if len(src.head) > 1 else 0
        mask = np.zeros((self.n_genes, self.n_pathways), bool)
        mask[src.decoder.rows.numpy(), src.decoder.cols.numpy()] = True
        out = ScdrModule(mask, hidden + 2, head_hidden + 2 if head_hidden else 0, 0.0,
                         domain_hidden=0).eval()  # fmt: skip
        with torch.no_grad():
            w = src.anchor_genes
            enc1, enc2 = out.encoder[1], out.encoder[4]
            enc1.weight.copy_(torch.cat([src.encoder[1].weight, w[None], -w[None]]))
            enc1.bias.copy_(torch.cat([src.encoder[1].bias, torch.zeros(2)]))
            enc2.weight.copy_(torch.cat([src.encoder[4].weight, torch.zeros(self.n_pathways, 2)], 1))
            enc2.bias.copy_(src.encoder[4].bias)
            enc2.weight[t] = 0.0
            enc2.weight[t, hidden:] = torch.tensor([1.0, -1.0])
            enc2.bias[t] = 0.0
            out.decoder.load_state_dict(src.decoder.state_dict())
            a = src.anchor_weight()
            if head_hidden:
                h1, h2 = out.head[0], out.head[2]
                unit = torch.zeros(2, self.n_pathways)
                unit[0, t], unit[1, t] = 1.0, -1.0
                h1.weight.copy_(torch.cat([src.head[0].weight, unit]))
                h1.bias.copy_(torch.cat([src.head[0].bias, torch.zeros(2)]))
                h2.weight.copy_(torch.cat([src.head[2].weight, torch.stack([a, -a])[None]], 1))
                h2.bias.copy_(src.head[2].bias)
            else:
                out.head[0].weight.copy_(src.head[0].weight)
                out.head[0].weight[0, t] += a
                out.head[0].bias.copy_(src.head[0].bias)
        return out

    def domain_logit(self, pathways: torch.Tensor, reverse_scale: float) -> torch.Tensor:
        """Domain logit (cell = 1) behind a gradient reversal of strength `reverse_scale`."""
        return self.domain_classifier(grad_reverse(pathways, reverse_scale)).squeeze(-1)


class MaskedLinear(nn.Module):
    """y = x W^T + b with W [out, in] nonzero only where `mask` is True (structurally)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        rows, cols = torch.nonzero(mask, as_tuple=True)
        self.out_features, self.in_features = mask.shape
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)
        fan_in = mask.sum(dim=1).clamp(min=1).to(torch.float32)
        bound = 1.0 / torch.sqrt(fan_in[rows])
        self.values = nn.Parameter((torch.rand(rows.numel()) * 2 - 1) * bound)
        self.bias = nn.Parameter(torch.zeros(self.out_features))

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight [out, in]: the free values at the mask, exact zeros elsewhere."""
        dense = torch.zeros(
            self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device
        )
        return dense.index_put((self.rows, self.cols), self.values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the masked linear map."""
        return nn.functional.linear(x, self.weight, self.bias)


class GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -scale backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        """Pass `x` through unchanged and remember the scale."""
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Reverse and scale the incoming gradient; no gradient for the scale."""
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Gradient reversal layer: identity in the forward pass, gradient times -scale backward."""
    return GradientReversal.apply(x, scale)


def mmd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared MMD between two samples, Gaussian kernels at 5 bandwidths around the median."""
    pooled = torch.cat([a, b])
    sq = torch.cdist(pooled, pooled).pow(2)
    n = a.shape[0]
    median = sq.detach()[sq.detach() > 0].median() if (sq > 0).any() else sq.new_tensor(1.0)
    kernel = sum(torch.exp(-sq / (median * f)) for f in (0.25, 0.5, 1.0, 2.0, 4.0))
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def dann_scale(progress: float) -> float:
    """DANN reversal-strength ramp 2 / (1 + exp(-10 p)) - 1 for training progress p in [0, 1]."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0
