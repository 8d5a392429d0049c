"""Training recipes: the candidates of the pre-registered validation protocol and the shipped one.

Every recipe shares the same frame (knowledge nodes in the pathway layer, a 5-member cross-fitted
ensemble, Platt calibration on its out-of-fold bulk logits, one distilled network exported);
they differ in domain alignment, panel, head, training lines, input scale and the target anchor.
`ROUNDS` lists the candidates of each round of `benchmarks/protocol.md` in order of simplicity; the
protocol fixes the list, the seeds and the one selection rule before any candidate is scored on
plate labels.
`benchmarks/evaluate.py --round N` runs a round and `SHIPPED` names the recipe the rule selected.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from scdr.training.pipeline import BLOOD_TISSUES
from scdr.training.train import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """One candidate: TrainConfig overrides plus the panel options of TrainingInputs."""

    name: str
    summary: str
    config: dict = field(default_factory=dict)  # TrainConfig field -> value
    knowledge_only: bool = False
    min_detection: float = 0.0
    rank: bool = False  # within-profile rank inputs (TrainingInputs.rank)
    exclude_tissues: tuple[str, ...] = ()  # GDSC1 tissues left out of bulk training
    depth_pairs: int = 0  # thinned draws of the targets the student also learns (TrainingInputs.depth_pairs)

    def train_config(self, **base: object) -> TrainConfig:
        """The TrainConfig of this recipe over `base` options (seed, threads, device)."""
        return replace(TrainConfig(**base), **self.config)  # type: ignore[arg-type]


# In order of simplicity (the protocol's tie-break prefers the earlier one).
CANDIDATES: tuple[Recipe, ...] = (
    Recipe("K-none", "no alignment, panel = the drug's knowledge genes",
           {"alignment": "none"}, knowledge_only=True),
    Recipe("K-adv", "adversarial alignment, panel = the drug's knowledge genes",
           {"alignment": "adversarial"}, knowledge_only=True),
    Recipe("F-none", "no alignment, full panel (variance-capped pathway genes + knowledge genes)",
           {"alignment": "none"}),
    Recipe("F-mmd", "MMD alignment, full panel", {"alignment": "mmd"}),
    Recipe("F-adv", "adversarial alignment, full panel (the previous shipped recipe + knowledge, "
           "ensemble, calibration)", {"alignment": "adversarial"}),
    Recipe("F-adv-linear", "adversarial alignment, full panel, linear response head",
           {"alignment": "adversarial", "head_hidden": 0}),
    Recipe("D-adv", "adversarial alignment, full panel restricted to genes detected in >= 10% of "
           "the unlabelled target cells (label-free, for platform and depth robustness)",
           {"alignment": "adversarial"}, min_detection=0.10),
    # round 2 (benchmarks/protocol.md, second round): the K-adv frame with label-free changes of
    # the training population and of the input scale
    Recipe("K-adv-solid", "K-adv trained on solid-tumour lines only (GDSC tissues leukemia, "
           "lymphoma and myeloma left out)", {"alignment": "adversarial"}, knowledge_only=True,
           exclude_tissues=BLOOD_TISSUES),
    Recipe("F-adv-solid", "F-adv trained on solid-tumour lines only",
           {"alignment": "adversarial"}, exclude_tissues=BLOOD_TISSUES),
    Recipe("K-adv-rank", "K-adv on within-profile ranks of the panel genes instead of log1p CP10k",
           {"alignment": "adversarial"}, knowledge_only=True, rank=True),
    Recipe("K-adv-rank-solid", "K-adv on within-profile ranks, solid-tumour lines only",
           {"alignment": "adversarial"}, knowledge_only=True, rank=True,
           exclude_tissues=BLOOD_TISSUES),
    # round 3: the logit anchored on the drug's target node (ScdrModule.anchor_node)
    Recipe("F-adv-solid-anchor", "F-adv-solid with the target node fixed to the mean of the "
           "target genes and added to the logit with a learned non-negative weight",
           {"alignment": "adversarial", "anchor": True}, exclude_tissues=BLOOD_TISSUES),
    Recipe("K-adv-solid-anchor", "K-adv-solid with the same target anchor",
           {"alignment": "adversarial", "anchor": True}, knowledge_only=True,
           exclude_tissues=BLOOD_TISSUES),
    # round 5 (decided without plate labels): the student also learns thinned target cells
    Recipe("F-adv-solid-depth", "F-adv-solid whose distilled network also learns the target cells "
           "thinned to 45% and 18% of their detected genes, with their full-depth ensemble logits",
           {"alignment": "adversarial"}, exclude_tissues=BLOOD_TISSUES, depth_pairs=1),
    # round 6 (decided without plate labels): five thinned draws of the targets at each depth
    Recipe("F-adv-solid-depth5", "F-adv-solid-depth whose distilled network learns five "
           "independent thinned draws of the target cells at each depth instead of one",
           {"alignment": "adversarial"}, exclude_tissues=BLOOD_TISSUES, depth_pairs=5),
    # round 7 (decided without plate labels): members train a fixed number of epochs on all their
    # lines instead of early-stopping on a validation split that holds a handful of sensitive lines
    Recipe("F-adv-solid-depth5-fixed25", "F-adv-solid-depth5 whose ensemble members train 25 "
           "epochs on all their lines (no early stopping, so no validation split)",
           {"alignment": "adversarial", "epochs": 25, "patience": 0}, exclude_tissues=BLOOD_TISSUES,
           depth_pairs=5),
)  # fmt: skip
ROUNDS: dict[int, tuple[str, ...]] = {
    1: ("K-none", "K-adv", "F-none", "F-mmd", "F-adv", "F-adv-linear", "D-adv"),
    2: ("K-adv", "K-adv-solid", "F-adv-solid", "K-adv-rank", "K-adv-rank-solid"),
    3: ("F-adv-solid", "K-adv-solid-anchor", "F-adv-solid-anchor"),
    5: ("F-adv-solid-depth",),  # chosen by round 5's label-free rule; run here to report it
    6: ("F-adv-solid-depth5",),  # decided by round 6's label-free rule; run here to report it
    7: ("F-adv-solid-depth5-fixed25",),  # decided by round 7's label-free rule (its seed agreement)
}
# Selected by the protocol's rule, round 2 (benchmarks/results/evaluation_round2.md): best mean
# pooled AUROC over the five labelled drugs, 0.774 (K-adv 0.760, K-adv-solid 0.749, K-adv-rank
# 0.707, K-adv-rank-solid 0.689); round 1 had selected K-adv. Round 3 kept it (0.774, identical to
# round 2's; F-adv-solid-anchor 0.760, K-adv-solid-anchor 0.745).
# Round 4 kept its 5 members; round 5's label-free rule (the depth check) chose its depth pairs,
# round 6's the five draws of them.
SHIPPED = "F-adv-solid-depth5"
SHIPPED_ROUND = 6  # the protocol round whose rule first selected SHIPPED (its bundles' figures)


def find_recipe(name: str) -> Recipe:
    """The candidate called `name`; ValueError listing the names otherwise."""
    for recipe in CANDIDATES:
        if recipe.name == name:
            return recipe
    raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(r.name for r in CANDIDATES)}")
