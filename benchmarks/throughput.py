"""Throughput and memory of scdr-score beside the IO floor and the pipelines users would
otherwise run, on the same file and network, each in its own process (peak RSS from the OS).

    python benchmarks/throughput.py --cells 10000,200000,1000000 --density 10x [--peers]
    python benchmarks/throughput.py --quick          # small file, checks the table is produced
    python benchmarks/throughput.py --cells 200000 --stages io,scdr --repeat 5   # noisy machine

Measured per file, page cache warmed first: the IO floor (h5py reading data+indices by indptr
ranges; for gzip files also the parallel-decompression floor: chunks read with pread and inflated
by zlib on 2 threads, nothing else), each stage of the scorer alone (read, normalise, forward),
read -> normalise -> forward with and without reading the next chunk on a worker thread
(``sequential``/``overlapped``), ``scdr-score`` end to end, ``scdr-score --explain``,
and with ``--peers`` the peer pipeline (anndata.read_h5ad + scanpy normalize_total/log1p + panel
subset + densify + torch forward of the same network) and celltypist's annotate with a model over
the same panel. Prints a table, writes JSON and CSV under ``benchmarks/results/``.

On a shared machine the IO floor itself moves by up to 3x between minutes, so ``--repeat N`` runs
the stage list N times in interleaved rounds (io, scdr, ..., io, scdr, ...): every ratio is taken
within one round, between measurements minutes apart at most, and the summary gives the median
over rounds (and the range) of cells/s and of each ratio, with the largest peak RSS.
"""

import contextlib
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CHUNK = 16384
DEVICE = "cpu"  # set from --device, in the parent and in each stage's process


@click.command()
@click.option("--cells", default="10000,200000", show_default=True,
              help="Comma-separated file sizes (cells).")
@click.option("--density", type=click.Choice(["10x", "celseq"]), default="10x", show_default=True)
@click.option("--gzip", "compress", is_flag=True, help="Use gzip-compressed files.")
@click.option("--drug", default="cisplatin", show_default=True, help="Shipped model to run.")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Or any bundle.")
@click.option("--peers", is_flag=True, help="Also run the anndata/scanpy/torch and celltypist peers.")
@click.option("--dask", is_flag=True, help="Also run scdr-score on a local Dask cluster, 1 and 2 workers.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=RESULTS / "data",
              show_default=True, help="Where generated files are cached.")
@click.option("--quick", is_flag=True, help="A 2,000-cell file, scorer stages only (for CI).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSON results path (default benchmarks/results/throughput_<density>.json).")
@click.option("--stages", default=None,
              help="Comma-separated stages to run (default: all that apply), e.g. io,scdr,explain.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="ONNX Runtime provider for the scorer's stages (cuda needs onnxruntime-gpu).")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="Also write a log-log PNG of cells/s and peak RSS against file size.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run the stage list this many times, interleaved; report medians over rounds.")
@click.option("--stage", default=None, hidden=True)
@click.option("--file", "file_", default=None, hidden=True)
def main(cells: str, density: str, compress: bool, drug: str, model: Path | None, peers: bool,
         dask: bool, data_dir: Path, quick: bool, out: Path | None, stages: str | None, device: str,
         plot: Path | None, repeat: int, stage: str | None, file_: str | None) -> None:
    """Run the benchmark and print the table."""
    global DEVICE
    DEVICE = device
    bundle = model or _bundle_for(drug)
    if stage is not None:  # child process: one measurement
        click.echo(json.dumps(STAGES[stage](Path(file_), bundle)))
        return
    sizes = [2000] if quick else [int(c) for c in cells.split(",")]
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sizes:
        path = _ensure_file(data_dir, n, density, compress)
        _warm(path)
        names = ["io", *(["io_parallel"] if compress else []), "read", "normalize", "forward",
                 "sequential", "overlapped", "scdr", "pathways", "explain"]
        if dask and not quick:
            names += ["dask1", "dask2"]
        if peers and not quick:
            names += ["peer", "celltypist"]
        if stages:
            unknown = set(stages.split(",")) - set(STAGES)
            if unknown:
                raise click.BadParameter(f"unknown stages {sorted(unknown)}", param_hint="--stages")
            names = stages.split(",")
        for round_ in range(repeat):
            for name in names:
                rows.append({"cells": n, "density": density, "gzip": compress, "round": round_,
                             "stage": name, "device": device if name in DEVICE_STAGES else "cpu",
                             **_measure(name, path, bundle)})
                _print_row(rows[-1], rows)
    out = out or RESULTS / f"throughput_{density}{'_gzip' if compress else ''}.json"
    _write(rows, out, bundle)
    for round_ in range(repeat):
        _print_ratios([r for r in rows if r["round"] == round_])
    if repeat > 1:
        _print_summary(rows)
    if plot is not None:
        _plot(rows, plot)


def _bundle_for(drug: str) -> Path:
    from scdr.scoring.bundle import find_bundle

    return find_bundle(drug)


def _ensure_file(data_dir: Path, n: int, density: str, compress: bool) -> Path:
    path = data_dir / f"atlas_{n}_{density}{'_gzip' if compress else ''}.h5ad"
    if not path.exists():
        click.echo(f"generating {path.name} ...", err=True)
        subprocess.run([sys.executable, str(HERE / "make_atlas.py"), str(path), "--cells", str(n),
                        "--density", density, *(["--gzip"] if compress else [])], check=True)
    return path


def _warm(path: Path) -> None:
    """Read the file once so that every stage starts from the same warm page cache."""
    with path.open("rb") as fh:
        while fh.read(1 << 24):
            pass


def _measure(name: str, path: Path, bundle: Path) -> dict:
    """Run one stage in a fresh process; wall time and peak RSS as the OS saw them."""
    if name in WHOLE_FILE_STAGES:
        need, have = 2 * _dense_bytes(path), _available_memory()  # the matrix and a copy
        if need > have:
            return {"error": f"not run: it holds the whole matrix in memory and copies it (~"
                             f"{need / 1e9:.0f} GB), more than the {have / 1e9:.0f} GB available"}
    cmd = [sys.executable, str(Path(__file__)), "--stage", name, "--file", str(path),
           "--model", str(bundle), "--device", DEVICE]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return {"error": f"killed by signal {-code} after {wall:.0f} s at "
                         f"{usage.ru_maxrss / 1024:,.0f} MB (out of memory: it loads the whole file)"}
    if code != 0:
        return {"error": (stderr.strip().splitlines() or ["failed"])[-1][:200]}
    result = json.loads(stdout.strip().splitlines()[-1])
    seconds = result.get("seconds", wall)
    return {"seconds": round(seconds, 3), "process_wall_s": round(wall, 3),
            "cells_per_s": round(result["cells"] / seconds, 1), "peak_rss_mb": usage.ru_maxrss / 1024}


def _dense_bytes(path: Path) -> int:
    """What anndata.read_h5ad needs for X alone: data + indices + indptr, as stored."""
    import h5py

    with h5py.File(path, "r") as f:
        x = f["X"]
        return sum(x[k].size * x[k].dtype.itemsize for k in ("data", "indices", "indptr"))


def _available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def _print_row(row: dict, rows: list[dict]) -> None:
    """One measurement, with its ratio to the IO floor of the same file and round."""
    if "error" in row:
        click.echo(f"{row['cells']:>9,} {row['stage']:<11} failed: {row['error']}")
        return
    floor = _floor([r for r in rows if r["round"] == row["round"]], row["cells"])
    ratio = row["cells_per_s"] / floor["cells_per_s"] if floor else float("nan")
    click.echo(f"{row['cells']:>9,} {row['stage']:<11} {row['cells_per_s']:>11,.0f} cells/s "
               f"{ratio:>6.2f}x IO floor  peak RSS {row['peak_rss_mb']:>8,.0f} MB")


def _print_summary(rows: list[dict]) -> None:
    """Per file and stage: median cells/s over rounds, the median and range of the per-round ratio
    to the IO floor, the largest peak RSS; then scdr-score against --explain and the peers, per
    round, median and range."""
    click.echo("\nmedian over rounds (ratios taken within each round; range in brackets)")
    for cells in sorted({r["cells"] for r in rows}):
        rounds = sorted({r["round"] for r in rows if r["cells"] == cells})
        by_round = {k: {r["stage"]: r for r in rows
                        if r["cells"] == cells and r["round"] == k and "cells_per_s" in r}
                    for k in rounds}
        floors = {k: _floor(list(by_round[k].values()), cells) for k in rounds}
        stages = dict.fromkeys(r["stage"] for r in rows if r["cells"] == cells)
        for stage in stages:
            got = [by_round[k][stage] for k in rounds if stage in by_round[k]]
            if not got:
                continue
            ratios = [by_round[k][stage]["cells_per_s"] / floors[k]["cells_per_s"] for k in rounds
                      if stage in by_round[k] and floors[k]]
            speed = statistics.median(r["cells_per_s"] for r in got)
            ratio = (f"{statistics.median(ratios):.2f}x IO floor [{min(ratios):.2f}-{max(ratios):.2f}]"
                     if ratios else "no IO floor")
            click.echo(f"{cells:>9,} {stage:<11} {speed:>11,.0f} cells/s  {ratio}  peak RSS "
                       f"{max(r['peak_rss_mb'] for r in got):>7,.0f} MB  ({len(got)} rounds)")
        against = [_against_scdr(by_round[k]) for k in rounds]
        for other, what in (("explain", "--explain costs {:.2f}x plain scoring"),
                            ("peer", "scdr-score is {:.2f}x the peer pipeline's cells/s"),
                            ("celltypist", "scdr-score is {:.2f}x celltypist's cells/s")):
            ratios = [a[other] for a in against if other in a]
            if ratios:
                click.echo(f"{cells:>9,} {what.format(statistics.median(ratios))} "
                           f"[{min(ratios):.2f}-{max(ratios):.2f}]")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _gpu_name() -> str | None:
    if DEVICE != "cuda":
        return None
    proc = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or None


def _floor(rows: list[dict], cells: int) -> dict | None:
    """The IO floor row for a file size: the parallel-decompression floor for gzip files."""
    same = {r["stage"]: r for r in rows if r["cells"] == cells and "cells_per_s" in r}
    return same.get("io_parallel") or same.get("io")


def _against_scdr(same: dict[str, dict]) -> dict[str, float]:
    """For one file and round (rows by stage): scdr-score's cells/s over each peer's, and the
    cost of --explain (plain cells/s over explained), for the stages measured."""
    scdr = same.get("scdr")
    if scdr is None:
        return {}
    return {other: scdr["cells_per_s"] / same[other]["cells_per_s"]
            for other in ("peer", "celltypist", "explain") if other in same}


def _print_ratios(rows: list[dict]) -> None:
    """scdr-score against the peers and --explain against plain scoring, per file size."""
    for cells in sorted({r["cells"] for r in rows}):
        same = {r["stage"]: r for r in rows if r["cells"] == cells and "cells_per_s" in r}
        scdr = same.get("scdr")
        if scdr is None:
            continue
        against = _against_scdr(same)
        parts = []
        for peer in ("peer", "celltypist"):
            if peer in against:
                parts.append(f"{against[peer]:.1f}x {peer}'s cells/s at "
                             f"{scdr['peak_rss_mb'] / same[peer]['peak_rss_mb']:.0%} of its peak RSS")
        if "explain" in against:
            parts.append(f"--explain costs {against['explain']:.1f}x plain scoring")
        if "sequential" in same and "overlapped" in same:
            gain = same["overlapped"]["cells_per_s"] / same["sequential"]["cells_per_s"]
            parts.append(f"reading ahead on a thread: {gain:.2f}x")
        if parts:
            click.echo(f"{cells:>9,} scdr-score: " + "; ".join(parts))


def _plot(rows: list[dict], path: Path) -> None:
    """Cells/s and peak RSS against the number of cells, one line per stage, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in dict.fromkeys(r["stage"] for r in rows):
        pts = sorted((r["cells"], r["cells_per_s"], r["peak_rss_mb"]) for r in rows
                     if r["stage"] == stage and "cells_per_s" in r)
        if not pts:
            continue
        x = [p[0] for p in pts]
        axes[0].plot(x, [p[1] for p in pts], marker="o", label=stage)
        axes[1].plot(x, [p[2] for p in pts], marker="o", label=stage)
    for ax, label in zip(axes, ("cells / s", "peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells in the file")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    click.echo(f"wrote {path}", err=True)


def _write(rows: list[dict], out: Path, bundle: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "processor": _cpu_name(), "gpu": _gpu_name(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "bundle": str(bundle),
            "date": time.strftime("%Y-%m-%d")}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    with out.with_suffix(".csv").open("w", newline="") as fh:
        keys = ["cells", "density", "gzip", "round", "stage", "device", "cells_per_s", "seconds",
                "peak_rss_mb", "process_wall_s", "error"]
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    click.echo(f"wrote {out} and {out.with_suffix('.csv')}", err=True)


# --- stages, each run in a child process --------------------------------------------------


def stage_io(path: Path, bundle: Path) -> dict:
    """The IO floor: h5py reads data and indices by indptr ranges into reused buffers."""
    import h5py
    import numpy as np

    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        x = f["X"]
        indptr = x["indptr"][()]
        n = len(indptr) - 1
        biggest = int(np.max(indptr[CHUNK::CHUNK] - indptr[:-CHUNK:CHUNK], initial=indptr[-1]))
        data = np.empty(max(biggest, int(indptr[min(CHUNK, n)])), x["data"].dtype)
        idx = np.empty(data.shape[0], x["indices"].dtype)
        for lo in range(0, n, CHUNK):
            a, b = int(indptr[lo]), int(indptr[min(lo + CHUNK, n)])
            if b > a:
                x["data"].read_direct(data, np.s_[a:b], np.s_[0 : b - a])
                x["indices"].read_direct(idx, np.s_[a:b], np.s_[0 : b - a])
    return {"cells": n, "seconds": time.perf_counter() - t0}


def stage_io_parallel(path: Path, bundle: Path) -> dict:
    """The gzip floor: the chunks of data and indices read with pread and inflated by zlib on
    2 threads, by indptr ranges (nothing is kept: a chunk is inflated once per range it meets)."""
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    import h5py

    t0 = time.perf_counter()
    with h5py.File(path, "r") as f, ThreadPoolExecutor(2) as pool:
        x = f["X"]
        indptr = x["indptr"][()]
        n = len(indptr) - 1
        fd = os.open(path, os.O_RDONLY)
        plans = {}
        for name in ("data", "indices"):
            found: list = []
            x[name].id.chunk_iter(found.append)
            plans[name] = (x[name].chunks[0], sorted((c.chunk_offset[0], c.byte_offset, c.size)
                                                      for c in found))

        def inflate(job: tuple[int, int]) -> int:
            return len(zlib.decompress(os.pread(fd, job[1], job[0])))

        for lo in range(0, n, CHUNK):
            a, b = int(indptr[lo]), int(indptr[min(lo + CHUNK, n)])
            for chunk, extents in plans.values():
                jobs = [(off, size) for _, off, size in extents[a // chunk : (b - 1) // chunk + 1]]
                sum(pool.map(inflate, jobs))
        os.close(fd)
    return {"cells": n, "seconds": time.perf_counter() - t0}


@contextlib.contextmanager
def _scorer(path: Path, bundle: Path):
    """The scorer's pieces on ``path``: (source, normalise(chunk, out) -> x, predictor), with
    the Numba kernel compiled and warmed outside any timing."""
    from scdr.scoring.bundle import load_bundle
    from scdr.scoring.genes import match_genes
    from scdr.scoring.inference import make_predictor
    from scdr.scoring.normalize import normalize_chunk
    from scdr.scoring.reader import open_counts

    b = load_bundle(bundle)
    with open_counts(path) as src:
        match = match_genes(src.var_names, b.symbols, b.ensembl_ids)

        def normalize(chunk, out=None):
            return normalize_chunk(chunk.data, chunk.indices, chunk.indptr, match.gene_map,
                                   match.present, b.normalization, out=out)[0]

        normalize(next(src.chunks(16, prefetch=False)))
        yield src, normalize, make_predictor(b, DEVICE)


def _pipeline(prefetch: bool):
    def run(path: Path, bundle: Path) -> dict:
        """read -> normalise -> forward over the file, nothing written; ``prefetch`` reads the next
        chunk on a worker thread meanwhile (what scdr-score does)."""
        from scdr.scoring.engine import DEFAULT_CHUNK_SIZE

        with _scorer(path, bundle) as (src, normalize, pred):
            t0 = time.perf_counter()
            out = None
            for chunk in src.chunks(DEFAULT_CHUNK_SIZE, prefetch=prefetch):
                x = normalize(chunk, out)
                out = x if out is None or x.shape[0] > out.shape[0] else out
                pred.predict(x)
            return {"cells": src.n_obs, "seconds": time.perf_counter() - t0}
    return run


def _scorer_stages(path: Path, bundle: Path) -> dict:
    """Time read, normalise and forward of the scorer separately over the whole file."""
    times = {"read": 0.0, "normalize": 0.0, "forward": 0.0}
    with _scorer(path, bundle) as (src, normalize, pred):
        it = src.chunks(CHUNK, prefetch=False)
        while True:
            t0 = time.perf_counter()
            chunk = next(it, None)
            t1 = time.perf_counter()
            times["read"] += t1 - t0
            if chunk is None:
                break
            x = normalize(chunk)
            t2 = time.perf_counter()
            pred.predict(x)
            times["normalize"] += t2 - t1
            times["forward"] += time.perf_counter() - t2
        n = src.n_obs
    return {"cells": n, **times}


def _stage_of(name: str):
    def run(path: Path, bundle: Path) -> dict:
        t = _scorer_stages(path, bundle)
        return {"cells": t["cells"], "seconds": t[name]}
    return run


def stage_scdr(path: Path, bundle: Path, extra: tuple[str, ...] = ()) -> dict:
    """scdr-score end to end, as a user runs it (CLI in this process, output to a temp dir)."""
    import tempfile

    from click.testing import CliRunner

    from scdr.scoring.cli import score_command

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = CliRunner().invoke(score_command, [str(path), "--model", str(bundle), "-o",
                                                 f"{tmp}/out.csv", "-q", "--device", DEVICE,
                                                 *extra])
        seconds = time.perf_counter() - t0
    if res.exit_code != 0:
        raise SystemExit(f"scdr-score failed: {res.output.strip()}")
    import h5py

    with h5py.File(path, "r") as f:
        n = int(f["X"]["indptr"].shape[0] - 1)
    return {"cells": n, "seconds": seconds}


def stage_pathways(path: Path, bundle: Path) -> dict:
    """scdr-score --pathways (every latent pathway activity written as a column)."""
    return stage_scdr(path, bundle, ("--pathways",))


def stage_explain(path: Path, bundle: Path) -> dict:
    """scdr-score --explain (pathway level, default steps and rule)."""
    return stage_scdr(path, bundle, ("--explain",))


def stage_dask1(path: Path, bundle: Path) -> dict:
    """scdr-score --workers 1 (a local Dask cluster; cluster start-up included)."""
    return stage_scdr(path, bundle, ("--workers", "1"))


def stage_dask2(path: Path, bundle: Path) -> dict:
    """scdr-score --workers 2."""
    return stage_scdr(path, bundle, ("--workers", "2"))


def stage_peer(path: Path, bundle: Path) -> dict:
    """What scDEAL/SCAD users run: read all, scanpy normalise, subset, densify, torch forward."""
    import anndata as ad
    import numpy as np
    import scanpy as sc
    import torch

    from scdr.scoring.bundle import load_bundle
    from scdr.scoring.genes import match_genes
    from scdr.training.explain import onnx_as_torch

    b = load_bundle(bundle)
    net = onnx_as_torch(b.path / "model.onnx", output="probability", dtype=torch.float32)
    norm = b.normalization
    t0 = time.perf_counter()
    adata = ad.read_h5ad(path)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    match = match_genes(list(adata.var_names), b.symbols, b.ensembl_ids)
    cols = np.flatnonzero(match.gene_map >= 0)
    x = np.zeros((adata.n_obs, len(b.symbols)), np.float32)
    x[:, match.gene_map[cols]] = adata.X[:, cols].toarray()
    mu = x[:, match.present].mean(axis=1, keepdims=True)
    sd = x[:, match.present].std(axis=1, keepdims=True)
    x = (x - mu) / np.where(sd > 0, sd, 1)
    if norm.gene_mean is not None:
        x = (x - norm.gene_mean.astype(np.float32)) / norm.gene_std.astype(np.float32)
    x[:, ~match.present] = 0
    with torch.no_grad():
        for lo in range(0, x.shape[0], 4096):
            net(torch.from_numpy(x[lo : lo + 4096]))
    return {"cells": adata.n_obs, "seconds": time.perf_counter() - t0}


def stage_celltypist(path: Path, bundle: Path) -> dict:
    """celltypist 1.7: scanpy read + normalise, then annotate with a model over the same panel."""
    import anndata as ad
    import celltypist
    import numpy as np
    import scanpy as sc

    from scdr.scoring.bundle import load_bundle
    from scdr.scoring.genes import match_genes

    b = load_bundle(bundle)
    example = ad.read_h5ad(HERE.parent / "examples" / "celseq2_p1.h5ad")
    sc.pp.normalize_total(example, target_sum=1e4)
    sc.pp.log1p(example)
    match = match_genes(list(example.var_names), b.symbols, b.ensembl_ids)
    train = example[:, np.flatnonzero(match.gene_map >= 0)].copy()
    model = celltypist.train(train, labels="cell_line", n_jobs=1, max_iter=50, use_SGD=True,
                             check_expression=False)  # a panel subset no longer sums to 1e4
    t0 = time.perf_counter()
    adata = ad.read_h5ad(path)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    celltypist.annotate(adata, model=model, majority_voting=False)
    return {"cells": adata.n_obs, "seconds": time.perf_counter() - t0}


WHOLE_FILE_STAGES = {"peer", "celltypist"}  # load the file whole: skipped where it cannot fit
DEVICE_STAGES = {"forward", "sequential", "overlapped", "scdr", "pathways", "explain", "dask1",
                 "dask2"}
STAGES = {
    "io": stage_io,
    "io_parallel": stage_io_parallel,
    "sequential": _pipeline(prefetch=False),
    "overlapped": _pipeline(prefetch=True),
    "read": _stage_of("read"),
    "normalize": _stage_of("normalize"),
    "forward": _stage_of("forward"),
    "scdr": stage_scdr,
    "pathways": stage_pathways,
    "explain": stage_explain,
    "dask1": stage_dask1,
    "dask2": stage_dask2,
    "peer": stage_peer,
    "celltypist": stage_celltypist,
}


if __name__ == "__main__":
    main()
