"""scverse integration: score an in-memory AnnData and write the calls into it.

anndata is an optional import here (the object is duck-typed); X is never copied: the count
matrix is read chunk by chunk as the file reader would. Several drugs are scored before anything
is written, so a failure (an unknown name, too few panel genes) leaves the object as it was.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from scdr.scoring.bundle import Bundle
from scdr.scoring.engine import (
    DEFAULT_CHUNK_SIZE,
    MIN_COVERAGE,
    ExplainSettings,
    ScoreTable,
    resolve_bundle,
    score,
)
from scdr.scoring.errors import InputError, ScdrError
from scdr.scoring.reader import looks_like_counts

LABELS = ["resistant", "sensitive"]


def annotate(
    adata: Any,
    drug: str | Sequence[str] | None = None,
    model: str | Path | Sequence[str | Path] | None = None,
    *,
    layer: str | None = None,
    gene_column: str | None = None,
    normalized: bool = False,
    explain: ExplainSettings | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str = "auto",
    threads: int | None = None,
    min_coverage: float = MIN_COVERAGE,
) -> str | list[str]:
    """Score ``adata`` with one or several models and write the calls into it, in place.

    ``drug`` names shipped models (a name or alias, or a list of them); ``model`` names bundle
    folders instead (one, or a list). For each model, with ``key = "scdr_<drug>"``:
    ``obs[key + "_prob"]`` (P(sensitive)), ``obs[key + "_label"]`` (categorical resistant /
    sensitive), ``obsm[key + "_pathways"]``, with ``explain`` ``obsm[key + "_attributions"]``,
    and ``uns[key]``: the provenance (drug, pathways, threshold value and rule, model_sha256 of
    model.onnx, scdr_version, coverage, panel_genes, matrix, zero_count_cells, normalized_input,
    and the explain settings), in types ``write_h5ad`` stores.

    Returns the key for a single name, or the list of keys, in order, for a list. Every model is
    resolved and scored before anything is written: a bad name or a failed scoring leaves
    ``adata`` unchanged. The counts come from ``layer`` (a layer name, ``"raw"`` or ``"X"``), else
    the first of ``layers["counts"]``, ``raw.X``, ``X`` that holds counts, as for files; they are
    read once per model and never copied.
    """
    bundles, several = _bundles(drug, model)
    matrix, genes, where = _counts_of(adata, layer, gene_column, normalized)
    cell_ids = list(map(str, adata.obs_names))
    tables = [score(matrix, model=b.path, gene_names=genes, cell_ids=cell_ids,
                    normalized=normalized, chunk_size=chunk_size, device=device, threads=threads,
                    min_coverage=min_coverage, explain=explain)
              for b in bundles]
    keys = [_write(adata, b, t, where, normalized, explain) for b, t in zip(bundles, tables)]
    return keys if several else keys[0]


def provenance(bundle: Bundle, table: ScoreTable, matrix: str, normalized: bool,
               explain: ExplainSettings | None) -> dict[str, Any]:
    """What ``uns["scdr_<drug>"]`` records of a run: enough to say which model, how it called and
    on what, in plain str/int/float/list/dict values so that ``write_h5ad`` stores it."""
    from scdr import __version__

    key = f"scdr_{table.drug}"
    threshold = bundle.card["threshold"]
    record: dict[str, Any] = {
        "drug": str(table.drug),
        "pathways": [str(n) for n in table.pathway_names],
        "threshold": {
            "value": float(threshold["value"]),
            "meaning": f"obs['{key}_label'] is 'sensitive' where obs['{key}_prob'] >= "
                       f"{float(threshold['value']):g}",
            **({"rule": threshold["rule"]} if isinstance(threshold.get("rule"), str) else {}),
        },
        "model_sha256": str(bundle.sha256["model.onnx"]),
        "scdr_version": str(__version__),
        "coverage": float(table.coverage),
        "panel_genes": len(bundle.symbols),
        "matrix": str(matrix),
        "zero_count_cells": int(np.count_nonzero(table.zero_counts)),
        "normalized_input": bool(normalized),
    }
    if explain is not None:
        record["explain"] = {"steps": int(explain.steps), "rule": str(explain.rule),
                             "baseline": str(explain.baseline)}
    return record


def _bundles(drug: str | Sequence[str] | None,
             model: str | Path | Sequence[str | Path] | None) -> tuple[list[Bundle], bool]:
    """Every named model, loaded and verified before any scoring; and whether a list was given."""
    if (drug is None) == (model is None):
        raise ScdrError("name exactly one of drug (shipped models) or model (bundle folders)")
    names = drug if drug is not None else model
    several = not isinstance(names, str | Path)
    items = list(names) if several else [names]
    if not items:
        raise ScdrError("name at least one drug or model")
    bundles = [resolve_bundle(item, None) if drug is not None else resolve_bundle(None, item)
               for item in items]
    seen: dict[str, Any] = {}
    for item, bundle in zip(items, bundles):
        if bundle.drug in seen:
            raise ScdrError(f"{seen[bundle.drug]!s} and {item!s} are the same model "
                            f"({bundle.drug}); name each model once")
        seen[bundle.drug] = item
    return bundles, several


def _write(adata: Any, bundle: Bundle, table: ScoreTable, where: str, normalized: bool,
           explain: ExplainSettings | None) -> str:
    import pandas as pd

    key = f"scdr_{table.drug}"
    adata.obs[f"{key}_prob"] = table.probability
    adata.obs[f"{key}_label"] = pd.Categorical(table.label, categories=LABELS)
    adata.obsm[f"{key}_pathways"] = table.pathways
    if table.attributions is not None:
        adata.obsm[f"{key}_attributions"] = table.attributions
    elif f"{key}_attributions" in adata.obsm:  # from an earlier run: no longer these calls'
        del adata.obsm[f"{key}_attributions"]
    adata.uns[key] = provenance(bundle, table, where, normalized, explain)
    return key


def _counts_of(adata: Any, layer: str | None, gene_column: str | None,
               normalized: bool) -> tuple[Any, list[str], str]:
    candidates = []
    if layer is not None:
        candidates = [_named(adata, layer)]
    else:
        if "counts" in getattr(adata, "layers", {}):
            candidates.append((adata.layers["counts"], adata.var, "layers/counts"))
        if getattr(adata, "raw", None) is not None:
            candidates.append((adata.raw.X, adata.raw.var, "raw/X"))
        candidates.append((adata.X, adata.var, "X"))
    for matrix, var, where in candidates:
        if matrix is None:
            continue
        if normalized or layer is not None or looks_like_counts(_sample(matrix)):
            return matrix, _gene_names(var, gene_column), where
    raise InputError("the AnnData holds no raw counts in layers['counts'], raw.X or X; "
                     "name them with layer=..., or pass normalized=True for log1p(CP10k) data")


def _named(adata: Any, layer: str) -> tuple[Any, Any, str]:
    if layer == "X":
        return adata.X, adata.var, "X"
    if layer in ("raw", "raw/X", "raw.X"):
        if adata.raw is None:
            raise InputError("the AnnData has no raw")
        return adata.raw.X, adata.raw.var, "raw/X"
    name = layer.removeprefix("layers/")
    if name not in adata.layers:
        raise InputError(f"the AnnData has no layer '{name}'; layers: {', '.join(adata.layers)}")
    return adata.layers[name], adata.var, f"layers/{name}"


def _gene_names(var: Any, gene_column: str | None) -> list[str]:
    if gene_column is None:
        return list(map(str, var.index))
    if gene_column not in var.columns:
        raise InputError(f"var has no column '{gene_column}'; columns: {', '.join(var.columns)}")
    return list(map(str, var[gene_column]))


def _sample(matrix: Any) -> np.ndarray:
    if sp.issparse(matrix):
        return np.asarray(matrix.data[:100_000])
    return np.asarray(matrix[: max(1, 100_000 // max(matrix.shape[1], 1))]).ravel()
