"""Evaluate the transfer model and its baselines on the sc_mixology plates; print one table, write CSV.

    python benchmarks/evaluate.py --data ../shared/data [--drugs erlotinib,gefitinib] [--seeds 0,1,2]
        [--epochs 200 --patience 20] [--methods ...] [--jobs 1] [--figure-drug erlotinib] [--quick]

Protocol (fixed in issue 13 before any cell was scored):
* Training is bulk only: GDSC lines with the five plate lines held out, the label rule of
  `training/drugs.py`, the shipped architecture and loss weights. The plates' cells enter only as
  unlabelled alignment input (as in `scdr-train`); their labels and line names are read here,
  after fitting, to score.
* Evaluation labels (GDSC2-clear sensitivity consistent with the line's driver): erlotinib,
  gefitinib: HCC827; afatinib, osimertinib: HCC827 and H1975; crizotinib: H2228. Other drugs
  have no cell label; their figure is the line-level Spearman.
* Labelled figures use singlets only (`demuxlet_cls == 'SNG'`): per-cell AUROC/AUPR on the pooled
  plates and per plate. Line-level Spearman (all drugs): each line's mean score over its singlets
  against minus its GDSC2 ln IC50 (first GDSC2 entry; GDSC1 where GDSC2 lacks the drug), so a
  positive value means "ranks sensitive lines higher".
* Methods on the same panel genes and the same normalised data: the target-gene marker
  (`benchmarks/markers.csv`, log1p CP10k), logistic regression and random forest fitted on bulk,
  and the transfer model in several configurations (see METHODS). Bulk 5-fold CV AUROC/AUPR for
  the baselines here; for the full model from the shipped card (seed 0); not for ablations.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_all import inputs_for  # noqa: E402

from training.data import load_single_cell  # noqa: E402
from training.drugs import DRUGS, DrugSpec  # noqa: E402
from training.normalize import Normalization, scale_cells  # noqa: E402
from training.panel import load_gene_ids  # noqa: E402
from training.pipeline import Prepared, prepare  # noqa: E402
from training.train import TrainConfig, fit, predict  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MARKERS = ROOT / "benchmarks" / "markers.csv"
MODELS = ROOT / "exported_models"
PLATE_LINE = {"A549": "A549", "H838": "NCIH838", "H1975": "NCIH1975", "H2228": "NCIH2228", "HCC827": "HCC827"}
EVAL_SENSITIVE: dict[str, tuple[str, ...]] = {
    "erlotinib": ("HCC827",),
    "gefitinib": ("HCC827",),
    "afatinib": ("HCC827", "H1975"),
    "osimertinib": ("HCC827", "H1975"),
    "crizotinib": ("H2228",),
}
FULL = "full (adversarial)"
METHODS: dict[str, dict] = {
    # name: TrainConfig overrides, plus "dense_decoder" (an unmasked decoder, no pathway structure)
    FULL: {},
    "ours: MMD alignment": {"alignment": "mmd"},
    "ours: no alignment": {"alignment": "none"},
    "ours: no pathway decoder": {"w_recon": 0.0},
    "SCAD recipe (DANN; no decoder)": {"w_recon": 0.0, "critic_steps": 1, "align_warmup": 0},
    "scDEAL recipe (MMD; dense AE)": {"alignment": "mmd", "dense_decoder": True},
}
BASELINES = ("marker", "logistic regression", "random forest")
QUICK = {"drugs": "erlotinib", "seeds": "0", "epochs": 5, "patience": 0, "methods": FULL,
         "figure_drug": "", "rf_trees": 50}  # fmt: skip


@dataclass
class DrugData:
    """One drug's prepared training data, cell metadata and evaluation targets."""

    spec: DrugSpec
    prep: Prepared
    cells: pd.DataFrame  # one row per row of prep.cells_x: plate, line, singlet, label
    ln_ic50: dict[str, float]  # plate line -> GDSC2 (else GDSC1) ln IC50
    ic50_source: str
    markers: list[str]


# ---------------------------------------------------------------- metrics


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties counted half."""
    y = np.asarray(y, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(score, float)).rank(method="average").to_numpy()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def aupr(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision (step-wise area under precision-recall), tied scores taken together."""
    y = np.asarray(y, bool)
    if not y.any() or y.all():
        return float("nan")
    order = np.argsort(-np.asarray(score, float), kind="stable")
    s, hits = np.asarray(score, float)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each tie block
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 3 pairs."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return float("nan")
    ra = pd.Series(a[keep]).rank().to_numpy()
    rb = pd.Series(b[keep]).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def cell_metrics(scores: np.ndarray, data: DrugData) -> dict[str, float]:
    """Per-cell AUROC/AUPR (singlets, pooled and per plate) and the line-level Spearman."""
    cells = data.cells
    sng = cells["singlet"].to_numpy()
    out: dict[str, float] = {}
    if data.spec.name in EVAL_SENSITIVE:
        y = cells["label"].to_numpy(bool)
        out["pooled_auroc"] = auroc(y[sng], scores[sng])
        out["pooled_aupr"] = aupr(y[sng], scores[sng])
        for plate in sorted(cells["plate"].unique()):
            rows = sng & (cells["plate"] == plate).to_numpy()
            out[f"{plate}_auroc"] = auroc(y[rows], scores[rows])
    lines = sorted(data.ln_ic50)
    means = [float(scores[sng & (cells["line"] == line).to_numpy()].mean()) for line in lines]
    out["spearman"] = spearman(np.array(means), -np.array([data.ln_ic50[x] for x in lines]))
    return out


def bulk_cv(model_factory, x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, float]:
    """Stratified 5-fold CV AUROC/AUPR (mean over folds) of a scikit-learn classifier on bulk."""
    from sklearn.model_selection import StratifiedKFold

    aurocs, auprs = [], []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
        model = model_factory().fit(x[train], y[train])
        score = model.predict_proba(x[test])[:, 1]
        aurocs.append(auroc(y[test], score))
        auprs.append(aupr(y[test], score))
    return {"bulk_cv_auroc": float(np.mean(aurocs)), "bulk_cv_aupr": float(np.mean(auprs))}


# ---------------------------------------------------------------- data


def load_drug(spec: DrugSpec, data_dir: Path, counts: list, gene_ids, marker_table: dict) -> DrugData:
    """Prepare bulk training data as scdr-train does, and line up the cells' metadata and labels."""
    prep = prepare(inputs_for(spec, data_dir))
    frames = []
    for path, c in zip(prep.inputs.targets, counts, strict=True):
        obs = _obs(path)
        keep = np.asarray(c.counts.sum(axis=1)).ravel() > 0  # prepare() drops zero-count cells
        frame = obs.loc[keep, ["cell_line", "demuxlet_cls"]].copy()
        frame["plate"] = Path(path).stem.rsplit("_", 1)[-1]
        frames.append(frame)
    cells = pd.concat(frames, ignore_index=True)
    if len(cells) != len(prep.cells_x):
        raise RuntimeError(f"{len(cells)} cells of metadata for {len(prep.cells_x)} prepared rows")
    cells = cells.rename(columns={"cell_line": "line"})
    cells["singlet"] = cells["demuxlet_cls"] == "SNG"
    cells["label"] = cells["line"].isin(EVAL_SENSITIVE.get(spec.name, ()))
    ln_ic50, source = gdsc_ln_ic50(spec, data_dir)
    return DrugData(spec, prep, cells, ln_ic50, source, marker_table.get(spec.name, []))


def gdsc_ln_ic50(spec: DrugSpec, data_dir: Path) -> tuple[dict[str, float], str]:
    """ln IC50 of the plate lines from the drug's first GDSC2 entry (GDSC1 if GDSC2 lacks it)."""
    from training.data import load_ic50_entries

    for name in ("GDSC2_IC50.csv.gz", "GDSC1_IC50.csv.gz"):
        try:
            entry = load_ic50_entries([data_dir / "bulk" / name], spec.name, list(spec.aliases))[0]
        except ValueError:
            continue
        values = {line: float(entry.ln_ic50[key]) for line, key in PLATE_LINE.items() if key in entry.ln_ic50}
        return values, f"{name.split('_')[0]} entry 1"
    raise RuntimeError(f"{spec.name} is in neither GDSC file")


def read_markers(path: Path = MARKERS) -> dict[str, list[str]]:
    """Drug -> target genes from the marker table (empty list: no expressed target)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return {row.drug: [g for g in row.genes.split(";") if g] for row in table.itertuples()}


def marker_scores(genes: list[str], counts: list, gene_ids) -> np.ndarray | None:
    """Sum over the genes of log1p CP10k per cell (zero-count cells dropped); None if absent."""
    if not genes:
        return None
    ens = [gene_ids.resolve(g) for g in genes]
    norm = Normalization(cell_zscore=False, clip=None)
    blocks = []
    for c in counts:
        y, present, zero = scale_cells(c.counts, c.features, genes, ens, norm)
        if not present.any():
            return None
        blocks.append(y[~zero].sum(axis=1))
    return np.concatenate(blocks)


def _obs(path: Path) -> pd.DataFrame:
    """The obs table of an h5ad file (anndata; the plates are small)."""
    import anndata

    return anndata.read_h5ad(path, backed="r").obs.reset_index(drop=True)


# ---------------------------------------------------------------- fitting


_DRUG: DrugData | None = None  # the drug being evaluated, shared with forked workers


def fit_method(method: str, seed: int, epochs: int, patience: int, keep_latent: bool) -> dict:
    """Fit one configuration of the transfer model on bulk + unlabelled cells; score the cells."""
    import torch

    data = _DRUG
    assert data is not None
    prep = data.prep
    over = dict(METHODS[method])
    dense = over.pop("dense_decoder", False)
    config = replace(TrainConfig(seed=seed, epochs=epochs, patience=patience, threads=_THREADS), **over)
    mask = np.ones_like(prep.mask.mask) if dense else prep.mask.mask
    torch.set_num_threads(_THREADS)
    started = time.perf_counter()
    result = fit(prep.bulk_x, prep.y, prep.cells_x, mask, config)
    cells = predict(result.module, prep.cells_x)
    out = {"method": method, "seed": seed, "score": cells["probability"],
           "fit_s": time.perf_counter() - started, "best_epoch": result.best_epoch,
           "val_auroc": result.val_metrics["auroc"]}  # fmt: skip
    if keep_latent:
        out["cell_z"] = cells["pathways"]
        out["bulk_z"] = predict(result.module, prep.bulk_x)["pathways"]
        out["bulk_p"] = predict(result.module, prep.bulk_x)["probability"]
    return out


_THREADS = 2


def evaluate_drug(data: DrugData, args: argparse.Namespace, counts: list, gene_ids) -> list[dict]:
    """Every method x seed on one drug: a list of raw result rows (metrics, no scores)."""
    global _DRUG
    _DRUG = data
    name = data.spec.name
    rows: list[dict] = []
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.skip_baselines:
        rows += baselines(data, args, counts, gene_ids, seeds)
    methods = [m for m in args.methods.split(",") if m]
    keep = name == args.figure_drug
    tasks = [(m, s, args.epochs, args.patience, keep and s == seeds[0] and m in (FULL, "ours: no alignment"))
             for s in seeds for m in methods]  # fmt: skip
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=_fork()) as pool:
            fits = list(pool.map(_fit_star, tasks))
    else:
        fits = [_fit_star(t) for t in tasks]
    card = MODELS / name / "card.json"
    shipped_cv = _card_cv(card) if args.epochs == 200 and args.patience == 20 else {}
    for f in fits:
        row = {"method": f["method"], "seed": f["seed"], "fit_s": f["fit_s"], "best_epoch": f["best_epoch"],
               **cell_metrics(f["score"], data)}  # fmt: skip
        if f["method"] == FULL and f["seed"] == 0:
            row.update(shipped_cv)
        rows.append(row)
        print(f"  {name} | {f['method']} | seed {f['seed']}: {_short(row)} ({f['fit_s']:.0f} s)",
              file=sys.stderr, flush=True)  # fmt: skip
    if keep:
        latents = {f["method"]: f for f in fits if "cell_z" in f}
        if FULL in latents and "ours: no alignment" in latents:
            clustering_view(data, latents["ours: no alignment"], latents[FULL], RESULTS)
    for r in rows:
        r["drug"] = name
    return rows


def baselines(data: DrugData, args: argparse.Namespace, counts: list, gene_ids, seeds: list[int]) -> list:
    """Marker, logistic regression and random forest rows (bulk-trained, same panel and cells)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    prep = data.prep
    rows: list[dict] = []
    score = marker_scores(data.markers, counts, gene_ids)
    if score is not None:
        rows.append({"method": "marker", "seed": 0, **cell_metrics(score, data)})
    lr = lambda: LogisticRegression(C=1.0, class_weight="balanced", max_iter=3000)  # noqa: E731
    model = lr().fit(prep.bulk_x, prep.y)
    rows.append({"method": "logistic regression", "seed": 0, **bulk_cv(lr, prep.bulk_x, prep.y, 0),
                 **cell_metrics(model.predict_proba(prep.cells_x)[:, 1], data)})  # fmt: skip
    for seed in seeds:
        def rf(seed: int = seed) -> RandomForestClassifier:
            return RandomForestClassifier(args.rf_trees, min_samples_leaf=2,
                                          class_weight="balanced_subsample", max_features="sqrt",
                                          n_jobs=args.jobs, random_state=seed)  # fmt: skip
        cv = bulk_cv(rf, prep.bulk_x, prep.y, seed) if seed == seeds[0] else {}
        forest = rf().fit(prep.bulk_x, prep.y)
        rows.append({"method": "random forest", "seed": seed, **cv,
                     **cell_metrics(forest.predict_proba(prep.cells_x)[:, 1], data)})  # fmt: skip
    return rows


def _fit_star(task: tuple) -> dict:
    """fit_method with a tuple of arguments (for pool.map)."""
    return fit_method(*task)


def _fork():
    """The fork start method: workers inherit the prepared drug instead of receiving a copy."""
    import multiprocessing

    return multiprocessing.get_context("fork")


def _card_cv(card: Path) -> dict[str, float]:
    """The shipped model's bulk 5-fold CV from its card (same config and seed 0 as FULL seed 0)."""
    import json

    if not card.is_file():
        return {}
    cv = json.loads(card.read_text())["metrics"].get("bulk_cross_validation") or {}
    return {"bulk_cv_auroc": cv.get("auroc_mean", math.nan), "bulk_cv_aupr": cv.get("aupr_mean", math.nan)}


def _short(row: dict) -> str:
    """A compact metrics string for progress lines."""
    keys = ("pooled_auroc", "spearman")
    return " ".join(f"{k} {row[k]:.3f}" for k in keys if k in row)


# ---------------------------------------------------------------- clustering view


def clustering_view(data: DrugData, before: dict, after: dict, out_dir: Path) -> None:
    """PCA of bulk lines and cells in the pathway latent, without and with alignment; PNG + silhouettes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    fig, axes = plt.subplots(2, 2, figsize=(11, 9))
    lines = []
    for row, (title, fitres) in enumerate((("no alignment", before), ("adversarial alignment", after))):
        z = np.concatenate([fitres["bulk_z"], fitres["cell_z"]])
        domain = np.r_[np.zeros(len(fitres["bulk_z"])), np.ones(len(fitres["cell_z"]))]
        prob = np.r_[fitres["bulk_p"], fitres["score"]]
        sil = float(silhouette_score(z, domain, random_state=0))
        lines.append(f"{data.spec.name}, {title}: silhouette by domain {sil:.3f} (1 = separate, ~0 = mixed)")
        pcs = PCA(2, random_state=0).fit_transform(z)
        for col in range(2):
            ax = axes[row, col]
            if col == 0:
                for d, colour, label in ((0, "tab:blue", "GDSC bulk lines"),
                                         (1, "tab:orange", "plate cells")):  # fmt: skip
                    ax.scatter(*pcs[domain == d].T, s=6, c=colour, alpha=0.6, label=label)
                ax.legend(fontsize=8)
                ax.set_title(f"{title}: by domain (silhouette {sil:.2f})", fontsize=10)
            else:
                sc = ax.scatter(*pcs.T, s=6, c=prob, cmap="viridis", vmin=0, vmax=1)
                fig.colorbar(sc, ax=ax, label="P(sensitive)")
                ax.set_title(f"{title}: by predicted sensitivity", fontsize=10)
            ax.set_xlabel("PC1")
            ax.set_ylabel("PC2")
    fig.suptitle(f"{data.spec.name}: pathway latent (seed 0), bulk lines and sc_mixology cells")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / f"latent_{data.spec.name}.png", dpi=110)
    plt.close(fig)
    text = "\n".join(lines)
    (out_dir / f"latent_{data.spec.name}_silhouette.txt").write_text(text + "\n")
    print(text)


# ---------------------------------------------------------------- table


COLUMNS = ("pooled_auroc", "pooled_aupr", "p1_auroc", "p2_auroc", "p3_auroc", "spearman",
           "bulk_cv_auroc", "bulk_cv_aupr")  # fmt: skip


def summarise(rows: list[dict]) -> pd.DataFrame:
    """Mean and SD over seeds per (drug, method), in a fixed method order."""
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = np.nan
    order = {m: i for i, m in enumerate([*BASELINES, *METHODS])}
    out = []
    for (drug, method), group in frame.groupby(["drug", "method"], sort=False):
        rec = {"drug": drug, "method": method, "seeds": len(group)}
        for col in COLUMNS:
            vals = group[col].dropna().to_numpy(float)
            rec[f"{col}_mean"] = float(vals.mean()) if len(vals) else np.nan
            rec[f"{col}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else np.nan
        out.append(rec)
    table = pd.DataFrame(out)
    table["_o"] = table["method"].map(order)
    return table.sort_values(["drug", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def mean_over_drugs(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean over drugs of pooled AUROC (labelled drugs) and of the line Spearman (all)."""
    out = []
    for method, group in table.groupby("method", sort=False):
        out.append({"drug": "MEAN over drugs", "method": method, "seeds": int(group["seeds"].max()),
                    "pooled_auroc_mean": group["pooled_auroc_mean"].mean(),
                    "spearman_mean": group["spearman_mean"].mean(),
                    "n_drugs": int(group["spearman_mean"].notna().sum())})  # fmt: skip
    return pd.DataFrame(out)


def format_table(table: pd.DataFrame, means: pd.DataFrame) -> str:
    """The printed table: one line per drug x method, then the means over drugs."""
    def cell(rec, col: str) -> str:
        m, s = rec.get(f"{col}_mean", np.nan), rec.get(f"{col}_sd", np.nan)
        if m is None or (isinstance(m, float) and np.isnan(m)):
            return "—"
        return f"{m:.3f}" if s is None or np.isnan(s) else f"{m:.3f}±{s:.3f}"

    head = ("| drug | method | seeds | pooled AUROC | pooled AUPR | p1 AUROC | p2 AUROC | p3 AUROC | "
            "line Spearman | bulk CV AUROC | bulk CV AUPR |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    for rec in table.to_dict("records"):
        lines.append(f"| {rec['drug']} | {rec['method']} | {rec['seeds']} | "
                     + " | ".join(cell(rec, c) for c in COLUMNS) + " |")  # fmt: skip
    lines += ["", "| mean over drugs | method | pooled AUROC (labelled drugs) | line Spearman (drugs) |",
              "|---|---|---|---|"]  # fmt: skip
    for rec in means.to_dict("records"):
        auc = "—" if np.isnan(rec["pooled_auroc_mean"]) else f"{rec['pooled_auroc_mean']:.3f}"
        sp = "—" if np.isnan(rec["spearman_mean"]) else f"{rec['spearman_mean']:.3f}"
        lines.append(f"| MEAN | {rec['method']} | {auc} | {sp} ({rec['n_drugs']}) |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Evaluate the selected drugs; print the table; write the CSVs."""
    global _THREADS
    args = _parse(argv)
    if args.merge:
        return merge(Path(args.out_dir))
    _THREADS = 1 if args.jobs > 1 else args.threads
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    started = time.perf_counter()
    data_dir = Path(args.data)
    names = [n for n in args.drugs.split(",") if n]
    specs = [s for s in DRUGS if not names or s.name in names]
    counts = [load_single_cell(data_dir / "singlecell" / f"sc_celseq2_5cl_p{i}.h5ad") for i in (1, 2, 3)]
    genes = data_dir / "genes"
    gene_ids = load_gene_ids([genes / "hgnc_genes.tsv.gz", genes / "gencode_v22_genes.tsv.gz"])
    marker_table = read_markers()
    rows: list[dict] = []
    for spec in specs:
        t0 = time.perf_counter()
        data = load_drug(spec, data_dir, counts, gene_ids, marker_table)
        calls = [k for k, v in data.prep.labels.holdout_calls.items() if v]
        sens = EVAL_SENSITIVE.get(spec.name)
        print(f"{spec.name}: training label rule calls sensitive: {', '.join(calls) or 'none'}; "
              f"evaluation labels: {', '.join(sens) if sens else 'none (line-level Spearman)'}; "
              f"Spearman vs {data.ic50_source} ln IC50 of {len(data.ln_ic50)} lines",
              file=sys.stderr)  # fmt: skip
        rows += evaluate_drug(data, args, counts, gene_ids)
        print(f"{spec.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    table = summarise(rows)
    means = mean_over_drugs(table)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else (f"_{args.tag}" if args.tag else "")
    pd.DataFrame(rows).to_csv(out_dir / f"evaluation_runs{suffix}.csv", index=False, float_format="%.5f")
    table.to_csv(out_dir / f"evaluation{suffix}.csv", index=False, float_format="%.5f")
    means.to_csv(out_dir / f"evaluation_means{suffix}.csv", index=False, float_format="%.5f")
    text = format_table(table, means)
    print(text)
    (out_dir / f"evaluation{suffix}.md").write_text(text + "\n")
    print(f"\n{len(specs)} drug(s), seeds {args.seeds}, epochs {args.epochs}, patience {args.patience}, "
          f"jobs {args.jobs}: {time.perf_counter() - started:.0f} s")  # fmt: skip
    return 0


def merge(out_dir: Path) -> int:
    """Combine the per-run files of partial runs (evaluation_runs*.csv, quick excluded) into one table."""
    parts = sorted(p for p in out_dir.glob("evaluation_runs*.csv") if "quick" not in p.name)
    frame = pd.concat([pd.read_csv(p) for p in parts], ignore_index=True)
    frame = frame.drop_duplicates(["drug", "method", "seed"], keep="last")
    order = {s.name: i for i, s in enumerate(DRUGS)}
    frame = frame.sort_values("drug", key=lambda d: d.map(order), kind="stable")
    rows = frame.to_dict("records")
    table = summarise(rows)
    means = mean_over_drugs(table)
    table.to_csv(out_dir / "evaluation.csv", index=False, float_format="%.5f")
    means.to_csv(out_dir / "evaluation_means.csv", index=False, float_format="%.5f")
    text = format_table(table, means)
    (out_dir / "evaluation.md").write_text(text + "\n")
    print(text)
    print(f"\nmerged {len(rows)} runs from {', '.join(p.name for p in parts)}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (--quick: one drug, one seed, 8 epochs, two configurations)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--drugs", default="", help="comma-separated folder names (default: all shipped)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated METHODS names")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (1 torch thread each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads when --jobs 1")
    p.add_argument("--rf-trees", type=int, default=300, help="random-forest trees")
    p.add_argument("--figure-drug", default="erlotinib", help="drug of the clustering view ('' = none)")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--skip-baselines", action="store_true", help="model configurations only")
    p.add_argument("--merge", action="store_true", help="combine partial runs' CSVs into one table")
    p.add_argument("--tag", default="", help="suffix of the output files (a partial or extra run)")
    p.add_argument("--quick", action="store_true", help="CI mode: " + str(QUICK))
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    unknown = [m for m in args.methods.split(",") if m and m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    return args


if __name__ == "__main__":
    raise SystemExit(main())
