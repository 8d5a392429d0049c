"""Train every shipped bundle with one command, and write the model table of exported_models/README.md.

    python benchmarks/train_all.py --data ../shared/data [--drugs erlotinib,gefitinib] [--seed 0]
    python benchmarks/train_all.py --data ../shared/data --label-report   # bulk-only rule check
    python benchmarks/train_all.py --table                                # README model table
    python benchmarks/train_all.py --calibration                          # reliability on bulk folds

Each drug of `training.drugs.DRUGS` is trained exactly as `scdr-train` would (same pipeline, the
shipped recipe of `training/recipes.py`: knowledge nodes, a 5-member cross-fitted ensemble whose
held-out folds are the card's bulk CV, Platt calibration, one distilled network; the five
sc_mixology lines held out of bulk training and of every choice) into `exported_models/<drug>/`.
Targeted drugs use the tail label rule (z <= -1.5), the others the 0.3 quantile; `training/drugs.py`
says why.
Runs are deterministic for a seed: rerunning reproduces both ONNX files byte for byte.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from scdr.scoring.card import read_card
from scdr.training.data import (
    DEFAULT_HOLDOUT_LINES,
    LabelRule,
    load_ic50_entries,
    make_labels,
    normalize_line_name,
)
from scdr.training.drugs import DEFAULT_QUANTILE, DRUGS, TARGETED_Z_MAX, DrugSpec
from scdr.training.pipeline import TrainingInputs, train_bundle
from scdr.training.recipes import SHIPPED, SHIPPED_ROUND, Recipe, find_recipe
from scdr.training.train import stderr_logger

ROOT = Path(__file__).resolve().parents[1]

MODELS = ROOT / "exported_models"
RESULTS = ROOT / "benchmarks" / "results"
EVALUATION_CSV = RESULTS / f"evaluation_round{SHIPPED_ROUND}.csv"
TABLE_BEGIN = "<!-- model-table:begin (written by benchmarks/train_all.py --table) -->"
TABLE_END = "<!-- model-table:end -->"
KNOWLEDGE_FILES = (
    "ReactomePathways.gmt.gz",
    "enrichr.GO_Biological_Process_2021.gmt.gz",
    "h.all.v7.0.symbols.gmt",
)
NOT_SHIPPED: dict[str, str] = {}  # drug -> reason GDSC cannot support it (none at present)


def inputs_for(spec: DrugSpec, data: Path, recipe: Recipe | None = None) -> TrainingInputs:
    """The training inputs of one shipped drug under a recipe (default: the shipped one)."""
    recipe = recipe or find_recipe(SHIPPED)
    sets = data / "genesets"
    return TrainingInputs(
        drug=spec.name,
        bulk_expression=data / "bulk" / "gdsc_expression.csv.gz",
        ic50=[data / "bulk" / "GDSC1_IC50.csv.gz", data / "bulk" / "GDSC2_IC50.csv.gz"],
        targets=[data / "singlecell" / f"sc_celseq2_5cl_p{i}.h5ad" for i in (1, 2, 3)],
        genesets=data / "genesets" / "h.all.v7.0.symbols.gmt",
        gene_ids=[data / "genes" / "hgnc_genes.tsv.gz", data / "genes" / "gencode_v22_genes.tsv.gz"],
        holdout_lines=list(DEFAULT_HOLDOUT_LINES),
        aliases=list(spec.aliases),
        label_quantile=DEFAULT_QUANTILE,
        label_z=spec.label_z,
        knowledge_genesets=[sets / name for name in KNOWLEDGE_FILES],
        knowledge_only=recipe.knowledge_only,
        min_detection=recipe.min_detection,
        rank=recipe.rank,
        line_info=data / "labels" / "cosmic_info.csv.gz",
        exclude_tissues=recipe.exclude_tissues,
        depth_pairs=recipe.depth_pairs,
    )


def main(argv: list[str] | None = None) -> int:
    """Train the selected drugs, or print the label report, or write the README table."""
    args = _parse(argv)
    if args.table:
        write_table(MODELS / "README.md")
        return 0
    if args.calibration:
        write_calibration(RESULTS / "calibration.md", RESULTS / "calibration.png")
        return 0
    specs = [s for s in DRUGS if not args.drugs or s.name in args.drugs.split(",")]
    if args.label_report:
        label_report(specs, Path(args.data))
        return 0
    for spec in specs:
        started = time.perf_counter()
        print(f"== {spec.name}", file=sys.stderr, flush=True)
        command = (f"python benchmarks/train_all.py --data DATA --drugs {spec.name} --seed {args.seed} "
                   f"--recipe {args.recipe}")  # fmt: skip
        recipe = find_recipe(args.recipe)
        config = recipe.train_config(seed=args.seed, threads=args.threads, device=args.device)
        train_bundle(
            inputs_for(spec, Path(args.data), recipe),
            config,
            MODELS / spec.name,
            members=args.members,
            log=None if args.quiet else stderr_logger,
            command=command,
        )
        print(f"{spec.name}: {time.perf_counter() - started:.0f} s", flush=True)
    return 0


def label_report(specs: list[DrugSpec], data: Path) -> None:
    """Bulk-only facts behind the label rule, and which plate lines each rule calls sensitive."""
    lines = pd.read_csv(data / "bulk" / "gdsc_expression.csv.gz", usecols=[0]).iloc[:, 0]
    known = [normalize_line_name(x) for x in lines]
    holdout = list(DEFAULT_HOLDOUT_LINES)
    print("drug | targeted | lines | q0.3 cut (z) | n sens q0.3 | n sens z<=-1.5 | % z<=-2 | "
          "screen noise SD(z) | plate lines sensitive (rule used)")  # fmt: skip
    ic50 = [data / "bulk" / "GDSC1_IC50.csv.gz", data / "bulk" / "GDSC2_IC50.csv.gz"]
    for spec in specs:
        entries = load_ic50_entries(ic50, spec.name, list(spec.aliases))
        quant = make_labels(entries, known, holdout, LabelRule(DEFAULT_QUANTILE))
        train = quant.score[quant.train_lines]
        used = make_labels(entries, known, holdout, LabelRule(DEFAULT_QUANTILE, spec.label_z))
        calls = [k for k, v in used.holdout_calls.items() if v]
        print(
            f"{spec.name} | {spec.targeted} | {len(train)} | {quant.threshold:.2f} | "
            f"{int((train <= quant.threshold).sum())} | {int((train <= TARGETED_Z_MAX).sum())} | "
            f"{100 * float((train <= -2).mean()):.1f} | {_screen_noise(entries, known, holdout)} | "
            f"{','.join(calls) or 'none'}"
        )


def _screen_noise(entries: list, known: list[str], holdout: list[str]) -> str:
    """SD of (z in entry a - z in entry b)/sqrt(2) over training lines screened twice: per-screen noise."""
    zs = []
    for entry in entries:
        values = entry.ln_ic50[entry.ln_ic50.index.isin(known) & ~entry.ln_ic50.index.isin(holdout)]
        median = values.median()
        zs.append((values - median) / (1.4826 * (values - median).abs().median()))
    if len(zs) < 2:
        return "n/a (one screen)"
    both = zs[0].index.intersection(zs[-1].index)
    diff = (zs[0][both] - zs[-1][both]).to_numpy()
    return f"{float(np.std(diff) / np.sqrt(2)):.2f} (n={len(both)})"


def write_table(readme: Path) -> None:
    """Regenerate the model table section of exported_models/README.md from cards and the CSV."""
    evaluation = _evaluation_rows()
    rows = [
        "| drug (aliases) | label rule | training lines (sensitive / resistant) | plate lines "
        "called sensitive | bulk 5-fold CV AUROC | AUPR | cells: pooled AUROC (seeds) | "
        "line Spearman (seeds) | pathway nodes (of them target/knowledge) | sha256 of model.onnx |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in DRUGS:
        card_path = MODELS / spec.name / "card.json"
        if not card_path.is_file():
            rows.append(f"| {spec.name} | not shipped: {NOT_SHIPPED.get(spec.name, 'not trained yet')} |"
                        + " |" * 8)  # fmt: skip
            continue
        card = json.loads(card_path.read_text())
        training = card["training"]
        rule = training["label_rule"]
        balance = rule["class_balance"]
        cv = card["metrics"].get("bulk_cross_validation") or {}
        calls = [k for k, v in training["holdout_label_calls"].items() if v == "sensitive"]
        ev = evaluation.get(spec.name, {})
        rule_text = f"z <= {rule['z_max']:g}" if rule.get("z_max") is not None else f"q {rule['quantile']:g}"
        rows.append(
            f"| {spec.name} ({', '.join(card['aliases'])}) | {rule_text} | "
            f"{training['label_rule']['training_lines']} ({balance['sensitive']} / {balance['resistant']}) | "
            f"{', '.join(calls) or 'none'} | "
            f"{_pm(cv.get('auroc_mean'), cv.get('auroc_sd'))} | "
            f"{_pm(cv.get('aupr_mean'), cv.get('aupr_sd'))} | "
            f"{ev.get('auroc', 'not evaluated')} | {ev.get('spearman', 'not evaluated')} | "
            f"{len(card['pathways']['names'])} ({len(_knowledge_nodes(card))}) | "
            f"`{card['files']['model.onnx']['sha256']}` |"
        )
    section = "\n".join([TABLE_BEGIN, *rows, TABLE_END])
    text = readme.read_text()
    if TABLE_BEGIN in text:
        head, rest = text.split(TABLE_BEGIN, 1)
        text = head + section + rest.split(TABLE_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Shipped models\n\n" + section + "\n"
    readme.write_text(text)
    print(section)


def write_calibration(table_path: Path, figure_path: Path) -> None:
    """Reliability of each shipped card's calibrated probabilities on its out-of-fold bulk lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cards = [(s.name, read_card(MODELS / s.name)) for s in DRUGS
             if (MODELS / s.name / "card.json").is_file()]  # fmt: skip
    lines = ["Calibrated P(sensitive) against the observed fraction of sensitive lines, on each "
             "member's held-out bulk fold (Platt scaling fitted on the same out-of-fold logits; "
             "written by `python benchmarks/train_all.py --calibration` from the shipped cards).", "",
             "| drug | lines (sensitive) | slope | intercept | Brier | Brier of the prior | "
             "bins: mean predicted / observed (n) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    cols = 4
    fig, axes = plt.subplots(-(-len(cards) // cols), cols, figsize=(12, 3 * -(-len(cards) // cols)))
    for ax, (name, card) in zip(axes.ravel(), cards, strict=False):
        cal = card["calibration"]
        prior = cal["prior"]
        bins = "; ".join(f"{b['mean_predicted']:.2f} / {b['observed']:.2f} ({b['n']})"
                         for b in cal["reliability"])  # fmt: skip
        lines.append(f"| {name} | {cal['lines']} ({cal['sensitive_lines']}) | {cal['slope']:.3f} | "
                     f"{cal['intercept']:.3f} | {cal['brier']:.4f} | {prior * (1 - prior):.4f} | "
                     f"{bins} |")  # fmt: skip
        x = [b["mean_predicted"] for b in cal["reliability"]]
        y = [b["observed"] for b in cal["reliability"]]
        ax.plot([0, 1], [0, 1], color="0.7", lw=1)
        ax.scatter(x, y, s=[8 + 2 * b["n"] ** 0.5 for b in cal["reliability"]], zorder=3)
        ax.plot(x, y, lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=name, xlabel="mean predicted", ylabel="observed")
    for ax in axes.ravel()[len(cards):]:
        ax.axis("off")
    fig.suptitle("Reliability on out-of-fold bulk lines (calibrated P(sensitive); marker area ~ lines)")
    fig.tight_layout()
    figure_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure_path, dpi=90)
    plt.close(fig)
    table_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _knowledge_nodes(card: dict) -> list[str]:
    """The target and knowledge nodes a card's model carries."""
    return card.get("knowledge", {}).get("nodes_in_model", [])


def _evaluation_rows() -> dict[str, dict[str, str]]:
    """The shipped recipe's single-cell figures per drug from the protocol round that selected it."""
    if not EVALUATION_CSV.is_file():
        return {}
    out: dict[str, dict[str, str]] = {}
    with EVALUATION_CSV.open() as handle:
        for row in csv.DictReader(handle):
            if row["method"] != SHIPPED:
                continue
            auroc = _pm(_num(row["pooled_auroc_mean"]), _num(row["pooled_auroc_sd"]))
            out[row["drug"]] = {
                "auroc": "line-level only" if auroc == "—" else auroc,
                "spearman": _pm(_num(row["spearman_mean"]), _num(row["spearman_sd"])),
            }
    return out


def _num(text: str) -> float | None:
    """A CSV number, or None when empty/NaN."""
    try:
        value = float(text)
    except ValueError:
        return None
    return None if np.isnan(value) else value


def _pm(mean: float | None, sd: float | None) -> str:
    """'mean ± sd' with 3 decimals, or a dash."""
    if mean is None:
        return "—"
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--drugs", default="", help="comma-separated subset (folder names)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=5, help="ensemble members (cross-fitted folds)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--recipe", default=SHIPPED, help="training recipe (training/recipes.py)")
    parser.add_argument("--label-report", action="store_true", help="print the bulk-only label facts")
    parser.add_argument("--table", action="store_true", help="write the README model table")
    parser.add_argument("--calibration", action="store_true", help="write the reliability table and figure")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
