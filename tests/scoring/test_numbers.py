"""scoring.numbers: the fast float text is exactly Python's "%.6g", and tables keep their bytes."""

import csv
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from scdr.scoring.numbers import FLOAT_FORMAT, format_column, format_rows
from scdr.scoring.output import TableWriter


def _python(values: np.ndarray, delimiter: str) -> list[str]:
    return [delimiter.join(FLOAT_FORMAT % v for v in row) for row in values.tolist()]


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_random_float32_bit_patterns_format_as_python_does(delimiter):
    rng = np.random.default_rng(7)
    values = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = values[np.isfinite(values)][:390_000].reshape(-1, 39)
    assert format_rows(values, delimiter) == _python(values, delimiter)


def test_activities_of_every_scale_and_rounded_decimals_format_as_python_does():
    rng = np.random.default_rng(8)
    wide = rng.standard_normal(300_000) * 10.0 ** rng.uniform(-9, 9, 300_000)
    decimals = np.round(rng.standard_normal(300_000) * 1e4) / 10.0 ** rng.integers(-3, 8, 300_000)
    values = np.concatenate([wide, decimals]).astype(np.float32).reshape(-1, 60)
    assert format_rows(values, ",") == _python(values, ",")


def test_ties_powers_of_ten_zeros_and_subnormals_format_as_python_does():
    edges = np.array([0.0, -0.0, 0.5, 2.5, 12.5, 0.125, 1e-4, 9.999995e-5, 1e-5, 123456.5,
                      1234565.0, 999999.5, 9999995.0, 99999.95, 1e5, 1e6, 120000.0, 1.0, 10.0,
                      1e38, 3.4028235e38, 1e-45, 1.1754944e-38, 1e-38, 0.1, 1.0000005],
                     np.float32)  # fmt: skip
    inner = edges[edges < 3e38]
    near = [np.nextafter(inner, np.float32(np.inf)), np.nextafter(inner, np.float32(-np.inf))]
    values = np.concatenate([edges, -edges, *near, np.float32([1.0, 2.0])]).reshape(-1, 4)
    assert np.isfinite(values).all()  # so that the kernel, not the fallback, formats them
    assert format_rows(values, ",") == _python(values, ",")
    assert format_column(np.float32([0.0, -0.0, 1234565.0])) == ["0", "-0", "1.23456e+06"]


def test_other_dtypes_and_non_finite_values_take_python_formatting():
    doubles = np.array([[0.1234567891, 1e300]])
    assert format_rows(doubles, ",") == ["0.123457,1e+300"]
    odd = np.float32([[np.nan, np.inf, -np.inf, 1.5]])
    assert format_rows(odd, "\t") == ["nan\tinf\t-inf\t1.5"]
    assert format_rows(np.zeros((0, 3), np.float32), ",") == []


def test_a_table_with_pathways_keeps_awkward_cell_ids_intact(tmp_path: Path):
    rng = np.random.default_rng(9)
    ids = ["plain", 'quo"te', "com,ma", "line\nbreak", "tab\tbed"]
    pathways = rng.standard_normal((5, 3)).astype(np.float32)
    res = SimpleNamespace(cell_ids=ids, probability=rng.random(5).astype(np.float32),
                          label=np.array(["sensitive", "resistant"] * 2 + ["resistant"]),
                          zero_counts=np.zeros(5, bool), pathways=pathways)  # fmt: skip
    for suffix, delimiter in ((".csv", ","), (".tsv", "\t")):
        for chunk_ids in (ids[:3], ids):  # without and with a line break inside a field
            n = len(chunk_ids)
            part = SimpleNamespace(
                cell_ids=chunk_ids, probability=res.probability[:n], label=res.label[:n],
                zero_counts=res.zero_counts[:n], pathways=pathways[:n])  # fmt: skip
            out = tmp_path / f"t{n}{suffix}"
            writer = TableWriter(out, ["a", "b", "c"])
            writer.open()
            writer.write(part)
            writer.commit()
            want = io.StringIO()
            ref = csv.writer(want, delimiter=delimiter, lineterminator="\n")
            ref.writerow(["cell_id", "probability", "label", "zero_counts",
                          "pathway:a", "pathway:b", "pathway:c"])  # fmt: skip
            for i in range(n):
                ref.writerow([chunk_ids[i], FLOAT_FORMAT % float(part.probability[i]), part.label[i],
                              "false", *(FLOAT_FORMAT % float(v) for v in pathways[i])])  # fmt: skip
            assert out.read_text(encoding="utf-8") == want.getvalue()


@pytest.mark.parametrize("suffix, delimiter", [(".csv", ","), (".tsv", "\t")])
@pytest.mark.parametrize("pathways", [False, True])
def test_explain_tables_quote_top_pathways_as_the_csv_module_does(tmp_path: Path, suffix, delimiter,
                                                                   pathways):
    rng = np.random.default_rng(10)
    names = ["TARGET: EGFR, ERBB2", 'odd "quoted" set', "tab\there", "HALLMARK_P53_PATHWAY"]
    for ids in (["c1", "c2", "c3", "c4", "c5"], ["c1", "c,2", 'c"3', "c4", "c5"]):
        top = [";".join(names[:2]), "", names[2], names[3], ";".join(names[1:])]
        res = SimpleNamespace(cell_ids=ids, probability=rng.random(5).astype(np.float32),
                              label=np.array(["resistant"] * 5), zero_counts=np.zeros(5, bool),
                              pathways=rng.standard_normal((5, 2)).astype(np.float32),
                              top_pathways=top, ig_gap=rng.random(5).astype(np.float32))  # fmt: skip
        out = tmp_path / f"e{len(ids[1])}{pathways}{suffix}"
        writer = TableWriter(out, ["a", "b"] if pathways else None, explain=True)
        writer.open()
        writer.write(res)
        writer.write(res)  # the second chunk's strings come from the remembered ones
        writer.commit()
        want = io.StringIO()
        ref = csv.writer(want, delimiter=delimiter, lineterminator="\n")
        header = ["cell_id", "probability", "label", "zero_counts", "top_pathways", "ig_gap"]
        ref.writerow(header + (["pathway:a", "pathway:b"] if pathways else []))
        for _ in range(2):
            for i in range(5):
                extra = [FLOAT_FORMAT % float(v) for v in res.pathways[i]] if pathways else []
                ref.writerow([ids[i], FLOAT_FORMAT % float(res.probability[i]), "resistant", "false",
                              top[i], FLOAT_FORMAT % float(res.ig_gap[i]), *extra])  # fmt: skip
        assert out.read_text(encoding="utf-8") == want.getvalue()
