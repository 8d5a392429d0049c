"""Write a large, realistic h5ad by resampling real cells: for speed and memory benchmarks.

Cells are drawn with replacement from a source h5ad of raw counts (default: the bundled CEL-seq2
plate), so sparsity patterns and library sizes are real. ``--density 10x`` thins counts
binomially until the mean number of stored genes per cell is about 2,500 (10x Chromium-like);
``celseq`` keeps the source depth. The file is written block by block (CSR), so a 1M-cell file
never sits in memory; ``--format csc`` transposes in memory and is meant for small files.

    python benchmarks/make_atlas.py out.h5ad --cells 200000 --density 10x [--gzip]
"""

from pathlib import Path

import click
import h5py
import numpy as np
import scipy.sparse as sp

from scdr.training.depth import keep_for_genes

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / "examples" / "celseq2_p1.h5ad"
TARGET_NNZ = {"10x": 2500.0, "celseq": None}
BLOCK = 20_000


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cells", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option("--density", type=click.Choice(sorted(TARGET_NNZ)), default="10x", show_default=True)
@click.option("--gzip", "compress", is_flag=True, help="gzip-compress data and indices (HDF5 chunks).")
@click.option("--format", "fmt", type=click.Choice(["csr", "csc"]), default="csr", show_default=True)
@click.option("--source", type=click.Path(exists=True, path_type=Path), default=DEFAULT_SOURCE)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--distinct-blocks", type=click.IntRange(min=1), default=None,
              help=f"Resample only this many {BLOCK:,}-cell blocks and repeat them (a fast large "
                   "file for throughput runs on a borrowed machine).")
def main(out: Path, cells: int, density: str, compress: bool, fmt: str, source: Path,
         seed: int, distinct_blocks: int | None) -> None:
    """Write OUT with CELLS cells resampled from SOURCE."""
    stats = make_atlas(out, cells, density, compress, fmt, source, seed, distinct_blocks)
    click.echo(f"{out}: {stats['cells']:,} cells x {stats['genes']:,} genes, "
               f"{stats['nnz_per_cell']:.0f} stored values per cell, {stats['bytes'] / 1e9:.2f} GB")


def make_atlas(out: Path, cells: int, density: str = "10x", compress: bool = False,
               fmt: str = "csr", source: Path = DEFAULT_SOURCE, seed: int = 0,
               distinct_blocks: int | None = None) -> dict:
    """Write the file and return its shape, density and size."""
    counts, var = _read_source(source)
    rng = np.random.default_rng(seed)
    p = _thinning_probability(counts, TARGET_NNZ[density])
    opts = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if compress else {}
    tmp = out.with_name(f".{out.name}.tmp")
    nnz_total = 0
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        _frame(f, "var", var)
        if fmt == "csc":
            m = _sample(counts, cells, p, rng)
            nnz_total = m.nnz
            _write_sparse(f, m.tocsc(), "csc_matrix", opts)
        else:
            nnz_total = _write_csr_blocks(f, counts, cells, p, rng, opts, distinct_blocks)
        _frame(f, "obs", [f"cell{i}" for i in range(cells)])
    tmp.replace(out)
    return {"cells": cells, "genes": len(var), "nnz_per_cell": nnz_total / cells,
            "bytes": out.stat().st_size}


def _read_source(path: Path) -> tuple[sp.csr_matrix, list[str]]:
    with h5py.File(path, "r") as f:
        x = f["X"]
        m = sp.csr_matrix((x["data"][()], x["indices"][()], x["indptr"][()]),
                          shape=tuple(x.attrs["shape"]))
        var = [v.decode() if isinstance(v, bytes) else str(v) for v in f["var/_index"][()]]
    return m, var


def _thinning_probability(counts: sp.csr_matrix, target_nnz: float | None) -> float:
    """Binomial keep-probability whose expected stored genes per cell is ``target_nnz`` (None:
    keep every count)."""
    return 1.0 if target_nnz is None else keep_for_genes(counts, target_nnz)


def _sample(counts: sp.csr_matrix, n: int, p: float, rng: np.random.Generator) -> sp.csr_matrix:
    rows = counts[rng.integers(0, counts.shape[0], size=n)].tocsr()
    if p < 1.0:
        rows.data = rng.binomial(rows.data.astype(np.int64), p).astype(np.float32)
        rows.eliminate_zeros()
    return rows.astype(np.float32)


def _write_csr_blocks(f: h5py.File, counts: sp.csr_matrix, cells: int, p: float,
                      rng: np.random.Generator, opts: dict, distinct: int | None = None) -> int:
    """CSR written block by block. Uncompressed files get contiguous data/indices, as
    anndata writes them (thinned blocks are spooled to raw files first, since the total is only
    known at the end); gzip files get 1 MB chunks, as compressed atlases have."""
    g = f.create_group("X")
    g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                    "shape": np.array([cells, counts.shape[1]])})
    if p >= 1.0:
        return _write_unthinned(g, counts, cells, rng, opts, distinct)
    indptr = np.zeros(cells + 1, np.int64)
    spool = Path(f.filename).with_suffix(".spool")
    spool.mkdir(exist_ok=True)
    nnz = 0
    made: list[sp.csr_matrix] = []
    try:
        with (spool / "data").open("wb") as fd, (spool / "indices").open("wb") as fi:
            for k, lo in enumerate(range(0, cells, BLOCK)):
                n = min(BLOCK, cells - lo)
                if distinct is None or len(made) < distinct:
                    block = _sample(counts, n, p, rng)
                    made = [] if distinct is None else [*made, block]
                else:
                    block = made[k % distinct][:n]
                block.data.astype(np.float32).tofile(fd)
                block.indices.astype(np.int32).tofile(fi)
                indptr[lo + 1 : lo + n + 1] = block.indptr[1:].astype(np.int64) + nnz
                nnz += block.nnz
        layout = {"chunks": (1 << 18,), **opts} if opts else {}
        for name, dtype in (("data", np.float32), ("indices", np.int32)):
            ds = g.create_dataset(name, shape=(nnz,), dtype=dtype, **layout)
            raw = np.memmap(spool / name, dtype=dtype, mode="r", shape=(nnz,))
            for a in range(0, nnz, 1 << 26):
                ds[a : a + (1 << 26)] = raw[a : a + (1 << 26)]
            del raw
        g.create_dataset("indptr", data=indptr)
    finally:
        for name in ("data", "indices"):
            (spool / name).unlink(missing_ok=True)
        spool.rmdir()
    return nnz


def _write_unthinned(g: h5py.Group, counts: sp.csr_matrix, cells: int, rng: np.random.Generator,
                     opts: dict, distinct: int | None) -> int:
    """Source depth: the rows drawn fix the total up front, so the blocks go straight into
    datasets of their final size (no spool: a million CEL-seq-depth cells is a 49 GB file). The
    draws are those of the spooled path, block by block."""
    picks = []
    for k, lo in enumerate(range(0, cells, BLOCK)):
        n = min(BLOCK, cells - lo)
        if distinct is None or len(picks) < distinct:
            picks.append(rng.integers(0, counts.shape[0], size=n))
        else:
            picks.append(picks[k % distinct][:n])
    rows = np.concatenate(picks)
    indptr = np.zeros(cells + 1, np.int64)
    np.cumsum(np.diff(counts.indptr)[rows], out=indptr[1:])
    layout = {"chunks": (1 << 18,), **opts} if opts else {}
    ds = {name: g.create_dataset(name, shape=(int(indptr[-1]),), dtype=dtype, **layout)
          for name, dtype in (("data", np.float32), ("indices", np.int32))}
    for lo in range(0, cells, BLOCK):
        block = counts[rows[lo : lo + BLOCK]].tocsr()
        a, b = int(indptr[lo]), int(indptr[min(lo + BLOCK, cells)])
        ds["data"][a:b] = block.data.astype(np.float32)
        ds["indices"][a:b] = block.indices.astype(np.int32)
    g.create_dataset("indptr", data=indptr)
    return int(indptr[-1])


def _write_sparse(f: h5py.File, m: sp.spmatrix, encoding: str, opts: dict) -> None:
    g = f.create_group("X")
    g.attrs.update({"encoding-type": encoding, "encoding-version": "0.1.0",
                    "shape": np.array(m.shape)})
    g.create_dataset("data", data=m.data, **opts)
    g.create_dataset("indices", data=m.indices, **opts)
    g.create_dataset("indptr", data=m.indptr.astype(np.int64))


def _frame(f: h5py.File, name: str, index: list[str]) -> None:
    g = f.create_group(name)
    g.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0",
                    "_index": "_index", "column-order": np.array([], dtype="float64")})
    g.create_dataset("_index", data=np.array(index, dtype=object), dtype=h5py.string_dtype())


if __name__ == "__main__":
    main()
