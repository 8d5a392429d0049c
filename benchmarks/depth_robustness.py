"""Do the shipped models' calls survive shallower sequencing? Score the plates thinned to droplet depth.

    python benchmarks/depth_robustness.py --data ../shared/data [--seeds 0,1,2] [--drugs erlotinib]

Users score 10x and other droplet data, not only CEL-seq2 plates, and the single-cell gene
statistics in each card come from the plates. This check reuses the evaluation's test set and
labels (`evaluate.py`: singlets, the fixed sensitive lines) and changes one thing: each plate's
counts are thinned binomially so that a cell keeps on average about 2,500 detected genes (10x
Chromium-like) or 1,000 (a shallow droplet run), a few thinning seeds each. Per drug it prints
the per-cell AUROC of the shipped bundle and of the target-gene marker at each depth, the line-level
Spearman, and how many cells keep their call (sensitive/resistant) against full depth. Nothing is
fitted or chosen here: the bundles are the shipped ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from evaluate import EVAL_SENSITIVE, MODELS, RESULTS, auroc, gdsc_ln_ic50, read_markers, spearman
from make_atlas import _thinning_probability

from scdr.scoring import score
from scdr.training.depth import thin
from scdr.training.drugs import DRUGS
from scdr.training.normalize import Normalization, scale_cells
from scdr.training.panel import load_gene_ids

ROOT = Path(__file__).resolve().parents[1]

PLATES = ("p1", "p2", "p3")
DEPTHS: dict[str, float | None] = {  # label -> mean detected genes per cell after thinning
    "full (CEL-seq2)": None, "2,500 genes/cell": 2500.0, "1,000 genes/cell": 1000.0}


def main(argv: list[str] | None = None) -> int:
    """Score every depth and seed, print the table, write it as CSV."""
    args = _parse(argv)
    plates = [_read_plate(args.data / "singlecell" / f"sc_celseq2_5cl_{p}.h5ad") for p in PLATES]
    obs = pd.concat([o for _, _, o in plates], ignore_index=True)
    drugs = args.drugs.split(",") if args.drugs else [d.name for d in DRUGS]
    gene_ids = load_gene_ids([args.data / "genes" / "hgnc_genes.tsv.gz",
                              args.data / "genes" / "gencode_v22_genes.tsv.gz"])
    markers = {d: (gs, [gene_ids.resolve(g) for g in gs]) for d, gs in read_markers().items()}
    full = {d: _calls(_thin(plates, None, 0), plates, d, markers) for d in drugs}
    rows = []
    for depth, target in DEPTHS.items():
        for seed in ([0] if target is None else args.seeds):
            thinned = _thin(plates, target, seed)
            for drug in drugs:
                calls = full[drug] if target is None else _calls(thinned, plates, drug, markers)
                rows.append({"drug": drug, "depth": depth, "seed": seed,
                             "genes_per_cell": float(np.mean([np.diff(c.indptr).mean() for c in thinned])),
                             **_metrics(drug, calls, full[drug], obs, args.data)})
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.4f")
    print(_format(table))
    print(f"\nwrote {args.out}")
    return 0


def _read_plate(path: Path) -> tuple[sp.csr_matrix, list[str], pd.DataFrame]:
    """Counts (cells x genes), gene IDs and the cells' line and demuxlet call of one plate."""
    import anndata

    a = anndata.read_h5ad(path)
    obs = a.obs[["cell_line", "demuxlet_cls"]].reset_index(drop=True)
    return sp.csr_matrix(a.X, dtype=np.float32), list(map(str, a.var_names)), obs


def _thin(plates: list, target: float | None, seed: int) -> list[sp.csr_matrix]:
    """Binomially thin each plate to ``target`` detected genes per cell on average (None: as is)."""
    rng = np.random.default_rng(seed)
    return [thin(c, _thinning_probability(c, target), rng) for c, _, _ in plates]


def _calls(counts: list[sp.csr_matrix], plates: list, drug: str, markers: dict) -> dict[str, np.ndarray]:
    """The shipped bundle's P(sensitive) and call, and the marker's log1p CP10k, for each cell
    (each plate scored on its own gene list, as a user scores each file)."""
    parts = [_plate_calls(c, genes, drug, markers) for c, (_, genes, _) in zip(counts, plates, strict=True)]
    return {k: None if parts[0][k] is None else np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _plate_calls(counts: sp.csr_matrix, genes: list[str], drug: str, markers: dict) -> dict:
    table = score(counts, model=MODELS / drug, gene_names=genes)
    symbols, ensembl_ids = markers.get(drug, ([], []))
    marker = None
    if symbols:  # log1p CP10k summed over the target genes, as evaluate.py scores the marker
        log_cp10k = Normalization(cell_zscore=False, clip=None)
        marker = scale_cells(counts, genes, symbols, ensembl_ids, log_cp10k)[0].sum(axis=1)
    return {"probability": table.probability.astype(float),
            "sensitive": table.label == "sensitive",
            "zero": table.zero_counts,
            "marker": marker}


def _metrics(drug: str, calls: dict, full: dict, obs: pd.DataFrame, data: Path) -> dict[str, float]:
    """Per-cell AUROC (model, marker; singlets), line Spearman and agreement with full depth."""
    keep = (obs["demuxlet_cls"] == "SNG").to_numpy() & ~calls["zero"] & ~full["zero"]
    prob = calls["probability"]
    out: dict[str, float] = {"cells": int(keep.sum())}
    if drug in EVAL_SENSITIVE:
        y = obs["cell_line"].isin(EVAL_SENSITIVE[drug]).to_numpy()
        out["model_auroc"] = auroc(y[keep], prob[keep])
        if calls["marker"] is not None:
            out["marker_auroc"] = auroc(y[keep], calls["marker"][keep])
    ln_ic50, _ = gdsc_ln_ic50(next(d for d in DRUGS if d.name == drug), data)
    lines = sorted(ln_ic50)
    means = [prob[keep & (obs["cell_line"] == line).to_numpy()].mean() for line in lines]
    out["spearman"] = spearman(np.array(means), -np.array([ln_ic50[x] for x in lines]))
    out["same_call"] = float((calls["sensitive"][keep] == full["sensitive"][keep]).mean())
    out["prob_rank_corr"] = spearman(prob[keep], full["probability"][keep])
    return out


def _format(table: pd.DataFrame) -> str:
    """One line per drug and depth: mean ± sd over the thinning seeds."""
    cols = ["genes_per_cell", "model_auroc", "marker_auroc", "spearman", "same_call", "prob_rank_corr"]
    cols = [c for c in cols if c in table]
    g = table.groupby(["drug", "depth"], sort=False)[cols]
    mean, sd = g.mean(), g.std().fillna(0.0)
    head = "| drug | depth | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for (drug, depth), m in mean.iterrows():
        s = sd.loc[(drug, depth)]
        cells = ["" if np.isnan(m[c]) else (f"{m[c]:.0f}" if c == "genes_per_cell" else
                 f"{m[c]:.3f}" + (f" ± {s[c]:.3f}" if s[c] > 0 else "")) for c in cols]
        lines.append(f"| {drug} | {depth} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--drugs", default="", help="comma-separated shipped drugs (default: all)")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=RESULTS / "depth_robustness.csv")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
