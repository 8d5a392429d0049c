"""Open an input and pick the matrix to score: where AnnData keeps counts, and which format.

Inputs are recognised by their structure, never by their name: an HDF5 file holding AnnData
(``.h5ad``) or a 10x Genomics feature-barcode matrix (Cell Ranger 3+ ``.h5``), or an AnnData
zarr store (a directory, or a zip file). The matrix element at the chosen location is read by
the source registered for its encoding (``registry``).
"""

from pathlib import Path
from typing import Any

from scdr.scoring.errors import InputError
from scdr.scoring.reader import dense, sparse, tenx, zarr_store  # noqa: F401 (registers encodings)
from scdr.scoring.reader.base import CountSource, FileSource, short
from scdr.scoring.reader.counts import first_non_count, looks_like_counts, require_counts
from scdr.scoring.reader.guards import Tree, open_h5
from scdr.scoring.reader.limits import COUNT_LOCATIONS
from scdr.scoring.reader.names import frame_names
from scdr.scoring.reader.registry import source_for

ANNDATA_ELEMENTS = ("X", "raw", "raw.X", "layers")


def open_counts(
    path: str | Path,
    layer: str | None = None,
    gene_column: str | None = None,
    normalized: bool = False,
) -> CountSource:
    """Open an h5ad, a 10x Genomics matrix .h5 or an AnnData zarr store and pick the matrix.

    Without ``layer``, the first of ``layers/counts``, ``raw/X``, ``X`` that holds integer counts
    is used; with ``normalized=True`` it is ``X`` (already log-normalised values).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    tree = _open_tree(path)
    what = "AnnData"
    try:
        if not any(tree.lookup(tree.root, name) is not None for name in ANNDATA_ELEMENTS):
            if tenx.is_tenx(tree):
                what = "a 10x Genomics matrix"
                return tenx.open_tenx(tree, layer, gene_column, normalized)
            raise InputError(f"{path} is {tree.kind} but not AnnData: it has no X, raw or layers"
                             + (", nor the 'matrix' group of a 10x Genomics .h5"
                                if tree.kind == "HDF5" else ""))
        return _open_anndata(tree, layer, gene_column, normalized)
    except InputError:
        tree.close()
        raise
    except tree.errors as e:
        tree.close()
        raise InputError(f"{path} could not be read as {what} ({short(e)})") from None


def _open_tree(path: Path) -> Tree:
    if path.is_dir():
        if zarr_store.is_zarr_dir(path):
            return zarr_store.open_zarr(path)
        raise InputError(f"input is not a file: {path}")
    if not path.is_file():
        raise InputError(f"input is not a file: {path}")
    if zarr_store.is_zip(path):
        return zarr_store.open_zarr(path)
    return open_h5(path)


def _open_anndata(tree: Tree, layer: str | None, gene_column: str | None,
                  normalized: bool) -> CountSource:
    path = tree.path
    if layer is not None:
        location = _canonical_location(layer)
        node, var_path = _locate(tree, location)
        if node is None:
            available = ", ".join(_available(tree)) or "none"
            raise InputError(f"{path} has no matrix at '{layer}'; available: {available}")
        source = _file_source(tree, location, node, var_path, gene_column)
        if not normalized:
            require_counts(source.sample_values(), f"'{location}'")
        return source
    if normalized:
        node, var_path = _locate(tree, "X")
        if node is None:
            raise InputError(f"{path} has no X; name the normalised matrix with --layer")
        return _file_source(tree, "X", node, var_path, gene_column)
    tried = []
    for location in COUNT_LOCATIONS:
        node, var_path = _locate(tree, location)
        if node is None:
            continue
        source = _file_source(tree, location, node, var_path, gene_column)
        sample = source.sample_values()
        if looks_like_counts(sample):
            return source
        tried.append(f"{location} (e.g. {first_non_count(sample):.4g})")
    if not tried:
        raise InputError(f"{path} has no count matrix in {', '.join(COUNT_LOCATIONS)}")
    raise InputError(
        f"{path} holds no raw counts: {'; '.join(tried)} look normalised. "
        "Name the counts with --layer, or pass --normalized if X is log1p(CP10k)"
    )


def _canonical_location(layer: str) -> str:
    if layer in ("X", "raw/X", "raw.X") or layer.startswith("layers/"):
        return "raw/X" if layer == "raw.X" else layer
    return f"layers/{layer}"


def _locate(tree: Tree, location: str) -> tuple[Any, str]:
    """The matrix node at ``location`` and the path of its var table, or ``(None, "")``."""
    root = tree.root
    if location == "raw/X":
        raw = tree.lookup(root, "raw")
        if tree.is_group(raw) and tree.lookup(raw, "X") is not None:
            return tree.lookup(raw, "X"), "raw/var"
        legacy = tree.lookup(root, "raw.X")
        return (legacy, "raw.var") if legacy is not None else (None, "")
    if location.startswith("layers/"):
        layers = tree.lookup(root, "layers")
        if tree.is_group(layers):
            node = tree.lookup(layers, location.split("/", 1)[1])
            if node is not None:
                return node, "var"
        return None, ""
    node = tree.lookup(root, "X")
    return (node, "var") if node is not None else (None, "")


def _available(tree: Tree) -> list[str]:
    found = [loc for loc in ("X", "raw/X") if _locate(tree, loc)[0] is not None]
    layers = tree.lookup(tree.root, "layers")
    if tree.is_group(layers):
        found += [f"layers/{k}" for k in tree.keys(layers)]
    return found


def _file_source(tree: Tree, location: str, node: Any, var_path: str,
                 gene_column: str | None) -> FileSource:
    cls = source_for(tree, node, location)
    shape = cls.inspect(tree, node, location)
    var_index = frame_names(tree, var_path, gene_column, what="var")
    if len(var_index) != shape[1]:
        raise InputError(
            f"{location} has {shape[1]} columns but {var_path} names {len(var_index)} genes"
        )
    var_names = var_index.read_all()
    obs_index = frame_names(tree, "obs", None, what="obs")
    if len(obs_index) not in (shape[0], 0):
        raise InputError(f"{location} has {shape[0]} rows but obs names {len(obs_index)} cells")
    if cls.rows_need_names and shape[0] and not len(obs_index):
        # only the shape attribute would back the number of cells: nothing stored confirms it
        raise InputError(f"{location} is CSC with {shape[0]:,} rows but the file names no cells "
                         "(obs), so the row count cannot be checked")
    return cls(tree, location, node, shape, var_names, obs_index)
