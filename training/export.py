"""Write a model bundle: model.onnx, head.onnx and card.json, per `exported_models/README.md`.

The ONNX graphs are built from the trained weights with `onnx.helper` (MatMul, Add, Relu,
Squeeze, Sigmoid; opset 17, IR version 8, dynamic batch axis, weights embedded, no external
data), which is exact and needs no exporter. Before anything is written, ONNX Runtime and torch
must agree on the given real cells to 1e-5 (absolute, every output); otherwise `ExportError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from training.module import ScdrModule

FORMAT = "scdr-bundle"
FORMAT_VERSION = 1
OPSET = 17
IR_VERSION = 8
PARITY_ATOL = 1e-5


class ExportError(RuntimeError):
    """The bundle cannot be written faithfully (graph invalid or ONNX/torch parity failed)."""


def export_bundle(out_dir: str | Path, module: ScdrModule, card: dict, parity_x: np.ndarray) -> dict:
    """Build both graphs, check parity on `parity_x`, then write the ONNX files and the card."""
    module = module.cpu().eval()
    model_bytes = build_model_graph(module).SerializeToString()
    head_bytes = build_head_graph(module).SerializeToString()
    parity = check_parity(module, model_bytes, head_bytes, parity_x)
    card = dict(card)
    card["metrics"] = {**card.get("metrics", {}), "onnx_parity": parity}
    card["files"] = {
        "model.onnx": {"sha256": hashlib.sha256(model_bytes).hexdigest()},
        "head.onnx": {"sha256": hashlib.sha256(head_bytes).hexdigest()},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "model.onnx", model_bytes)
    _write_atomic(out / "head.onnx", head_bytes)
    text = json.dumps(_jsonable(card), indent=1, allow_nan=False) + "\n"
    _write_atomic(out / "card.json", text.encode("utf-8"))
    return card


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
    """The card's fields in contract order (format version 1); `files` is added on export."""
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


def _write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to a temporary sibling, then rename over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _jsonable(value: object) -> object:
    """Numpy scalars/arrays to Python; NaN and infinities to None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
