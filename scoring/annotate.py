"""scverse integration: score an in-memory AnnData and write the calls into it.

anndata is an optional import here (the object is duck-typed); X is never copied: the count
matrix is read chunk by chunk as the file reader would.
"""

from typing import Any

import numpy as np
import scipy.sparse as sp

from scdr.scoring.engine import DEFAULT_CHUNK_SIZE, ExplainSettings, score
from scdr.scoring.errors import InputError
from scdr.scoring.h5ad import looks_like_counts


def annotate(
    adata: Any,
    drug: str | None = None,
    model: str | None = None,
    *,
    layer: str | None = None,
    gene_column: str | None = None,
    normalized: bool = False,
    explain: ExplainSettings | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str = "auto",
    threads: int | None = None,
) -> str:
    """Add ``obs["scdr_<drug>_prob"]``, ``obs["scdr_<drug>_label"]``,
    ``obsm["scdr_<drug>_pathways"]`` (and ``obsm["scdr_<drug>_attributions"]`` with ``explain``)
    and ``uns["scdr_<drug>"]`` to ``adata`` in place; returns the key prefix.

    The counts come from ``layer`` (a layer name, ``"raw"`` or ``"X"``), else the first of
    ``layers["counts"]``, ``raw.X``, ``X`` that holds counts, as for files.
    """
    matrix, genes, where = _counts_of(adata, layer, gene_column, normalized)
    table = score(matrix, drug=drug, model=model, gene_names=genes,
                  cell_ids=list(map(str, adata.obs_names)), normalized=normalized,
                  chunk_size=chunk_size, device=device, threads=threads, explain=explain)
    key = f"scdr_{table.drug}"
    import pandas as pd

    adata.obs[f"{key}_prob"] = table.probability
    adata.obs[f"{key}_label"] = pd.Categorical(table.label, categories=["resistant", "sensitive"])
    adata.obsm[f"{key}_pathways"] = table.pathways
    if table.attributions is not None:
        adata.obsm[f"{key}_attributions"] = table.attributions
    adata.uns[key] = {"pathways": list(table.pathway_names), "coverage": table.coverage,
                      "matrix": where, "zero_count_cells": int(table.zero_counts.sum())}
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
