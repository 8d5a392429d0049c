"""The report's model box reads the card's figures (never its own), says when a card has no
single-cell evaluation, and gives its caveat exactly when the model ranks the validation cells
worse than the target-gene marker; pathway names lose their database prefixes; the collector's
memory stays bounded. Hand-made cards and chunks: no scoring run needed."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from scdr.scoring.bundle import find_bundle
from scdr.scoring.report import (
    NO_EVALUATION,
    ReportCollector,
    card_evidence,
    display_name,
    marker_caveat,
    model_box,
    write_report,
)
from scdr.scoring.report import collect as report


def card(model: float | None = 0.95, marker: float | None = 0.99, **extra) -> dict:
    """A small card: bulk CV, and a single-cell evaluation with the marker and LR baselines."""
    sc = {"data": "validation plates", "baselines": {"logistic_regression": {"auroc": 0.61}}}
    if model is not None:
        sc["auroc"] = model
    if marker is not None:
        sc["baselines"]["marker"] = {"genes": ["EGFR"], "auroc": marker}
    return {"drug": "d", "threshold": {"value": 0.5, "rule": "fixed on bulk"},
            "metrics": {"bulk_cross_validation": {"folds": 5, "auroc_mean": 0.8123,
                                                  "auroc_sd": 0.0412},
                        "single_cell_evaluation": sc}, **extra}


def test_caveat_when_the_marker_ranks_cells_better():
    assert marker_caveat(card(0.95, 0.99)) == (
        "On the single-cell validation data this model ranks cells worse than EGFR expression "
        "alone (AUROC 0.95 vs 0.99).")
    box = model_box("d", card(0.95, 0.99))
    assert box.count("class='caveat'") == 1 and "AUROC 0.95 vs 0.99" in box


@pytest.mark.parametrize("model, marker", [(0.99, 0.95), (0.97, 0.97), (0.95, None), (None, 0.99)])
def test_no_caveat_unless_the_model_is_below_the_marker(model, marker):
    assert marker_caveat(card(model, marker)) is None
    assert "class='caveat'" not in model_box("d", card(model, marker))


def test_caveat_figures_read_differently_when_they_differ():
    assert "(AUROC 0.951 vs 0.954)" in marker_caveat(card(0.951, 0.954))


@pytest.mark.parametrize("seed", range(3))
def test_the_box_shows_the_cards_own_numbers(seed):
    rng = np.random.default_rng(seed)
    m, mk, lr, rf, cv, sd = rng.uniform(0.3, 0.99, 6).round(4)
    c = card(float(m), float(mk))
    c["metrics"]["single_cell_evaluation"]["baselines"]["logistic_regression"]["auroc"] = float(lr)
    c["metrics"]["single_cell_evaluation"]["baselines"]["random_forest"] = {"auroc": float(rf)}
    c["metrics"]["bulk_cross_validation"].update(auroc_mean=float(cv), auroc_sd=float(sd))
    box = model_box("d", c)
    for value in (m, mk, lr, rf):
        assert f"<td>{value:.3f}</td>" in box
    assert f"{cv:.3f} &plusmn; {sd:.3f}" in box
    assert ("class='caveat'" in box) == (m < mk)


def test_random_forest_row_only_where_the_card_has_it():
    box = model_box("d", card())
    assert "<th>logistic regression</th>" in box and "random forest" not in box
    assert "<th>target-gene marker (EGFR)</th>" in box


@pytest.mark.parametrize("c", [None, {}, {"metrics": {}},
                               {"metrics": {"bulk_cross_validation": {"auroc_mean": 0.7}}}])
def test_a_card_without_single_cell_figures_says_so(c):
    box = model_box("d", c)
    assert NO_EVALUATION in box and "class='caveat'" not in box


def test_the_shipped_erlotinib_card():
    c = json.loads((find_bundle("erlotinib") / "card.json").read_text())
    box = model_box("erlotinib", c)
    cv = c["metrics"]["bulk_cross_validation"]
    assert f"{cv['auroc_mean']:.3f} &plusmn; {cv['auroc_sd']:.3f}" in box
    assert (NO_EVALUATION in box) == (card_evidence(c).single_cell is None)


def test_accepted_spellings():
    c = {"knowledge": {"targets": ["ALK", "MET"]},
         "metrics": {"single_cell_evaluation": {"pooled_auroc": 0.27},
                     "baselines": {"target gene marker": 0.61, "Random Forest": {"pooled_auroc": 0.6}}}}
    ev = card_evidence(c)
    assert ev.single_cell == {"auroc": 0.27}
    assert ev.baselines["marker"] == {"auroc": 0.61, "genes": ["ALK", "MET"]}
    assert ev.baselines["random forest"] == {"auroc": 0.6}
    assert marker_caveat(c) == ("On the single-cell validation data this model ranks cells worse "
                                "than ALK + MET expression alone (AUROC 0.27 vs 0.61).")
    assert "class='warning'" in model_box("d", c)  # below chance, said separately


def test_malformed_figures_are_ignored():
    c = card()
    c["metrics"]["single_cell_evaluation"]["auroc"] = "0.9"
    c["metrics"]["single_cell_evaluation"]["baselines"]["marker"]["auroc"] = float("nan")
    assert marker_caveat(c) is None
    model_box("d", c)


@pytest.mark.parametrize("name, shown", [
    ("HALLMARK_E2F_TARGETS", "E2F targets"),
    ("HALLMARK_PI3K_AKT_MTOR_SIGNALING", "PI3K AKT MTOR signaling"),
    ("HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION", "Epithelial mesenchymal transition"),
    ("REACTOME_SIGNALING_BY_EGFR", "SIGNALING BY EGFR"),
    ("GOBP_DNA_REPAIR", "DNA REPAIR"),
    ("KNOWLEDGE: Signaling by EGFR", "Signaling by EGFR"),
    ("KNOWLEDGE: ERBB signaling pathway (GO:0038127)", "ERBB signaling pathway (GO:0038127)"),
    ("TARGET: EGFR", "TARGET: EGFR"),
    ("PATHWAY_3", "PATHWAY_3"),
])
def test_display_names(name, shown):
    assert display_name(name) == shown


def chunk(probs, groups=None, attributions=None, threshold=0.5):
    """A fake chunk result, as the engine hands to the report's collector."""
    probs = np.asarray(probs, np.float32)
    return SimpleNamespace(probability=probs,
                           label=np.where(probs >= threshold, "sensitive", "resistant"),
                           groups={} if groups is None else {"g": list(groups)},
                           attributions=attributions)


def summary(drug="d"):
    return {"input": "cells.h5ad", "matrix": "X", "cells": 6, "scdr_version": "0",
            "wall_time_s": 1.0, "cells_per_s": 6.0,
            "models": [{"drug": drug, "labels": {"sensitive": 3, "resistant": 3},
                        "genes_found": 2, "panel_genes": 2, "coverage": 1.0,
                        "sha256": {"model.onnx": "0" * 64}}]}


def test_write_report_from_chunks(tmp_path):
    pytest.importorskip("matplotlib")
    names = ["HALLMARK_HYPOXIA", "REACTOME_APOPTOSIS"]
    col = ReportCollector("d", names, 6, "g", 0.5, card=card(0.9, 0.95))
    attr = np.array([[1.0, -1.0], [0.5, 0.0], [0.2, 0.1]], np.float32)
    col.write(chunk([0.1, 0.7, 0.8], ["a", "b", "a"], attr))
    col.write(chunk([0.2, 0.6, 0.3], ["b", "b", "c"], attr))
    assert {g: (s.n, s.sensitive) for g, s in col.groups.items()} == {"a": (2, 1), "b": (3, 2),
                                                                       "c": (1, 0)}
    np.testing.assert_allclose(col.groups["a"].attr_sum, [1.2, -0.9], rtol=1e-6)
    out = tmp_path / "r.html"
    out.write_text("old")
    embedding = np.arange(12, dtype=float).reshape(6, 2)
    write_report(out, summary(), [col], embedding)
    text = out.read_text()
    assert text.count("data:image/png;base64,") == 4  # UMAP by group, violins, UMAP, histogram
    assert "class='caveat'" in text and "AUROC 0.90 vs 0.95" in text
    assert ">Hypoxia</th>" in text and ">APOPTOSIS</th>" in text and "title='HALLMARK_HYPOXIA'" in text
    assert "cells/s" not in text and "wall time" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_embedding_of_another_length_is_left_out(tmp_path):
    pytest.importorskip("matplotlib")
    col = ReportCollector("d", ["P"], 3, None, 0.5, card={})
    col.write(chunk([0.1, 0.7, 0.8]))
    write_report(tmp_path / "r.html", summary(), [col], np.zeros((5, 2)))
    text = (tmp_path / "r.html").read_text()
    assert text.count("data:image/png;base64,") == 1 and NO_EVALUATION in text


def test_groups_beyond_the_cap_are_pooled(monkeypatch):
    monkeypatch.setattr(report, "MAX_GROUPS", 4)
    col = ReportCollector("d", ["P"], 10, "g", 0.5)
    col.write(chunk(np.linspace(0, 1, 10), [f"v{i}" for i in range(10)]))
    assert len(col.groups) == 4 and col.groups[report.OTHER].n == 7 and col.groups_pooled
