"""The model box: what the bundle's card says a model is worth, read tolerantly.

Card figures read (each optional; the box says what is missing)::

    metrics.bulk_cross_validation: auroc_mean, auroc_sd, folds
    metrics.single_cell_evaluation: data (what was scored), auroc, aupr, spearman,
        baselines: {marker: {genes: [...], auroc, aupr, spearman},
                    logistic_regression: {...}, random_forest: {...}}

Also accepted: ``pooled_auroc``/``auroc_mean`` for ``auroc`` (likewise AUPR, ``line_spearman``),
baseline names ``target_gene_marker``, ``lr``, ``rf`` or with spaces, a bare number for a
baseline's AUROC, and ``baselines`` beside ``single_cell_evaluation`` in ``metrics``.
"""

import html
import math
from dataclasses import dataclass
from typing import Any

SC_EVALUATION_KEYS = ("single_cell_evaluation", "single_cell", "single_cell_eval")
BASELINE_KINDS = {"marker": "marker", "target_gene_marker": "marker", "target_marker": "marker",
                  "logistic_regression": "logistic regression", "lr": "logistic regression",
                  "random_forest": "random forest", "rf": "random forest"}
METRIC_KEYS = {
    "auroc": ("auroc", "pooled_auroc", "auroc_mean", "pooled_auroc_mean"),
    "aupr": ("aupr", "pooled_aupr", "aupr_mean", "pooled_aupr_mean"),
    "spearman": ("spearman", "line_spearman", "spearman_mean"),
    "bulk_cv_auroc": ("bulk_cv_auroc", "bulk_cv_auroc_mean"),
}
NO_EVALUATION = "no single-cell evaluation in the card"


def model_box(drug: str, card: dict[str, Any] | None) -> str:
    """The model box: the card's description, threshold, bulk and single-cell figures with the
    baselines beside them, and the caveat where the target-gene marker does better."""
    ev = card_evidence(card)
    card = card if isinstance(card, dict) else {}
    out = [f"<div class='model-box' id='model-{html.escape(drug, quote=True)}'>"
           f"<h3>What the {html.escape(drug)} model is worth</h3>"]
    if isinstance(card.get("description"), str):
        text = card["description"].strip().rstrip(".")
        out.append(f"<p>{html.escape(text[:1].upper() + text[1:])}.</p>")
    threshold = card.get("threshold") if isinstance(card.get("threshold"), dict) else {}
    if _real(threshold.get("value")):
        rule = threshold.get("rule")
        out.append(f"<p class='threshold'>Called sensitive when P(sensitive) &ge; "
                   f"{threshold['value']:g}" + (f": {html.escape(rule)}" if isinstance(rule, str) else "")
                   + ".</p>")
    rows: list[tuple[str, dict[str, Any]]] = [("this model", dict(ev.single_cell or {}))]
    if ev.bulk_cv is not None:
        mean, sd, _ = ev.bulk_cv
        rows[0][1]["bulk_cv_auroc"] = mean if sd is None else (mean, sd)
    for kind in ("marker", "logistic regression", "random forest"):
        if kind in ev.baselines:
            label = f"target-gene marker ({_genes_text(ev.baselines[kind])})" if kind == "marker" \
                else kind
            rows.append((label, ev.baselines[kind]))
    columns = [("auroc", "single-cell AUROC"), ("aupr", "single-cell AUPR"),
               ("spearman", "line Spearman"), ("bulk_cv_auroc", _bulk_header(ev))]
    shown = [(k, h) for k, h in columns if k == "bulk_cv_auroc" or any(k in r for _, r in rows)]
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in shown)
    body = "".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(f"<td>{_cell(figures.get(k))}</td>" for k, _ in shown) + "</tr>"
        for name, figures in rows)
    out.append(f"<table class='metrics'><tr><th></th>{head}</tr>{body}</table>")
    if ev.single_cell is None:
        out.append(f"<p class='no-eval'>{NO_EVALUATION}.</p>")
    else:
        if ev.data:
            out.append(f"<p class='note'>Single-cell evaluation: {html.escape(ev.data)}.</p>")
        if not ev.baselines:
            out.append("<p class='note'>The card gives no baselines for its single-cell "
                       "evaluation.</p>")
        if (caveat := marker_caveat(card)) is not None:
            out.append(f"<p class='caveat'>{html.escape(caveat)}</p>")
        auroc = ev.single_cell.get("auroc")
        if auroc is not None and auroc < 0.5:
            out.append(f"<p class='warning'>Below chance (AUROC {auroc:.3f}): on the validation "
                       "data this model ranks sensitive cells below resistant ones.</p>")
    if ev.bulk_cv is None:
        out.append("<p class='note'>No bulk cross-validation in the card.</p>")
    out.append("</div>")
    return "".join(out)


@dataclass(frozen=True)
class Evidence:
    """What a card says a model is worth: bulk CV, single-cell figures and baselines."""

    bulk_cv: tuple[float, float | None, int | None] | None  # AUROC mean, SD, folds
    single_cell: dict[str, float] | None  # the model's figures on the card's cells; None: absent
    data: str | None  # what the single-cell evaluation scored
    baselines: dict[str, dict[str, Any]]  # kind -> figures (+ "genes" for the marker)


def card_evidence(card: dict[str, Any] | None) -> Evidence:
    """The card's evaluation figures, read tolerantly (missing or malformed parts are absent)."""
    metrics = card.get("metrics") if isinstance(card, dict) else None
    metrics = metrics if isinstance(metrics, dict) else {}
    cv = metrics.get("bulk_cross_validation")
    bulk = None
    if isinstance(cv, dict) and (auroc := _number(cv, ("auroc_mean", "auroc", "pooled_auroc"))) is not None:
        folds = cv.get("folds")
        bulk = (auroc, _number(cv, ("auroc_sd",)),
                folds if isinstance(folds, int) and not isinstance(folds, bool) else None)
    sc = next((metrics[k] for k in SC_EVALUATION_KEYS if isinstance(metrics.get(k), dict)), None)
    figures, data, baselines = None, None, {}
    if sc is not None:
        figures = _figures(sc)
        data = sc.get("data") or sc.get("what") or sc.get("cells_scored")
        data = data if isinstance(data, str) else None
        raw = sc.get("baselines", metrics.get("baselines"))
        baselines = _baselines(raw, card)
    return Evidence(bulk, figures, data, baselines)


def marker_caveat(card: dict[str, Any] | None) -> str | None:
    """The plain sentence for a model that ranks the card's validation cells worse than its
    target-gene marker (lower AUROC), else None."""
    ev = card_evidence(card)
    model = (ev.single_cell or {}).get("auroc")
    marker = ev.baselines.get("marker", {}).get("auroc")
    if model is None or marker is None or not model < marker:
        return None
    a, b = _distinct(model, marker)
    return (f"On the single-cell validation data this model ranks cells worse than "
            f"{_marker_words(ev.baselines['marker'])} alone (AUROC {a} vs {b}).")


def _figures(entry: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, keys in METRIC_KEYS.items() if (v := _number(entry, keys)) is not None}


def _baselines(raw: Any, card: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not isinstance(raw, dict):
        return out
    for name, entry in raw.items():
        kind = BASELINE_KINDS.get(str(name).lower().replace(" ", "_").replace("-", "_"))
        if kind is None:
            continue
        figures: dict[str, Any] = {"auroc": float(entry)} if _real(entry) else \
            _figures(entry) if isinstance(entry, dict) else {}
        if not figures:
            continue
        if kind == "marker":
            genes = entry.get("genes") if isinstance(entry, dict) else None
            if isinstance(genes, str):
                genes = [g.strip() for g in genes.replace(",", ";").split(";") if g.strip()]
            if not (isinstance(genes, list) and genes):
                knowledge = card.get("knowledge") if isinstance(card, dict) else None
                genes = knowledge.get("targets") if isinstance(knowledge, dict) else None
            if isinstance(genes, list) and genes and all(isinstance(g, str) for g in genes):
                figures["genes"] = genes
        out[kind] = figures
    return out


def _marker_words(marker: dict[str, Any]) -> str:
    genes = marker.get("genes")
    return f"{' + '.join(genes)} expression" if genes else "the target gene's expression"


def _genes_text(marker: dict[str, Any]) -> str:
    genes = marker.get("genes")
    return " + ".join(genes) if genes else "target gene"


def _bulk_header(ev: Evidence) -> str:
    folds = ev.bulk_cv[2] if ev.bulk_cv is not None else None
    return f"bulk CV AUROC ({folds}-fold)" if folds else "bulk CV AUROC"


def _cell(value: Any) -> str:
    if isinstance(value, tuple):
        return f"{value[0]:.3f} &plusmn; {value[1]:.3f}"
    return "&mdash;" if value is None else f"{value:.3f}"


def _number(entry: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if _real(entry.get(key)):
            return float(entry[key])
    return None


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _distinct(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` to 2 decimals, or as many more as it takes for them to read differently."""
    for digits in range(2, 7):
        sa, sb = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if sa != sb:
            return sa, sb
    return f"{a:.6g}", f"{b:.6g}"
