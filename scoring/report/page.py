"""The report page: its assembly from the run summary, the collectors and the embedding, written
atomically; reading the embedding; and the check that the plot extra is installed."""

import html
from pathlib import Path
from typing import Any

import numpy as np

from scdr.scoring.errors import ScdrError
from scdr.scoring.report.collect import ReportCollector
from scdr.scoring.report.evidence import model_box
from scdr.scoring.report.figures import (
    colour_range,
    embedding_png,
    figure,
    group_embedding_png,
    histogram_png,
    violin_caption,
    violin_png,
)
from scdr.scoring.report.tables import attribution_heatmap, group_table, summary_table


def write_report(path: Path, summary: dict[str, Any], collectors: list[ReportCollector],
                 embedding: np.ndarray | None) -> None:
    """Render the report to ``path`` (atomically), with figures embedded as PNG data URIs."""
    from scdr.scoring.atomic import publish_text

    parts = [_HEAD.format(title=html.escape(f"scdr report: {Path(summary['input']).name}"))]
    parts.append(summary_table(summary))
    n_rows = collectors[0].rows_seen if collectors else 0
    if embedding is not None and embedding.shape[0] != n_rows:
        embedding = None  # not one row per cell: nothing to draw
    if embedding is not None and collectors and collectors[0].groups:
        col = collectors[0]
        parts.append(f"<h2>Cells by {html.escape(str(col.groupby))}</h2>")
        parts.append(figure(group_embedding_png(col, embedding),
                            f"obsm/X_umap labelled by {col.groupby}"))
    models = summary.get("models", [])
    for i, col in enumerate(collectors):
        entry = models[i] if i < len(models) and models[i].get("drug") == col.drug else \
            next((m for m in models if m.get("drug") == col.drug), {})
        card = col.card if col.card is not None else _card_of(entry)
        parts.append(f"<section class='drug'><h2>{html.escape(col.drug)}</h2>")
        parts.append(model_box(col.drug, card))
        histogram = figure(histogram_png(col), f"Distribution of P(sensitive) for {col.drug} "
                                               f"over all cells; called sensitive at "
                                               f"{col.threshold:g} or above")
        if col.groups:
            parts.append(figure(violin_png(col), violin_caption(col)))
        else:
            parts.append(histogram)
        if col.attr_sums:
            parts.append(attribution_heatmap(col))
        else:
            parts.append("<p class='note'>Run with <code>--explain</code> for pathway "
                         "attributions.</p>")
        if embedding is not None:
            low, high = colour_range(col)
            where = (f"threshold {col.threshold:g}" if low <= col.threshold <= high else
                     f"the threshold {col.threshold:g} is outside it")
            parts.append(figure(embedding_png(col, embedding),
                                f"obsm/X_umap coloured by P(sensitive) ({col.drug}); the colour "
                                f"scale spans the observed {low:.2f} to {high:.2f} ({where})"))
        if col.groups:
            parts.append(group_table(col))
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


def require_matplotlib() -> None:
    """Fail before a run starts when the plot extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ScdrError("--report needs matplotlib: pip install 'scdr[plot]'") from None


def _card_of(model: dict[str, Any]) -> dict[str, Any] | None:
    """The card of the bundle a summary entry names, or None when it cannot be read."""
    from scdr.scoring.bundle import load_bundle

    try:
        return load_bundle(model["bundle"]).card
    except (KeyError, TypeError, OSError, ScdrError):
        return None


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
