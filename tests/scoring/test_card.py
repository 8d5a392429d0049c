"""scoring.card: format 2 keeps the card readable (arrays in a verified npz), reads as format 1
did, scores the same bytes, and refuses unknown versions and damaged or hostile array files."""

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import EXAMPLE, ROOT

from scdr.scoring import score
from scdr.scoring.card import (
    ARRAY_FIELDS,
    ARRAYS_FILE,
    FORMAT_VERSION,
    npz_bytes,
    read_card,
    write_card,
)
from scdr.scoring.errors import EXIT_BAD_MODEL, BundleError

SHIPPED = sorted(p for p in (ROOT / "exported_models").iterdir() if (p / "card.json").is_file())


@pytest.fixture
def v2_bundle(tmp_path, bundle_dir) -> Path:
    """The shared (format 1) test bundle, rewritten as format 2."""
    folder = Path(shutil.copytree(bundle_dir, tmp_path / "v2"))
    write_card(folder, read_card(folder))
    return folder


def test_format_2_reads_back_the_same_card_and_scores_the_same_bytes(bundle_dir, v2_bundle):
    old, new = read_card(bundle_dir), read_card(v2_bundle)
    assert old["format_version"] == 1 and new["format_version"] == FORMAT_VERSION == 2
    for card in (old, new):
        card.pop("format_version"), card.pop("files")
    assert new == old
    a, b = score(EXAMPLE, model=bundle_dir), score(EXAMPLE, model=v2_bundle)
    np.testing.assert_array_equal(a.probability, b.probability)
    np.testing.assert_array_equal(a.pathways, b.pathways)


def test_the_card_on_disk_holds_no_arrays_and_lists_the_npz_with_its_hash(v2_bundle):
    raw = json.loads((v2_bundle / "card.json").read_text())
    assert "gene_mean" not in raw["normalization"]
    entry = raw["files"][ARRAYS_FILE]
    assert entry["sha256"] == hashlib.sha256((v2_bundle / ARRAYS_FILE).read_bytes()).hexdigest()
    assert set(entry["arrays"]) <= set(ARRAY_FIELDS) and "normalization.gene_mean" in entry["arrays"]


def test_rewriting_a_card_gives_identical_bytes(v2_bundle):
    before = {n: (v2_bundle / n).read_bytes() for n in ("card.json", ARRAYS_FILE)}
    write_card(v2_bundle, read_card(v2_bundle))
    assert {n: (v2_bundle / n).read_bytes() for n in before} == before


@pytest.mark.parametrize("root", SHIPPED, ids=lambda p: p.name)
def test_shipped_cards_are_format_2_pages_under_100_kb(root):
    # the names of a ~1,630-gene panel are ~50 KB of the page; every number is in arrays.npz
    assert (root / "card.json").stat().st_size < 100_000
    assert read_card(root)["format_version"] == 2 and (root / ARRAYS_FILE).is_file()


def _resign(folder: Path, blob: bytes, arrays: list[str] | None = None) -> None:
    """Replace the npz and re-sign it in the card, as a careless or hostile exporter would."""
    (folder / ARRAYS_FILE).write_bytes(blob)
    card = json.loads((folder / "card.json").read_text())
    card["files"][ARRAYS_FILE]["sha256"] = hashlib.sha256(blob).hexdigest()
    if arrays is not None:
        card["files"][ARRAYS_FILE]["arrays"] = arrays
    (folder / "card.json").write_text(json.dumps(card))


def _refused(folder: Path, words: str) -> None:
    with pytest.raises(BundleError) as info:
        score(EXAMPLE, model=folder)
    assert info.value.exit_code == EXIT_BAD_MODEL
    assert words in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_modified_npz_fails_its_integrity_check(v2_bundle):
    blob = bytearray((v2_bundle / ARRAYS_FILE).read_bytes())
    blob[-100] ^= 1
    (v2_bundle / ARRAYS_FILE).write_bytes(bytes(blob))
    _refused(v2_bundle, "integrity check")


def test_a_missing_npz_is_named(v2_bundle):
    (v2_bundle / ARRAYS_FILE).unlink()
    _refused(v2_bundle, "arrays.npz is missing")


def test_an_npz_holding_objects_is_refused_without_unpickling(v2_bundle):
    buffer = io.BytesIO()
    np.savez(buffer, **{"normalization.gene_mean": np.array([object()] * 3, dtype=object)})
    _resign(v2_bundle, buffer.getvalue(), ["normalization.gene_mean"])
    _refused(v2_bundle, "not a valid npz")


def test_an_npz_with_arrays_the_card_does_not_list_is_refused(v2_bundle):
    card = read_card(v2_bundle)
    arrays = {"normalization.gene_mean": card["normalization"]["gene_mean"], "evil": [1.0]}
    _resign(v2_bundle, npz_bytes(arrays))
    _refused(v2_bundle, "not the arrays its card lists")


def test_an_npz_of_the_wrong_shape_is_refused(v2_bundle):
    card = read_card(v2_bundle)
    arrays = {name: np.asarray(card["normalization"][name.split(".")[-1]])[:-1]
              for name in ("normalization.gene_mean", "normalization.gene_std")}
    _resign(v2_bundle, npz_bytes(arrays), sorted(arrays))
    _refused(v2_bundle, "must have")


def test_not_a_zip_is_refused(v2_bundle):
    _resign(v2_bundle, b"not a zip at all")
    _refused(v2_bundle, "not a valid npz")


def test_an_npz_that_unpacks_to_a_bomb_is_refused_before_reading(v2_bundle, monkeypatch):
    import scdr.scoring.card as card_module

    monkeypatch.setattr(card_module, "MAX_ARRAY_BYTES", 100)
    _refused(v2_bundle, "unpacks to more than")


def test_an_unknown_format_version_says_what_to_do(v2_bundle):
    card = json.loads((v2_bundle / "card.json").read_text())
    card["format_version"] = 3
    (v2_bundle / "card.json").write_text(json.dumps(card))
    _refused(v2_bundle, "format_version 3; this scdr reads 1, 2: upgrade scdr")


def test_npz_bytes_do_not_depend_on_time_or_order():
    a = npz_bytes({"b": np.arange(3.0), "a": np.ones((2, 2))})
    b = npz_bytes({"a": np.ones((2, 2)), "b": np.arange(3.0)})
    assert a == b
    with zipfile.ZipFile(io.BytesIO(a)) as zf:
        assert [i.date_time for i in zf.infolist()] == [(1980, 1, 1, 0, 0, 0)] * 2


@pytest.mark.parametrize("root", SHIPPED, ids=lambda p: p.name)
def test_shipped_cards_carry_their_single_cell_evaluation(root):
    """The report's model box reads these: the plate figures, and the target marker beside them."""
    evaluation = read_card(root)["metrics"]["single_cell_evaluation"]
    assert "GSE118767" in evaluation["data"] and -1 <= evaluation["spearman"] <= 1
    if evaluation["auroc"] is not None:  # the five drugs with labelled cells
        assert 0 <= evaluation["auroc"] <= 1
        assert set(evaluation["baselines"]) == {"marker", "logistic_regression", "random_forest"}
        assert evaluation["baselines"]["marker"]["genes"]
