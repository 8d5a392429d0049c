"""Fit bulk-to-single-cell drug-response models and export them as scdr model bundles.

Training may import torch, onnx, anndata and scikit-learn; the bundle it writes is the only thing
that `scoring` ever sees (contract: `exported_models/README.md`).
"""

__all__ = ["DataError"]

from training.data import DataError
