"""End to end on real data: scdr-train -> bundle -> ONNX parity -> scoring without torch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from helpers import ROOT

from scdr.scoring.card import FORMAT_VERSION, read_card, write_card
from scdr.training.cli import main
from scdr.training.data import DEFAULT_HOLDOUT_LINES, load_single_cell
from scdr.training.export import ExportError, build_head_graph, build_model_graph, check_parity
from scdr.training.module import ScdrModule
from scdr.training.normalize import Normalization, normalize_cells

DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent (CI has it)")
PLATE = DATA / "singlecell" / "sc_celseq2_5cl_p1.h5ad"


def _args(out: Path, *extra: str) -> list[str]:
    """A tiny but complete scdr-train command on the real files."""
    return [
        "--drug", "cisplatin",
        "--bulk-expression", str(DATA / "bulk" / "gdsc_expression.csv.gz"),
        "--ic50", str(DATA / "bulk" / "GDSC1_IC50.csv.gz"),
        "--ic50", str(DATA / "bulk" / "GDSC2_IC50.csv.gz"),
        "--target", str(PLATE),
        "--genesets", str(DATA / "genesets" / "h.all.v7.0.symbols.gmt"),
        "--knowledge-genesets", str(DATA / "genesets" / "ReactomePathways.gmt.gz"),
        "--knowledge-genesets", str(DATA / "genesets" / "enrichr.GO_Biological_Process_2021.gmt.gz"),
        "--knowledge-genesets", str(DATA / "genesets" / "h.all.v7.0.symbols.gmt"),
        "--gene-ids", str(DATA / "genes" / "hgnc_genes.tsv.gz"),
        "--gene-ids", str(DATA / "genes" / "gencode_v22_genes.tsv.gz"),
        "--out", str(out),
        "--panel-size", "300", "--hidden", "32", "--epochs", "4", "--members", "2",
        "--quiet", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle written by the scdr-train command from the real data."""
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} is absent (CI has it)")
    out = tmp_path_factory.mktemp("bundles") / "cisplatin"
    result = CliRunner().invoke(main, _args(out, "--depth-pairs", "2"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@needs_data
def test_bundle_follows_the_contract(bundle: Path):
    card = read_card(bundle)
    assert card["format"] == "scdr-bundle" and card["format_version"] == FORMAT_VERSION == 2
    raw = json.loads((bundle / "card.json").read_text())  # the page a person reads: no arrays
    assert (bundle / "card.json").stat().st_size < 50_000 and "gene_mean" not in raw["normalization"]
    assert card["drug"] == "cisplatin" and "Cisplatin" in card["aliases"]
    genes = card["genes"]
    n_genes = len(genes["symbols"])
    knowledge_genes = card["training"]["panel"]["steps"]["knowledge_genes"]
    assert knowledge_genes > 0 and n_genes <= 300 + knowledge_genes  # knowledge genes pass the cap
    assert len(genes["ensembl_ids"]) == n_genes
    norm = card["normalization"]
    assert set(norm) == {
        "target_sum",
        "log1p",
        "accepts_normalized",
        "cell_zscore",
        "gene_mean",
        "gene_std",
        "clip",
        "depth_stats",
    }
    assert len(norm["gene_mean"]) == len(norm["gene_std"]) == n_genes
    assert min(norm["gene_std"]) > 0
    depth = norm["depth_stats"]  # the targets thinned: rates fall, the full-depth row is the card's
    assert np.all(np.diff(depth["detection_rate"]) > 0) and 0 < depth["detection_rate"][0] < 0.2
    assert depth["gene_mean"][-1] == norm["gene_mean"] and depth["gene_std"][-1] == norm["gene_std"]
    n_paths = len(card["pathways"]["names"])
    assert card["pathways"]["source"].startswith("MSigDB Hallmark")
    assert "Reactome" in card["pathways"]["source"]
    assert set(card["reference_pathways"]) == {"bulk_mean", "single_cell_mean"}
    assert all(len(v) == n_paths for v in card["reference_pathways"].values())
    assert card["threshold"]["value"] == 0.5 and card["threshold"]["rule"]
    training = card["training"]
    assert training["holdout_lines"] == list(DEFAULT_HOLDOUT_LINES)
    assert training["seed"] == 0 and training["epochs"]["max"] == 4
    knowledge = card["knowledge"]  # cisplatin: DNA-damage knowledge nodes lead the pathway layer
    nodes = knowledge["nodes_in_model"]
    assert knowledge["targets"] == [] and "cross-link" in knowledge["mechanism"] and knowledge["sources"]
    assert nodes and card["pathways"]["names"][: len(nodes)] == nodes
    assert "KNOWLEDGE: Fanconi Anemia Pathway" in nodes or "KNOWLEDGE: Nucleotide Excision Repair" in nodes
    assert training["data"]["bulk_expression"]["sha256"] == _sha(DATA / "bulk" / "gdsc_expression.csv.gz")
    assert training["versions"]["torch"] and training["versions"]["onnx"]
    assert "quantile" in training["label_rule"]["description"]
    cv = card["metrics"]["bulk_cross_validation"]
    assert cv["folds"] == 2 and len(cv["per_fold"]) == 2
    for key in ("auroc_mean", "aupr_mean", "pooled_auroc"):
        assert 0 <= cv[key] <= 1
    calibration = card["calibration"]
    assert calibration["lines"] == training["label_rule"]["training_lines"]
    assert np.isfinite(calibration["slope"]) and calibration["reliability"]
    assert training["ensemble"]["members"] == 2
    pairs = training["ensemble"]["depth_pairs"]  # --depth-pairs 2: two draws at both depths
    assert training["data_options"]["depth_pairs"] == 2 and pairs["draws"] == 2
    cells = card["metrics"]["distillation_fidelity"]["cells"]["rows"]
    assert pairs["fractions_of_detected_genes"] == [0.45, 0.18]
    assert 2 * cells < pairs["thinned_cells"] <= 4 * cells
    assert card["metrics"]["distillation_fidelity"]["cells"]["rows"] > 200
    assert card["metrics"]["onnx_parity"]["cells"] > 200
    assert max(card["metrics"]["onnx_parity"]["max_abs_diff"].values()) <= 1e-5
    for name in ("model.onnx", "head.onnx"):
        assert card["files"][name]["sha256"] == _sha(bundle / name)
        model = onnx.load(str(bundle / name), load_external_data=False)
        onnx.checker.check_model(model, full_check=True)
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
        assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    model = onnx.load(str(bundle / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["expression"]
    assert [o.name for o in model.graph.output] == ["probability", "logit", "pathways"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == n_genes
    out_dims = model.graph.output[2].type.tensor_type.shape.dim
    assert out_dims[0].dim_param and out_dims[1].dim_value == n_paths


@needs_data
def test_head_graph_reproduces_the_model_logit(bundle: Path):
    card, x = _normalised_plate(bundle)
    model = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(bundle / "head.onnx"), providers=["CPUExecutionProvider"])
    probability, logit, pathways = model.run(None, {"expression": x})
    assert probability.shape == logit.shape == (len(x),)
    assert pathways.shape == (len(x), len(card["pathways"]["names"]))
    (head_logit,) = head.run(None, {"pathways": pathways})
    np.testing.assert_allclose(head_logit, logit, atol=1e-5)
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-logit.astype(float))), atol=1e-6)


@needs_data
def test_scoring_cli_uses_the_bundle_without_torch(bundle: Path, tmp_path: Path):
    output = tmp_path / "scores.csv"
    code = (
        "import sys, runpy\n"
        "for name in ('torch', 'anndata', 'scdr.training', 'sklearn', 'captum'):\n"
        "    sys.modules[name] = None  # any import of these now fails\n"
        f"sys.argv = ['scdr-score', {str(PLATE)!r}, '--model', {str(bundle)!r},\n"
        f"            '--output', {str(output)!r}, '--pathways', '--chunk-size', '64', '--quiet']\n"
        "runpy.run_module('scdr.scoring.cli', run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(output)
    card, x = _normalised_plate(bundle)
    names = card["pathways"]["names"]
    assert list(table.columns) == [
        "cell_id",
        "probability",
        "label",
        "zero_counts",
        *(f"pathway:{n}" for n in names),
    ]
    cells = load_single_cell(PLATE)
    assert table["cell_id"].tolist() == cells.cell_ids
    model = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    probability, _, pathways = model.run(None, {"expression": x})
    # training's numpy normalisation and scoring's Numba one agree through the whole model
    np.testing.assert_allclose(table["probability"], probability, atol=2e-5)
    np.testing.assert_allclose(table[[f"pathway:{n}" for n in names]], pathways, rtol=1e-4, atol=2e-5)
    assert set(table["label"]) <= {"sensitive", "resistant"}
    assert ((table["probability"] >= 0.5) == (table["label"] == "sensitive")).all()


@needs_data
def test_scoring_python_api_matches(bundle: Path):
    from scdr.scoring import score

    result = score(PLATE, model=bundle)
    card, x = _normalised_plate(bundle)
    model = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    probability, logit, pathways = model.run(None, {"expression": x})
    assert result.pathway_names == card["pathways"]["names"]
    np.testing.assert_allclose(result.probability, probability, atol=2e-5)
    np.testing.assert_allclose(result.logit, logit, atol=2e-5)
    np.testing.assert_allclose(result.pathways, pathways, atol=2e-5)


def test_parity_check_fails_loudly_on_a_mismatched_graph():
    rng = np.random.default_rng(0)
    mask = rng.random((50, 6)) < 0.3
    torch.manual_seed(0)
    trained, other = ScdrModule(mask, hidden=8), ScdrModule(mask, hidden=8)
    x = rng.standard_normal((40, 50)).astype(np.float32)
    model = build_model_graph(trained.eval()).SerializeToString()
    head = build_head_graph(trained).SerializeToString()
    parity = check_parity(trained, model, head, x)
    assert max(parity["max_abs_diff"].values()) <= 1e-5
    with pytest.raises(ExportError, match="parity failed"):
        check_parity(other.eval(), model, head, x)


@needs_data
def test_bad_input_is_a_one_line_click_error(tmp_path: Path):
    runner = CliRunner()
    args = _args(tmp_path / "x")
    args[args.index("cisplatin")] = "no-such-drug"
    result = runner.invoke(main, args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: drug 'no-such-drug' (aliases []) is in none of the IC50 files"
    ]
    assert not (tmp_path / "x").exists()
    args = _args(tmp_path / "y")
    args[args.index("--genesets") + 1] = str(DATA / "labels" / "cosmic_info.csv.gz")
    result = runner.invoke(main, args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().startswith("Error:") and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(main, [*_args(tmp_path / "z"), "--device", "tpu"])
    assert result.exit_code == 2 and "Invalid value for '--device'" in result.output
    result = runner.invoke(main, [*_args(tmp_path / "m"), "--members", "7"])
    assert result.exit_code == 2 and "multiple of 5" in result.output
    assert not (tmp_path / "m").exists()


def _normalised_plate(bundle: Path) -> tuple[dict, np.ndarray]:
    """The bundle's card and plate 1 normalised by training's numpy implementation of it."""
    card = read_card(bundle)
    spec = card["normalization"]
    norm = Normalization(
        target_sum=spec["target_sum"],
        log1p=spec["log1p"],
        cell_zscore=spec["cell_zscore"],
        gene_mean=np.asarray(spec["gene_mean"]),
        gene_std=np.asarray(spec["gene_std"]),
        clip=spec["clip"],
    )
    depth = spec["depth_stats"]  # scoring standardises each cell at its own detection rate
    norm = norm.with_depth_stats(depth["detection_rate"], depth["gene_mean"], depth["gene_std"])
    cells = load_single_cell(PLATE)
    out = normalize_cells(
        cells.counts, cells.features, card["genes"]["symbols"], card["genes"]["ensembl_ids"], norm
    )
    return card, out.values


def _sha(path: Path) -> str:
    """sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_data
def test_add_depth_stats_reproduces_the_trained_block(bundle: Path, tmp_path: Path):
    """A bundle without depth statistics gets exactly those scdr-train writes, from its own
    target files; a file other than the one it was trained on is refused."""
    import shutil

    from scdr.training.depth import add_depth_stats

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    card = read_card(copy)
    trained = card["normalization"].pop("depth_stats")
    write_card(copy, card)
    with pytest.raises(ValueError, match="was trained on"):
        add_depth_stats(copy, [DATA / "singlecell" / "sc_celseq2_5cl_p2.h5ad"])
    upgraded = add_depth_stats(copy, [PLATE])
    assert upgraded["normalization"]["depth_stats"] == trained
    assert _sha(copy / "model.onnx") == _sha(bundle / "model.onnx")


@pytest.mark.parametrize("missing", ["torch", "onnx", "pandas"])
def test_scdr_train_names_the_extra_when_a_dependency_is_missing(missing: str):
    """In the light install (no torch, onnx or pandas) `scdr-train --help` is one line, exit 2."""
    code = (f"import sys; sys.modules[{missing!r}] = None; sys.argv = ['scdr-train', '--help']; "
            "from scdr.training.launcher import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'train' extra" in lines[0] and missing in lines[0]
    assert "Traceback" not in proc.stderr
