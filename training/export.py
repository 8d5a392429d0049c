"""Write a model bundle: model.onnx, head.onnx, head_fd.onnx and card.json, per
`exported_models/README.md`.

The ONNX graphs are built from the trained weights with `onnx.helper` (MatMul, Add, Relu,
Squeeze, Sigmoid; opset 17, IR version 8, dynamic batch axis, weights embedded, no external
data), which is exact and needs no exporter. Before anything is written, ONNX Runtime and torch
must agree on the given real cells to 1e-5 (absolute, every output); otherwise `ExportError`.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from scdr.scoring.atomic import publish_bytes
from scdr.scoring.card import FD_FILE, FORMAT, FORMAT_VERSION, HEAD_FILE, MODEL_FILE, read_card, write_card
from scdr.training.module import ScdrModule

OPSET = 17
IR_VERSION = 8
PARITY_ATOL = 1e-5
FD_STEP = 1e-3  # the finite-difference step baked into head_fd.onnx (pathway units)


class ExportError(RuntimeError):
    """The bundle cannot be written faithfully (graph invalid or ONNX/torch parity failed)."""


def export_bundle(out_dir: str | Path, module: ScdrModule, card: dict, parity_x: np.ndarray) -> dict:
    """Build both graphs, check parity on `parity_x`, then write the ONNX files and the card."""
    module = module.cpu().eval()
    model_bytes = build_model_graph(module).SerializeToString()
    head_bytes = build_head_graph(module).SerializeToString()
    fd_bytes = build_head_fd_graph(module.head, module.n_pathways).SerializeToString()
    parity = check_parity(module, model_bytes, head_bytes, parity_x)
    card = dict(card)
    card["metrics"] = {**card.get("metrics", {}), "onnx_parity": parity}
    card["files"] = {
        MODEL_FILE: {"sha256": hashlib.sha256(model_bytes).hexdigest()},
        HEAD_FILE: {"sha256": hashlib.sha256(head_bytes).hexdigest()},
        FD_FILE: {"sha256": hashlib.sha256(fd_bytes).hexdigest(), "fd_step": FD_STEP},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    publish_bytes(out / MODEL_FILE, model_bytes)
    publish_bytes(out / HEAD_FILE, head_bytes)
    publish_bytes(out / FD_FILE, fd_bytes)
    return write_card(out, card)


def make_card(
    *,
    drug: str,
    aliases: list[str],
    description: str,
    symbols: list[str],
    ensembl_ids: list[str | None],
    normalization: dict,
    pathway_names: list[str],
    pathway_source: str,
    reference_pathways: dict[str, list[float]],
    threshold: dict,
    training: dict,
    metrics: dict,
) -> dict:
    """The card's fields in contract order; `files` is added on export (`scoring.card` writes it)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "drug": drug.lower(),
        "aliases": aliases,
        "description": description,
        "genes": {"symbols": symbols, "ensembl_ids": ensembl_ids},
        "normalization": normalization,
        "pathways": {"names": pathway_names, "source": pathway_source},
        "reference_pathways": reference_pathways,
        "threshold": threshold,
        "training": training,
        "metrics": metrics,
    }


def build_model_graph(module: ScdrModule) -> onnx.ModelProto:
    """expression [n_cells, genes] -> probability [n_cells], logit [n_cells], pathways."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    _sequential(module.encoder, "expression", "pathways", "encoder", nodes, inits)
    _sequential(module.head, "pathways", "logit_2d", "head", nodes, inits)
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "squeeze_axes"))
    nodes.append(helper.make_node("Squeeze", ["logit_2d", "squeeze_axes"], ["logit"]))
    nodes.append(helper.make_node("Sigmoid", ["logit"], ["probability"]))
    graph = helper.make_graph(
        nodes,
        "scdr_model",
        [helper.make_tensor_value_info("expression", TensorProto.FLOAT, ["n_cells", module.n_genes])],
        [
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["n_cells"]),
            helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["n_cells"]),
            helper.make_tensor_value_info("pathways", TensorProto.FLOAT, ["n_cells", module.n_pathways]),
        ],
        inits,
    )
    return _finish(graph, "scdr model: normalised panel -> P(sensitive), logit, pathways")


def build_head_graph(module: ScdrModule) -> onnx.ModelProto:
    """pathways [n, n_pathways] -> logit [n]: the model above the pathway layer."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    _sequential(module.head, "pathways", "logit_2d", "head", nodes, inits)
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "squeeze_axes"))
    nodes.append(helper.make_node("Squeeze", ["logit_2d", "squeeze_axes"], ["logit"]))
    graph = helper.make_graph(
        nodes,
        "scdr_head",
        [helper.make_tensor_value_info("pathways", TensorProto.FLOAT, ["n", module.n_pathways])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["n"])],
        inits,
    )
    return _finish(graph, "scdr head: pathway activities -> logit")


def build_head_fd_graph(head: nn.Sequential, n_pathways: int, h: float = FD_STEP) -> onnx.ModelProto:
    """pathways [n, P] -> slopes [n, P], exact [n]: the head's central finite differences
    ``(f(z + h e_j) - f(z - h e_j)) / 2h`` along every pathway j, for integrated gradients.

    For the shipped head shape, Linear -> ReLU -> Linear, a hidden unit u contributes
    ``w2_u W[u, j]`` to slope j when its pre-activation stays positive under the ±h W[u, j] shift,
    and 0 when it stays negative: away from the kinks the differences are one small matrix
    product, ``1[pre > 0] @ (w2 * W)``. ``exact`` is false for a point where some unit lies within
    ``h max_j |W[u, j]|`` of its kink; the scorer recomputes those points' differences from
    head.onnx. Other heads get the general graph (every shift evaluated; ``exact`` all true)."""
    layers = [m for m in head if not isinstance(m, nn.Dropout)]
    if not layers or not isinstance(layers[0], nn.Linear) or layers[0].in_features != n_pathways:
        raise ExportError("head_fd.onnx needs a head that starts with Linear(n_pathways, ...)")
    kinds = [type(m) for m in layers]
    if kinds != [nn.Linear, nn.ReLU, nn.Linear] or layers[2].out_features != 1:
        return _shifted_fd_graph(layers, n_pathways, h)
    w1, b1 = _array(layers[0].weight, np.float64), _array(layers[0].bias, np.float64)
    w2 = _array(layers[2].weight, np.float64)[0]
    inits = [
        numpy_helper.from_array(w1.T.astype(np.float32), "fd.w1_t"),  # [P, H]
        numpy_helper.from_array(b1.astype(np.float32), "fd.b1"),
        numpy_helper.from_array((w2[:, None] * w1).astype(np.float32), "fd.contrib"),  # [H, P]
        numpy_helper.from_array((h * np.abs(w1).max(axis=1)).astype(np.float32), "fd.margin"),
        numpy_helper.from_array(np.array(0.0, np.float32), "fd.zero"),
    ]
    nodes = [
        helper.make_node("MatMul", ["pathways", "fd.w1_t"], ["fd.matmul"]),
        helper.make_node("Add", ["fd.matmul", "fd.b1"], ["fd.pre"]),  # [n, H]
        helper.make_node("Greater", ["fd.pre", "fd.zero"], ["fd.on"]),
        helper.make_node("Cast", ["fd.on"], ["fd.on_f"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["fd.on_f", "fd.contrib"], ["slopes"]),  # [n, P]
        helper.make_node("Abs", ["fd.pre"], ["fd.abs"]),
        helper.make_node("Less", ["fd.abs", "fd.margin"], ["fd.near"]),
        helper.make_node("Cast", ["fd.near"], ["fd.near_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["fd.near_f"], ["fd.any_near"], axes=[1], keepdims=0),
        helper.make_node("Equal", ["fd.any_near", "fd.zero"], ["exact"]),  # [n]
    ]
    return _fd_model(nodes, inits, n_pathways,
                     f"scdr head finite differences away from ReLU kinks (h = {h:g})")


def _shifted_fd_graph(layers: list[nn.Module], n_pathways: int, h: float) -> onnx.ModelProto:
    """The general graph for a Linear/ReLU stack starting with Linear(n_pathways, H).

    The first layer is affine, so ``W (z ± h e_j) + b = (W z + b) ± h W[:, j]``: the graph
    evaluates the first layer once per point and shifts its output by ``±h W[:, j]``, laid out
    ``[n, hidden, 2P]`` so that every later layer is one batched matrix product from the left.
    The same differences as 2P full head evaluations per point, at about 1/P of their cost."""
    first = layers[0]
    shifts = h * _array(first.weight)  # [H, P]: column j is h W[:, j]
    inits = [
        numpy_helper.from_array(_array(first.weight).T.copy(), "fd.0.weight_t"),
        numpy_helper.from_array(_array(first.bias), "fd.0.bias"),
        numpy_helper.from_array(np.concatenate([shifts, -shifts], axis=1), "fd.shifts"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "fd.axis1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "fd.axis2"),
        numpy_helper.from_array(np.array([n_pathways, n_pathways], dtype=np.int64), "fd.halves"),
        numpy_helper.from_array(np.array(1.0 / (2.0 * h), dtype=np.float32), "fd.inv_2h"),
    ]
    nodes = [
        helper.make_node("MatMul", ["pathways", "fd.0.weight_t"], ["fd.0.matmul"]),
        helper.make_node("Add", ["fd.0.matmul", "fd.0.bias"], ["fd.0.out"]),
        helper.make_node("Unsqueeze", ["fd.0.out", "fd.axis2"], ["fd.0.col"]),  # [n, H, 1]
        helper.make_node("Add", ["fd.0.col", "fd.shifts"], ["fd.0.shifted"]),  # [n, H, 2P]
    ]
    current = "fd.0.shifted"
    for i, layer in enumerate(layers[1:], start=1):
        out = f"fd.{i}.out"
        if isinstance(layer, nn.Linear):
            inits.append(numpy_helper.from_array(_array(layer.weight), f"fd.{i}.weight"))
            inits.append(numpy_helper.from_array(_array(layer.bias)[:, None].copy(), f"fd.{i}.bias"))
            nodes.append(helper.make_node("MatMul", [f"fd.{i}.weight", current], [f"fd.{i}.matmul"]))
            nodes.append(helper.make_node("Add", [f"fd.{i}.matmul", f"fd.{i}.bias"], [out]))
        elif isinstance(layer, nn.ReLU):
            nodes.append(helper.make_node("Relu", [current], [out]))
        else:
            raise ExportError(f"cannot export layer {type(layer).__name__} of the head")
        current = out
    nodes += [
        helper.make_node("Squeeze", [current, "fd.axis1"], ["fd.logits"]),  # [n, 2P]
        helper.make_node("Split", ["fd.logits", "fd.halves"], ["fd.plus", "fd.minus"], axis=1),
        helper.make_node("Sub", ["fd.plus", "fd.minus"], ["fd.diff"]),
        helper.make_node("Mul", ["fd.diff", "fd.inv_2h"], ["slopes"]),
        helper.make_node("Shape", ["pathways"], ["fd.shape"], start=0, end=1),
        helper.make_node("ConstantOfShape", ["fd.shape"], ["exact"],
                         value=helper.make_tensor("one", TensorProto.BOOL, [1], [True])),
    ]
    return _fd_model(nodes, inits, n_pathways,
                     f"scdr head finite differences: pathways -> slopes (h = {h:g})")


def _fd_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], n_pathways: int,
              doc: str) -> onnx.ModelProto:
    """head_fd.onnx's signature around ``nodes``: pathways [n, P] -> slopes [n, P], exact [n]."""
    graph = helper.make_graph(
        nodes,
        "scdr_head_fd",
        [helper.make_tensor_value_info("pathways", TensorProto.FLOAT, ["n", n_pathways])],
        [helper.make_tensor_value_info("slopes", TensorProto.FLOAT, ["n", n_pathways]),
         helper.make_tensor_value_info("exact", TensorProto.BOOL, ["n"])],
        inits,
    )
    return _finish(graph, doc)


def _array(t: torch.Tensor, dtype: type = np.float32) -> np.ndarray:
    return t.detach().cpu().numpy().astype(dtype)


def add_head_fd(bundle_dir: str | Path, h: float = FD_STEP) -> dict:
    """Write head_fd.onnx into an existing bundle from its head.onnx (no retraining): the head's
    Linear/ReLU layers are read back from the graph's initializers, and the card gains the entry."""
    root = Path(bundle_dir)
    card = read_card(root)
    head_model = onnx.load_from_string((root / HEAD_FILE).read_bytes())
    head = _head_from_graph(head_model)
    fd_bytes = build_head_fd_graph(head, len(card["pathways"]["names"]), h).SerializeToString()
    card["files"][FD_FILE] = {"sha256": hashlib.sha256(fd_bytes).hexdigest(), "fd_step": h}
    publish_bytes(root / FD_FILE, fd_bytes)
    return write_card(root, card)


def _head_from_graph(model: onnx.ModelProto) -> nn.Sequential:
    """The Linear/ReLU stack of a head graph written by `build_head_graph`."""
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers: list[nn.Module] = []
    for node in model.graph.node:
        if node.op_type == "MatMul":
            w = weights[node.input[1]]
            layers.append(nn.Linear(w.shape[0], w.shape[1]))
            layers[-1].weight.data = torch.from_numpy(w.T.copy())
        elif node.op_type == "Add":
            layers[-1].bias.data = torch.from_numpy(weights[node.input[1]].copy())
        elif node.op_type == "Relu":
            layers.append(nn.ReLU())
        elif node.op_type != "Squeeze":
            raise ExportError(f"head.onnx has a {node.op_type} node; only Linear/ReLU heads are read")
    return nn.Sequential(*layers)


def check_parity(
    module: ScdrModule,
    model_bytes: bytes,
    head_bytes: bytes,
    x: np.ndarray,
    atol: float = PARITY_ATOL,
) -> dict:
    """Max |ONNX Runtime - torch| per output on rows `x`; ExportError above `atol`."""
    import onnxruntime as ort

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != module.n_genes:
        raise ExportError(f"parity needs cells x {module.n_genes} genes, got {x.shape}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    model = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(head_bytes, options, providers=["CPUExecutionProvider"])
    probability, logit, pathways = model.run(["probability", "logit", "pathways"], {"expression": x})
    module = module.cpu().eval()
    with torch.no_grad():
        ref_pathways = module.encode(torch.from_numpy(x))
        ref_logit = module.response_logit(ref_pathways)
        ref_probability = torch.sigmoid(ref_logit)
    ref_pathways_np = np.ascontiguousarray(ref_pathways.numpy(), dtype=np.float32)
    (head_logit,) = head.run(["logit"], {"pathways": ref_pathways_np})
    pairs = {
        "probability": (probability, ref_probability.numpy()),
        "logit": (logit, ref_logit.numpy()),
        "pathways": (pathways, ref_pathways_np),
        "head_logit": (head_logit, ref_logit.numpy()),
    }
    diffs = {}
    for name, (got, want) in pairs.items():
        if got.shape != want.shape:
            raise ExportError(f"ONNX {name} has shape {got.shape}, torch {want.shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
        if not math.isfinite(diff) or diff > atol:
            raise ExportError(
                f"ONNX/torch parity failed on {len(x)} cells: max |diff| of {name} = {diff:.3g} "
                f"> {atol:g}; bundle not written"
            )
        diffs[name] = diff
    return {"cells": len(x), "atol": atol, "max_abs_diff": diffs}


def _sequential(
    seq: nn.Sequential,
    source: str,
    target: str,
    prefix: str,
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
) -> None:
    """Append nodes computing a Sequential of Linear/ReLU (Dropout is identity at inference)."""
    layers = [(i, m) for i, m in enumerate(seq) if not isinstance(m, nn.Dropout)]
    current = source
    for k, (i, layer) in enumerate(layers):
        out = target if k == len(layers) - 1 else f"{prefix}.{i}.out"
        if isinstance(layer, nn.Linear):
            weight = layer.weight.detach().cpu().numpy().astype(np.float32).T.copy()
            bias = layer.bias.detach().cpu().numpy().astype(np.float32).copy()
            inits.append(numpy_helper.from_array(weight, f"{prefix}.{i}.weight_t"))
            inits.append(numpy_helper.from_array(bias, f"{prefix}.{i}.bias"))
            product = f"{prefix}.{i}.matmul"
            nodes.append(helper.make_node("MatMul", [current, f"{prefix}.{i}.weight_t"], [product]))
            nodes.append(helper.make_node("Add", [product, f"{prefix}.{i}.bias"], [out]))
        elif isinstance(layer, nn.ReLU):
            nodes.append(helper.make_node("Relu", [current], [out]))
        else:
            raise ExportError(f"cannot export layer {type(layer).__name__} of {prefix}")
        current = out


def _finish(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    """Wrap a graph as an opset-17 model and validate it."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="scdr-training",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"invalid ONNX graph: {exc}") from exc
    return model
