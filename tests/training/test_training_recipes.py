"""Round-2 recipe options: rank inputs (training only, refused by scoring and export) and
training on solid-tumour lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import ROOT

from scdr.scoring.card import normalization_of
from scdr.scoring.errors import BundleError
from scdr.training.data import DataError
from scdr.training.normalize import Normalization, normalize_bulk, scale_cells, within_row_ranks
from scdr.training.pipeline import TrainingInputs, lines_of_tissues, train_bundle
from scdr.training.recipes import BLOOD_TISSUES, ROUNDS, SHIPPED, find_recipe

DATA = ROOT.parent / "shared" / "data"


def test_within_row_ranks_share_ties_and_skip_absent_genes() -> None:
    y = np.array([[0.0, 3.0, 0.0, 7.0, 5.0], [2.0, 2.0, 2.0, 9.0, 1.0]])
    present = np.array([True, True, True, True, False])
    ranks = within_row_ranks(y, present)
    np.testing.assert_array_equal(ranks[0], [1.5, 3.0, 1.5, 4.0, 0.0])
    np.testing.assert_array_equal(ranks[1], [2.0, 2.0, 2.0, 4.0, 0.0])


def test_rank_inputs_ignore_platform_scale_and_library_size() -> None:
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(2.0, size=(6, 12)).astype(float))
    genes = [f"G{i}" for i in range(12)]
    rank = Normalization(rank=True, clip=None)
    y, _, _ = scale_cells(counts, genes, genes, [None] * 12, rank)
    y10, _, _ = scale_cells(counts * 10, genes, genes, [None] * 12, rank)
    np.testing.assert_array_equal(y, y10)  # depth scaling leaves ranks alone
    logged, _, _ = scale_cells(counts, genes, genes, [None] * 12, Normalization(clip=None))
    assert not np.allclose(y, logged)  # and the rank recipe is not the log recipe
    bulk = rng.normal(size=(4, 12))
    np.testing.assert_allclose(normalize_bulk(bulk, rank), normalize_bulk(np.exp(3 * bulk), rank))


def test_scoring_refuses_a_rank_card_and_plain_cards_do_not_carry_the_key() -> None:
    assert "rank" not in Normalization().to_card()
    card = {"genes": {"symbols": ["A", "B"]}, "normalization": Normalization(rank=True).to_card()}
    with pytest.raises(BundleError, match="rank inputs"):
        normalization_of(card, "bundle x")


def test_rank_training_is_refused_before_any_work(tmp_path: Path) -> None:
    inputs = TrainingInputs("erlotinib", tmp_path / "no.csv", [], [], tmp_path / "no.gmt", [], rank=True)
    with pytest.raises(DataError, match="rank inputs"):
        train_bundle(inputs, config=None, out_dir=tmp_path / "out")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_rounds_name_known_recipes_in_order() -> None:
    for names in ROUNDS.values():
        assert len(set(names)) == len(names)
        for name in names:
            find_recipe(name)
    assert ROUNDS[2][0] == "K-adv"  # the incumbent is trained again beside the new candidates
    assert find_recipe("K-adv-rank-solid").rank
    assert find_recipe("K-adv-solid").exclude_tissues == BLOOD_TISSUES
    assert ROUNDS[3][0] == "F-adv-solid"  # round 2's selection, beside the anchored candidates
    assert all(find_recipe(n).train_config().anchor for n in ROUNDS[3][1:])


def test_lines_of_tissues(tmp_path: Path) -> None:
    table = tmp_path / "info.csv"
    table.write_text("SAMPLE_NAME,GDSC1\nKarpas-299,lymphoma\nNCI-H2228,lung_NSCLC\nK-562,leukemia\n")
    assert lines_of_tissues(table, ("lymphoma", "leukemia")) == {"KARPAS299", "K562"}
    with pytest.raises(DataError, match="no lines of tissue melanoma"):
        lines_of_tissues(table, ("melanoma",))
    with pytest.raises(DataError, match="line-info"):
        lines_of_tissues(None, ("lymphoma",))


@pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent (CI has it)")
def test_blood_tissues_are_in_the_gdsc_line_table() -> None:
    lines = lines_of_tissues(DATA / "labels" / "cosmic_info.csv.gz", BLOOD_TISSUES)
    assert 150 < len(lines) < 200 and "NCIH2228" not in lines


def test_the_card_description_says_which_lines_trained_the_model() -> None:
    from scdr.training.pipeline import describe_model

    solid = describe_model("crizotinib", 753, 53, 4, BLOOD_TISSUES)
    assert "753 GDSC bulk solid-tumour lines (leukemia, lymphoma, myeloma left out)" in solid
    assert "53 pathway nodes (4 for the drug's target and mechanism)" in solid
    assert "753 GDSC bulk lines and" in describe_model("crizotinib", 753, 53, 0)
    assert "753 GDSC bulk lines (skin left out)" in describe_model("crizotinib", 753, 53, 0, ("skin",))


def test_the_shipped_bundles_are_trained_with_the_shipped_recipe() -> None:
    """What recipes.SHIPPED (and the docs) say about the shipped models is what their cards record."""
    from scdr.scoring.card import read_card

    recipe = find_recipe(SHIPPED)
    roots = sorted(p for p in (ROOT / "exported_models").iterdir() if (p / "card.json").is_file())
    cards = [read_card(p) for p in roots]
    assert len(cards) == 12
    for card in cards:
        training = card["training"]
        assert f"--recipe {SHIPPED}" in training["command"], training["command"]
        assert training["data_options"] == {"knowledge_only": recipe.knowledge_only,
                                             "min_detection": recipe.min_detection,
                                             "exclude_tissues": list(recipe.exclude_tissues),
                                             "depth_pairs": recipe.depth_pairs}  # fmt: skip
        for key, value in recipe.config.items():
            assert training["options"][key] == value
        assert (training["ensemble"]["depth_pairs"] is not None) == (recipe.depth_pairs > 0)
