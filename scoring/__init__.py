"""scdr scoring: per-cell drug-response predictions from an h5ad, with ONNX Runtime only.

Dependency-light on purpose (numpy, scipy, h5py, numba, onnxruntime, click): it never imports
torch, anndata or the training package.
"""

__version__ = "0.1.0"

_LAZY = {  # public name -> module; imported on first use, so that `scdr-score` can install its
    # signal handler (scoring.launch) before numpy, numba and onnxruntime load
    "annotate": "scdr.scoring.annotate",
    "ExplainSettings": "scdr.scoring.engine",
    "ReadOptions": "scdr.scoring.engine",
    "score_file": "scdr.scoring.engine",
    "Bundle": "scdr.scoring.bundle",
    "list_models": "scdr.scoring.bundle",
    "find_bundle": "scdr.scoring.bundle",
    "list_bundles": "scdr.scoring.bundle",
    "load_bundle": "scdr.scoring.bundle",
    "ScoreTable": "scdr.scoring.engine",
    "score": "scdr.scoring.engine",
    "ScdrError": "scdr.scoring.errors",
}


def __getattr__(name: str) -> object:
    """The public API, imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scdr.scoring' has no attribute {name!r}")

__all__ = ["__version__", *_LAZY]
