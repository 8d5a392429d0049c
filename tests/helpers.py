"""Test helpers: a small real-graph bundle built with onnx.helper, and the numpy reference
normalisation written straight from the contract in exported_models/README.md."""

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import scipy.sparse as sp
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    from scdr.scoring.bundle import Bundle

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "celseq2_p1.h5ad"
SHARED_DATA = ROOT.parent / "shared" / "data"


def write_bundle(
    folder: Path,
    symbols: list[str],
    ensembl_ids: list[str | None],
    n_pathways: int = 8,
    seed: int = 0,
    gene_mean: np.ndarray | None = None,
    gene_std: np.ndarray | None = None,
    drug: str = "testdrug",
    aliases: tuple[str, ...] = ("TD-1",),
    threshold: float = 0.5,
    head_hidden: int = 0,
    head_activation: str = "Relu",
) -> Path:
    """Write model.onnx (linear pathway layer + head), head.onnx and card.json.

    The head is linear, or with ``head_hidden`` an MLP with ``head_activation`` (ONNX op name:
    Relu, or Tanh for a smooth integrand), so attributions are not trivial.
    """
    rng = np.random.default_rng(seed)
    n = len(symbols)
    w1 = (rng.standard_normal((n, n_pathways)) / np.sqrt(n)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(n_pathways)).astype(np.float32)
    hidden = head_hidden or 1
    w2 = rng.standard_normal((n_pathways, hidden)).astype(np.float32)
    b2 = (0.3 * rng.standard_normal(hidden)).astype(np.float32) if head_hidden else \
        np.array([0.05], dtype=np.float32)
    w3 = (rng.standard_normal((hidden, 1)) / np.sqrt(hidden)).astype(np.float32) if head_hidden \
        else None
    folder.mkdir(parents=True, exist_ok=True)
    model = _model_graph(w1, b1, _head_nodes(w2, b2, w3, head_activation))
    head = _head_graph(n_pathways, _head_nodes(w2, b2, w3, head_activation))
    files = {}
    for name, graph in (("model.onnx", model), ("head.onnx", head)):
        blob = graph.SerializeToString()
        (folder / name).write_bytes(blob)
        files[name] = {"sha256": hashlib.sha256(blob).hexdigest()}
    card = {
        "format": "scdr-bundle",
        "format_version": 1,
        "drug": drug,
        "aliases": list(aliases),
        "description": "test bundle with random weights",
        "genes": {"symbols": symbols, "ensembl_ids": ensembl_ids},
        "normalization": {
            "target_sum": 10000.0,
            "log1p": True,
            "accepts_normalized": True,
            "cell_zscore": True,
            "gene_mean": None if gene_mean is None else [float(v) for v in gene_mean],
            "gene_std": None if gene_std is None else [float(v) for v in gene_std],
            "clip": 10.0,
        },
        "pathways": {"names": [f"PATHWAY_{i}" for i in range(n_pathways)], "source": "test"},
        "threshold": {"value": threshold, "rule": "fixed for tests"},
        "training": {},
        "metrics": {},
        "files": files,
    }
    (folder / "card.json").write_text(json.dumps(card, indent=1))
    return folder


def forward(x: np.ndarray, folder: Path) -> np.ndarray:
    """Probability from the bundle's weights in numpy (to check the ONNX path end to end)."""
    w = weights(folder)
    pathways = x.astype(np.float64) @ w["W1"] + w["b1"]
    logit = head_logit(pathways, w)
    return 1 / (1 + np.exp(-logit))


def weights(folder: Path) -> dict[str, np.ndarray]:
    """The initialisers of a test bundle's model.onnx, by name."""
    model = onnx.load(folder / "model.onnx")
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def head_logit(pathways: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """The head in numpy: linear, or ReLU MLP when the bundle has W3."""
    h = pathways @ w["W2"] + w["b2"]
    if "W3" in w:
        h = np.maximum(h, 0) @ w["W3"]
    return h.ravel()


def model_inputs(bundle: "Bundle", counts: sp.csr_matrix, var: list[str]) -> np.ndarray:
    """The scorer's normalised panel rows of ``counts`` (cells x ``var``) for ``bundle``."""
    from scdr.scoring.genes import match_genes
    from scdr.scoring.normalize import normalize_chunk

    match = match_genes(var, bundle.symbols, bundle.ensembl_ids)
    counts = sp.csr_matrix(counts)
    return normalize_chunk(counts.data, counts.indices, counts.indptr.astype(np.int64),
                           match.gene_map, match.present, bundle.normalization)[0]


def reference_normalize(
    counts: np.ndarray, gene_map: np.ndarray, n_panel: int, card_norm: dict,
    normalized_input: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense numpy version of the contract's normalisation, cell by cell, in float64."""
    counts = np.asarray(counts, dtype=np.float64)
    present = np.zeros(n_panel, bool)
    present[gene_map[gene_map >= 0]] = True
    out = np.zeros((counts.shape[0], n_panel))
    zero = np.zeros(counts.shape[0], bool)
    mean_g = card_norm.get("gene_mean")
    std_g = card_norm.get("gene_std")
    for i, row in enumerate(counts):
        lib = row.sum()
        if lib == 0:
            zero[i] = True
            continue
        x = np.zeros(n_panel)
        np.add.at(x, gene_map[gene_map >= 0], row[gene_map >= 0])
        rate = (x[present] > 0).sum() / max(present.sum(), 1)  # before scaling: detected genes
        if not normalized_input:
            x = x * card_norm["target_sum"] / lib
            x = np.log1p(x)
        if card_norm["cell_zscore"]:
            v = x[present]
            sd = 0.0 if np.all(v == v[0]) else v.std()  # numpy's mean of equal values can be
            x = (x - v.mean()) / sd if sd > 0 else np.zeros(n_panel)  # 1 ulp off: a fake SD
        if card_norm.get("depth_stats") is not None:  # step 5b: statistics at the cell's rate
            x = _at_rate(card_norm["depth_stats"], x, rate)
        elif mean_g is not None:
            x = (x - np.asarray(mean_g)) / np.asarray(std_g)
        if card_norm.get("clip") is not None:
            x = np.clip(x, -card_norm["clip"], card_norm["clip"])
        x[~present] = 0
        out[i] = x
    return out, zero


def _at_rate(depth: dict, x: np.ndarray, rate: float) -> np.ndarray:
    """Step 5b for one cell: standardised with the grid rows around its rate and blended
    linearly, the end row beyond the grid (from the contract's wording, apart from both halves)."""
    grid = list(depth["detection_rate"])
    mean, std = np.asarray(depth["gene_mean"], float), np.asarray(depth["gene_std"], float)
    if rate <= grid[0]:
        return (x - mean[0]) / std[0]
    if rate >= grid[-1]:
        return (x - mean[-1]) / std[-1]
    k = max(i for i, g in enumerate(grid) if g <= rate)
    t = (rate - grid[k]) / (grid[k + 1] - grid[k])
    return (1 - t) * (x - mean[k]) / std[k] + t * (x - mean[k + 1]) / std[k + 1]


def _head_nodes(w2: np.ndarray, b2: np.ndarray, w3: np.ndarray | None,
                activation: str) -> tuple[list, list]:
    """pathways -> logit: MatMul+Add (+ Relu + MatMul), as nodes and initialisers."""
    nodes = [helper.make_node("MatMul", ["pathways", "W2"], ["l2"]),
             helper.make_node("Add", ["l2", "b2"], ["l3"])]
    inits = [numpy_helper.from_array(w2, "W2"), numpy_helper.from_array(b2, "b2"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axes1")]
    last = "l3"
    if w3 is not None:
        nodes += [helper.make_node(activation, ["l3"], ["l4"]),
                  helper.make_node("MatMul", ["l4", "W3"], ["l5"])]
        inits.append(numpy_helper.from_array(w3, "W3"))
        last = "l5"
    nodes.append(helper.make_node("Squeeze", [last, "axes1"], ["logit"]))
    return nodes, inits


def _model_graph(w1: np.ndarray, b1: np.ndarray, head: tuple[list, list]) -> onnx.ModelProto:
    n, p = w1.shape
    nodes = [
        helper.make_node("MatMul", ["expression", "W1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["pathways"]),
        *head[0],
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "b1"), *head[1]]
    graph = helper.make_graph(
        nodes, "testmodel",
        [helper.make_tensor_value_info("expression", TensorProto.FLOAT, ["n_cells", n])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["n_cells"]),
         helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["n_cells"]),
         helper.make_tensor_value_info("pathways", TensorProto.FLOAT, ["n_cells", p])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _head_graph(p: int, head: tuple[list, list]) -> onnx.ModelProto:
    nodes, inits = head
    graph = helper.make_graph(
        nodes, "testhead",
        [helper.make_tensor_value_info("pathways", TensorProto.FLOAT, ["n", p])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["n"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def write_h5ad(
    path: Path,
    matrix: sp.csr_matrix,
    var: list[str],
    obs: list[str],
    encoding: str = "csr",
    location: str = "X",
    x_placeholder: sp.csr_matrix | None = None,
    var_columns: dict[str, list[str]] | None = None,
) -> Path:
    """Write a minimal AnnData file with h5py, following the on-disk spec.

    ``location`` is X, raw/X or layers/<name>; when it is not X, ``x_placeholder`` (e.g. a
    log-normalised copy) is written to X so the reader must look elsewhere for counts.
    """
    import h5py

    str_dt = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})

        def frame(name: str, index: list[str], columns: dict[str, list[str]] | None = None) -> None:
            g = f.require_group(name)
            g.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0",
                            "_index": "_index", "column-order": list(columns or {})})
            g.create_dataset("_index", data=np.array(index, dtype=object), dtype=str_dt)
            for col, values in (columns or {}).items():
                g.create_dataset(col, data=np.array(values, dtype=object), dtype=str_dt)

        def matrix_at(group: "h5py.Group", key: str, m: "sp.csr_matrix") -> None:
            if encoding == "dense":
                group.create_dataset(key, data=m.toarray())
                return
            mm = sp.csr_matrix(m) if encoding == "csr" else sp.csc_matrix(m)
            g = group.create_group(key)
            g.attrs.update({"encoding-type": f"{encoding}_matrix", "encoding-version": "0.1.0",
                            "shape": np.array(m.shape)})
            g.create_dataset("data", data=mm.data)
            g.create_dataset("indices", data=mm.indices)
            g.create_dataset("indptr", data=mm.indptr)

        frame("obs", obs)
        frame("var", var, var_columns)
        if location == "X":
            matrix_at(f, "X", matrix)
        else:
            matrix_at(f, "X", x_placeholder if x_placeholder is not None else matrix)
            if location == "raw/X":
                raw = f.create_group("raw")
                raw.attrs.update({"encoding-type": "raw", "encoding-version": "0.1.0"})
                matrix_at(raw, "X", matrix)
                g = raw.create_group("var")
                g.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0",
                                "_index": "_index", "column-order": []})
                g.create_dataset("_index", data=np.array(var, dtype=object), dtype=str_dt)
            else:
                layers = f.create_group("layers")
                matrix_at(layers, location.split("/", 1)[1], matrix)
    return path
