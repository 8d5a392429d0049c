"""End to end: scdr-score on the example with a bundle, through the real CLI process."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import EXAMPLE, forward, reference_normalize, write_h5ad

from scdr.scoring import score
from scdr.scoring.bundle import load_bundle
from scdr.scoring.genes import match_genes

CLI = [sys.executable, "-m", "scdr.scoring.cli"]


def _cli(*args, check_rc=0):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == check_rc, proc.stderr
    return proc


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t" if str(path).endswith(".tsv") else ","))


def test_cli_scores_every_cell_in_order_and_matches_numpy(tmp_path, bundle_dir, example_counts):
    m, var, obs = example_counts
    out = tmp_path / "pred.csv"
    summary = tmp_path / "run.json"
    _cli(EXAMPLE, "--model", bundle_dir, "-o", out, "--summary", summary, "--pathways", "-q")
    rows = _rows(out)
    assert [r["cell_id"] for r in rows] == obs
    card = json.loads((bundle_dir / "card.json").read_text())
    bundle = load_bundle(bundle_dir)
    match = match_genes(var, bundle.symbols, bundle.ensembl_ids)
    x, _ = reference_normalize(m.toarray(), match.gene_map, match.n_panel, card["normalization"])
    want = forward(x, bundle_dir)
    got = np.array([float(r["probability"]) for r in rows])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert [r["label"] for r in rows] == ["sensitive" if p >= 0.5 else "resistant" for p in got]
    assert sum(k.startswith("pathway:") for k in rows[0]) == len(card["pathways"]["names"])
    s = json.loads(summary.read_text())
    assert s["status"] == "ok" and s["cells"] == len(obs)
    model = s["models"][0]
    assert model["labels"]["sensitive"] == sum(r["label"] == "sensitive" for r in rows)
    assert model["sha256"]["model.onnx"] == card["files"]["model.onnx"]["sha256"]
    assert 0.9 < model["coverage"] < 1


def test_default_output_next_to_input_and_force(tmp_path, bundle_dir):
    src = tmp_path / "cells.h5ad"
    src.write_bytes(EXAMPLE.read_bytes())
    _cli(src, "--model", bundle_dir, "-q")
    out = tmp_path / "cells.scdr.testdrug.csv"
    assert out.exists()
    first = out.read_bytes()
    proc = _cli(src, "--model", bundle_dir, "-q", check_rc=4)
    assert "exists" in proc.stderr and "--force" in proc.stderr
    _cli(src, "--model", bundle_dir, "-q", "--force")
    assert out.read_bytes() == first  # deterministic output
    assert src.read_bytes() == EXAMPLE.read_bytes()  # input never modified


def test_identical_predictions_whatever_chunk_size_and_threads(bundle_dir):
    ref = score(EXAMPLE, model=bundle_dir, chunk_size=10_000, threads=2)
    for chunk_size, threads in ((1, 1), (7, 2), (64, 1)):
        t = score(EXAMPLE, model=bundle_dir, chunk_size=chunk_size, threads=threads)
        assert t.cell_ids == ref.cell_ids
        np.testing.assert_allclose(t.probability, ref.probability, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(t.pathways, ref.pathways, rtol=1e-6, atol=1e-6)
        assert (t.label == ref.label).all()


def test_python_api_on_arrays_equals_file(bundle_dir, example_counts):
    m, var, obs = example_counts
    from_file = score(EXAMPLE, model=bundle_dir)
    from_arrays = score(m, model=bundle_dir, gene_names=var, cell_ids=obs)
    assert from_arrays.cell_ids == from_file.cell_ids
    np.testing.assert_allclose(from_arrays.probability, from_file.probability, rtol=1e-6)
    dense = score(m.toarray(), model=bundle_dir, gene_names=var)
    np.testing.assert_allclose(dense.probability, from_file.probability, rtol=1e-6)


def test_symbols_and_ensembl_names_give_the_same_predictions(tmp_path, bundle_dir, example_counts):
    m, var, _obs = example_counts
    bundle = load_bundle(bundle_dir)
    to_symbol = {e: s for s, e in zip(bundle.symbols, bundle.ensembl_ids)}
    renamed = [to_symbol.get(v, v).lower() for v in var]  # case must not matter
    versioned = [f"{v}.7" if v.startswith("ENSG") else v for v in var]
    a = score(m, model=bundle_dir, gene_names=renamed)
    b = score(m, model=bundle_dir, gene_names=versioned)
    c = score(m, model=bundle_dir, gene_names=var)
    np.testing.assert_allclose(a.probability, c.probability, rtol=1e-6)
    np.testing.assert_allclose(b.probability, c.probability, rtol=1e-6)


def test_several_models_in_one_pass(tmp_path, bundle_dir, example_counts):
    _m, _var, obs = example_counts
    other = tmp_path / "second"
    from helpers import write_bundle

    bundle = load_bundle(bundle_dir)
    write_bundle(other, bundle.symbols, bundle.ensembl_ids, seed=5, drug="otherdrug", aliases=())
    _cli(EXAMPLE, "--model", bundle_dir, "--model", other, "-o", tmp_path / "{drug}.tsv", "-q")
    a, b = _rows(tmp_path / "testdrug.tsv"), _rows(tmp_path / "otherdrug.tsv")
    assert len(a) == len(b) == len(obs)
    single = score(EXAMPLE, model=other)
    np.testing.assert_allclose([float(r["probability"]) for r in b], single.probability, rtol=1e-5)
    proc = _cli(EXAMPLE, "--model", bundle_dir, "--model", other, "-o", tmp_path / "x.csv",
                check_rc=2)
    assert "{drug}" in proc.stderr


def test_zero_count_cells_are_flagged_not_nan(tmp_path, bundle_dir, example_counts):
    m, var, obs = example_counts
    m = m[:10].tolil()
    m[3, :] = 0
    path = write_h5ad(tmp_path / "z.h5ad", m.tocsr(), var, obs[:10])
    out = tmp_path / "z.csv"
    _cli(path, "--model", bundle_dir, "-o", out, "-q")
    rows = _rows(out)
    assert [r["zero_counts"] for r in rows].count("true") == 1 and rows[3]["zero_counts"] == "true"
    assert all(np.isfinite(float(r["probability"])) for r in rows)


@pytest.mark.parametrize("alias", ["testdrug", "TESTDRUG", "td-1"])
def test_drug_lookup_by_name_or_alias(bundle_dir, alias):
    from scdr.scoring.bundle import find_bundle

    assert find_bundle(alias, root=bundle_dir.parent) == bundle_dir


def test_drug_lookup_by_folder_name_passes_over_a_damaged_folder_of_that_name(tmp_path):
    """A folder named after the drug is found in any case; one whose card cannot be read is
    passed over for a bundle that names the drug as an alias."""
    import shutil

    from scdr.scoring.bundle import BundleError, bundled_models_dir, find_bundle

    shutil.copytree(bundled_models_dir() / "cisplatin", tmp_path / "Cisplatin")
    assert find_bundle("CISPLATIN", root=tmp_path) == tmp_path / "Cisplatin"
    (tmp_path / "Cisplatin" / "card.json").write_text("{")
    with pytest.raises(BundleError, match="no model for drug 'cisplatin'"):
        find_bundle("cisplatin", root=tmp_path)
    shutil.copytree(bundled_models_dir() / "cisplatin", tmp_path / "platinum")
    assert find_bundle("cisplatin", root=tmp_path) == tmp_path / "platinum"


def test_several_inputs_one_after_the_other(tmp_path, bundle_dir):
    a, b = tmp_path / "a.h5ad", tmp_path / "b.h5ad"
    a.write_bytes(EXAMPLE.read_bytes())
    b.write_bytes(EXAMPLE.read_bytes())
    summary = tmp_path / "s.json"
    _cli(str(tmp_path / "*.h5ad"), "--model", bundle_dir, "-o", tmp_path / "{stem}.{drug}.csv",
         "--summary", summary, "-q")
    assert (tmp_path / "a.testdrug.csv").read_bytes() == (tmp_path / "b.testdrug.csv").read_bytes()
    assert [r["input"] for r in json.loads(summary.read_text())["runs"]] == [str(a), str(b)]
    proc = _cli(a, b, "--model", bundle_dir, "-o", tmp_path / "x.csv", check_rc=1 + 1)
    assert "{stem}" in proc.stderr


def test_readme_quick_start_with_the_shipped_cisplatin_model(tmp_path):
    """The installed console script finds the bundled model and scores the bundled example."""
    import shutil
    from pathlib import Path

    exe = Path(sys.executable).with_name("scdr-score")
    if not exe.exists():
        pytest.skip("scdr is not installed in this environment (pip install .)")
    src = tmp_path / "celseq2_p1.h5ad"
    shutil.copy(EXAMPLE, src)
    proc = subprocess.run([str(exe), str(src), "--drug", "cisplatin"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(tmp_path / "celseq2_p1.scdr.cisplatin.csv")
    assert len(rows) == 297 and {r["label"] for r in rows} <= {"sensitive", "resistant"}
    models = subprocess.run([str(exe.with_name("scdr-models"))], capture_output=True, text=True)
    assert models.returncode == 0
    assert any(line.startswith("cisplatin ") for line in models.stdout.splitlines())


def test_scdr_models_shows_each_model_beside_its_target_gene():
    """What a user needs before trusting a model: its plate AUROC next to the marker's."""
    from click.testing import CliRunner

    from scdr.scoring.bundle import find_bundle
    from scdr.scoring.cli import models_command

    out = CliRunner().invoke(models_command, []).output
    erlotinib = next(line for line in out.splitlines() if line.startswith("erlotinib "))
    card = load_bundle(find_bundle("erlotinib")).card["metrics"]["single_cell_evaluation"]
    assert f"{card['auroc']:.3f}" in erlotinib
    assert f"{card['baselines']['marker']['auroc']:.3f} EGFR" in erlotinib
    cisplatin = next(line for line in out.splitlines() if line.startswith("cisplatin "))
    assert " - " in cisplatin  # no labelled cells: no figure, not a made-up one



def test_a_model_that_loses_to_its_target_gene_says_so_in_the_log_and_summary(tmp_path):
    """Scoring with osimertinib (0.649 vs EGFR 0.831 on the plates) notes it; afatinib (0.956 vs
    0.831) does not: the caveat follows the card's figures, drug by drug."""
    summary = tmp_path / "s.json"
    proc = subprocess.run([*CLI, EXAMPLE, "--drug", "osimertinib", "--drug", "afatinib",
                           "-o", str(tmp_path / "{drug}.csv"), "--summary", summary],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    caveats = {m["drug"]: m["caveat"] for m in json.loads(summary.read_text())["models"]}
    assert "worse than EGFR expression alone" in caveats["osimertinib"] and caveats["afatinib"] is None
    assert "osimertinib: note: On the single-cell validation data" in proc.stderr
    assert "afatinib: note" not in proc.stderr
