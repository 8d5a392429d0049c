"""annotate with several drugs: the same columns as one call per drug, provenance in uns that
write_h5ad stores, and nothing written at all when one of the names is bad."""

import copy
import hashlib
import json

import numpy as np
import pytest
from helpers import EXAMPLE, write_bundle

import scdr
from scdr.scoring import annotate as annotate_module
from scdr.scoring.annotate import annotate
from scdr.scoring.bundle import find_bundle
from scdr.scoring.engine import ExplainSettings
from scdr.scoring.errors import ScdrError

ad = pytest.importorskip("anndata")
DRUGS = ["erlotinib", "cisplatin"]


def snapshot(adata) -> dict:
    """Everything annotate may touch, copied."""
    return {"obs": adata.obs.copy(), "obsm": {k: np.array(v) for k, v in adata.obsm.items()},
            "uns": copy.deepcopy(dict(adata.uns)), "X": adata.X}


def assert_unchanged(adata, before: dict) -> None:
    """``adata`` holds exactly what ``snapshot`` saw."""
    assert list(adata.obs.columns) == list(before["obs"].columns)
    assert adata.obs.equals(before["obs"])
    assert sorted(adata.obsm) == sorted(before["obsm"])
    assert sorted(adata.uns) == sorted(before["uns"])
    assert adata.X is before["X"]


def test_a_list_gives_the_columns_of_one_call_per_drug():
    together, apart = ad.read_h5ad(EXAMPLE), ad.read_h5ad(EXAMPLE)
    keys = annotate(together, drug=DRUGS)
    assert keys == ["scdr_erlotinib", "scdr_cisplatin"]
    assert [annotate(apart, drug=d) for d in DRUGS] == keys  # one name: one key, not a list
    assert list(together.obs.columns) == list(apart.obs.columns)
    for column in together.obs.columns:
        assert together.obs[column].equals(apart.obs[column]), column
    assert sorted(together.obsm) == sorted(apart.obsm) == sorted(f"{k}_pathways" for k in keys)
    for k in together.obsm:
        np.testing.assert_array_equal(together.obsm[k], apart.obsm[k])
    for k in keys:
        assert together.uns[k] == apart.uns[k]
        assert list(together.obs[f"{k}_label"].cat.categories) == ["resistant", "sensitive"]


def test_each_drug_reads_the_counts_once_without_copying(monkeypatch):
    adata = ad.read_h5ad(EXAMPLE)
    x, pointer = adata.X, adata.X.data.ctypes.data
    seen = []
    real = annotate_module.score

    def counting(matrix, **kwargs):
        seen.append(matrix)
        return real(matrix, **kwargs)

    monkeypatch.setattr(annotate_module, "score", counting)
    annotate(adata, drug=DRUGS)
    assert len(seen) == len(DRUGS) and all(m is x for m in seen)
    assert adata.X is x and adata.X.data.ctypes.data == pointer


def test_provenance():
    adata = ad.read_h5ad(EXAMPLE)
    row = slice(adata.X.indptr[3], adata.X.indptr[4])  # cell 3 gets no counts
    adata.X.data[row] = 0
    adata.X.eliminate_zeros()
    for key, drug in zip(annotate(adata, drug=["Tarceva", "cisplatin"]), DRUGS):
        folder = find_bundle(drug)
        card = json.loads((folder / "card.json").read_text())
        uns = adata.uns[key]
        assert uns["drug"] == drug and key == f"scdr_{drug}"
        assert uns["model_sha256"] == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
        assert uns["threshold"]["value"] == card["threshold"]["value"]
        assert uns["threshold"]["rule"] == card["threshold"]["rule"]
        assert f"obs['{key}_prob'] >= 0.5" in uns["threshold"]["meaning"]
        assert uns["scdr_version"] == scdr.__version__
        assert uns["matrix"] == "X" and uns["zero_count_cells"] == 1
        assert uns["panel_genes"] == len(card["genes"]["symbols"])
        assert 0.5 <= uns["coverage"] <= 1.0
        assert uns["pathways"] == card["pathways"]["names"]
        assert uns["normalized_input"] is False and "explain" not in uns


@pytest.mark.parametrize("names", [["erlotinib", "no-such-drug"], ["no-such-drug", "cisplatin"],
                                   ["erlotinib", "Tarceva"]])
def test_a_bad_name_writes_nothing(names):
    adata = ad.read_h5ad(EXAMPLE)
    annotate(adata, drug="cisplatin")  # an earlier call's columns stay as they were
    before = snapshot(adata)
    with pytest.raises(ScdrError):
        annotate(adata, drug=names)
    assert_unchanged(adata, before)


def test_a_model_that_fails_to_score_writes_nothing(tmp_path, bundle_dir):
    """The second model covers none of the file's genes: scoring it fails after the first scored."""
    absent = [f"ENSG8{i:010d}" for i in range(30)]
    other = write_bundle(tmp_path / "other", [f"S{i}" for i in range(30)], absent, drug="other")
    adata = ad.read_h5ad(EXAMPLE)
    before = snapshot(adata)
    with pytest.raises(ScdrError, match="genes"):
        annotate(adata, model=[str(bundle_dir), other])
    assert_unchanged(adata, before)
    assert annotate(adata, model=[bundle_dir]) == ["scdr_testdrug"]


def test_annotated_object_round_trips_through_h5ad(tmp_path):
    adata = ad.read_h5ad(EXAMPLE)
    keys = annotate(adata, drug=DRUGS, explain=ExplainSettings(steps=2))
    path = tmp_path / "annotated.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    for key in keys:
        np.testing.assert_array_equal(back.obs[f"{key}_prob"], adata.obs[f"{key}_prob"])
        assert list(back.obs[f"{key}_label"]) == list(adata.obs[f"{key}_label"])
        np.testing.assert_array_equal(back.obsm[f"{key}_attributions"],
                                      adata.obsm[f"{key}_attributions"])
        stored = dict(back.uns[key])
        assert list(stored.pop("pathways")) == adata.uns[key]["pathways"]
        expected = {k: v for k, v in adata.uns[key].items() if k != "pathways"}
        assert {k: (dict(v) if isinstance(v, dict) else v) for k, v in stored.items()} == expected
        assert expected["explain"] == {"steps": 2, "rule": ExplainSettings().rule,
                                       "baseline": "zero"}


def test_a_rerun_without_explain_drops_stale_attributions():
    adata = ad.read_h5ad(EXAMPLE)
    annotate(adata, drug="cisplatin", explain=ExplainSettings(steps=2))
    assert "scdr_cisplatin_attributions" in adata.obsm
    annotate(adata, drug="cisplatin")
    assert "scdr_cisplatin_attributions" not in adata.obsm
