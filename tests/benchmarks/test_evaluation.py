"""The evaluation benchmark: metric code against scikit-learn/scipy, label rules on known GDSC
lines, the marker table, and a quick end-to-end run of benchmarks/evaluate.py."""

from __future__ import annotations

from pathlib import Path

import evaluate
import numpy as np
import pandas as pd
import pytest
from helpers import ROOT
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, roc_auc_score

from scdr.training.data import (
    DEFAULT_HOLDOUT_LINES,
    Ic50Entry,
    LabelRule,
    load_bulk_expression,
    load_ic50_entries,
    make_labels,
)
from scdr.training.drugs import DRUGS, TARGETED_Z_MAX, find_drug
from scdr.training.recipes import SHIPPED, SHIPPED_ROUND

DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent")
IC50 = [DATA / "bulk" / "GDSC1_IC50.csv.gz", DATA / "bulk" / "GDSC2_IC50.csv.gz"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_aupr_match_sklearn_with_ties(seed: int) -> None:
    """Rank-sum AUROC and tie-aware average precision equal scikit-learn's on tied scores."""
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.2
    score = np.round(rng.normal(size=300) + y, 1)  # rounding makes ties
    assert evaluate.auroc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert evaluate.aupr(y, score) == pytest.approx(average_precision_score(y, score), abs=1e-12)


def test_metrics_edge_cases() -> None:
    """Perfect, reversed and one-class inputs give 1, 0 and NaN."""
    y = np.array([0, 0, 1, 1], bool)
    assert evaluate.auroc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert evaluate.auroc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert np.isnan(evaluate.auroc(np.ones(4, bool), np.arange(4.0)))
    assert evaluate.aupr(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0


def test_spearman_matches_scipy() -> None:
    """Line-level Spearman equals scipy's, ties included; fewer than 3 pairs is NaN."""
    a = np.array([0.1, 0.5, 0.5, 0.9, 0.3])
    b = np.array([2.0, -1.0, 0.5, -3.0, 1.0])
    assert evaluate.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert np.isnan(evaluate.spearman(a[:2], b[:2]))


def test_seed_agreement_is_the_mean_pairwise_spearman_of_a_recipes_trainings():
    rng = np.random.default_rng(1)
    base = rng.normal(size=300)
    fits = [{"method": "A", "score": base + rng.normal(0, s, 300)} for s in (0.1, 0.2, 0.3)]
    fits.append({"method": "B", "score": rng.normal(size=300)})
    got = evaluate.seed_agreement(fits)
    a = [f["score"] for f in fits[:3]]
    want = np.mean([spearmanr(a[i], a[j]).statistic for i, j in ((0, 1), (0, 2), (1, 2))])
    assert got["A"] == pytest.approx(want) and 0.8 < got["A"] < 1.0
    assert np.isnan(got["B"])  # one training: nothing to agree with


def test_z_label_rule_on_synthetic_entry() -> None:
    """With z_max the cut is the fixed z, not the quantile; held-out lines get the same cut."""
    lines = [f"L{i}" for i in range(40)] + ["HOLD"]
    values = pd.Series(np.r_[np.linspace(-1, 1, 32), np.linspace(-6, -4, 8), -10.0], index=lines)
    entry = Ic50Entry("x.csv", 1, "X", values)
    quant = make_labels([entry], lines, ["HOLD"], LabelRule(0.3))
    tail = make_labels([entry], lines, ["HOLD"], LabelRule(0.3, -1.5))
    assert quant.class_balance()["sensitive"] == 12
    assert tail.threshold == -1.5
    assert tail.class_balance()["sensitive"] == 8  # only the tail at -6..-4
    assert tail.holdout_calls == {"HOLD": True}


def test_drug_table_aliases_and_rules() -> None:
    """Aliases resolve to their drug; only single-driver targeted drugs use the z rule."""
    assert find_drug("PLX4720").name == "plx-4720"
    assert find_drug("molibresib").name == "i-bet-762"
    assert find_drug("GSK525762A").name == "i-bet-762"
    assert find_drug("nonsense") is None
    targeted = {d.name for d in DRUGS if d.label_z == TARGETED_Z_MAX}
    assert targeted == {"erlotinib", "gefitinib", "afatinib", "osimertinib", "crizotinib", "plx-4720"}


def test_marker_table() -> None:
    """One marker row per shipped drug; EGFR for the EGFR inhibitors; none for cytotoxics."""
    markers = evaluate.read_markers()
    assert set(markers) == {d.name for d in DRUGS}
    for drug in ("erlotinib", "gefitinib", "afatinib", "osimertinib"):
        assert markers[drug] == ["EGFR"]
    assert markers["crizotinib"] == ["ALK", "MET"]
    assert markers["plx-4720"] == ["BRAF"] and markers["i-bet-762"] == ["BRD4"]
    assert markers["cisplatin"] == [] and markers["docetaxel"] == []
    assert set(evaluate.EVAL_SENSITIVE) <= set(markers)


@needs_data
def test_label_rules_on_known_gdsc_lines() -> None:
    """HCC827 is sensitive to erlotinib (training rule) and H1975 to osimertinib; A549 is not."""
    known = load_bulk_expression(DATA / "bulk" / "gdsc_expression.csv.gz").lines
    holdout = list(DEFAULT_HOLDOUT_LINES)
    rule = LabelRule(0.3, TARGETED_Z_MAX)
    erl = make_labels(load_ic50_entries(IC50, "erlotinib", []), known, holdout, rule)
    assert erl.holdout_calls["HCC827"] is True
    assert erl.holdout_calls["A549"] is False and erl.holdout_calls["NCIH2228"] is False
    osi = make_labels(load_ic50_entries(IC50, "osimertinib", []), known, holdout, rule)
    assert osi.holdout_calls["NCIH1975"] is True and osi.holdout_calls["HCC827"] is True
    cis = make_labels(load_ic50_entries(IC50, "cisplatin", []), known, holdout, LabelRule(0.3))
    assert not any(cis.holdout_calls.values())
    assert evaluate.EVAL_SENSITIVE["erlotinib"] == ("HCC827",)
    assert set(evaluate.EVAL_SENSITIVE["osimertinib"]) == {"HCC827", "H1975"}


@needs_data
def test_gdsc2_ic50_of_plate_lines() -> None:
    """The Spearman's ln IC50 come from GDSC2 (values of the data README's table)."""
    values, source = evaluate.gdsc_ln_ic50(find_drug("erlotinib"), DATA)
    assert source == "GDSC2 entry 1"
    assert values["HCC827"] == pytest.approx(-2.73, abs=0.01)
    assert values["H838"] == pytest.approx(3.80, abs=0.01)
    _, source = evaluate.gdsc_ln_ic50(find_drug("etoposide"), DATA)
    assert source == "GDSC1 entry 1"


@needs_data
def test_quick_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One drug, one seed, few epochs: the table prints, CSVs are written, the EGFR marker
    reproduces the issue's figure (pooled singlet AUROC 0.991) and the model row is finite."""
    assert evaluate.main(["--quick", "--data", str(DATA), "--out-dir", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "evaluation_quick.csv")
    rows = table.set_index("method")
    recipe = evaluate.QUICK["recipes"]
    assert set(rows.index) == {"marker", "logistic regression", "random forest", recipe}
    assert rows.loc["marker", "pooled_auroc_mean"] == pytest.approx(0.991, abs=0.001)
    assert 0.0 <= rows.loc[recipe, "pooled_auroc_mean"] <= 1.0
    assert rows.loc[recipe, "calls_agree_mean"] <= 5
    assert np.isfinite(rows.loc["logistic regression", "bulk_cv_auroc_mean"])
    assert "| erlotinib | marker |" in capsys.readouterr().out


@needs_data
def test_depth_check_thins_to_target_and_matches_the_evaluation(tmp_path: Path) -> None:
    """benchmarks/depth_robustness.py: thinning reaches the stated genes per cell without adding
    counts, and at full depth the shipped erlotinib bundle and the EGFR marker give the
    evaluation's figures (seed-0 full model 0.954, marker 0.991; the scorer standardises each
    cell at its own detection rate where the evaluation's torch path uses the pooled statistics,
    so the model's figure may move by a few thousandths)."""
    import depth_robustness

    plates = [depth_robustness._read_plate(DATA / "singlecell" / f"sc_celseq2_5cl_{p}.h5ad")
              for p in depth_robustness.PLATES]
    thinned = depth_robustness._thin(plates, 1000.0, seed=0)
    for (full, _, _), thin in zip(plates, thinned, strict=True):
        assert np.diff(thin.indptr).mean() == pytest.approx(1000, rel=0.02)
        assert ((full - thin).toarray() >= 0).all()
    out = tmp_path / "depth.csv"
    assert depth_robustness.main(["--data", str(DATA), "--drugs", "erlotinib", "--seeds", "0",
                                  "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("depth")
    assert list(table.index) == list(depth_robustness.DEPTHS)
    runs = pd.read_csv(ROOT / "benchmarks" / "results" / f"evaluation_runs_round{SHIPPED_ROUND}.csv")
    shipped = runs[(runs.drug == "erlotinib") & (runs.method == SHIPPED) & (runs.seed == 0)]
    full = table.loc["full (CEL-seq2)"]
    assert full["model_auroc"] == pytest.approx(float(shipped["pooled_auroc"].iloc[0]), abs=0.01)
    assert full["marker_auroc"] == pytest.approx(0.991, abs=0.001)
    assert full["same_call"] == 1.0
    assert 0.0 <= table["same_call"].min() <= 1.0
