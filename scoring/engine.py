"""The scoring loop: read a chunk of cells once, normalise it for each model, run ONNX Runtime.

``score`` is the Python API (returns the per-cell table); ``score_file`` is what ``scdr-score``
runs (streams rows into output files and returns the run summary).
"""

from __future__ import annotations

import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numba
import numpy as np

from scdr.scoring import __version__
from scdr.scoring.bundle import Bundle, find_bundle, load_bundle
from scdr.scoring.errors import InputError, ScdrError
from scdr.scoring.explain import (
    DEFAULT_RULE,
    DEFAULT_STEPS,
    FD_STEP,
    IntegratedGradients,
    baseline_vector,
)
from scdr.scoring.genes import GeneMatch, match_genes
from scdr.scoring.inference import Predictor, make_predictor, make_session
from scdr.scoring.normalize import STATUS_ZERO_COUNTS, normalize_chunk
from scdr.scoring.normalized_input import check_normalized
from scdr.scoring.output import ExplainWriter, TableWriter
from scdr.scoring.reader import Chunk, CountSource, from_arrays, open_counts
from scdr.scoring.report import (
    ReportCollector,
    marker_caveat,
    read_embedding,
    require_matplotlib,
    write_report,
)
from scdr.scoring.signals import INTERRUPTED  # set by the CLI's handler; raised between chunks

if TYPE_CHECKING:
    import scipy.sparse as sp  # only for in-memory matrices: scoring a file never imports it

DEFAULT_CHUNK_SIZE = 8192
MIN_COVERAGE = 0.5
WARN_COVERAGE = 0.8  # below this the calls drift measurably (89% label agreement at 56%)
MAX_GENE_CELLS = 100
TOP_PATHWAYS = 3
SENSITIVE, RESISTANT = "sensitive", "resistant"


@dataclass(frozen=True)
class ExplainSettings:
    """How to attribute calls: integration steps and rule, baseline, cells for gene level."""

    steps: int = DEFAULT_STEPS
    rule: str = DEFAULT_RULE
    baseline: str = "zero"
    gene_cells: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ReadOptions:
    """How cells are read and scored, the same for every entry point (API, CLI, Dask workers)."""

    layer: str | None = None  # matrix to read: X, raw/X or a layer; None: the first holding counts
    gene_column: str | None = None  # var column with gene names; None: the var index
    normalized: bool = False  # the matrix holds log1p(CP10k) values, not counts
    chunk_size: int = DEFAULT_CHUNK_SIZE  # cells per chunk (at most)
    device: str = "auto"  # ONNX Runtime provider: auto, cpu or cuda
    threads: int | None = None  # threads for ONNX Runtime and the kernels; None: all cores
    min_coverage: float = MIN_COVERAGE  # fraction of the panel the file must name

    def __post_init__(self) -> None:
        if not 0.0 < self.min_coverage <= 1.0:
            raise ScdrError(f"min_coverage must be in (0, 1], got {self.min_coverage}")
        if self.chunk_size < 1:
            raise ScdrError(f"chunk size must be at least 1, got {self.chunk_size}")


@dataclass
class ScoreTable:
    """Per-cell predictions of one model, in input order."""

    drug: str
    cell_ids: list[str]
    probability: np.ndarray
    logit: np.ndarray
    label: np.ndarray
    zero_counts: np.ndarray
    pathways: np.ndarray
    pathway_names: list[str]
    coverage: float
    attributions: np.ndarray | None = None
    ig_gap: np.ndarray | None = None

    def to_pandas(self) -> Any:
        """The table as a pandas DataFrame indexed by cell id (needs pandas)."""
        import pandas as pd

        frame = pd.DataFrame(
            {"probability": self.probability, "label": self.label, "zero_counts": self.zero_counts},
            index=pd.Index(self.cell_ids, name="cell_id"),
        )
        paths = pd.DataFrame(self.pathways, index=frame.index,
                             columns=[f"pathway:{n}" for n in self.pathway_names])
        return pd.concat([frame, paths], axis=1)


@dataclass
class ModelRun:
    """One model's state during a pass: its predictor, gene match and running counts."""

    predictor: Predictor
    match: GeneMatch
    explainer: IntegratedGradients | None = None
    gene_explainer: IntegratedGradients | None = None
    gene_cells: frozenset[str] = frozenset()
    n_cells: int = 0
    n_sensitive: int = 0
    n_zero: int = 0
    rescale: bool = False  # --normalized input of another target: score expm1(values) as counts
    notes: list[str] = field(default_factory=list)  # warnings about the input, for log and summary
    buffer: np.ndarray | None = field(default=None, repr=False)

    @property
    def bundle(self) -> Bundle:
        """The bundle this run scores with."""
        return self.predictor.bundle


@dataclass
class ChunkResult:
    """Predictions for the cells of one chunk."""

    cell_ids: list[str]
    probability: np.ndarray
    logit: np.ndarray
    label: np.ndarray
    zero_counts: np.ndarray
    pathways: np.ndarray
    attributions: np.ndarray | None = None
    ig_gap: np.ndarray | None = None
    top_pathways: list[str] | None = None
    gene_attributions: list[tuple[str, np.ndarray]] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)


def score(
    data: str | Path | np.ndarray | sp.spmatrix | sp.sparray,
    drug: str | None = None,
    model: str | Path | None = None,
    *,
    gene_names: Sequence[str] | None = None,
    cell_ids: Sequence[str] | None = None,
    layer: str | None = None,
    gene_column: str | None = None,
    normalized: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str = "auto",
    threads: int | None = None,
    min_coverage: float = MIN_COVERAGE,
    explain: ExplainSettings | None = None,
) -> ScoreTable:
    """Score every cell of an h5ad path, or of a cells x genes matrix with ``gene_names``.

    ``drug`` names a shipped model (name or alias, any case); ``model`` is any bundle folder.
    The other keywords are those of ``ReadOptions``. With ``explain``, pathway attributions of
    every call are added (``attributions``, ``ig_gap``).
    """
    options = ReadOptions(layer, gene_column, normalized, chunk_size, device, threads, min_coverage)
    bundle = resolve_bundle(drug, model)
    with open_source(data, gene_names, cell_ids, options) as source:
        run = prepare_run(bundle, source, options, explain)
        for note in match_warnings(run.match, options.min_coverage) + run.notes:
            warnings.warn(f"{bundle.drug}: {note}", UserWarning, stacklevel=2)
        parts: list[ChunkResult] = []
        stream(source, [run], options, lambda _run, res: parts.append(res))
    n_paths = len(bundle.pathway_names)

    def cat(name: str, empty: np.ndarray) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts]) if parts else empty

    return ScoreTable(
        drug=bundle.drug,
        cell_ids=[c for p in parts for c in p.cell_ids],
        probability=cat("probability", np.zeros(0, np.float32)),
        logit=cat("logit", np.zeros(0, np.float32)),
        label=cat("label", np.zeros(0, dtype="<U9")),
        zero_counts=cat("zero_counts", np.zeros(0, bool)),
        pathways=cat("pathways", np.zeros((0, n_paths), np.float32)),
        pathway_names=bundle.pathway_names,
        coverage=run.match.coverage,
        attributions=cat("attributions", np.zeros((0, n_paths), np.float32)) if explain else None,
        ig_gap=cat("ig_gap", np.zeros(0, np.float32)) if explain else None,
    )


def score_file(
    path: str | Path,
    bundles: list[Bundle],
    outputs: list[Path],
    options: ReadOptions = ReadOptions(),
    *,
    pathways: bool = False,
    explain: ExplainSettings | None = None,
    explain_outputs: list[Path] | None = None,
    groupby: str | None = None,
    report: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Score ``path`` with every bundle in one pass, writing one table per bundle atomically.

    With ``explain``, each bundle also gets an attribution file (``explain_outputs``) and a CSV of
    mean attributions by predicted label and by the ``groupby`` obs column. With ``report``, an
    HTML report of the run is written there (needs matplotlib).
    """
    path = Path(path)
    if report is not None:
        require_matplotlib()
    t0 = time.perf_counter()
    with open_source(path, None, None, options) as source:
        stat = path.stat()  # size and mtime identify the input in the audit record
        runs = [prepare_run(b, source, options, explain) for b in bundles]
        for run in runs:
            m = run.match
            log(f"{run.bundle.drug}: {m.n_matched}/{m.n_panel} panel genes found "
                f"({m.coverage:.1%}) in {source.location}")
            for warning in match_warnings(m, options.min_coverage) + run.notes:
                log(f"{run.bundle.drug}: warning: {warning}")
            if (caveat := marker_caveat(run.bundle.card)) is not None:
                log(f"{run.bundle.drug}: note: {caveat}")
        writers: dict[int, list[TableWriter | ExplainWriter]] = {}
        for i, (run, out) in enumerate(zip(runs, outputs)):
            names = run.bundle.pathway_names
            writers[id(run)] = [TableWriter(out, names if pathways else None, explain is not None)]
            if explain is not None and explain_outputs is not None:
                writers[id(run)].append(ExplainWriter(
                    explain_outputs[i], source.n_obs, names, run.bundle.symbols,
                    _explain_attrs(run, explain), groupby))
        collectors = [ReportCollector(r.bundle.drug, r.bundle.pathway_names, source.n_obs,
                                      groupby, r.bundle.threshold, card=r.bundle.card)
                      for r in runs] if report is not None else []
        for run, col in zip(runs, collectors):
            writers[id(run)].append(col)
        all_writers = [w for ws in writers.values() for w in ws]
        try:
            for w in all_writers:
                w.open()

            def sink(run: ModelRun, res: ChunkResult) -> None:
                for w in writers[id(run)]:
                    w.write(res)

            stream(source, runs, options, sink, progress,
                   obs_columns=(groupby,) if groupby else ())
            _check_interrupted()
            for w in all_writers:
                w.commit()
        except BaseException:
            for w in all_writers:
                w.abort()
            raise
        n_obs, location = source.n_obs, source.location
    wall = time.perf_counter() - t0
    summary = {
        "input": str(path),
        "input_size_bytes": stat.st_size,
        "input_mtime": datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(),
        "matrix": location,
        "cells": n_obs,
        "wall_time_s": round(wall, 3),
        "cells_per_s": round(n_obs / wall, 1) if wall > 0 else None,
        "scdr_version": __version__,
        "versions": runtime_versions(),
        "chunk_size": options.chunk_size,
        "threads": options.threads,
        "normalized_input": options.normalized,
        "min_coverage": options.min_coverage,
        "models": [
            {
                "drug": r.bundle.drug,
                "bundle": str(r.bundle.path),
                "sha256": r.bundle.sha256,
                "providers": r.predictor.providers,
                "output": str(out),
                "panel_genes": r.match.n_panel,
                "genes_found": r.match.n_matched,
                "coverage": round(r.match.coverage, 4),
                "panel_genes_summed": r.match.n_summed,
                "warnings": match_warnings(r.match, options.min_coverage) + r.notes,
                "normalized_input_rescaled": r.rescale,
                "caveat": marker_caveat(r.bundle.card),
                "threshold": r.bundle.threshold,
                "labels": {SENSITIVE: r.n_sensitive, RESISTANT: r.n_cells - r.n_sensitive},
                "zero_count_cells": r.n_zero,
                **({"explain": _explain_summary(r, writers[id(r)])} if explain else {}),
            }
            for r, out in zip(runs, outputs)
        ],
    }
    if report is not None:
        write_report(report, summary, collectors, read_embedding(path))
        summary["report"] = str(report)
    return summary


def match_warnings(match: GeneMatch, min_coverage: float = MIN_COVERAGE) -> list[str]:
    """What a user should know about the gene match although it passed the coverage floor."""
    out = []
    if match.coverage < WARN_COVERAGE and min_coverage < WARN_COVERAGE:
        out.append(f"only {match.coverage:.0%} of the model's panel genes are in the file (below "
                   f"{WARN_COVERAGE:.0%}, calls move measurably); check --gene-column")
    if match.n_summed:
        out.append(f"{match.n_summed} panel gene(s) are fed by several features of the file, "
                   "whose counts are summed")
    return out


def runtime_versions() -> dict[str, str]:
    """Versions of everything that computes a prediction, for the run summary's audit record."""
    import h5py
    import onnxruntime
    import scipy

    return {"scdr": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__,
            "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
            "numba": numba.__version__, "onnxruntime": onnxruntime.__version__}


def resolve_bundle(drug: str | None, model: str | Path | None) -> Bundle:
    """Load the bundle named by ``model`` (a folder) or ``drug`` (a shipped model)."""
    if (drug is None) == (model is None):
        raise ScdrError("name exactly one of drug (a shipped model) or model (a bundle folder)")
    return load_bundle(model if model is not None else find_bundle(str(drug)))


def open_source(
    data: str | Path | np.ndarray | sp.spmatrix | sp.sparray,
    gene_names: Sequence[str] | None,
    cell_ids: Sequence[str] | None,
    options: ReadOptions,
) -> CountSource:
    """A count source for a path (h5ad) or an in-memory matrix with its gene names."""
    if isinstance(data, str | Path):
        return open_counts(data, layer=options.layer, gene_column=options.gene_column,
                           normalized=options.normalized)
    if gene_names is None:
        raise InputError("scoring a matrix needs gene_names (one per column)")
    return from_arrays(data, list(gene_names), None if cell_ids is None else list(cell_ids),
                       normalized=options.normalized)


def prepare_run(
    bundle: Bundle, source: CountSource, options: ReadOptions, explain: ExplainSettings | None = None,
) -> ModelRun:
    """Match genes (refusing low coverage), check the input kind, and create the sessions."""
    device, threads = options.device, options.threads
    if source.n_obs == 0:
        raise InputError(f"{source.location} has no cells")
    if source.n_vars == 0:
        raise InputError(f"{source.location} has no genes")
    if options.normalized and not bundle.normalization.accepts_normalized:
        raise InputError(f"the {bundle.drug} model needs raw counts; it cannot take --normalized")
    match = match_genes(source.var_names, bundle.symbols, bundle.ensembl_ids)
    if match.coverage < options.min_coverage:
        raise InputError(
            f"only {match.n_matched} of the {bundle.drug} model's {match.n_panel} genes are in "
            f"the file ({1 - match.coverage:.1%} missing; the floor is {options.min_coverage:.0%} "
            "coverage, set by --min-coverage); if gene names are in a var column, name it with "
            "--gene-column (e.g. feature_name)"
        )
    if threads:
        numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))
    predictor = make_predictor(bundle, device, threads)
    run = ModelRun(predictor, match)
    if options.normalized and bundle.normalization.target_sum is not None:
        claim = check_normalized(source, bundle.normalization.target_sum)
        run.rescale = claim.rescale
        run.notes += [claim.note] if claim.note else []
    if explain is not None:
        if len(explain.gene_cells) > MAX_GENE_CELLS:
            raise ScdrError(f"gene-level attributions are capped at {MAX_GENE_CELLS} cells "
                            f"({len(explain.gene_cells)} asked): they cost a full model pass per "
                            "gene and step")
        head = make_session(bundle.head_bytes, device, threads, what=f"{bundle.path}/head.onnx")
        base = baseline_vector(bundle.card, explain.baseline, len(bundle.pathway_names))
        slopes = None if bundle.fd_bytes is None else make_session(
            bundle.fd_bytes, device, threads, what=f"{bundle.path}/head_fd.onnx")
        run.explainer = IntegratedGradients(head, base, explain.steps, explain.rule,
                                            h=bundle.fd_step or FD_STEP, slopes=slopes)
        if explain.gene_cells:
            run.gene_explainer = IntegratedGradients(
                predictor.session, np.zeros(len(bundle.symbols), np.float32),
                explain.steps, explain.rule)
            run.gene_cells = explain.gene_cells
    return run


def stream(
    source: CountSource,
    runs: list[ModelRun],
    options: ReadOptions,
    sink: Callable[[ModelRun, ChunkResult], None],
    progress: Callable[[int, int], None] | None = None,
    obs_columns: Sequence[str] = (),
    rows: tuple[int, int | None] = (0, None),
) -> None:
    """Read each chunk of the rows ``rows`` once and hand every model's predictions to ``sink``."""
    for chunk in source.chunks(options.chunk_size, rows[0], rows[1], obs_columns=obs_columns,
                               prefetch=_read_ahead()):
        for run in runs:
            sink(run, _predict_chunk(run, chunk, options.normalized))
        _check_interrupted()
        if progress is not None:
            progress(chunk.stop, source.n_obs)


def _read_ahead() -> bool:
    """Read the next chunk on a thread only with more than two usable cores: on two, normalising
    and the forward pass already use both, and a third busy thread preempts one of the kernel's
    (5-9% slower end to end, plain, gzip and --explain alike; ``benchmarks/README.md``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) > 2


def _check_interrupted() -> None:
    """Raise the interruption that a signal handler could only record (see ``INTERRUPTED``)."""
    if INTERRUPTED.is_set():
        INTERRUPTED.armed = False  # a burst's next signal must not interrupt the clean-up
        raise KeyboardInterrupt


def _predict_chunk(run: ModelRun, chunk: Chunk, normalized: bool) -> ChunkResult:
    bundle = run.bundle
    data = chunk.data
    if run.rescale:  # log1p of another target: expm1 gives counts whose library size is it
        data, normalized = np.expm1(data.astype(np.float64)).astype(np.float32), False
    try:
        x, status = normalize_chunk(
            data, chunk.indices, chunk.indptr, run.match.gene_map, run.match.present,
            bundle.normalization, normalized_input=normalized, out=run.buffer,
        )
    except InputError as e:
        raise InputError(f"rows {chunk.start}-{chunk.stop - 1}: {e}") from None
    run.buffer = x if run.buffer is None or x.shape[0] > run.buffer.shape[0] else run.buffer
    out = run.predictor.predict(x)
    prob = out["probability"]
    sensitive = prob >= bundle.threshold
    zero = status == STATUS_ZERO_COUNTS
    run.n_cells += len(prob)
    run.n_sensitive += int(sensitive.sum())
    run.n_zero += int(zero.sum())
    result = ChunkResult(
        cell_ids=chunk.obs_names,
        probability=prob,
        logit=out["logit"],
        label=np.where(sensitive, SENSITIVE, RESISTANT),
        zero_counts=zero,
        pathways=out["pathways"],
        groups=chunk.obs_columns,
    )
    if run.explainer is not None:
        attr = run.explainer.attribute(out["pathways"])
        result.attributions, result.ig_gap = attr.values, attr.gap
        result.top_pathways = _top_pathways(attr.values, sensitive, bundle.pathway_names)
    if run.gene_explainer is not None:
        rows = [i for i, c in enumerate(chunk.obs_names) if c in run.gene_cells]
        if rows:
            genes = run.gene_explainer.attribute_features(x[rows])
            result.gene_attributions = [(chunk.obs_names[i], genes.values[k])
                                        for k, i in enumerate(rows)]
    return result


def _top_pathways(attr: np.ndarray, sensitive: np.ndarray, names: list[str]) -> list[str]:
    """Per cell, the pathways pushing hardest towards its call, strongest first (";"-joined).

    The positive ones come first in the descending order, so each cell's list is a prefix of
    its top ``TOP_PATHWAYS``; the strings are joined column by column over the whole chunk."""
    signed = np.where(sensitive[:, None], attr, -attr)
    k = min(TOP_PATHWAYS, attr.shape[1])
    order = top_k_stable(signed, k)
    pushing = np.take_along_axis(signed, order, axis=1) > 0
    labels = np.asarray(names, dtype=object)[order]
    out = np.where(pushing[:, 0], labels[:, 0], "")
    for j in range(1, k):
        out = np.where(pushing[:, j], out + ";" + labels[:, j], out)
    return out.tolist()


def top_k_stable(values: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of the ``k`` largest values, largest first, ties to the lower column:
    ``np.argsort(-values, axis=1, kind="stable")[:, :k]`` without sorting every row."""
    values = np.ascontiguousarray(values)
    order = np.empty((values.shape[0], k), np.int64)
    if k > 0 and values.shape[0]:
        _top_k_rows(values, order)
    return order


@numba.njit(parallel=True, cache=True)
def _top_k_rows(values, order):  # pragma: no cover
    n, d = values.shape
    k = order.shape[1]
    for i in numba.prange(n):
        filled = 0
        for j in range(d):
            v = values[i, j]
            if filled == k and not v > values[i, order[i, k - 1]]:
                continue  # not above the k-th: an equal value keeps the earlier column
            pos = filled if filled < k else k - 1
            while pos > 0 and v > values[i, order[i, pos - 1]]:
                if pos < k:
                    order[i, pos] = order[i, pos - 1]
                pos -= 1
            order[i, pos] = j
            if filled < k:
                filled += 1


def _explain_attrs(run: ModelRun, explain: ExplainSettings) -> dict[str, Any]:
    ig = run.explainer
    assert ig is not None
    return {"steps": explain.steps, "rule": explain.rule, "baseline": explain.baseline,
            "fd_step": ig.h, "baseline_logit": ig.baseline_logit, "drug": run.bundle.drug}


def _explain_summary(run: ModelRun, writers: list[Any]) -> dict[str, Any]:
    table = writers[0]
    out: dict[str, Any] = {"worst_relative_gap": table.worst_gap,
                           "mean_relative_gap": table.gap_sum / max(table.n_rows, 1)}
    if len(writers) > 1:
        out["attributions"] = str(writers[1].path)
        out["by_group"] = str(writers[1].group_csv)
    assert run.explainer is not None
    out["baseline_logit"] = run.explainer.baseline_logit
    return out
