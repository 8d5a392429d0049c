"""--normalized is checked on a sample of cells: log1p(CP10k) passes as it is, log1p of another
library-size target is rescaled exactly, counts, CP10k without the log and z-scores are refused
with what they look like, and a subset of genes is taken on trust with a warning."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import write_h5ad

from scdr.scoring import score
from scdr.scoring.errors import EXIT_BAD_INPUT, InputError

CLI = [sys.executable, "-m", "scdr.scoring.cli"]


def _normalized(m: sp.csr_matrix, target: float | None, log: bool = True) -> sp.csr_matrix:
    """Rows scaled to ``target`` (None: the median library size, scanpy's default), then log1p."""
    m = m.astype(np.float64).tocsr()
    size = np.asarray(m.sum(axis=1)).ravel()
    goal = np.median(size[size > 0]) if target is None else target
    scale = np.divide(goal, size, out=np.zeros_like(size), where=size > 0)
    out = sp.diags(scale) @ m
    if log:
        out.data = np.log1p(out.data)
    return sp.csr_matrix(out.astype(np.float32))


@pytest.fixture(scope="module")
def reference(bundle_dir, example_counts):
    """Probabilities and labels from the raw counts."""
    m, var, _ = example_counts
    return score(m, model=bundle_dir, gene_names=var)


def _score(m, var, bundle_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = score(m, model=bundle_dir, gene_names=var, normalized=True)
    return table, [str(w.message) for w in caught]


def test_log1p_cp10k_is_used_as_it_is_without_a_word(bundle_dir, example_counts, reference):
    m, var, _ = example_counts
    table, notes = _score(_normalized(m, 1e4), var, bundle_dir)
    assert not [n for n in notes if "rescaled" in n or "trust" in n], notes
    np.testing.assert_allclose(table.probability, reference.probability, atol=2e-5)


@pytest.mark.parametrize(("target", "words"), [(1e6, "log1p(CPM)"), (None, "normalize_total")])
def test_log1p_of_another_target_is_rescaled_exactly_and_said(bundle_dir, example_counts,
                                                              reference, target, words):
    m, var, _ = example_counts
    table, notes = _score(_normalized(m, target), var, bundle_dir)
    assert any(words in n and "rescaled exactly" in n for n in notes), notes
    np.testing.assert_allclose(table.probability, reference.probability, atol=2e-5)
    assert (table.label == reference.label).all()


def test_without_the_check_log1p_cpm_would_move_calls(bundle_dir, example_counts, reference,
                                                     monkeypatch):
    """The harm the check prevents: log1p(CPM) taken as log1p(CP10k) shifts every probability."""
    import scdr.scoring.engine as engine
    from scdr.scoring.normalized_input import NormalizedInput

    monkeypatch.setattr(engine, "check_normalized", lambda *_: NormalizedInput(False, None, None))
    m, var, _ = example_counts
    unchecked = score(_normalized(m, 1e6), model=bundle_dir, gene_names=var, normalized=True)
    assert np.max(np.abs(unchecked.probability - reference.probability)) > 0.01


@pytest.mark.parametrize(("make", "words"), [
    (lambda m: m.astype(np.float32), "whole numbers only: it looks like raw counts"),
    (lambda m: _normalized(m, 1e4, log=False), "not log-transformed"),
    (lambda m: sp.csr_matrix(np.asarray(m.toarray(), np.float32) - 0.5), "scaled data"),
])
def test_other_matrices_are_refused_with_what_they_look_like(bundle_dir, example_counts, make,
                                                             words):
    m, var, _ = example_counts
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        score(make(m), model=bundle_dir, gene_names=var, normalized=True)


def test_a_subset_of_genes_is_taken_on_trust_with_a_warning(bundle_dir, example_counts):
    m, var, _ = example_counts
    norm = _normalized(m, 1e4)
    panel = set(json.loads((bundle_dir / "card.json").read_text())["genes"]["ensembl_ids"])
    keep = [j for j, v in enumerate(var) if v in panel or j % 3 == 0]
    full, _ = _score(norm, var, bundle_dir)
    subset, notes = _score(norm.tocsc()[:, keep].tocsr(), [var[j] for j in keep], bundle_dir)
    assert any("taken on trust" in n for n in notes), notes
    np.testing.assert_allclose(subset.probability, full.probability, atol=1e-6)


def test_the_cli_says_it_in_one_line_and_records_it(tmp_path, bundle_dir, example_counts):
    m, var, obs = example_counts
    cpm = write_h5ad(tmp_path / "cpm.h5ad", _normalized(m, 1e6), var, obs)
    summary = tmp_path / "s.json"
    proc = subprocess.run([*CLI, cpm, "--model", bundle_dir, "--normalized", "-o", tmp_path / "t.csv",
                           "--summary", summary], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    model = json.loads(summary.read_text())["models"][0]
    assert model["normalized_input_rescaled"] is True
    assert any("log1p(CPM)" in w for w in model["warnings"]) and "log1p(CPM)" in proc.stderr
    counts = write_h5ad(tmp_path / "counts.h5ad", m.astype(np.float32), var, obs)
    out = tmp_path / "c.csv"
    proc = subprocess.run([*CLI, counts, "--model", bundle_dir, "--normalized", "-o", out],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_BAD_INPUT and not out.exists()
    assert proc.stderr.count("\n") == 1 and "drop --normalized" in proc.stderr
