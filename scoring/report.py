"""A self-contained HTML report of a run: summary, probability distribution, fraction sensitive
per group, top pathways by attribution for sensitive vs resistant cells, and the embedding
coloured by probability when the file has ``obsm/X_umap``. Needs the ``plot`` extra (matplotlib).

Everything is aggregated while streaming, in memory bounded independently of the file size
(fixed histogram bins, per-group counts, per-label attribution sums, at most
``MAX_EMBEDDING_POINTS`` cells kept for the embedding).
"""

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from scdr.scoring.errors import ScdrError

BINS = np.linspace(0.0, 1.0, 51)
MAX_EMBEDDING_POINTS = 50_000
TOP_PATHWAYS = 10


def require_matplotlib() -> None:
    """Fail before a run starts when the plot extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ScdrError("--report needs matplotlib: pip install 'scdr[plot]'") from None


class ReportCollector:
    """Per-model aggregates for the report, fed chunk by chunk like the table writers."""

    def __init__(self, drug: str, pathway_names: list[str], n_cells: int, groupby: str | None,
                 threshold: float) -> None:
        self.drug = drug
        self.pathway_names = pathway_names
        self.groupby = groupby
        self.threshold = threshold
        self.histogram = np.zeros(len(BINS) - 1, np.int64)
        self.groups: dict[str, list[int]] = {}
        self.attr_sums: dict[str, np.ndarray] = {}
        self.attr_counts: dict[str, int] = {}
        self.stride = max(1, -(-n_cells // MAX_EMBEDDING_POINTS))
        self.sample_rows: list[np.ndarray] = []
        self.sample_probs: list[np.ndarray] = []
        self._row = 0

    def open(self) -> None:
        """Nothing to open: aggregates live in memory."""

    def write(self, res: Any) -> None:
        """Add one chunk's predictions to the aggregates."""
        prob = res.probability.astype(np.float64)
        self.histogram += np.histogram(np.clip(prob, 0, 1), bins=BINS)[0]
        sensitive = res.label == "sensitive"
        if self.groupby is not None:
            for value, s in zip(res.groups[self.groupby], sensitive.tolist()):
                counts = self.groups.setdefault(value, [0, 0])
                counts[0] += 1
                counts[1] += int(s)
        if res.attributions is not None:
            for label in ("sensitive", "resistant"):
                rows = res.label == label
                total = res.attributions[rows].sum(axis=0, dtype=np.float64)
                self.attr_sums[label] = self.attr_sums.get(label, 0) + total
                self.attr_counts[label] = self.attr_counts.get(label, 0) + int(rows.sum())
        rows = np.arange(self._row, self._row + len(prob))
        keep = rows % self.stride == 0
        self.sample_rows.append(rows[keep])
        self.sample_probs.append(prob[keep])
        self._row += len(prob)

    def commit(self) -> None:
        """Nothing to flush."""

    def abort(self) -> None:
        """Nothing to remove."""


def write_report(path: Path, summary: dict[str, Any], collectors: list[ReportCollector],
                 embedding: np.ndarray | None) -> None:
    """Render the report to ``path`` (atomically), with figures embedded as PNG data URIs."""
    from scdr.scoring.atomic import publish_text

    parts = [_HEAD.format(title=html.escape(f"scdr report: {Path(summary['input']).name}"))]
    parts.append(_summary_table(summary))
    for col in collectors:
        parts.append(f"<h2>{html.escape(col.drug)}</h2>")
        parts.append(_figure(_histogram_png(col), f"Distribution of P(sensitive) for "
                                                  f"{col.drug}; threshold {col.threshold:g}"))
        if col.groups:
            parts.append(_group_table(col))
        if col.attr_sums:
            parts.append(_figure(_attribution_png(col), "Top pathways by mean attribution, "
                                                        "sensitive vs resistant cells"))
        else:
            parts.append("<p class='note'>Run with <code>--explain</code> for pathway "
                         "attributions.</p>")
        if embedding is not None:
            parts.append(_figure(_embedding_png(col, embedding),
                                 f"obsm/X_umap coloured by P(sensitive) ({col.drug})"))
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


def _summary_table(summary: dict[str, Any]) -> str:
    rows = [("input", summary["input"]), ("matrix", summary["matrix"]),
            ("cells", f"{summary['cells']:,}"), ("wall time", f"{summary['wall_time_s']} s"),
            ("cells/s", f"{summary['cells_per_s']:,}"), ("scdr", summary["scdr_version"])]
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
        f"<tr><td>{html.escape(g)}</td><td>{n:,}</td><td>{s:,}</td><td>{s / n:.1%}</td></tr>"
        for g, (n, s) in sorted(col.groups.items()))
    return (f"<h3>Fraction sensitive by {html.escape(str(col.groupby))}</h3><table class='groups'>"
            "<tr><th>group</th><th>cells</th><th>sensitive</th><th>fraction</th></tr>"
            f"{body}</table>")


def _figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode()
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
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


def _attribution_png(col: ReportCollector) -> bytes:
    plt = _pyplot()
    means = {k: col.attr_sums[k] / max(col.attr_counts[k], 1) for k in col.attr_sums}
    spread = np.abs(np.stack(list(means.values()))).max(axis=0)
    top = np.argsort(-spread, kind="stable")[:TOP_PATHWAYS][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(top) + 1))
    y = np.arange(len(top))
    for offset, (label, color) in zip((-0.2, 0.2), (("sensitive", "#228833"),
                                                    ("resistant", "#cc3311"))):
        if label in means:
            ax.barh(y + offset, means[label][top], height=0.4, color=color, label=label)
    ax.set_yticks(y)
    ax.set_yticklabels([col.pathway_names[j] for j in top], fontsize=8)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel("mean attribution to the logit")
    ax.legend()
    return _png(fig)


def _embedding_png(col: ReportCollector, embedding: np.ndarray) -> bytes:
    plt = _pyplot()
    rows = np.concatenate(col.sample_rows)
    probs = np.concatenate(col.sample_probs)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    pts = ax.scatter(embedding[rows, 0], embedding[rows, 1], c=probs, s=4, cmap="viridis",
                     vmin=0, vmax=1)
    fig.colorbar(pts, ax=ax, label="P(sensitive)")
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border:1px solid #ccc;padding:4px 8px;
text-align:left}}figure{{margin:1em 0}}figcaption{{color:#555;font-size:90%}}
.note{{color:#555}}</style></head><body><h1>{title}</h1>
"""
