"""Evaluate the candidate recipes and their baselines on the sc_mixology plates; print the tables.

    python benchmarks/evaluate.py --data ../shared/data [--jobs 2]        # the protocol's sweep
    python benchmarks/evaluate.py --data ../shared/data --shipped         # the shipped bundles
    python benchmarks/evaluate.py --quick                                 # CI smoke run

The protocol (`benchmarks/protocol.md`, committed before any candidate was scored on plate labels):
* Training is bulk only: GDSC lines with the five plate lines held out, the label rule of
  `training/drugs.py`. The plates' cells enter only as unlabelled alignment and distillation input;
  their labels and line names are read here, after fitting, to score.
* Every candidate of `training/recipes.py` is trained three times (seeds 0, 1, 2) per labelled drug
  as `scdr-train` would (knowledge nodes, cross-fitted ensemble, Platt calibration, distilled
  network); the distilled network's calibrated P(sensitive) is what is scored.
* Evaluation labels (GDSC2-clear sensitivity consistent with the line's driver): erlotinib,
  gefitinib: HCC827; afatinib, osimertinib: HCC827 and H1975; crizotinib: H2228. Figures use
  singlets (`demuxlet_cls == 'SNG'`): pooled and per-plate AUROC/AUPR; line-level Spearman of each
  line's mean score against minus its GDSC2 ln IC50; line calls (a line is called sensitive when at
  least half its singlets are labelled sensitive) against GDSC's calls for the held-out lines.
* Beside them, on the full panel and the same cells: the target-gene marker
  (`benchmarks/markers.csv`, log1p CP10k), logistic regression and random forest fitted on bulk.
* The one selection rule: highest mean over the labelled drugs of pooled AUROC (mean of the three
  trainings); an earlier, simpler candidate within 0.005 of the best is selected instead.
`--shipped` scores the plates with the shipped bundles through `scoring.score` (what users run):
pooled AUROC for the labelled drugs, and the 60 drug x line calls of all 12 drugs against GDSC's,
with the constant "everything resistant" beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from train_all import inputs_for

from scdr.scoring.card import read_card, write_card
from scdr.training.data import load_single_cell
from scdr.training.drugs import DRUGS, DrugSpec
from scdr.training.ensemble import StudentConfig, fit_calibrated
from scdr.training.knowledge import target_node
from scdr.training.normalize import Normalization, scale_cells
from scdr.training.panel import load_gene_ids
from scdr.training.pipeline import Prepared, prepare
from scdr.training.recipes import ROUNDS, SHIPPED_ROUND, Recipe, find_recipe
from scdr.training.train import predict

ROOT = Path(__file__).resolve().parents[1]

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
BASELINE_PANEL = "F-adv"  # the baselines use its prepared data: the full panel, all training lines
BASELINES = ("marker", "logistic regression", "random forest")
TIE = 0.005  # the selection rule's tie margin (protocol)
QUICK = {"drugs": "erlotinib", "seeds": "0", "epochs": 5, "patience": 0, "recipes": "F-adv",
         "members": 2, "student_epochs": 2, "rf_trees": 50}  # fmt: skip


@dataclass
class DrugData:
    """One drug's prepared training data per panel, cell metadata and evaluation targets."""

    spec: DrugSpec
    preps: dict[tuple, Prepared]  # prepared_key(recipe) -> prepared data
    cells: pd.DataFrame  # one row per prepared cell: plate, line, singlet, label
    ln_ic50: dict[str, float]  # plate line -> GDSC2 (else GDSC1) ln IC50
    ic50_source: str
    markers: list[str]
    gdsc_calls: dict[str, bool]  # plate line -> GDSC's call by the training label rule

    def prep(self, recipe: Recipe) -> Prepared:
        """The prepared data of a recipe's panel."""
        return self.preps[prepared_key(recipe)]


def prepared_key(recipe: Recipe) -> tuple:
    """What of a recipe changes the prepared data: panel, input scale, training lines and the
    thinned targets."""
    return (recipe.knowledge_only, recipe.min_detection, recipe.rank, recipe.exclude_tissues,
            recipe.depth_pairs)


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


def cell_metrics(scores: np.ndarray, data: DrugData, threshold: float | None = None) -> dict[str, float]:
    """Per-cell AUROC/AUPR (singlets, pooled and per plate), line Spearman and, given a threshold, calls.

    With `threshold` (probabilities): the fraction of singlets labelled sensitive, and how many
    of the lines with a GDSC call get the same call (a line is called sensitive when at least half
    of its singlets are labelled sensitive).
    """
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
    if threshold is not None:
        called = scores >= threshold
        out["frac_sensitive"] = float(called[sng].mean())
        calls = line_calls(called, data)
        out["calls_agree"] = sum(calls[line] == gdsc for line, gdsc in data.gdsc_calls.items())
        out["calls_n"] = len(data.gdsc_calls)
        out["constant_agree"] = sum(not gdsc for gdsc in data.gdsc_calls.values())
    return out


def line_calls(called: np.ndarray, data: DrugData) -> dict[str, bool]:
    """Plate line -> called sensitive (at least half of its singlets labelled sensitive)."""
    cells = data.cells
    sng = cells["singlet"].to_numpy()
    return {line: bool(called[sng & (cells["line"] == line).to_numpy()].mean() >= 0.5)
            for line in PLATE_LINE}  # fmt: skip


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


def load_drug(
    spec: DrugSpec, data_dir: Path, recipes: list[Recipe], counts: list, marker_table: dict
) -> DrugData:
    """Prepare bulk training data per panel as scdr-train does; line up the cells' metadata and labels."""
    preps: dict[tuple, Prepared] = {}
    for recipe in [find_recipe(BASELINE_PANEL), *recipes]:
        if prepared_key(recipe) not in preps:
            preps[prepared_key(recipe)] = prepare(inputs_for(spec, data_dir, recipe))
    base = preps[prepared_key(find_recipe(BASELINE_PANEL))]
    frames = []
    for path, c in zip(base.inputs.targets, counts, strict=True):
        obs = _obs(path)
        keep = np.asarray(c.counts.sum(axis=1)).ravel() > 0  # prepare() drops zero-count cells
        frame = obs.loc[keep, ["cell_line", "demuxlet_cls"]].copy()
        frame["plate"] = Path(path).stem.rsplit("_", 1)[-1]
        frames.append(frame)
    cells = pd.concat(frames, ignore_index=True)
    for prep in preps.values():
        if len(cells) != len(prep.cells_x):
            raise RuntimeError(f"{len(cells)} cells of metadata for {len(prep.cells_x)} prepared rows")
    cells = cells.rename(columns={"cell_line": "line"})
    cells["singlet"] = cells["demuxlet_cls"] == "SNG"
    cells["label"] = cells["line"].isin(EVAL_SENSITIVE.get(spec.name, ()))
    ln_ic50, source = gdsc_ln_ic50(spec, data_dir)
    calls = {line: bool(base.labels.holdout_calls[key]) for line, key in PLATE_LINE.items()
             if base.labels.holdout_calls.get(key) is not None}  # fmt: skip
    return DrugData(spec, preps, cells, ln_ic50, source, marker_table.get(spec.name, []), calls)


def gdsc_ln_ic50(spec: DrugSpec, data_dir: Path) -> tuple[dict[str, float], str]:
    """ln IC50 of the plate lines from the drug's first GDSC2 entry (GDSC1 if GDSC2 lacks it)."""
    from scdr.training.data import load_ic50_entries

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
_THREADS = 2


def fit_recipe(name: str, seed: int, args: dict) -> dict:
    """Train one recipe as scdr-train does (ensemble, calibration, student) and score the cells."""
    import torch

    data = _DRUG
    assert data is not None
    recipe = find_recipe(name)
    prep = data.prep(recipe)
    config = recipe.train_config(seed=seed, epochs=args["epochs"], patience=args["patience"],
                                 threads=_THREADS)  # fmt: skip
    torch.set_num_threads(_THREADS)
    started = time.perf_counter()
    mask = prep.mask.mask
    ensemble, student, fidelity = fit_calibrated(prep.bulk_x, prep.y, prep.cells_x, mask, config,
                                                 args["members"],
                                                 StudentConfig(epochs=args["student_epochs"]),
                                                 anchor_node=target_node(prep.mask.names),
                                                 pairs=prep.pairs)  # fmt: skip
    prob = predict(student, prep.cells_x)["probability"]
    teacher = 1.0 / (1.0 + np.exp(-ensemble.calibration.apply(ensemble.logit(prep.cells_x))))
    return {"method": name, "seed": seed, "score": prob, "teacher": teacher,
            "fit_s": time.perf_counter() - started,
            "bulk_cv_auroc": ensemble.cv["auroc_mean"], "bulk_cv_aupr": ensemble.cv["aupr_mean"],
            "fidelity_r_cells": fidelity["cells"]["pearson_r"]}  # fmt: skip


def evaluate_drug(data: DrugData, args: argparse.Namespace, counts: list, gene_ids) -> list[dict]:
    """Every recipe x seed on one drug, plus the baselines: raw result rows (metrics, no scores)."""
    global _DRUG
    _DRUG = data
    name = data.spec.name
    rows: list[dict] = []
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.skip_baselines:
        rows += baselines(data, args, counts, gene_ids, seeds)
    opts = {"epochs": args.epochs, "patience": args.patience, "members": args.members,
            "student_epochs": args.student_epochs}  # fmt: skip
    tasks = [(m, s, opts) for m in _recipe_names(args) for s in seeds]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=_fork()) as pool:
            fits = list(pool.map(_fit_star, tasks))
    else:
        fits = [_fit_star(t) for t in tasks]
    for f in fits:
        row = {key: f[key] for key in ("method", "seed", "fit_s", "bulk_cv_auroc", "bulk_cv_aupr",
                                       "fidelity_r_cells")}  # fmt: skip
        row.update(cell_metrics(f["score"], data, threshold=0.5))
        row["teacher_pooled_auroc"] = cell_metrics(f["teacher"], data).get("pooled_auroc", np.nan)
        rows.append(row)
        print(f"  {name} | {f['method']} | seed {f['seed']}: {_short(row)} ({f['fit_s']:.0f} s)",
              file=sys.stderr, flush=True)  # fmt: skip
    for method, agreement in seed_agreement(fits).items():
        for row in rows:
            if row["method"] == method:
                row["seed_agreement"] = agreement
    for r in rows:
        r["drug"] = name
    return rows


def seed_agreement(fits: list[dict]) -> dict[str, float]:
    """Per recipe, the mean Spearman correlation of the cells' scores between its independent
    trainings (every pair of seeds): how far a user's result depends on the seed. No labels."""
    out = {}
    for method in dict.fromkeys(f["method"] for f in fits):
        scores = [f["score"] for f in fits if f["method"] == method]
        pairs = [spearman(a, b) for i, a in enumerate(scores) for b in scores[i + 1 :]]
        out[method] = float(np.mean(pairs)) if pairs else np.nan
    return out


def baselines(data: DrugData, args: argparse.Namespace, counts: list, gene_ids, seeds: list[int]) -> list:
    """Marker, logistic regression and random forest rows (bulk-trained, full panel, same cells)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    prep = data.prep(find_recipe(BASELINE_PANEL))
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
    """fit_recipe with a tuple of arguments (for pool.map)."""
    return fit_recipe(*task)


def _fork():
    """The fork start method: workers inherit the prepared drug instead of receiving a copy."""
    import multiprocessing

    return multiprocessing.get_context("fork")


def _recipe_names(args: argparse.Namespace) -> list[str]:
    """The recipes asked for (default: the candidates of the protocol round, in its order)."""
    return [m for m in args.recipes.split(",") if m] or list(ROUNDS[args.round])


def _round_suffix(args: argparse.Namespace) -> str:
    """Output file suffix: '_round2' for the candidates of round 2, '_recipes' for a hand-picked list."""
    return "_recipes" if args.recipes else f"_round{args.round}"


def _short(row: dict) -> str:
    """A compact metrics string for progress lines."""
    keys = ("pooled_auroc", "spearman", "bulk_cv_auroc", "calls_agree")
    return " ".join(f"{k} {row[k]:.3f}" for k in keys if k in row)


# ---------------------------------------------------------------- shipped bundles


def evaluate_shipped(data_dir: Path, out_dir: Path, write_cards: bool = False) -> int:
    """Score the plates with every shipped bundle through scoring.score; print AUROC and line calls.
    With ``write_cards``, record the figures in each card's ``metrics.single_cell_evaluation``."""
    from scdr.scoring import load_bundle, score

    plates = [data_dir / "singlecell" / f"sc_celseq2_5cl_p{i}.h5ad" for i in (1, 2, 3)]
    obs = pd.concat([_obs(p).assign(plate=f"p{i}") for i, p in enumerate(plates, 1)], ignore_index=True)
    rows = []
    for spec in DRUGS:
        bundle = MODELS / spec.name
        if not (bundle / "card.json").is_file():
            continue
        loaded = load_bundle(bundle)
        prob = np.concatenate([score(p, model=bundle).probability for p in plates])
        card_calls = _card_calls(loaded.card)
        cells = pd.DataFrame({"line": obs["cell_line"], "singlet": obs["demuxlet_cls"] == "SNG",
                              "plate": obs["plate"],
                              "label": obs["cell_line"].isin(EVAL_SENSITIVE.get(spec.name, ()))})  # fmt: skip
        ln_ic50, _ = gdsc_ln_ic50(spec, data_dir)
        data = DrugData(spec, {}, cells, ln_ic50, "", [], card_calls)
        metrics = cell_metrics(prob, data, threshold=loaded.threshold)
        called = line_calls(prob >= loaded.threshold, data)
        rows.append({"drug": spec.name, **metrics,
                     **{f"call_{line}": ("S" if called[line] else "R") + "/"
                        + ("S" if card_calls.get(line) else "R" if line in card_calls else "-")
                        for line in PLATE_LINE}})  # fmt: skip
    frame = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_dir / "shipped_plates.csv", index=False, float_format="%.5f")
    lines = ["| drug | pooled AUROC | line Spearman | cells labelled sensitive | "
             + " | ".join(f"{x} (ours/GDSC)" for x in PLATE_LINE) + " | calls agree | constant agrees |",
             "|" + "---|" * (6 + len(PLATE_LINE))]  # fmt: skip
    for r in rows:
        auc = f"{r['pooled_auroc']:.3f}" if "pooled_auroc" in r else "—"
        lines.append(f"| {r['drug']} | {auc} | {r['spearman']:.3f} | {100 * r['frac_sensitive']:.0f}% | "
                     + " | ".join(r[f"call_{x}"] for x in PLATE_LINE)
                     + f" | {r['calls_agree']}/{r['calls_n']} "
                     f"| {r['constant_agree']}/{r['calls_n']} |")  # fmt: skip
    agree, n, const = (int(frame[c].sum()) for c in ("calls_agree", "calls_n", "constant_agree"))
    labelled = frame.dropna(subset=["pooled_auroc"]) if "pooled_auroc" in frame else frame.iloc[:0]
    lines += ["", f"Line calls: {agree} of {n} agree with GDSC (constant 'all resistant': {const} of {n}). "
              f"Mean pooled AUROC over the {len(labelled)} labelled drugs: "
              f"{labelled['pooled_auroc'].mean():.3f}."]  # fmt: skip
    text = "\n".join(lines)
    (out_dir / "shipped_plates.md").write_text(text + "\n")
    print(text)
    if write_cards:
        baselines = pd.read_csv(out_dir / f"evaluation_round{SHIPPED_ROUND}.csv")
        for row in rows:
            record_in_card(MODELS / row["drug"], row, baselines[baselines["drug"] == row["drug"]])
        print(f"recorded in {len(rows)} cards (metrics.single_cell_evaluation)")
    return 0


def record_in_card(bundle: Path, row: dict, baselines: pd.DataFrame) -> None:
    """Write a shipped bundle's plate figures, with the baselines of the protocol sweep beside them,
    into its card (the graphs and arrays are untouched, so scoring does not change)."""
    card = read_card(bundle)

    def figures(auroc: float, aupr: float, spearman: float) -> dict:
        return {k: (None if v is None or not np.isfinite(v) else round(float(v), 4))
                for k, v in (("auroc", auroc), ("aupr", aupr), ("spearman", spearman))}

    evaluation = {
        "data": "CellBench sc_mixology CEL-seq2 plates 1-3 (GEO GSE118767), singlets of five lung "
                "adenocarcinoma lines held out of training; cell labels: "
                + (", ".join(EVAL_SENSITIVE[bundle.name]) + " sensitive" if bundle.name in EVAL_SENSITIVE
                   else "none (line-level Spearman only)")
                + "; spearman: line mean P(sensitive) against minus GDSC ln IC50",
        "how": "this bundle scored with scdr.score (python benchmarks/evaluate.py --shipped); baselines "
               f"from the protocol sweep (benchmarks/results/evaluation_round{SHIPPED_ROUND}.csv, mean "
               "over its seeds)",
        **figures(row.get("pooled_auroc"), row.get("pooled_aupr"), row.get("spearman")),
        "line_calls_agree": f"{row['calls_agree']}/{row['calls_n']} (constant: {row['constant_agree']})",
        "baselines": {},
    }
    for method, key in (("marker", "marker"), ("logistic regression", "logistic_regression"),
                        ("random forest", "random_forest")):
        found = baselines[baselines["method"] == method]
        if found.empty:
            continue
        b = found.iloc[0]
        entry = figures(b["pooled_auroc_mean"], b["pooled_aupr_mean"], b["spearman_mean"])
        if method == "marker":
            entry["genes"] = read_markers().get(bundle.name, [])
        evaluation["baselines"][key] = entry
    card.setdefault("metrics", {})["single_cell_evaluation"] = evaluation
    write_card(bundle, card)


def _card_calls(card: dict) -> dict[str, bool]:
    """GDSC's calls for the held-out plate lines, as the card's label rule made them."""
    calls = card["training"]["holdout_label_calls"]
    return {line: calls[key] == "sensitive" for line, key in PLATE_LINE.items() if calls.get(key) is not None}


# ---------------------------------------------------------------- table


COLUMNS = ("pooled_auroc", "pooled_aupr", "p1_auroc", "p2_auroc", "p3_auroc", "spearman",
           "bulk_cv_auroc", "bulk_cv_aupr", "frac_sensitive", "calls_agree", "fidelity_r_cells",
           "teacher_pooled_auroc", "seed_agreement")  # fmt: skip
HEADERS = ("pooled AUROC", "pooled AUPR", "p1 AUROC", "p2 AUROC", "p3 AUROC", "line Spearman",
           "bulk CV AUROC", "bulk CV AUPR", "cells sensitive", "line calls agree", "student r (cells)",
           "ensemble pooled AUROC", "seed agreement (cells)")  # fmt: skip


def summarise(rows: list[dict], names: list[str]) -> pd.DataFrame:
    """Mean, SD and range over seeds per (drug, method), baselines first, then the recipes
    `names` in their order."""
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = np.nan
    order = {m: i for i, m in enumerate([*BASELINES, *names])}
    out = []
    for (drug, method), group in frame.groupby(["drug", "method"], sort=False):
        rec = {"drug": drug, "method": method, "seeds": len(group)}
        for col in COLUMNS:
            vals = group[col].dropna().to_numpy(float)
            rec[f"{col}_mean"] = float(vals.mean()) if len(vals) else np.nan
            rec[f"{col}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else np.nan
            rec[f"{col}_range"] = float(vals.max() - vals.min()) if len(vals) > 1 else np.nan
        out.append(rec)
    table = pd.DataFrame(out)
    table["_o"] = table["method"].map(order)
    return table.sort_values(["drug", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def mean_over_drugs(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean over labelled drugs of pooled AUROC, the largest SD, and the line calls."""
    out = []
    for method, group in table.groupby("method", sort=False):
        labelled = group[group["drug"].isin(EVAL_SENSITIVE)]
        out.append({"drug": "MEAN over drugs", "method": method, "seeds": int(group["seeds"].max()),
                    "pooled_auroc_mean": labelled["pooled_auroc_mean"].mean(),
                    "max_auroc_sd": labelled["pooled_auroc_sd"].max(),
                    "spearman_mean": group["spearman_mean"].mean(),
                    "calls_agree_mean": group["calls_agree_mean"].sum(min_count=1),
                    "seed_agreement_mean": group["seed_agreement_mean"].mean(),
                    "n_drugs": int(labelled["pooled_auroc_mean"].notna().sum())})  # fmt: skip
    return pd.DataFrame(out)


def select(means: pd.DataFrame, names: list[str]) -> str | None:
    """The protocol's rule over the recipes `names` (in order of simplicity): best mean pooled
    AUROC; an earlier (simpler) recipe within TIE wins."""
    scores = {m: v for m, v in zip(means["method"], means["pooled_auroc_mean"], strict=True)
              if m in names and np.isfinite(v)}  # fmt: skip
    if not scores:
        return None
    best = max(scores.values())
    return next(n for n in names if n in scores and scores[n] >= best - TIE)


def format_table(table: pd.DataFrame, means: pd.DataFrame, names: list[str]) -> str:
    """The printed tables: one line per drug x method, then the means and the selection."""
    def cell(rec, col: str) -> str:
        m, s = rec.get(f"{col}_mean", np.nan), rec.get(f"{col}_sd", np.nan)
        if m is None or (isinstance(m, float) and np.isnan(m)):
            return "—"
        return f"{m:.3f}" if s is None or np.isnan(s) else f"{m:.3f}±{s:.3f}"

    lines = ["| drug | method | seeds | " + " | ".join(HEADERS) + " |", "|" + "---|" * (3 + len(HEADERS))]
    for rec in table.to_dict("records"):
        lines.append(f"| {rec['drug']} | {rec['method']} | {rec['seeds']} | "
                     + " | ".join(cell(rec, c) for c in COLUMNS) + " |")  # fmt: skip
    lines += ["", "| method | mean pooled AUROC (labelled drugs) | largest SD over seeds | "
              "line Spearman (all drugs) | line calls agreeing (sum over drugs, mean over seeds) | "
              "seed agreement (cells, mean over drugs) |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for rec in means.to_dict("records"):
        def f(v: float, fmt: str = ".3f") -> str:
            return "—" if v is None or not np.isfinite(v) else format(v, fmt)
        lines.append(f"| {rec['method']} | {f(rec['pooled_auroc_mean'])} ({rec['n_drugs']}) | "
                     f"{f(rec['max_auroc_sd'])} | {f(rec['spearman_mean'])} | "
                     f"{f(rec['calls_agree_mean'], '.1f')} | {f(rec['seed_agreement_mean'])} |")  # fmt: skip
    if len(names) > 1:  # a candidate sweep: the protocol's selection rule is on these figures
        chosen = select(means, names)
        lines += ["", f"Selected by the protocol's rule: **{chosen}**" if chosen else ""]
    else:  # one recipe of a label-free round: its own rule decides, not these figures
        lines += ["", "One recipe, reported: whether it ships is decided by its round's rule in "
                  "benchmarks/protocol.md, not by these figures."]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Evaluate the selected drugs and recipes; print the table; write the CSVs."""
    global _THREADS
    args = _parse(argv)
    if args.shipped:
        return evaluate_shipped(Path(args.data), Path(args.out_dir), args.write_cards)
    _THREADS = 1 if args.jobs > 1 else args.threads
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    started = time.perf_counter()
    data_dir = Path(args.data)
    names = [n for n in args.drugs.split(",") if n]
    specs = [s for s in DRUGS if s.name in (names or EVAL_SENSITIVE)]
    recipes = [find_recipe(n) for n in _recipe_names(args)]
    counts = [load_single_cell(data_dir / "singlecell" / f"sc_celseq2_5cl_p{i}.h5ad") for i in (1, 2, 3)]
    genes = data_dir / "genes"
    gene_ids = load_gene_ids([genes / "hgnc_genes.tsv.gz", genes / "gencode_v22_genes.tsv.gz"])
    marker_table = read_markers()
    rows: list[dict] = []
    for spec in specs:
        t0 = time.perf_counter()
        data = load_drug(spec, data_dir, recipes, counts, marker_table)
        sens = EVAL_SENSITIVE.get(spec.name)
        gdsc = ", ".join(k for k, v in data.gdsc_calls.items() if v) or "none"
        print(f"{spec.name}: GDSC calls sensitive: {gdsc}; "
              f"evaluation labels: {', '.join(sens) if sens else 'none (line-level figures)'}",
              file=sys.stderr)  # fmt: skip
        rows += evaluate_drug(data, args, counts, gene_ids)
        print(f"{spec.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    table = summarise(rows, _recipe_names(args))
    means = mean_over_drugs(table)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else (f"_{args.tag}" if args.tag else _round_suffix(args))
    pd.DataFrame(rows).to_csv(out_dir / f"evaluation_runs{suffix}.csv", index=False, float_format="%.5f")
    table.to_csv(out_dir / f"evaluation{suffix}.csv", index=False, float_format="%.5f")
    means.to_csv(out_dir / f"evaluation_means{suffix}.csv", index=False, float_format="%.5f")
    text = format_table(table, means, _recipe_names(args))
    print(text)
    (out_dir / f"evaluation{suffix}.md").write_text(text + "\n")
    print(f"\n{len(specs)} drug(s), seeds {args.seeds}, epochs {args.epochs}, patience {args.patience}, "
          f"members {args.members}, jobs {args.jobs}: {time.perf_counter() - started:.0f} s")  # fmt: skip
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (--quick: one drug, one seed, a few epochs, one recipe)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--drugs", default="", help="comma-separated folder names (default: the labelled drugs)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--student-epochs", type=int, default=StudentConfig().epochs)
    p.add_argument("--round", type=int, choices=sorted(ROUNDS), default=max(ROUNDS),
                   help="protocol round whose candidates are run (benchmarks/protocol.md)")
    p.add_argument("--recipes", default="", help="recipe names instead of the round's candidates")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (1 torch thread each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads when --jobs 1")
    p.add_argument("--rf-trees", type=int, default=300, help="random-forest trees")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--skip-baselines", action="store_true", help="recipes only")
    p.add_argument("--shipped", action="store_true", help="score the plates with the shipped bundles")
    p.add_argument("--write-cards", action="store_true",
                   help="with --shipped: record the figures in each card's metrics")
    p.add_argument("--tag", default="", help="suffix of the output files (a partial or extra run)")
    p.add_argument("--quick", action="store_true", help="CI mode: " + str(QUICK))
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    try:
        for name in _recipe_names(args):
            find_recipe(name)
    except ValueError as exc:
        p.error(str(exc))
    return args


if __name__ == "__main__":
    raise SystemExit(main())
