"""scoring.annotate writes the calls into an in-memory AnnData, equal to the file scorer's."""

import numpy as np
import pytest
from helpers import EXAMPLE

from scdr.scoring import score
from scdr.scoring.annotate import annotate
from scdr.scoring.engine import ExplainSettings
from scdr.scoring.errors import InputError

ad = pytest.importorskip("anndata")


def test_annotate_matches_file_scoring_without_copying_x(bundle_dir):
    adata = ad.read_h5ad(EXAMPLE)
    x_before = adata.X
    data_ptr = adata.X.data.ctypes.data
    key = annotate(adata, model=str(bundle_dir), explain=ExplainSettings(steps=4))
    ref = score(EXAMPLE, model=bundle_dir)
    assert key == "scdr_testdrug"
    np.testing.assert_allclose(adata.obs[f"{key}_prob"].to_numpy(), ref.probability, rtol=1e-6)
    assert list(adata.obs[f"{key}_label"].astype(str)) == list(ref.label)
    assert adata.obsm[f"{key}_pathways"].shape == ref.pathways.shape
    assert adata.obsm[f"{key}_attributions"].shape == ref.pathways.shape
    assert adata.uns[key]["matrix"] == "X"
    assert adata.X is x_before and adata.X.data.ctypes.data == data_ptr


def test_annotate_prefers_the_counts_layer(bundle_dir):
    adata = ad.read_h5ad(EXAMPLE)
    adata.layers["counts"] = adata.X.copy()
    lognorm = adata.X.copy()
    lognorm.data = np.log1p(lognorm.data)
    adata.X = lognorm
    annotate(adata, model=str(bundle_dir))
    assert adata.uns["scdr_testdrug"]["matrix"] == "layers/counts"
    ref = score(EXAMPLE, model=bundle_dir)
    np.testing.assert_allclose(adata.obs["scdr_testdrug_prob"].to_numpy(), ref.probability,
                               rtol=1e-6)


def test_annotate_refuses_normalised_only(bundle_dir):
    adata = ad.read_h5ad(EXAMPLE)
    adata.X.data = np.log1p(adata.X.data) + 0.1
    with pytest.raises(InputError, match="no raw counts"):
        annotate(adata, model=str(bundle_dir))
