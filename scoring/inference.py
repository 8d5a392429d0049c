"""ONNX Runtime sessions for a bundle: one session per graph, providers chosen explicitly."""

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from scoring.bundle import Bundle
from scoring.errors import BundleError, ScdrError

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Predictor:
    """Runs ``model.onnx`` on normalised panels; created once per bundle and reused per chunk."""

    bundle: Bundle
    session: ort.InferenceSession

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses."""
        return list(self.session.get_providers())

    def predict(self, expression: np.ndarray) -> dict[str, np.ndarray]:
        """``probability``, ``logit`` [n] and ``pathways`` [n, n_pathways] for a float32 batch."""
        x = np.ascontiguousarray(expression, dtype=np.float32)
        prob, logit, pathways = self.session.run(
            ["probability", "logit", "pathways"], {"expression": x}
        )
        return {
            "probability": prob.reshape(-1),
            "logit": logit.reshape(-1),
            "pathways": pathways.reshape(x.shape[0], -1),
        }


def make_predictor(bundle: Bundle, device: str = "auto", threads: int | None = None) -> Predictor:
    """Create the ONNX Runtime session for ``bundle`` and check its graph matches the card."""
    session = make_session(bundle.model_bytes, device, threads, what=f"{bundle.path}/model.onnx")
    _check_signature(session, bundle)
    return Predictor(bundle, session)


def make_session(
    model_bytes: bytes, device: str = "auto", threads: int | None = None, what: str = "model"
) -> ort.InferenceSession:
    """An InferenceSession on the verified bytes of a graph (never re-read from disk)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, sess_options=options, providers=providers_for(device))
    except ScdrError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types
        msg = str(e).splitlines()[0][:200]
        raise BundleError(f"{what} cannot be loaded by ONNX Runtime ({msg})") from None


def providers_for(device: str) -> list[str]:
    """Execution providers for ``auto``/``cpu``/``cuda``; ``cuda`` fails when unavailable."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ScdrError(
                "--device cuda needs onnxruntime-gpu with a working CUDA: "
                "pip uninstall onnxruntime && pip install onnxruntime-gpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise ScdrError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _check_signature(session: ort.InferenceSession, bundle: Bundle) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    missing = {"probability", "logit", "pathways"} - outputs
    if "expression" not in inputs or missing:
        raise BundleError(
            f"{bundle.path}/model.onnx does not follow the bundle contract "
            f"(needs input 'expression' and outputs probability, logit, pathways)"
        )
    dims = inputs["expression"].shape
    n_genes = len(bundle.symbols)
    if len(dims) != 2 or (isinstance(dims[1], int) and dims[1] != n_genes):
        raise BundleError(
            f"{bundle.path}/model.onnx expects {dims[1] if len(dims) == 2 else dims} genes "
            f"but the card lists {n_genes}"
        )
