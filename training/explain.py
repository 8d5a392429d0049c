"""The reference for scoring's attributions: captum's IntegratedGradients (autograd) on a bundle's
graphs, replayed in torch so that exactly the shipped weights are explained.

``scoring.explain`` computes the same integrals with finite differences through ONNX Runtime and
no torch; the tests hold the two together at pathway and gene level.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

CAPTUM_METHODS = {"left": "riemann_left", "right": "riemann_right", "midpoint": "riemann_middle",
                  "trapezoid": "riemann_trapezoid", "gauss-legendre": "gausslegendre"}


def captum_attributions(bundle_dir: str | Path, x: np.ndarray, level: str = "pathway",
                        baseline: np.ndarray | None = None, steps: int = 16,
                        rule: str = "gauss-legendre") -> np.ndarray:
    """Integrated gradients of the logit w.r.t. the pathway layer (``head.onnx``) or the
    normalised genes (``model.onnx``), in float64, with captum."""
    from captum.attr import IntegratedGradients

    graph = "head.onnx" if level == "pathway" else "model.onnx"
    net = onnx_as_torch(Path(bundle_dir) / graph, output="logit")
    inputs = torch.tensor(np.asarray(x, dtype=np.float64))
    base = torch.zeros_like(inputs) if baseline is None else \
        torch.tensor(np.asarray(baseline, dtype=np.float64)).expand_as(inputs)
    ig = IntegratedGradients(net)
    return ig.attribute(inputs, baselines=base, n_steps=steps,
                        method=CAPTUM_METHODS[rule]).detach().numpy()


def onnx_as_torch(path: str | Path, output: str = "logit",
                  dtype: torch.dtype = torch.float64) -> Callable[[torch.Tensor], torch.Tensor]:
    """A differentiable torch function replaying an ONNX graph's nodes (the operators the
    exporters here emit: MatMul, Gemm, Add, Sub, Mul, Div, Relu, Sigmoid, Tanh, Squeeze,
    Reshape, Flatten, Identity, Constant)."""
    graph = onnx.load(str(path)).graph
    consts = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    consts = {k: v.to(dtype) if v.is_floating_point() else v for k, v in consts.items()}
    input_name = graph.input[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {**consts, input_name: x.to(dtype)}
        for node in graph.node:
            args = [env[i] for i in node.input if i]
            env[node.output[0]] = _apply(node, args)
        return env[output]

    return run


def _apply(node: onnx.NodeProto, args: list[torch.Tensor]) -> torch.Tensor:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "MatMul":
        return args[0] @ args[1]
    if op == "Gemm":
        a, b = args[0], args[1]
        a = a.T if attrs.get("transA") else a
        b = b.T if attrs.get("transB") else b
        y = attrs.get("alpha", 1.0) * (a @ b)
        return y + attrs.get("beta", 1.0) * args[2] if len(args) > 2 else y
    simple = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div,
              "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
              "Identity": lambda t: t}
    if op in simple:
        return simple[op](*args)
    if op == "Squeeze":
        axes = args[1].tolist() if len(args) > 1 else attrs.get("axes")
        return args[0].squeeze(tuple(axes)) if axes is not None else args[0].squeeze()
    if op == "Reshape":
        return args[0].reshape(*[int(v) for v in args[1].tolist()])
    if op == "Flatten":
        axis = attrs.get("axis", 1)
        return args[0].reshape(int(np.prod(args[0].shape[:axis])), -1)
    if op == "Constant":
        return torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())
    raise NotImplementedError(f"ONNX operator {op} is not replayed in torch")
