"""A self-contained HTML report of a run, written for the biologist who reads it.

Per drug: a model box with what the bundle's card says the model is worth (bulk cross-validation,
the single-cell evaluation and its baselines, and a plain caveat where the target gene's own
expression ranks the validation cells better), the distribution of P(sensitive), violins of
P(sensitive) per ``--groupby`` group, mean pathway attributions per group as a heatmap (with
``--explain``), and ``obsm/X_umap`` labelled by group and coloured by P(sensitive). Pathways are
shown without database prefixes (``HALLMARK_``, ``REACTOME_``, ``GOBP_``, ...); the full name is
in each label's tooltip. Nothing is fetched: figures are embedded PNGs, the heatmap is a table.
Needs the ``plot`` extra (matplotlib).

Memory is bounded independently of the file size: fixed histograms (overall and per group),
per-group counts and attribution sums for at most ``MAX_GROUPS`` groups (later values are pooled),
at most ``MAX_EMBEDDING_POINTS`` cells kept for the embedding.

Card figures read (each optional; the report says what is missing)::

    metrics.bulk_cross_validation: auroc_mean, auroc_sd, folds
    metrics.single_cell_evaluation: data (what was scored), auroc, aupr, spearman,
        baselines: {marker: {genes: [...], auroc, aupr, spearman},
                    logistic_regression: {...}, random_forest: {...}}

Also accepted: ``pooled_auroc``/``auroc_mean`` for ``auroc`` (likewise AUPR, ``line_spearman``),
baseline names ``target_gene_marker``, ``lr``, ``rf`` or with spaces, a bare number for a
baseline's AUROC, and ``baselines`` beside ``single_cell_evaluation`` in ``metrics``.
"""

import base64
import html
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scdr.scoring.errors import ScdrError

BINS = np.linspace(0.0, 1.0, 51)
FINE_BINS = 1000  # per-group histogram of P(sensitive) for the violins (resolution 0.001)
MAX_EMBEDDING_POINTS = 50_000
MAX_GROUPS = 500  # groups tracked per drug; values first seen after these are pooled
MAX_SHOWN_GROUPS = 30  # violins and heatmap columns (the largest groups)
MAX_LABELLED_GROUPS = 20  # groups with their own colour and label on the embedding
MAX_HEATMAP_PATHWAYS = 20
OTHER = "(other values)"
DB_PREFIXES = ("HALLMARK_", "REACTOME_", "KEGG_MEDICUS_", "KEGG_", "GOBP_", "GOCC_", "GOMF_", "GO_",
               "BIOCARTA_", "PID_", "WP_", "HP_")
HALLMARK_ACRONYMS = frozenset({"DNA", "UV", "TNFA", "NFKB", "KRAS", "MYC", "JAK", "STAT", "TGF", "AKT",
                               "MTOR", "WNT", "EMT", "IL", "NOTCH"})
HALLMARK_WORDS = {"DN": "down", "UP": "up"}
NODE_PREFIXES = ("KNOWLEDGE: ",)  # scdr's own node kind; "TARGET: <gene>" stays, it says what it is
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


def require_matplotlib() -> None:
    """Fail before a run starts when the plot extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ScdrError("--report needs matplotlib: pip install 'scdr[plot]'") from None


@dataclass
class GroupStats:
    """One group's running aggregates: counts, a fine histogram of P(sensitive), attributions."""

    n: int = 0
    sensitive: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(FINE_BINS, np.int64))
    low: float = math.inf
    high: float = -math.inf
    attr_sum: np.ndarray | None = None


class ReportCollector:
    """Per-model aggregates for the report, fed chunk by chunk like the table writers."""

    def __init__(self, drug: str, pathway_names: list[str], n_cells: int, groupby: str | None,
                 threshold: float, card: dict[str, Any] | None = None) -> None:
        self.drug = drug
        self.pathway_names = pathway_names
        self.groupby = groupby
        self.threshold = threshold
        self.card = card  # None: read from the bundle folder the run summary names
        self.histogram = np.zeros(len(BINS) - 1, np.int64)
        self.groups: dict[str, GroupStats] = {}
        self.groups_pooled = False
        self._known: set[str] = set()
        self.attr_sums: dict[str, np.ndarray] = {}
        self.attr_counts: dict[str, int] = {}
        self.stride = max(1, -(-n_cells // MAX_EMBEDDING_POINTS))
        self.sample_rows: list[np.ndarray] = []
        self.sample_probs: list[np.ndarray] = []
        self.sample_groups: list[np.ndarray] = []
        self._row = 0

    def open(self) -> None:
        """Nothing to open: aggregates live in memory."""

    def write(self, res: Any) -> None:
        """Add one chunk's predictions to the aggregates."""
        prob = np.clip(np.nan_to_num(res.probability.astype(np.float64)), 0.0, 1.0)
        self.histogram += np.histogram(prob, bins=BINS)[0]
        sensitive = res.label == "sensitive"
        attributions = res.attributions
        if attributions is not None:
            for label in ("sensitive", "resistant"):
                rows = res.label == label
                total = attributions[rows].sum(axis=0, dtype=np.float64)
                self.attr_sums[label] = self.attr_sums.get(label, 0) + total
                self.attr_counts[label] = self.attr_counts.get(label, 0) + int(rows.sum())
        values = None
        if self.groupby is not None:
            values = np.array([self._group_key(str(v)) for v in res.groups[self.groupby]], object)
            self._add_groups(values, prob, sensitive, attributions)
        rows = np.arange(self._row, self._row + len(prob))
        keep = rows % self.stride == 0
        self.sample_rows.append(rows[keep])
        self.sample_probs.append(prob[keep])
        if values is not None:
            self.sample_groups.append(values[keep])
        self._row += len(prob)

    @property
    def rows_seen(self) -> int:
        """How many cells have been added so far."""
        return self._row

    def commit(self) -> None:
        """Nothing to flush."""

    def abort(self) -> None:
        """Nothing to remove."""

    def _group_key(self, value: str) -> str:
        if value in self._known:
            return value
        if len(self._known) < MAX_GROUPS - 1:
            self._known.add(value)
            return value
        self.groups_pooled = True
        return OTHER

    def _add_groups(self, values: np.ndarray, prob: np.ndarray, sensitive: np.ndarray,
                    attributions: np.ndarray | None) -> None:
        fine = np.minimum((prob * FINE_BINS).astype(np.int64), FINE_BINS - 1)
        names, inverse = np.unique(values.astype(str), return_inverse=True)
        for k, name in enumerate(names.tolist()):
            rows = inverse == k
            stats = self.groups.setdefault(name, GroupStats())
            stats.n += int(rows.sum())
            stats.sensitive += int(sensitive[rows].sum())
            stats.hist += np.bincount(fine[rows], minlength=FINE_BINS)
            stats.low = min(stats.low, float(prob[rows].min()))
            stats.high = max(stats.high, float(prob[rows].max()))
            if attributions is not None:
                total = attributions[rows].sum(axis=0, dtype=np.float64)
                stats.attr_sum = total if stats.attr_sum is None else stats.attr_sum + total


def write_report(path: Path, summary: dict[str, Any], collectors: list[ReportCollector],
                 embedding: np.ndarray | None) -> None:
    """Render the report to ``path`` (atomically), with figures embedded as PNG data URIs."""
    from scdr.scoring.atomic import publish_text

    parts = [_HEAD.format(title=html.escape(f"scdr report: {Path(summary['input']).name}"))]
    parts.append(_summary_table(summary))
    n_rows = collectors[0].rows_seen if collectors else 0
    if embedding is not None and embedding.shape[0] != n_rows:
        embedding = None  # not one row per cell: nothing to draw
    if embedding is not None and collectors and collectors[0].groups:
        col = collectors[0]
        parts.append(f"<h2>Cells by {html.escape(str(col.groupby))}</h2>")
        parts.append(_figure(_group_embedding_png(col, embedding),
                             f"obsm/X_umap labelled by {col.groupby}"))
    models = summary.get("models", [])
    for i, col in enumerate(collectors):
        entry = models[i] if i < len(models) and models[i].get("drug") == col.drug else \
            next((m for m in models if m.get("drug") == col.drug), {})
        card = col.card if col.card is not None else _card_of(entry)
        parts.append(f"<section class='drug'><h2>{html.escape(col.drug)}</h2>")
        parts.append(model_box(col.drug, card))
        histogram = _figure(_histogram_png(col), f"Distribution of P(sensitive) for {col.drug} "
                                                 f"over all cells; called sensitive at "
                                                 f"{col.threshold:g} or above")
        if col.groups:
            parts.append(_figure(_violin_png(col), _violin_caption(col)))
        else:
            parts.append(histogram)
        if col.attr_sums:
            parts.append(_attribution_heatmap(col))
        else:
            parts.append("<p class='note'>Run with <code>--explain</code> for pathway "
                         "attributions.</p>")
        if embedding is not None:
            low, high = _colour_range(col)
            where = (f"threshold {col.threshold:g}" if low <= col.threshold <= high else
                     f"the threshold {col.threshold:g} is outside it")
            parts.append(_figure(_embedding_png(col, embedding),
                                 f"obsm/X_umap coloured by P(sensitive) ({col.drug}); the colour "
                                 f"scale spans the observed {low:.2f} to {high:.2f} ({where})"))
        if col.groups:
            parts.append(_group_table(col))
            parts.append(histogram)
        parts.append("</section>")
    parts.append("</body></html>\n")
    publish_text(path, "".join(parts))


def read_embedding(h5_path: Path, key: str = "X_umap") -> np.ndarray | None:
    """``obsm[key]`` (first two columns) from an h5ad, or None when absent or unreadable."""
    import h5py

    try:
        with h5py.File(h5_path, "r") as f:
            if "obsm" not in f:
                return None
            obsm = f["obsm"]
            if isinstance(obsm, h5py.Group) and key in obsm and isinstance(obsm[key], h5py.Dataset):
                values = obsm[key][()]
            elif isinstance(obsm, h5py.Dataset) and key in (obsm.dtype.names or ()):
                values = obsm[key]
            else:
                return None
    except (OSError, KeyError, TypeError, ValueError):
        return None
    values = np.asarray(values, dtype=np.float64)
    return values[:, :2] if values.ndim == 2 and values.shape[1] >= 2 else None


def display_name(pathway: str) -> str:
    """A pathway's name as a reader sees it: no database prefix (HALLMARK_, REACTOME_, GOBP_, ...;
    the rest's underscores as spaces) or scdr node kind, Hallmark names in sentence case."""
    name = pathway
    for prefix in NODE_PREFIXES:
        name = name.removeprefix(prefix)
    prefix = next((p for p in DB_PREFIXES if name.upper().startswith(p)), None)
    hallmark = prefix == "HALLMARK_" and len(name) > len(prefix)
    if prefix is not None and len(name) > len(prefix):
        name = name[len(prefix):]
        if " " not in name:
            name = name.replace("_", " ")
    if hallmark and name.isupper():
        words = [w if any(c.isdigit() for c in w) or w in HALLMARK_ACRONYMS
                 else HALLMARK_WORDS.get(w, w.lower()) for w in name.split()]
        name = " ".join(words)
        name = name[:1].upper() + name[1:]
    return name.strip() or pathway


# ------------------------------------------------------------------ the card's figures


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


def _card_of(model: dict[str, Any]) -> dict[str, Any] | None:
    """The card of the bundle a summary entry names, or None when it cannot be read."""
    from scdr.scoring.bundle import load_bundle

    try:
        return load_bundle(model["bundle"]).card
    except (KeyError, TypeError, OSError, ScdrError):
        return None


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


# ------------------------------------------------------------------ tables


def _summary_table(summary: dict[str, Any]) -> str:
    rows = [("input", summary["input"]), ("matrix", summary["matrix"]),
            ("cells", f"{summary['cells']:,}"), ("scdr", summary["scdr_version"])]
    for m in summary["models"]:
        lab = m["labels"]
        rows.append((f"{m['drug']}", f"{lab['sensitive']:,} sensitive, {lab['resistant']:,} "
                     f"resistant; {m['genes_found']}/{m['panel_genes']} panel genes "
                     f"({m['coverage']:.1%}); model sha256 {m['sha256']['model.onnx'][:12]}…"))
        if "explain" in m:
            rows.append((f"{m['drug']} attributions", f"worst completeness gap "
                         f"{m['explain']['worst_relative_gap']:.2e}"))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f"<h2>Run</h2><table id='summary'>{body}</table>"


def _group_table(col: ReportCollector) -> str:
    body = "".join(
        f"<tr><td>{html.escape(g)}</td><td>{s.n:,}</td><td>{s.sensitive:,}</td>"
        f"<td>{s.sensitive / s.n:.1%}</td><td>{_hist_quantile(s.hist, 0.5):.3f}</td></tr>"
        for g, s in sorted(col.groups.items(), key=lambda item: _natural(item[0])))
    note = (f"<p class='note'>{html.escape(str(col.groupby))} has more than {MAX_GROUPS - 1} "
            f"values; the later ones are pooled as {html.escape(OTHER)}.</p>"
            if col.groups_pooled else "")
    return (f"<h3>Fraction sensitive by {html.escape(str(col.groupby))}</h3><table class='groups'>"
            "<tr><th>group</th><th>cells</th><th>sensitive</th><th>fraction</th>"
            f"<th>median P(sensitive)</th></tr>{body}</table>{note}")


def _attribution_heatmap(col: ReportCollector) -> str:
    """Pathways x groups (and x predicted label) mean attribution, as a coloured HTML table."""
    columns: list[tuple[str, str, np.ndarray, int]] = []  # (label, tooltip, means, cells)
    for g in _shown_groups(col):
        s = col.groups[g]
        if s.attr_sum is not None and s.n:
            columns.append((g, f"{col.groupby} = {g}", s.attr_sum / s.n, s.n))
    n_groups = len(columns)
    for label in ("sensitive", "resistant"):
        if col.attr_counts.get(label):
            columns.append((f"all {label}", f"every cell called {label}",
                            col.attr_sums[label] / col.attr_counts[label], col.attr_counts[label]))
    if not columns:
        return ""
    means = np.stack([c[2] for c in columns])  # columns x pathways
    strength = np.abs(means).max(axis=0)
    top = np.argsort(-strength, kind="stable")[:MAX_HEATMAP_PATHWAYS]
    vmax = float(np.abs(means[:, top]).max()) or 1.0
    head = "".join(
        f"<th class='{'sep' if n_groups and j == n_groups else 'col'}' "
        f"title='{html.escape(tip, quote=True)}; {n:,} cells'>{html.escape(label)}</th>"
        for j, (label, tip, _, n) in enumerate(columns))
    body = []
    for p in top:
        full = col.pathway_names[p]
        cells = []
        for j, (label, _, m, _) in enumerate(columns):
            v = float(m[p])
            tip = f"{full}, {label}: mean attribution {v:+.3f}"
            kind = "val sep" if n_groups and j == n_groups else "val"
            cells.append(f"<td class='{kind}' style='{_diverging(v / vmax)}' "
                         f"title='{html.escape(tip, quote=True)}'>{v:+.2f}</td>")
        body.append(f"<tr><th class='pathway' title='{html.escape(full, quote=True)}'>"
                    f"{html.escape(display_name(full))}</th>{''.join(cells)}</tr>")
    shown = (f"the {len(top)} of {len(col.pathway_names)} pathways with the largest mean "
             "attribution in any column" if len(top) < len(col.pathway_names) else
             f"all {len(top)} pathways")
    by = f"per {html.escape(str(col.groupby))} and " if n_groups else ""
    return (f"<h3>Why cells were called: mean pathway attribution {by}per call</h3>"
            f"<div class='wide'><table class='heatmap'><tr><th>pathway</th>{head}</tr>"
            f"{''.join(body)}</table></div>"
            f"<div class='scale'><span>{-vmax:+.2f}</span><span class='bar'></span>"
            f"<span>{vmax:+.2f}</span></div>"
            f"<p class='note'>Integrated-gradient attribution of each pathway to the cell's logit, "
            f"averaged over the column's cells ({shown}; hover a name for its full source name). "
            "Red pushes towards sensitive, blue towards resistant.</p>")


def _diverging(t: float) -> str:
    """Background and text colour for ``t`` in [-1, 1]: blue, white, red."""
    t = max(-1.0, min(1.0, t))
    end = (178, 24, 43) if t > 0 else (33, 102, 172)
    rgb = tuple(round(255 + (c - 255) * abs(t)) for c in end)
    text = "#fff" if abs(t) > 0.6 else "#222"
    return f"background:#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x};color:{text}"


def _shown_groups(col: ReportCollector) -> list[str]:
    """The largest ``MAX_SHOWN_GROUPS`` groups, in natural name order."""
    largest = sorted(col.groups, key=lambda g: (-col.groups[g].n, g))[:MAX_SHOWN_GROUPS]
    return sorted(largest, key=_natural)


def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``cluster2`` before ``cluster10``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part)
                 for part in re.split(r"(\d+)", name) if part)


def _hist_quantile(hist: np.ndarray, q: float) -> float:
    """Quantile of the values a fine histogram counts (bin centre)."""
    cum = np.cumsum(hist)
    k = int(np.searchsorted(cum, q * cum[-1], side="left")) if cum[-1] else 0
    return (min(k, FINE_BINS - 1) + 0.5) / FINE_BINS


# ------------------------------------------------------------------ figures


def _figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode()
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption, quote=True)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _histogram_png(col: ReportCollector) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(BINS[:-1], col.histogram, width=np.diff(BINS), align="edge", color="#4477aa")
    ax.axvline(col.threshold, color="#cc3311", linestyle="--", label="threshold")
    ax.set_xlabel("P(sensitive)")
    ax.set_ylabel("cells")
    ax.legend()
    return _png(fig)


def _violin_range(col: ReportCollector, groups: list[str]) -> tuple[float, float]:
    low = min(col.groups[g].low for g in groups)
    high = max(col.groups[g].high for g in groups)
    pad = 0.05 * (high - low) + 0.005
    return max(0.0, low - pad), min(1.0, high + pad)


def _violin_caption(col: ReportCollector) -> str:
    groups = _shown_groups(col)
    low, high = _violin_range(col, groups)
    where = "" if low <= col.threshold <= high else (
        f"; the threshold {col.threshold:g} is above every cell shown" if col.threshold > high
        else f"; the threshold {col.threshold:g} is below every cell shown")
    more = f" (the {len(groups)} largest of {len(col.groups)} groups)" if len(groups) < len(col.groups) \
        else ""
    return (f"P(sensitive) per {col.groupby} for {col.drug}{more}: violins of each group's cells, "
            f"white line at the median{where}")


def _violin_png(col: ReportCollector) -> bytes:
    """Violins drawn from each group's fine histogram (smoothed), so memory stays bounded."""
    plt = _pyplot()
    groups = _shown_groups(col)
    low, high = _violin_range(col, groups)
    centres = (np.arange(FINE_BINS) + 0.5) / FINE_BINS
    sigma = max(1.0, (high - low) * FINE_BINS / 40)  # bandwidth in fine bins
    half = int(4 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    stats = []
    for g in groups:
        s = col.groups[g]
        density = np.convolve(s.hist.astype(np.float64), kernel, mode="same")
        keep = (centres >= s.low - 0.5 / FINE_BINS) & (centres <= s.high + 0.5 / FINE_BINS)
        coords = np.clip(centres[keep], s.low, s.high)
        vals = density[keep]
        if len(coords) < 2:  # every cell in one bin
            coords, vals = np.array([s.low, s.high + 1e-9]), np.array([1.0, 1.0])
        mean = float((s.hist * centres).sum() / max(s.n, 1))
        stats.append({"coords": coords, "vals": vals, "mean": mean, "min": s.low, "max": s.high,
                      "median": min(max(_hist_quantile(s.hist, 0.5), s.low), s.high)})
    width = max(5.0, 0.6 * len(groups) + 1.5)
    fig, ax = plt.subplots(figsize=(min(width, 14.0), 3.6))
    positions = np.arange(len(groups))
    parts = ax.violin(stats, positions=positions, widths=0.8, showmedians=True, showextrema=False)
    for body in parts["bodies"]:
        body.set_facecolor("#4477aa")
        body.set_edgecolor("#223344")
        body.set_alpha(0.8)
    parts["cmedians"].set_color("white")
    parts["cmedians"].set_linewidth(2)
    if low <= col.threshold <= high:
        ax.axhline(col.threshold, color="#cc3311", linestyle="--", linewidth=1, label="threshold")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(low, high)
    ax.set_xticks(positions)
    ax.set_xticklabels([f"{g}\n(n={col.groups[g].n:,})" for g in groups], fontsize=8,
                       rotation=0 if len(groups) <= 8 else 60, ha="center" if len(groups) <= 8 else "right")
    ax.set_ylabel("P(sensitive)")
    ax.set_xlabel(str(col.groupby))
    return _png(fig)


def _sample(col: ReportCollector) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    rows = np.concatenate(col.sample_rows)
    probs = np.concatenate(col.sample_probs)
    groups = np.concatenate(col.sample_groups) if col.sample_groups else None
    return rows, probs, groups


def _labelled_groups(col: ReportCollector) -> list[str]:
    return sorted(col.groups, key=lambda g: (-col.groups[g].n, g))[:MAX_LABELLED_GROUPS]


def _label_groups(ax: Any, xy: np.ndarray, groups: np.ndarray, names: list[str]) -> None:
    """Write each group's name at the median position of its cells."""
    import matplotlib.patheffects as pe

    for name in names:
        at = groups == name
        if at.any():
            x, y = np.median(xy[at], axis=0)
            ax.text(x, y, name, fontsize=8, ha="center", va="center", weight="bold",
                    path_effects=[pe.withStroke(linewidth=2.5, foreground="white")])


def _group_embedding_png(col: ReportCollector, embedding: np.ndarray) -> bytes:
    plt = _pyplot()
    rows, _, groups = _sample(col)
    assert groups is not None
    xy = embedding[rows]
    names = _labelled_groups(col)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    rest = ~np.isin(groups, names)
    if rest.any():
        ax.scatter(xy[rest, 0], xy[rest, 1], s=3, color="#bbbbbb", label="other groups")
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for k, name in enumerate(sorted(names)):
        at = groups == name
        ax.scatter(xy[at, 0], xy[at, 1], s=4, color=cmap(k % cmap.N), label=name)
    _label_groups(ax, xy, groups, names)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=3, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    return _png(fig)


def _colour_range(col: ReportCollector) -> tuple[float, float]:
    """The observed range of P(sensitive), at least 0.01 wide, for the embedding's colours."""
    probs = np.concatenate(col.sample_probs) if col.sample_probs else np.zeros(1)
    low, high = float(probs.min()), float(probs.max())
    if high - low < 0.01:
        mid = (low + high) / 2
        low, high = max(0.0, mid - 0.005), min(1.0, mid + 0.005)
    return low, high


def _embedding_png(col: ReportCollector, embedding: np.ndarray) -> bytes:
    plt = _pyplot()
    rows, probs, groups = _sample(col)
    xy = embedding[rows]
    low, high = _colour_range(col)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    pts = ax.scatter(xy[:, 0], xy[:, 1], c=probs, s=4, cmap="viridis", vmin=low, vmax=high)
    bar = fig.colorbar(pts, ax=ax, label="P(sensitive)")
    if low <= col.threshold <= high:
        bar.ax.axhline(col.threshold, color="#cc3311", linewidth=2)
    if groups is not None:
        _label_groups(ax, xy, groups, _labelled_groups(col))
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border:1px solid #ccc;padding:4px 8px;
text-align:left}}figure{{margin:1em 0}}img{{max-width:100%}}.wide{{overflow-x:auto}}
figcaption{{color:#555;font-size:90%}}
.note{{color:#555}}.model-box{{border:2px solid #4477aa;border-radius:6px;padding:0.5em 1em;
margin:1em 0;background:#f5f8fc}}.model-box h3{{margin-top:0.3em}}
.threshold{{font-size:90%;color:#444}}.caveat{{background:#fff3cd;border-left:4px solid #cc8800;
padding:0.4em 0.8em;font-weight:bold}}.warning{{background:#fde2e1;border-left:4px solid #cc3311;
padding:0.4em 0.8em}}.no-eval{{color:#8a5a00;font-style:italic}}
table.metrics td{{text-align:right;font-variant-numeric:tabular-nums}}
table.heatmap td{{text-align:right;font-size:85%;font-variant-numeric:tabular-nums;min-width:3.5em}}
table.heatmap th{{font-size:85%}}table.heatmap .sep{{border-left:3px solid #666}}
.scale{{display:flex;align-items:center;gap:0.5em;font-size:85%;color:#555}}
.scale .bar{{display:inline-block;width:12em;height:0.8em;
background:linear-gradient(to right,#2166ac,#fff,#b2182b)}}
section.drug{{border-top:1px solid #aaa;margin-top:2em}}</style></head><body><h1>{title}</h1>
"""
