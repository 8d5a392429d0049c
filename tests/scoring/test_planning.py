"""scoring.planning: where a run writes, decided and checked before any cell is scored."""

from pathlib import Path

import pytest

from scdr.scoring.errors import InputError, OutputError, ScdrError
from scdr.scoring.planning import OutputPlan, expand_inputs, plan_outputs


@pytest.fixture
def inputs(tmp_path):
    paths = [tmp_path / "a.h5ad", tmp_path / "b.h5ad"]
    for p in paths:
        p.write_bytes(b"")
    return paths


def test_default_tables_sit_next_to_each_input(inputs):
    plans = plan_outputs(inputs, ["cisplatin", "erlotinib"])
    assert plans[0] == OutputPlan(inputs[0], [inputs[0].with_name("a.scdr.cisplatin.csv"),
                                              inputs[0].with_name("a.scdr.erlotinib.csv")])
    assert plans[1].tables[1].name == "b.scdr.erlotinib.csv"


def test_templates_fill_stem_and_drug(inputs, tmp_path):
    plans = plan_outputs(inputs, ["cisplatin", "erlotinib"], output=str(tmp_path / "{stem}_{drug}.tsv"),
                         explain=True, report=str(tmp_path / "{stem}.html"))
    assert [p.name for p in plans[1].tables] == ["b_cisplatin.tsv", "b_erlotinib.tsv"]
    assert [p.name for p in plans[1].attributions] == ["b.scdr.cisplatin.attributions.h5",
                                                      "b.scdr.erlotinib.attributions.h5"]
    assert plans[0].report == tmp_path / "a.html"


@pytest.mark.parametrize(("kw", "words"), [
    ({"output": "x.csv"}, "put {stem} in --output"),
    ({"report": "r.html"}, "put {stem} in --report"),
    ({"explain_out": "e.h5", "explain": True}, "put {stem} in --explain-out"),
])
def test_several_inputs_need_stem_in_every_named_output(inputs, kw, words):
    with pytest.raises(ScdrError, match=words.replace("{", r"\{").replace("}", r"\}")):
        plan_outputs(inputs, ["cisplatin"], **kw)


def test_several_models_need_drug_in_a_named_output(inputs, tmp_path):
    with pytest.raises(ScdrError, match=r"put \{drug\}"):
        plan_outputs(inputs[:1], ["cisplatin", "erlotinib"], output=str(tmp_path / "x.csv"))


def test_standard_output_takes_one_table_only(inputs):
    assert plan_outputs(inputs[:1], ["cisplatin"], output="-")[0].tables == [Path("-")]
    with pytest.raises(ScdrError, match=r"put \{stem\}"):
        plan_outputs(inputs, ["cisplatin"], output="-")
    with pytest.raises(ScdrError, match=r"put \{drug\}"):
        plan_outputs(inputs[:1], ["cisplatin", "erlotinib"], output="-")
    with pytest.raises(ScdrError, match="standard output"):
        plan_outputs(inputs[:1], ["cisplatin"], output="-", distributed=True)


def test_distributed_runs_write_plain_tables(inputs, tmp_path):
    with pytest.raises(ScdrError, match="compress the table afterwards"):
        plan_outputs(inputs[:1], ["cisplatin"], output=str(tmp_path / "t.csv.gz"), distributed=True)


def test_existing_outputs_need_overwrite(inputs):
    existing = inputs[0].with_name("a.scdr.cisplatin.csv")
    existing.write_text("x")
    with pytest.raises(OutputError, match="--force"):
        plan_outputs(inputs[:1], ["cisplatin"])
    assert plan_outputs(inputs[:1], ["cisplatin"], overwrite=True)[0].tables == [existing]


def test_unknown_table_formats_and_missing_folders_are_refused(inputs, tmp_path):
    with pytest.raises(OutputError, match="unknown table format"):
        plan_outputs(inputs[:1], ["cisplatin"], output=str(tmp_path / "t.xlsx"))
    with pytest.raises(OutputError, match="does not exist"):
        plan_outputs(inputs[:1], ["cisplatin"], output=str(tmp_path / "nope" / "t.csv"))


def test_two_inputs_writing_one_file_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    same = [tmp_path / "x" / "c.h5ad", tmp_path / "y" / "c.h5ad"]
    with pytest.raises(ScdrError, match="same file"):
        plan_outputs(same, ["cisplatin"], output=str(tmp_path / "{stem}.csv"))


def test_globs_expand_sorted_and_duplicates_are_refused(inputs, tmp_path):
    assert expand_inputs([str(tmp_path / "*.h5ad")]) == sorted(inputs)
    with pytest.raises(InputError, match="no input matches"):
        expand_inputs([str(tmp_path / "*.loom")])
    with pytest.raises(ScdrError, match="named twice"):
        expand_inputs([str(inputs[0]), str(tmp_path / "a.h5ad")])
