"""Make docs/report.png: the HTML report of the bundled example, rendered by headless Chromium.

    python examples/report_screenshot.py     (needs the plot extra and Debian's chromium;
                                              with scanpy installed the page has a real UMAP)

The example plate is scored with the shipped erlotinib model, ``--explain --groupby cell_line``.
When scanpy is there, a UMAP of the plate (log CP10k, 2,000 variable genes, 20 PCs, seed 0) is
stored in a temporary copy's ``obsm/X_umap`` first, so the page shows the embedding too.
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "celseq2_p1.h5ad"


def with_umap(folder: Path) -> Path:
    """The example with a UMAP in obsm (a copy in ``folder``), or the example itself without scanpy."""
    try:
        import scanpy as sc
    except ImportError:
        print("scanpy not installed: the report has no UMAP")
        return EXAMPLE
    adata = sc.read_h5ad(EXAMPLE)
    work = adata.copy()
    sc.pp.normalize_total(work, target_sum=1e4)
    sc.pp.log1p(work)
    sc.pp.highly_variable_genes(work, n_top_genes=2000)
    sc.pp.pca(work, n_comps=20, mask_var="highly_variable", random_state=0)
    sc.pp.neighbors(work, n_neighbors=15, random_state=0)
    sc.tl.umap(work, random_state=0)
    adata.obsm["X_umap"] = work.obsm["X_umap"]
    out = folder / "celseq2_p1.h5ad"
    adata.write_h5ad(out)
    return out


def main() -> None:
    """Score the example with --explain --groupby --report, then screenshot the page."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs chromium (Debian package chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        cells = with_umap(Path(tmp))
        report = Path(tmp) / "report.html"
        subprocess.run(["scdr-score", str(cells), "--drug", "erlotinib", "-o", f"{tmp}/t.csv",
                        "--explain", "--groupby", "cell_line", "--report", str(report), "-q"],
                       check=True)
        out = ROOT / "docs" / "report.png"
        subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--no-first-run", "--hide-scrollbars", f"--screenshot={out}",
                        "--window-size=1080,2800", report.as_uri()], check=True,
                       capture_output=True)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
