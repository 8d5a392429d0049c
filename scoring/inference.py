"""ONNX Runtime sessions for a bundle: one session per graph, providers chosen explicitly."""

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from scdr.scoring.bundle import Bundle
from scdr.scoring.errors import BundleError, ScdrError

DEVICES = ("auto", "cpu", "cuda")
# full float32 products: TF32 (ONNX Runtime's CUDA default) keeps 10 mantissa bits, which moves
# probabilities by ~1e-4 and ruins the finite differences of explanations (step 1e-3)
CUDA = ("CUDAExecutionProvider", {"use_tf32": "0"})


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
        """``probability``, ``logit`` [n] and ``pathways`` [n, n_pathways] for a float32 batch,
        refusing outputs of the wrong size or not finite rather than writing them as calls."""
        x = np.ascontiguousarray(expression, dtype=np.float32)
        try:
            prob, logit, pathways = self.session.run(
                ["probability", "logit", "pathways"], {"expression": x}
            )
        except Exception as e:  # onnxruntime raises its own exception types
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise BundleError(f"{self.bundle.path}/model.onnx failed to run ({msg})") from None
        n, n_paths = x.shape[0], len(self.bundle.pathway_names)
        out = {"probability": np.asarray(prob), "logit": np.asarray(logit),
               "pathways": np.asarray(pathways)}
        if out["probability"].size != n or out["logit"].size != n \
                or out["pathways"].size != n * n_paths:
            raise BundleError(
                f"{self.bundle.path}/model.onnx returned outputs of shapes "
                f"{', '.join(str(v.shape) for v in out.values())} for {n} cells and "
                f"{n_paths} pathways; it does not follow the bundle contract")
        prob_ok = np.all((out["probability"] >= 0) & (out["probability"] <= 1))
        if not (prob_ok and np.all(np.isfinite(out["logit"])) and np.all(np.isfinite(out["pathways"]))):
            raise BundleError(f"{self.bundle.path}/model.onnx returned NaN, infinite or out-of-range "
                              "values on finite input; the model is broken")
        return {
            "probability": out["probability"].reshape(-1),
            "logit": out["logit"].reshape(-1),
            "pathways": out["pathways"].reshape(n, n_paths),
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
    options.use_deterministic_compute = True
    # ONNX Runtime's threads otherwise spin for a while after each run, taking the cores from
    # the Numba kernels that normalise the next chunk
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 4  # fatal only: failures reach the user as one BundleError line
    providers = providers_for(device)
    try:
        session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
    except ScdrError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types
        msg = str(e).splitlines()[0][:200]
        raise BundleError(f"{what} cannot be loaded by ONNX Runtime ({msg})") from None
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise ScdrError("--device cuda: ONNX Runtime could not start CUDA (driver, CUDA 12/13 "
                        "or cuDNN libraries missing); pip install 'onnxruntime-gpu[cuda,cudnn]' "
                        "or use --device cpu")
    return session


def providers_for(device: str) -> list[Any]:
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
        _preload_cuda()
        return [CUDA, "CPUExecutionProvider"]
    if device != "auto":
        raise ScdrError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    if "CUDAExecutionProvider" in available:
        _preload_cuda()
        return [CUDA, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@functools.cache
def _preload_cuda() -> None:
    """Load CUDA/cuDNN from pip's nvidia-* packages where they are installed (onnxruntime-gpu
    finds them only this way when they are not on the library path); a no-op otherwise."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.suppress(Exception):  # missing libraries surface when the session starts
            preload()


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
    paths = next(o for o in session.get_outputs() if o.name == "pathways").shape
    n_paths = len(bundle.pathway_names)
    if len(paths) == 2 and isinstance(paths[1], int) and paths[1] != n_paths:
        raise BundleError(f"{bundle.path}/model.onnx has {paths[1]} pathway outputs but the card "
                          f"names {n_paths}")
