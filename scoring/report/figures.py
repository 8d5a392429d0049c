"""The report's figures, drawn with matplotlib (Agg) from a collector's bounded aggregates and
embedded in the page as PNG data URIs: the P(sensitive) histogram, violins per group, and
``obsm/X_umap`` labelled by group or coloured by P(sensitive)."""

import base64
import html
import io
from typing import Any

import numpy as np

from scdr.scoring.report.collect import BINS, FINE_BINS, ReportCollector, hist_quantile, shown_groups

MAX_LABELLED_GROUPS = 20  # groups with their own colour and label on the embedding


def figure(png: bytes, caption: str) -> str:
    """A PNG as an HTML figure: embedded as a data URI, with its caption as alt text."""
    data = base64.b64encode(png).decode()
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption, quote=True)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def histogram_png(col: ReportCollector) -> bytes:
    """The distribution of P(sensitive) over all cells, with the threshold marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(BINS[:-1], col.histogram, width=np.diff(BINS), align="edge", color="#4477aa")
    ax.axvline(col.threshold, color="#cc3311", linestyle="--", label="threshold")
    ax.set_xlabel("P(sensitive)")
    ax.set_ylabel("cells")
    ax.legend()
    return _png(fig)


def violin_caption(col: ReportCollector) -> str:
    """The violins' caption: the groups shown and where the threshold lies."""
    groups = shown_groups(col)
    low, high = _violin_range(col, groups)
    where = "" if low <= col.threshold <= high else (
        f"; the threshold {col.threshold:g} is above every cell shown" if col.threshold > high
        else f"; the threshold {col.threshold:g} is below every cell shown")
    more = f" (the {len(groups)} largest of {len(col.groups)} groups)" if len(groups) < len(col.groups) \
        else ""
    return (f"P(sensitive) per {col.groupby} for {col.drug}{more}: violins of each group's cells, "
            f"white line at the median{where}")


def violin_png(col: ReportCollector) -> bytes:
    """Violins drawn from each group's fine histogram (smoothed), so memory stays bounded."""
    plt = _pyplot()
    groups = shown_groups(col)
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
                      "median": min(max(hist_quantile(s.hist, 0.5), s.low), s.high)})
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


def group_embedding_png(col: ReportCollector, embedding: np.ndarray) -> bytes:
    """The sampled cells on the embedding, coloured and labelled by group."""
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


def embedding_png(col: ReportCollector, embedding: np.ndarray) -> bytes:
    """The sampled cells on the embedding, coloured by P(sensitive) over its observed range."""
    plt = _pyplot()
    rows, probs, groups = _sample(col)
    xy = embedding[rows]
    low, high = colour_range(col)
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


def colour_range(col: ReportCollector) -> tuple[float, float]:
    """The observed range of P(sensitive), at least 0.01 wide, for the embedding's colours."""
    probs = np.concatenate(col.sample_probs) if col.sample_probs else np.zeros(1)
    low, high = float(probs.min()), float(probs.max())
    if high - low < 0.01:
        mid = (low + high) / 2
        low, high = max(0.0, mid - 0.005), min(1.0, mid + 0.005)
    return low, high


def _violin_range(col: ReportCollector, groups: list[str]) -> tuple[float, float]:
    low = min(col.groups[g].low for g in groups)
    high = max(col.groups[g].high for g in groups)
    pad = 0.05 * (high - low) + 0.005
    return max(0.0, low - pad), min(1.0, high + pad)


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
