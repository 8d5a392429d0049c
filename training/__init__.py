"""Fit bulk-to-single-cell drug-response models and export them as scdr model bundles.

Training may import torch, onnx, anndata and scikit-learn; the bundle it writes is the only thing
that `scoring` ever sees (contract: `exported_models/README.md`). Nothing is imported here, so
that `scdr-train` can say which extra is missing in a light install (`scdr.training.launcher`).
"""

__all__ = ["DataError"]


def __getattr__(name: str) -> object:
    """`scdr.training.DataError`, imported on first use."""
    if name == "DataError":
        from scdr.training.data import DataError

        return DataError
    raise AttributeError(f"module 'scdr.training' has no attribute {name!r}")
