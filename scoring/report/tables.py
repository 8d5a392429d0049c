"""The report's HTML tables: the run summary, fraction sensitive per group, and the pathway
attribution heatmap (a coloured table), with pathways named as a reader knows them."""

import html
from typing import Any

import numpy as np

from scdr.scoring.report.collect import (
    MAX_GROUPS,
    OTHER,
    ReportCollector,
    hist_quantile,
    natural_key,
    shown_groups,
)

MAX_HEATMAP_PATHWAYS = 20
DB_PREFIXES = ("HALLMARK_", "REACTOME_", "KEGG_MEDICUS_", "KEGG_", "GOBP_", "GOCC_", "GOMF_", "GO_",
               "BIOCARTA_", "PID_", "WP_", "HP_")
HALLMARK_ACRONYMS = frozenset({"DNA", "UV", "TNFA", "NFKB", "KRAS", "MYC", "JAK", "STAT", "TGF", "AKT",
                               "MTOR", "WNT", "EMT", "IL", "NOTCH"})
HALLMARK_WORDS = {"DN": "down", "UP": "up"}
NODE_PREFIXES = ("KNOWLEDGE: ",)  # scdr's own node kind; "TARGET: <gene>" stays, it says what it is


def summary_table(summary: dict[str, Any]) -> str:
    """The run's input, versions and per-model calls and gene coverage, as a table."""
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


def group_table(col: ReportCollector) -> str:
    """Cells, sensitive cells, fraction and median P(sensitive) per group, as a table."""
    body = "".join(
        f"<tr><td>{html.escape(g)}</td><td>{s.n:,}</td><td>{s.sensitive:,}</td>"
        f"<td>{s.sensitive / s.n:.1%}</td><td>{hist_quantile(s.hist, 0.5):.3f}</td></tr>"
        for g, s in sorted(col.groups.items(), key=lambda item: natural_key(item[0])))
    note = (f"<p class='note'>{html.escape(str(col.groupby))} has more than {MAX_GROUPS - 1} "
            f"values; the later ones are pooled as {html.escape(OTHER)}.</p>"
            if col.groups_pooled else "")
    return (f"<h3>Fraction sensitive by {html.escape(str(col.groupby))}</h3><table class='groups'>"
            "<tr><th>group</th><th>cells</th><th>sensitive</th><th>fraction</th>"
            f"<th>median P(sensitive)</th></tr>{body}</table>{note}")


def attribution_heatmap(col: ReportCollector) -> str:
    """Pathways x groups (and x predicted label) mean attribution, as a coloured HTML table."""
    columns: list[tuple[str, str, np.ndarray, int]] = []  # (label, tooltip, means, cells)
    for g in shown_groups(col):
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


def _diverging(t: float) -> str:
    """Background and text colour for ``t`` in [-1, 1]: blue, white, red."""
    t = max(-1.0, min(1.0, t))
    end = (178, 24, 43) if t > 0 else (33, 102, 172)
    rgb = tuple(round(255 + (c - 255) * abs(t)) for c in end)
    text = "#fff" if abs(t) > 0.6 else "#222"
    return f"background:#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x};color:{text}"
