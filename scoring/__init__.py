"""scdr scoring: per-cell drug-response predictions from an h5ad, with ONNX Runtime only.

Dependency-light on purpose (numpy, scipy, h5py, numba, onnxruntime, click): it never imports
torch, anndata or the training package.
"""

__version__ = "0.1.0"

from scoring.bundle import Bundle, find_bundle, list_bundles, load_bundle
from scoring.engine import ScoreTable, score
from scoring.errors import ScdrError

__all__ = [
    "Bundle",
    "ScdrError",
    "ScoreTable",
    "__version__",
    "annotate",
    "find_bundle",
    "list_bundles",
    "load_bundle",
    "score",
]
