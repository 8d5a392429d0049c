"""scdr: single-cell drug response, predicted and explained.

The repository root is the ``scdr`` package: ``scdr.scoring`` (dependency-light scoring of h5ad
files and AnnData objects), ``scdr.training`` (the ``train`` extra: fit and export bundles) and
``scdr.exported_models`` (the shipped bundles). The public API is imported on first use, so that
``scdr-score`` can install its signal handler before numpy, numba and onnxruntime load.
"""

__version__ = "0.1.0"

_LAZY = {  # public name -> module that defines it
    "annotate": "scdr.scoring.annotate",
    "score": "scdr.scoring.engine",
    "score_file": "scdr.scoring.engine",
    "ExplainSettings": "scdr.scoring.engine",
    "ReadOptions": "scdr.scoring.engine",
    "ScoreTable": "scdr.scoring.engine",
    "Bundle": "scdr.scoring.bundle",
    "find_bundle": "scdr.scoring.bundle",
    "list_models": "scdr.scoring.bundle",
    "load_bundle": "scdr.scoring.bundle",
    "ScdrError": "scdr.scoring.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> object:
    """The public API, imported on first use (``scdr.score``, ``scdr.annotate``, ...)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scdr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
