"""Model integrity: tampered graphs and cards, paths out of the bundle, external-data ONNX files
and broken graphs are refused with one BundleError line (exit 3), never loaded or followed."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import EXAMPLE
from onnx import TensorProto, helper, numpy_helper

import scdr.scoring.card as card_module
from scdr.scoring import score
from scdr.scoring.bundle import load_bundle, refuse_external_data
from scdr.scoring.errors import EXIT_BAD_MODEL, BundleError

CLI = [sys.executable, "-m", "scdr.scoring.cli"]


@pytest.fixture
def bundle(tmp_path, bundle_dir) -> Path:
    """A private copy of the shared test bundle, free to damage."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def _card(folder: Path) -> dict:
    return json.loads((folder / "card.json").read_text())


def _write_card(folder: Path, card: dict) -> None:
    (folder / "card.json").write_text(json.dumps(card))


def _replace_graph(folder: Path, name: str, blob: bytes) -> None:
    """Swap a graph and re-sign it in the card, as a careless or hostile exporter would."""
    (folder / name).write_bytes(blob)
    card = _card(folder)
    card["files"][name]["sha256"] = hashlib.sha256(blob).hexdigest()
    _write_card(folder, card)


def _refused(folder: Path, words: str) -> str:
    with pytest.raises(BundleError) as info:
        score(EXAMPLE, model=folder)
    message = str(info.value)
    assert info.value.exit_code == EXIT_BAD_MODEL
    assert words in message and "\n" not in message, message
    return message


# --- tampering -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.onnx", "head.onnx"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_tampered_graph_fails_its_integrity_check(bundle, name, damage):
    blob = bytearray((bundle / name).read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0x01
    elif damage == "truncate":
        del blob[-10:]
    else:
        blob += b"\x00"
    (bundle / name).write_bytes(bytes(blob))
    _refused(bundle, "fails its integrity check")


def _edit(card: dict, edit: str) -> None:
    if edit == "other_sha":
        card["files"]["model.onnx"]["sha256"] = "ab" * 32
    elif edit == "sha_not_hex":
        card["files"]["model.onnx"]["sha256"] = "not-a-digest"
    elif edit == "head_unlisted":
        del card["files"]["head.onnx"]
    elif edit == "fewer_genes":
        card["genes"]["symbols"] = card["genes"]["symbols"][:-1]
        card["genes"]["ensembl_ids"] = card["genes"]["ensembl_ids"][:-1]
        for key in ("gene_mean", "gene_std"):
            card["normalization"][key] = card["normalization"][key][:-1]
    elif edit == "fewer_pathways":
        card["pathways"]["names"] = card["pathways"]["names"][:-1]
    elif edit == "threshold_nan":
        card["threshold"]["value"] = float("nan")
    elif edit == "threshold_above_one":
        card["threshold"]["value"] = 1.5
    elif edit == "threshold_text":
        card["threshold"]["value"] = "0.5"
    elif edit == "target_sum_infinite":
        card["normalization"]["target_sum"] = float("inf")
    elif edit == "clip_negative":
        card["normalization"]["clip"] = -1.0
    elif edit == "gene_std_zero":
        card["normalization"]["gene_std"][0] = 0.0
    elif edit == "gene_mean_nan":
        card["normalization"]["gene_mean"][0] = float("nan")
    elif edit == "symbol_not_text":
        card["genes"]["symbols"][0] = 17
    elif edit == "aliases_not_list":
        card["aliases"] = 5
    elif edit == "file_outside":
        card["files"]["../elsewhere.onnx"] = {"sha256": "ab" * 32}
    elif edit == "unknown_version":
        card["format_version"] = 99


@pytest.mark.parametrize("edit, words", [
    ("other_sha", "fails its integrity check"),
    ("sha_not_hex", "no valid sha256"),
    ("head_unlisted", "must list"),
    ("fewer_genes", "but the card lists"),
    ("fewer_pathways", "pathway outputs but the card names"),
    ("threshold_nan", "threshold.value"),
    ("threshold_above_one", "threshold.value"),
    ("threshold_text", "threshold.value"),
    ("target_sum_infinite", "target_sum"),
    ("clip_negative", "clip"),
    ("gene_std_zero", "gene_std"),
    ("gene_mean_nan", "gene_mean"),
    ("symbol_not_text", "genes.symbols"),
    ("aliases_not_list", "aliases"),
    ("file_outside", "outside the bundle folder"),
    ("unknown_version", "format_version 99"),
])
def test_tampered_or_inconsistent_card_is_refused(bundle, edit, words):
    card = _card(bundle)
    _edit(card, edit)
    _write_card(bundle, card)
    _refused(bundle, words)


@pytest.mark.parametrize("text, words", [
    (b"{", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # nesting past the recursion limit
    (b'{"format": "scdr-bundle", "n": 1' + b"0" * 5000 + b"}", "not valid JSON"),  # huge int
    (b'{"drug": "\xff\xfe"}', "not valid JSON"),  # not UTF-8
    (b"[]", "not an scdr bundle card"),
])
def test_unreadable_card_is_refused(bundle, text, words):
    (bundle / "card.json").write_bytes(text)
    _refused(bundle, words)


def test_oversized_card_is_refused_before_parsing(bundle, monkeypatch):
    monkeypatch.setattr(card_module, "MAX_CARD_BYTES", 100)
    _refused(bundle, "at most 100")


# --- paths and links -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.onnx", "head.onnx", "card.json"])
def test_symlink_out_of_the_bundle_is_never_followed(tmp_path, bundle, name):
    outside = tmp_path / f"outside_{name}"
    (bundle / name).rename(outside)
    (bundle / name).symlink_to(outside)
    _refused(bundle, "outside the bundle folder")


def test_symlink_chain_that_leaves_and_returns_is_judged_by_its_target(tmp_path, bundle):
    hop = tmp_path / "hop.onnx"
    (bundle / "model.onnx").rename(bundle / "real_model.onnx")
    hop.symlink_to(bundle / "real_model.onnx")  # out and back: the target is inside
    (bundle / "model.onnx").symlink_to(hop)
    assert load_bundle(bundle).model_bytes == (bundle / "real_model.onnx").read_bytes()
    outside = tmp_path / "outside.onnx"
    shutil.copy(bundle / "real_model.onnx", outside)
    hop.unlink()
    hop.symlink_to(outside)  # now the chain ends outside
    _refused(bundle, "outside the bundle folder")


def test_bundle_folder_named_through_a_symlink_is_the_users_choice(tmp_path, bundle):
    link = tmp_path / "linked_bundle"
    link.symlink_to(bundle, target_is_directory=True)
    assert load_bundle(link).drug == load_bundle(bundle).drug


def test_missing_graph_says_the_bundle_is_incomplete(bundle):
    (bundle / "head.onnx").unlink()
    _refused(bundle, "incomplete")


def test_fifo_in_place_of_a_graph_is_refused_without_blocking(bundle):
    (bundle / "model.onnx").unlink()
    os.mkfifo(bundle / "model.onnx")
    done = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_bundle(bundle)
        except BaseException as e:  # handed to the test thread
            errors.append(e)
        done.set()

    threading.Thread(target=load, daemon=True).start()
    assert done.wait(20), "loading a bundle blocked on a FIFO"
    assert isinstance(errors[0], BundleError) and "not a regular file" in str(errors[0])


def test_folder_in_place_of_a_graph_is_refused(bundle):
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").mkdir()
    _refused(bundle, "model.onnx")


# --- external data and broken graphs ---------------------------------------------------------


def _external(model: onnx.ModelProto, folder: Path, location: str) -> bytes:
    onnx.save_model(model, folder / "tmp.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)
    blob = (folder / "tmp.onnx").read_bytes()
    (folder / "tmp.onnx").unlink()
    return blob


def test_external_data_graph_is_refused_before_the_runtime_sees_it(bundle):
    blob = _external(onnx.load(bundle / "model.onnx"), bundle, "weights.bin")
    _replace_graph(bundle, "model.onnx", blob)
    message = _refused(bundle, "external data")
    assert "re-export" in message


def test_external_data_pointing_out_of_the_bundle_is_refused(tmp_path, bundle):
    model = onnx.load(bundle / "head.onnx")
    blob = _external(model, bundle, "w.bin")
    tensor = onnx.ModelProto.FromString(blob)
    for t in tensor.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../../../../etc/passwd"
    _replace_graph(bundle, "head.onnx", tensor.SerializeToString())
    _refused(bundle, "external data")


def test_external_tensor_inside_a_subgraph_is_found(tmp_path):
    inner_w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    inner_w.data_location = TensorProto.EXTERNAL
    entry = inner_w.external_data.add()
    entry.key, entry.value = "location", "w.bin"
    inner_w.ClearField("raw_data")
    branch = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "branch", [],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                               [inner_w])
    plain = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "plain", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=plain)
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    blob = helper.make_model(graph).SerializeToString()
    with pytest.raises(BundleError, match="keeps tensor 'w' as external data"):
        refuse_external_data(blob, tmp_path / "m.onnx")
    refuse_external_data(helper.make_model(
        helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=plain,
                                            else_branch=plain)], "g", [], [])
    ).SerializeToString(), tmp_path / "ok.onnx")  # no external tensor: passes


@pytest.mark.parametrize("blob", [b"\xff\xff\xff", b"\x3a\xff\x01abc", b"\x00garbage"])
def test_bytes_that_are_not_protobuf_are_not_onnx(bundle, blob):
    _replace_graph(bundle, "model.onnx", blob)
    _refused(bundle, "not a valid ONNX model")


def test_graph_the_runtime_rejects_gives_one_line_exit_3(tmp_path, bundle):
    model = onnx.load(bundle / "model.onnx")
    model.graph.node[0].op_type = "NoSuchOperator"
    _replace_graph(bundle, "model.onnx", model.SerializeToString())
    _refused(bundle, "cannot be loaded by ONNX Runtime")
    proc = subprocess.run([*CLI, str(EXAMPLE), "--model", str(bundle), "-o",
                           str(tmp_path / "o.csv"), "-q"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == EXIT_BAD_MODEL
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scdr-score: error: "), proc.stderr


def test_model_that_outputs_nan_is_refused_not_written(bundle):
    model = onnx.load(bundle / "model.onnx")
    w1 = next(t for t in model.graph.initializer if t.name == "W1")
    values = numpy_helper.to_array(w1).copy()
    values[0, 0] = np.nan
    w1.CopyFrom(numpy_helper.from_array(values, "W1"))
    _replace_graph(bundle, "model.onnx", model.SerializeToString())
    _refused(bundle, "NaN")


def test_model_with_outputs_of_the_wrong_size_is_refused(bundle):
    model = onnx.load(bundle / "model.onnx")
    # probability becomes [n, 2]: two numbers per cell
    for node in model.graph.node:
        if node.output[0] == "probability":
            node.output[0] = "p1"
    model.graph.node.append(helper.make_node("Concat", ["p1", "p1"], ["probability"], axis=0))
    del model.graph.output[0]
    model.graph.output.insert(0, helper.make_tensor_value_info("probability", TensorProto.FLOAT,
                                                               None))
    _replace_graph(bundle, "model.onnx", model.SerializeToString())
    _refused(bundle, "does not follow the bundle contract")


def test_scoring_never_imports_onnx():
    code = ("import sys, scoring.cli, scoring.engine, scoring.bundle, scoring.inference; "
            "sys.exit(int('onnx' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
