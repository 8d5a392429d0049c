"""From input files to a bundle: load, label, choose the panel, normalise, fit, export.

`prepare` does everything up to the training matrices (reusable by tests and the sweep);
`train_bundle` cross-fits the ensemble (its members are the bulk cross-validation), calibrates,
distils it into one network, composes the card and exports.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from scdr.training.data import (
    DEFAULT_HOLDOUT_LINES,
    BulkExpression,
    DataError,
    LabelRule,
    Labels,
    SingleCellCounts,
    load_bulk_expression,
    load_ic50_entries,
    load_single_cell,
    make_labels,
    normalize_line_name,
    sha256_file,
)
from scdr.training.depth import PAIR_DEPTHS, depth_pairs, depth_stats
from scdr.training.drugs import find_drug
from scdr.training.ensemble import DEFAULT_MEMBERS, Ensemble, fit_calibrated
from scdr.training.export import export_bundle, make_card
from scdr.training.genesets import (
    MAX_SET_SIZE,
    MIN_SET_SIZE,
    PathwayMask,
    pathway_source,
    read_gmt,
)
from scdr.training.knowledge import card_block, knowledge_nodes, target_node
from scdr.training.normalize import (
    Normalization,
    gene_stats,
    normalize_bulk,
    scale_cells,
    standardize,
)
from scdr.training.panel import DEFAULT_PANEL_SIZE, GenePanel, choose_panel, load_gene_ids
from scdr.training.train import Logger, TrainConfig, _metrics, predict

BLOOD_TISSUES = ("leukemia", "lymphoma", "myeloma")  # GDSC1 tissues of haematopoietic lines
THRESHOLD_RULE = (
    "calibrated P(sensitive) >= 0.5, fixed before training: probabilities are Platt-calibrated "
    "on out-of-fold bulk logits at the real class prior, so 0.5 is the point where sensitive "
    "becomes the likelier call for a GDSC-like line; chosen on bulk only, not tuned on cells"
)
_VERSIONED = (
    "torch",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "onnx",
    "onnxruntime",
    "anndata",
    "h5py",
    "click",
)


@dataclass(frozen=True)
class TrainingInputs:
    """Paths and data-side options of one training run."""

    drug: str
    bulk_expression: Path
    ic50: list[Path]
    targets: list[Path]
    genesets: Path
    gene_ids: list[Path]
    holdout_lines: list[str] = field(default_factory=lambda: list(DEFAULT_HOLDOUT_LINES))
    aliases: list[str] = field(default_factory=list)
    label_quantile: float = 0.3
    label_z: float | None = None  # fixed z cut instead of the quantile (targeted drugs)
    panel_size: int = DEFAULT_PANEL_SIZE
    min_set_size: int = MIN_SET_SIZE
    max_set_size: int = MAX_SET_SIZE
    knowledge_genesets: list[Path] = field(default_factory=list)  # GMTs with the knowledge sets
    knowledge_only: bool = False  # panel = the drug's knowledge genes alone
    min_detection: float = 0.0  # a gene counts as present in a target when detected in >= this
    rank: bool = False  # inputs are within-profile ranks (Normalization.rank); not exportable yet
    line_info: Path | None = None  # cosmic_info.csv(.gz): the GDSC tissue of each line
    exclude_tissues: tuple[str, ...] = ()  # GDSC1 tissues whose lines are left out of training
    depth_pairs: int = 0  # thinned draws of the targets the student also learns (training.depth.depth_pairs)


@dataclass
class Prepared:
    """Everything training needs, derived from the inputs."""

    inputs: TrainingInputs
    bulk: BulkExpression
    labels: Labels
    panel: GenePanel
    mask: PathwayMask
    cell_norm: Normalization  # what the card carries (single-cell gene statistics)
    bulk_norm: Normalization  # same steps, bulk gene statistics
    bulk_x: np.ndarray  # float32 [training lines, panel]
    y: np.ndarray  # float32 [training lines]
    cells_x: np.ndarray  # float32 [cells with counts, panel], all targets stacked
    targets: list[dict]  # per target file: cells, zero-count cells, panel genes present
    aliases: list[str]
    pairs: tuple[np.ndarray, np.ndarray] | None = None  # thinned targets, their rows in cells_x


def train_bundle(
    inputs: TrainingInputs,
    config: TrainConfig,
    out_dir: str | Path,
    members: int = DEFAULT_MEMBERS,
    log: Logger | None = None,
    prepared: Prepared | None = None,
    command: str | None = None,
) -> dict:
    """Cross-fit the ensemble, calibrate, distil it into one network and write the bundle; return the card."""
    if inputs.rank:
        raise DataError("rank inputs can be evaluated but not exported: scdr.scoring does not score "
                        "them yet; train without rank")
    data = prepared if prepared is not None else prepare(inputs, log)
    say = log or (lambda _msg: None)
    ensemble, module, fidelity = fit_calibrated(
        data.bulk_x, data.y, data.cells_x, data.mask.mask, config, members, log=say,
        anchor_node=target_node(data.mask.names), pairs=data.pairs,
    )
    bulk_out = predict(module, data.bulk_x)
    cell_pathways = predict(module, data.cells_x)["pathways"]
    card = make_card(
        drug=inputs.drug,
        aliases=data.aliases,
        description=_description(data),
        symbols=data.panel.symbols,
        ensembl_ids=data.panel.ensembl_ids,
        normalization=data.cell_norm.to_card(),
        pathway_names=data.mask.names,
        pathway_source=_pathway_source(inputs),
        reference_pathways={
            "bulk_mean": bulk_out["pathways"].mean(axis=0).tolist(),
            "single_cell_mean": cell_pathways.mean(axis=0).tolist(),
        },
        threshold={"value": 0.5, "rule": THRESHOLD_RULE},
        training=_training_record(data, config, ensemble, command),
        metrics={
            "bulk_training_fit": _metrics(data.y, bulk_out["logit"]),
            "bulk_cross_validation": ensemble.cv,
            "distillation_fidelity": fidelity,
        },
    )
    card["knowledge"] = card_block(inputs.drug, data.mask.names)
    card["calibration"] = ensemble.calibration.to_card()
    card = export_bundle(out_dir, module, card, data.cells_x)
    parity = card["metrics"]["onnx_parity"]["max_abs_diff"]
    say(
        f"wrote {Path(out_dir)} (ONNX/torch parity on {len(data.cells_x)} cells: "
        f"max |diff| {max(parity.values()):.2g})"
    )
    return card


def prepare(inputs: TrainingInputs, log: Logger | None = None) -> Prepared:
    """Load and label bulk data, choose the panel, and normalise both domains."""
    say = log or (lambda _msg: None)
    holdout = [normalize_line_name(x) for x in inputs.holdout_lines]
    bulk = load_bulk_expression(inputs.bulk_expression)
    say(
        f"bulk expression: {len(bulk.lines)} lines x {len(bulk.genes)} genes "
        f"({int(bulk.placeholder.sum())} placeholder genes)"
    )
    aliases = _aliases(inputs)
    entries = load_ic50_entries(inputs.ic50, inputs.drug, aliases)
    rule = LabelRule(inputs.label_quantile, inputs.label_z)
    lines = bulk.lines
    if inputs.exclude_tissues:
        dropped = lines_of_tissues(inputs.line_info, inputs.exclude_tissues)
        lines = [x for x in bulk.lines if x not in dropped or x in holdout]
        say(f"left out {len(bulk.lines) - len(lines)} lines of {', '.join(inputs.exclude_tissues)}")
    labels = make_labels(entries, lines, holdout, rule)
    aliases = _dedupe(aliases + [e.drug_name for e in entries], inputs.drug)
    balance = labels.class_balance()
    say(
        f"labels ({len(entries)} IC50 entries, rule: "
        f"{f'z <= {rule.z_max:g}' if rule.z_max is not None else f'quantile {rule.quantile:g}'}, "
        f"threshold z {labels.threshold:.3f}): {balance['sensitive']} sensitive / "
        f"{balance['resistant']} resistant training lines"
    )
    calls = ", ".join(
        f"{k}={'sensitive' if v else 'resistant' if v is not None else 'no IC50'}"
        for k, v in labels.holdout_calls.items()
    )
    say(f"held-out lines by the label rule: {calls or 'none given'}")
    cells = [load_single_cell(p) for p in inputs.targets]
    nodes = knowledge_nodes(inputs.drug, inputs.knowledge_genesets) if inputs.knowledge_genesets else None
    panel, mask = choose_panel(
        bulk,
        labels.train_lines,
        [detected_features(c, inputs.min_detection) for c in cells],
        read_gmt(inputs.genesets),
        load_gene_ids(inputs.gene_ids),
        inputs.panel_size,
        inputs.min_set_size,
        inputs.max_set_size,
        knowledge=nodes,
        knowledge_only=inputs.knowledge_only,
    )
    say(f"panel: {len(panel.symbols)} genes, {len(mask.names)} pathways ({panel.report})")
    base = Normalization(rank=inputs.rank)
    scaled = [scale_cells(c.counts, c.features, panel.symbols, panel.ensembl_ids, base) for c in cells]
    rate, mean, std = depth_stats([c.counts for c in cells], [c.features for c in cells],
                                  panel.symbols, panel.ensembl_ids, base)
    cell_norm = base.with_gene_stats(mean[-1], std[-1]).with_depth_stats(rate, mean, std)
    blocks, targets = [], []
    for c, (y_cells, present, zero) in zip(cells, scaled, strict=True):
        values = standardize(y_cells, present, zero, cell_norm)
        blocks.append(values[~zero])
        targets.append(
            {
                "file": c.path.name,
                "sha256": sha256_file(c.path),
                "counts_matrix": c.source,
                "cells": len(c.cell_ids),
                "cells_used": int((~zero).sum()),
                "zero_count_cells": int(zero.sum()),
                "panel_genes_present": int(present.sum()),
            }
        )
    cells_x = np.concatenate(blocks)
    bulk_scaled = normalize_bulk(bulk.rows(labels.train_lines)[:, panel.bulk_index], base)
    bulk_norm = base.with_gene_stats(
        *gene_stats(
            [
                (
                    bulk_scaled.astype(np.float64),
                    np.ones(len(panel.symbols), bool),
                    np.zeros(len(bulk_scaled), bool),
                )
            ]
        )
    )
    bulk_x = normalize_bulk(bulk.rows(labels.train_lines)[:, panel.bulk_index], bulk_norm)
    say(f"targets: {len(cells_x)} cells with counts from {len(cells)} file(s)")
    pairs = None
    if inputs.depth_pairs:
        pairs = depth_pairs([c.counts for c in cells], [c.features for c in cells], panel.symbols,
                            panel.ensembl_ids, cell_norm, draws=inputs.depth_pairs)
        say(f"depth pairs: {len(pairs[0])} target cells thinned to {', '.join(map(str, PAIR_DEPTHS))} "
            f"of their detected genes ({inputs.depth_pairs} draws each)")
    return Prepared(
        inputs,
        bulk,
        labels,
        panel,
        mask,
        cell_norm,
        bulk_norm,
        bulk_x,
        labels.y_train,
        cells_x,
        targets,
        aliases,
        pairs,
    )


def lines_of_tissues(line_info: Path | None, tissues: tuple[str, ...]) -> set[str]:
    """Normalised names of the lines whose GDSC1 tissue (cosmic_info's `GDSC1` column) is one
    of `tissues`; a DataError when the table is missing or names none of them."""
    if line_info is None:
        raise DataError("leaving tissues out needs the line table (cosmic_info.csv.gz, --line-info)")
    table = pd.read_csv(line_info, usecols=["SAMPLE_NAME", "GDSC1"], dtype=str)
    unknown = sorted(set(tissues) - set(table["GDSC1"].dropna()))
    if unknown:
        raise DataError(f"{Path(line_info).name} has no lines of tissue {', '.join(unknown)}")
    hit = table[table["GDSC1"].isin(tissues)]
    return {normalize_line_name(x) for x in hit["SAMPLE_NAME"]}


def detected_features(cells: SingleCellCounts, min_detection: float) -> list[str]:
    """Features detected (count > 0) in at least `min_detection` of the file's cells (0: all features)."""
    if min_detection <= 0:
        return list(cells.features)
    rate = np.asarray((cells.counts > 0).mean(axis=0)).ravel()
    return [f for f, r in zip(cells.features, rate, strict=True) if r >= min_detection]


def _pathway_source(inputs: TrainingInputs) -> str:
    """The pathway layer's sources: the general gene sets, plus the knowledge files when used."""
    general = pathway_source(inputs.genesets)
    if not inputs.knowledge_genesets:
        return general
    extra = "; ".join(pathway_source(p) for p in inputs.knowledge_genesets)
    return f"{general}; drug knowledge nodes (training/knowledge.py) from {extra}"


def _training_record(data: Prepared, config: TrainConfig, ensemble: Ensemble, command: str | None) -> dict:
    """The card's `training` block: data provenance, label rule, panel, options, versions."""
    inputs = data.inputs
    labels = data.labels

    def file_record(path: Path) -> dict:
        return {"file": Path(path).name, "sha256": sha256_file(path)}

    return {
        "command": command,
        "data": {
            "bulk_expression": file_record(inputs.bulk_expression),
            "ic50": [file_record(p) for p in inputs.ic50],
            "targets": data.targets,
            "genesets": file_record(inputs.genesets),
            "gene_ids": [file_record(p) for p in inputs.gene_ids],
        },
        "label_rule": {
            "description": labels.rule.describe(),
            "quantile": None if labels.rule.z_max is not None else labels.rule.quantile,
            "z_max": labels.rule.z_max,
            "threshold_score": labels.threshold,
            "entries": [
                {
                    "file": e.source,
                    "entry": e.number,
                    "drug_name": e.drug_name,
                    "lines": len(e.ln_ic50),
                    "dropped_ambiguous_names": e.collisions,
                }
                for e in labels.entries
            ],
            "class_balance": labels.class_balance(),
            "training_lines": len(labels.train_lines),
        },
        "holdout_lines": list(labels.holdout_calls),
        "holdout_label_calls": {
            k: (None if v is None else ("sensitive" if v else "resistant"))
            for k, v in labels.holdout_calls.items()
        },
        "panel": {
            "rule": "pathway-member genes present in both domains (signal-carrying bulk genes "
            "with a unique Ensembl ID, present in every target file), capped at the highest "
            "training-bulk variance; every panel gene is in >= 1 kept pathway",
            "cap": inputs.panel_size,
            "min_set_size": inputs.min_set_size,
            "max_set_size": inputs.max_set_size,
            "steps": data.panel.report,
        },
        "reference_pathways": "bulk_mean: mean pathway activities of the training bulk lines; "
        "single_cell_mean: of the target cells used in training (attribution baselines)",
        "gene_standardization": "per domain during training: bulk rows with the training "
        "lines' means/SDs, cells with the target cells' means/SDs (label-free); the card "
        "holds the single-cell statistics",
        "bulk_gene_stats": {
            "gene_mean": data.bulk_norm.gene_mean,
            "gene_std": data.bulk_norm.gene_std,
        },
        "architecture": {
            "encoder": f"Dropout({config.input_dropout:g}) -> Linear({len(data.panel.symbols)}, "
            f"{config.hidden}) -> ReLU -> Dropout({config.dropout:g}) -> "
            f"Linear({config.hidden}, {len(data.mask.names)})",
            "pathway_layer": "the drug's target node and knowledge sets first "
            "(training/knowledge.py), then one node per kept gene set",
            "decoder": "pathway-masked linear, weights exist only at pathway membership",
            "head": (
                f"Linear({len(data.mask.names)}, {config.head_hidden}) -> ReLU -> "
                f"Linear({config.head_hidden}, 1)"
            )
            if config.head_hidden > 0
            else f"Linear({len(data.mask.names)}, 1)",
            "alignment": config.alignment,
        },
        "options": config.to_card(),
        "seed": config.seed,
        "ensemble": {
            "members": len(ensemble.members),
            "how": "cross-fitted: member k trains on the other folds of a stratified split of the "
            "bulk lines (seed = 1000 * seed + k; its own inner validation split early-stops it); "
            "the ensemble logit is the mean of the members' logits",
            "best_epochs": [f["best_epoch"] for f in ensemble.cv["per_fold"]],
            "student": "one network of the members' architecture, trained to match the ensemble "
            "logit (MSE) on the bulk lines, the target cells and bulk/cell mixtures, plus the "
            "pathway-masked reconstruction; the calibration is folded into its last layer",
            "depth_pairs": None if data.pairs is None else {
                "fractions_of_detected_genes": list(PAIR_DEPTHS),
                "draws": data.inputs.depth_pairs,
                "thinned_cells": len(data.pairs[0]),
                "what": "the student also learns the target cells thinned binomially to these "
                "fractions of their detected genes (independent draws), each with the ensemble's "
                "logit of the same cell at full depth as its target",
            },
        },
        "data_options": {
            "knowledge_only": data.inputs.knowledge_only,
            "min_detection": data.inputs.min_detection,
            "exclude_tissues": list(data.inputs.exclude_tissues),
            "depth_pairs": data.inputs.depth_pairs,
        },
        "epochs": {"max": config.epochs},
        "fit_seconds": round(ensemble.seconds, 2),
        "versions": _versions(),
    }


def _description(data: Prepared) -> str:
    """The card's one-line description."""
    return describe_model(data.inputs.drug, len(data.labels.train_lines), len(data.mask.names),
                          data.panel.report.get("knowledge_nodes", 0), data.inputs.exclude_tissues)


def describe_model(drug: str, lines: int, pathways: int, knowledge: int,
                   exclude_tissues: tuple[str, ...] | list[str] = ()) -> str:
    """The card's one-line description: what is predicted, from which lines, through what."""
    mechanism = f" ({knowledge} for the drug's target and mechanism)" if knowledge else ""
    kind = "solid-tumour lines" if set(BLOOD_TISSUES) <= set(exclude_tissues) else "lines"
    which = f"{kind} ({', '.join(exclude_tissues)} left out)" if exclude_tissues else kind
    return (
        f"calibrated P(sensitive to {drug}) per cell; trained on {lines} GDSC bulk {which} and "
        f"transferred to single cells through {pathways} pathway nodes{mechanism}"
    )


def _aliases(inputs: TrainingInputs) -> list[str]:
    """Known aliases of the drug (training.drugs) plus those the user gave."""
    spec = find_drug(inputs.drug)
    known = list(spec.aliases) if spec is not None else []
    return _dedupe(known + list(inputs.aliases), inputs.drug)


def _dedupe(names: list[str], drug: str) -> list[str]:
    """Names in order, exact duplicates and the drug's own lower-case name removed."""
    out: list[str] = []
    for name in names:
        if name and name != drug.lower() and name not in out:
            out.append(name)
    return out


def _versions() -> dict[str, str | None]:
    """Python and package versions of this run."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["platform"] = sys.platform
    return versions


__all__ = ["DataError", "Prepared", "TrainingInputs", "prepare", "train_bundle"]
