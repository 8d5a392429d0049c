"""Bulk-only sweep that justifies scdr-train's default loss weights (and shows the label rule).

Every configuration is scored by stratified 5-fold cross-validation on the GDSC training lines
(the five sc_mixology lines held out, as in the shipped model); early stopping inside each fold
uses an inner split of that fold's training part. No single-cell label is read anywhere.
The target cells enter only as unlabelled training input, exactly as in scdr-train, and the
domain-mixing column (CV AUROC of a logistic domain classifier on the pathway layer, 0.5 =
mixed) is printed for information; it does not enter any choice.

Stages: (1) a few architectures at fixed loss weights (adversarial, w_recon 1, w_align 0.1); the
best mean CV AUROC picks the architecture; (2) the loss-weight grid at that architecture;
(3) the label-rule quantile at the chosen options (for information only: a different quantile
is a different task, so its AUROC is not a selection score).

Choice rule for the loss weights (fixed before running): take the configuration with the best
mean CV AUROC; among those within one standard error of it, prefer alignment ('adversarial',
then 'mmd', then 'none'), then the larger w_align, then the larger w_recon (more faithful
pathway nodes).

    python benchmarks/sweep_loss_weights.py --data ../shared/data [--jobs 4] [--out sweep.json]

With --jobs N the configurations are shared among N worker processes (each a copy of this
script with --worker k/N, 2 torch threads each) that hand back JSON files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from scdr.training.pipeline import Prepared, TrainingInputs, prepare
from scdr.training.train import TrainConfig, domain_mixing_auroc, fit, predict

_REGULARISED = {"dropout": 0.5, "input_dropout": 0.5, "weight_decay": 1e-2, "lr": 3e-4}
ARCHITECTURES = {
    # name: architecture/optimiser options, each stated in full
    "128 hidden, dropout 0.5 + input dropout 0.5, wd 1e-2, lr 3e-4": {
        "hidden": 128, "head_hidden": 32, **_REGULARISED},
    "64 hidden, same regularisation": {"hidden": 64, "head_hidden": 32, **_REGULARISED},
    "64 hidden, linear head": {"hidden": 64, "head_hidden": 0, **_REGULARISED},
    "256 hidden, light regularisation (dropout 0.2, wd 1e-4, lr 1e-3)": {
        "hidden": 256, "head_hidden": 32, "dropout": 0.2, "input_dropout": 0.0,
        "weight_decay": 1e-4, "lr": 1e-3},
}  # fmt: skip
STAGE1_WEIGHTS = {"alignment": "adversarial", "w_recon": 1.0, "w_align": 0.1}
GRID = [
    # (alignment, w_recon, w_align)
    ("none", 0.0, 0.0),
    ("none", 1.0, 0.0),
    ("adversarial", 0.0, 0.1),
    ("adversarial", 1.0, 0.1),
    ("adversarial", 0.0, 0.3),
    ("adversarial", 1.0, 0.3),
    ("adversarial", 0.0, 1.0),
    ("adversarial", 1.0, 1.0),
    ("mmd", 1.0, 0.1),
    ("mmd", 1.0, 0.3),
    ("mmd", 1.0, 1.0),
]
LABEL_QUANTILES = (0.2, 0.5)  # shown for information next to the default 0.3
_PREFERENCE = {"adversarial": 2, "mmd": 1, "none": 0}


def main(argv: list[str] | None = None) -> int:
    """Run the three stages (here or in --jobs workers), print the tables, optionally write JSON."""
    args = _parse(argv)
    if args.worker:
        k, n = (int(x) for x in args.worker.split("/"))
        units = json.loads(Path(args.units).read_text())
        rows = _run_units([u for i, u in enumerate(units) if i % n == k], args)
        Path(args.out).write_text(json.dumps(rows) + "\n")
        return 0
    started = time.perf_counter()
    print(f"(1) architectures, at {STAGE1_WEIGHTS}")
    stage1 = [{"name": name, "options": {**over, **STAGE1_WEIGHTS}}
              for name, over in ARCHITECTURES.items()]  # fmt: skip
    arch_rows = _run_stage(stage1, args)
    best = max(arch_rows, key=lambda r: r["auroc_mean"])
    arch = ARCHITECTURES[best["name"]]
    print(f"chosen architecture: {best['name']} (CV AUROC {best['auroc_mean']:.3f})")
    print("\n(2) loss weights, chosen architecture")
    stage2 = [{"name": "", "options": {**arch, "alignment": a, "w_recon": r, "w_align": w}}
              for a, r, w in GRID]  # fmt: skip
    grid_rows = _run_stage(stage2, args)
    chosen = choose(grid_rows, args.folds)
    weights = {k: chosen[k] for k in ("alignment", "w_recon", "w_align")}
    print(f"chosen loss weights: {weights} (CV AUROC {chosen['auroc_mean']:.3f})")
    print("\n(3) label-rule quantile, chosen options (information only)")
    stage3 = [{"name": f"quantile {q:g}", "options": {**arch, **weights}, "label_quantile": q}
              for q in LABEL_QUANTILES]  # fmt: skip
    label_rows = _run_stage(stage3, args)
    print(f"\n{len(arch_rows) + len(grid_rows) + len(label_rows)} configurations x {args.folds} "
          f"folds in {time.perf_counter() - started:.0f} s")  # fmt: skip
    if args.out:
        summary = {"architectures": arch_rows, "chosen_architecture": best["name"],
                   "grid": grid_rows, "chosen": chosen, "label_quantiles": label_rows,
                   "folds": args.folds, "epochs": args.epochs, "seed": args.seed}  # fmt: skip
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def choose(rows: list[dict], folds: int) -> dict:
    """Best mean AUROC; within one SE of it, prefer alignment, then larger w_align and w_recon."""
    best = max(rows, key=lambda r: r["auroc_mean"])
    floor = best["auroc_mean"] - best["auroc_sd"] / np.sqrt(folds)
    close = [r for r in rows if r["auroc_mean"] >= floor]
    return max(
        close, key=lambda r: (_PREFERENCE[r["alignment"]], r["w_align"], r["w_recon"], r["auroc_mean"])
    )


def _run_stage(units: list[dict], args: argparse.Namespace) -> list[dict]:
    """Evaluate a stage's units here or in worker processes, then print them in order."""
    rows = _run_parallel(units, args) if args.jobs > 1 else _run_units(units, args)
    for row in rows:
        _print_row(row)
    return rows


def _run_units(units: list[dict], args: argparse.Namespace) -> list[dict]:
    """Evaluate units in this process (data prepared once per label quantile)."""
    inputs = _inputs(Path(args.data))
    base = TrainConfig(epochs=args.epochs, seed=args.seed, threads=args.threads)
    prepared: dict[float, Prepared] = {}
    rows = []
    for unit in units:
        q = unit.get("label_quantile", inputs.label_quantile)
        if q not in prepared:
            prepared[q] = prepare(replace(inputs, label_quantile=q))
        data = prepared[q]
        row = _evaluate(data, replace(base, **unit["options"]), args.folds)
        row.update(name=unit["name"], label_quantile=q, class_balance=data.labels.class_balance())
        rows.append(row)
    return rows


def _run_parallel(units: list[dict], args: argparse.Namespace) -> list[dict]:
    """Share units among --jobs worker processes; collect their JSON results in unit order."""
    jobs = min(args.jobs, len(units))
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "units.json"
        spec.write_text(json.dumps(units))
        procs = []
        for k in range(jobs):
            out = Path(tmp) / f"part{k}.json"
            cmd = [sys.executable, __file__, "--data", args.data, "--folds", str(args.folds),
                   "--epochs", str(args.epochs), "--seed", str(args.seed), "--threads",
                   str(args.threads), "--worker", f"{k}/{jobs}", "--units", str(spec),
                   "--out", str(out)]  # fmt: skip
            procs.append((subprocess.Popen(cmd), out))
        parts = []
        for proc, out in procs:
            if proc.wait() != 0:
                raise SystemExit(f"worker {out.stem} failed with exit code {proc.returncode}")
            parts.append(json.loads(out.read_text()))
    rows: list[dict] = [{}] * len(units)
    for k, part in enumerate(parts):
        for j, row in zip(range(k, len(units), jobs), part, strict=True):
            rows[j] = row
    return rows


def _evaluate(data: Prepared, config: TrainConfig, folds: int) -> dict:
    """k-fold CV AUROC/AUPR of one configuration, plus the latent domain-mixing AUROC."""
    started = time.perf_counter()
    y = data.y
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    aurocs, auprs, mixing, epochs = [], [], [], []
    for train, test in splitter.split(np.zeros(len(y)), y):
        result = fit(data.bulk_x[train], y[train], data.cells_x, data.mask.mask, config)
        out = predict(result.module, data.bulk_x[test])
        aurocs.append(roc_auc_score(y[test], out["logit"]))
        auprs.append(average_precision_score(y[test], out["logit"]))
        mixing.append(
            domain_mixing_auroc(
                predict(result.module, data.bulk_x[train])["pathways"],
                predict(result.module, data.cells_x)["pathways"],
            )
        )
        epochs.append(result.best_epoch)
    return {
        "alignment": config.alignment,
        "w_recon": config.w_recon,
        "w_align": config.w_align,
        "auroc_mean": float(np.mean(aurocs)),
        "auroc_sd": float(np.std(aurocs, ddof=1)),
        "aupr_mean": float(np.mean(auprs)),
        "domain_auroc_mean": float(np.mean(mixing)),
        "best_epochs": epochs,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _print_row(row: dict) -> None:
    """One line of a results table."""
    label = row["name"]
    print(
        f"{label + ': ' if label else ''}{row['alignment']:>11} w_recon={row['w_recon']:<4g} "
        f"w_align={row['w_align']:<4g} AUROC {row['auroc_mean']:.3f} +- {row['auroc_sd']:.3f}  "
        f"AUPR {row['aupr_mean']:.3f}  domain AUROC {row['domain_auroc_mean']:.3f}  "
        f"({row['seconds']:.0f} s)",
        flush=True,
    )


def _inputs(data: Path) -> TrainingInputs:
    """The shipped cisplatin model's inputs under a shared/data folder."""
    return TrainingInputs(
        drug="cisplatin",
        bulk_expression=data / "bulk" / "gdsc_expression.csv.gz",
        ic50=[data / "bulk" / "GDSC1_IC50.csv.gz", data / "bulk" / "GDSC2_IC50.csv.gz"],
        targets=[data / "singlecell" / f"sc_celseq2_5cl_p{i}.h5ad" for i in (1, 2, 3)],
        genesets=data / "genesets" / "h.all.v7.0.symbols.gmt",
        gene_ids=[data / "genes" / "hgnc_genes.tsv.gz", data / "genes" / "gencode_v22_genes.tsv.gz"],
    )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data", default=str(default_data), help="the shared/data folder (its README)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--units", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
