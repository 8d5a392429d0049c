"""Write ``examples/celseq2_p1.h5ad`` from the CellBench sc_mixology plate 1 (real counts).

Run from the repository root with the training extra installed:
``python examples/make_example.py ../shared/data/singlecell/sc_celseq2_5cl_p1.h5ad``.
The plate is public (GEO GSE118767; github.com/LuyiTian/sc_mixology, MIT licence).
"""

import sys
from pathlib import Path

import anndata as ad

KEEP_OBS = ["cell_line", "demuxlet_cls", "cell_number", "batch", "total_count_per_cell"]


def main(source: str, target: str = "examples/celseq2_p1.h5ad") -> None:
    """Copy the plate's raw counts (CSR) and the obs columns a user would group by."""
    adata = ad.read_h5ad(source)
    out = ad.AnnData(X=adata.X, obs=adata.obs[KEEP_OBS].copy(), var=adata.var[[]].copy())
    out.uns["source"] = "CellBench sc_mixology CEL-seq2 plate 1 (GSE118767), raw UMI counts"
    out.write_h5ad(Path(target), compression="gzip", compression_opts=9)


if __name__ == "__main__":
    main(*sys.argv[1:])
