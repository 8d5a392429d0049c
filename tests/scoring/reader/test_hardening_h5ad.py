"""Hostile h5ad files: generated structures end in the exact result or in one clear error.

Hypothesis writes AnnData files with h5py: every encoding (CSR, CSC, dense, legacy h5sparse),
location, dtype and name storage, with valid oddities (unsorted or duplicate entries, explicit
zeros, duplicate and non-UTF-8 names, soft links) and one flaw at most (lying or missing shape,
broken ``indptr``/``indices``, bad values, links out of the file, claims of data never stored).
A well-formed file must score exactly as a dense numpy reference of what it holds; a flawed one
must raise ``ScdrError`` from the API and give one ``scdr-score: error:`` line and exit 2 from the
CLI, within a memory bound. ``benchmarks/fuzz_reader.py`` runs the same cases at scale.
"""

import itertools
import json
import subprocess
import sys
import tempfile
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from helpers import forward, write_bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scdr.scoring import score
from scdr.scoring.cli import score_command
from scdr.scoring.errors import EXIT_BAD_INPUT, InputError, ScdrError
from scdr.scoring.reader import MAX_FEATURES, open_counts

PANEL = [f"GENE{i}" for i in range(6)]
MEMORY_BOUND = 48 << 20  # bytes traced while one tiny hostile file is scored
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ENCODINGS = ("csr", "csc", "dense", "legacy_csr", "legacy_csc")
LOCATIONS = ("X", "raw/X", "layers/counts")
DATA_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
               "float16", "float32", "float64")
INDEX_DTYPES = ("int32", "int64", "uint32", "uint64")
NAME_KINDS = ("vlen", "fixed", "categorical")
SPARSE_FLAWS = (
    "shape_rows", "shape_cols", "shape_missing", "shape_garbage", "encoding_missing",
    "encoding_unknown", "indptr_not_monotone", "indptr_past_data", "indptr_not_from_zero",
    "indptr_negative", "indptr_short", "indices_out_of_range", "indices_negative", "data_short",
    "data_bool", "indices_float", "indices_missing", "row_overfull", "data_never_written",
    "huge_shape", "huge_n_vars", "csc_without_obs",
)
DENSE_FLAWS = ("dense_1d", "dense_virtual", "dense_external_storage", "dense_never_written")
ANY_FLAWS = (
    "var_missing", "var_short", "obs_long", "value_negative", "value_nan", "value_inf",
    "value_huge", "value_fraction", "x_external_link", "x_soft_link_loop", "x_empty_group",
    "var_never_written", "var_huge_claim",
)


@dataclass
class Case:
    """One generated file: what it holds (``counts``, names) and how it is stored and flawed."""

    counts: np.ndarray  # int64 n_obs x n_vars: the values the file holds when well formed
    var: list[bytes]
    obs: list[bytes] | None  # None: no obs index (positions are the cell ids)
    encoding: str
    location: str
    data_dtype: str
    index_dtype: str
    indptr_dtype: str
    name_kind: str
    chunked: bool
    unsorted: bool
    duplicates: bool
    explicit_zeros: bool
    soft_link: bool
    flaw: str | None
    chunk_size: int
    notes: list[str] = field(default_factory=list)

    @property
    def well_formed(self) -> bool:
        """True when scoring must succeed (no flaw and at least one cell)."""
        return self.flaw is None and self.counts.shape[0] > 0


# --- generation ------------------------------------------------------------------------------


@st.composite
def h5ad_cases(draw: st.DrawFn, flawed: bool | None = None) -> Case:
    """A random h5ad structure; ``flawed`` forces a flaw (True), none (False), or either (None)."""
    data_dtype = draw(st.sampled_from(DATA_DTYPES))
    top = 2048 if data_dtype == "float16" else 1 << 20  # float16 holds integers to 2048
    if data_dtype.startswith(("int", "uint")):
        top = min(top, int(np.iinfo(data_dtype).max))
    high = draw(st.sampled_from([1, 5, 100, top]))
    n_obs = draw(st.integers(0 if flawed is not False else 1, 9))
    panel = draw(st.lists(st.sampled_from(PANEL), min_size=3, max_size=6, unique=True))
    names = [p.encode() if draw(st.booleans()) else p.lower().encode() for p in panel]
    if draw(st.booleans()):  # a duplicate gene name: both columns add to one panel gene
        names.append(names[draw(st.integers(0, len(names) - 1))])
    n_extra = draw(st.integers(0, 3))
    names += [b"\xff\xfeNOT_UTF8_%d" % i if draw(st.booleans()) else b"OTHER%d" % i
              for i in range(n_extra)]
    order = draw(st.permutations(range(len(names))))
    var = [names[i] for i in order]
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, high + 1, size=(n_obs, len(var)))
    counts[rng.random(counts.shape) >= density] = 0
    if n_obs and draw(st.booleans()):
        counts[draw(st.integers(0, n_obs - 1))] = 0  # a zero-count cell
    obs = None if draw(st.integers(0, 5)) == 0 else [
        b"cell\xe9%d" % i if draw(st.booleans()) else b"cell_%d" % i for i in range(n_obs)]
    encoding = draw(st.sampled_from(ENCODINGS))
    if encoding.endswith("csc") and obs is None:  # CSC without obs is a flaw of its own
        obs = [b"cell_%d" % i for i in range(n_obs)]
    case = Case(
        counts=counts, var=var, obs=obs, encoding=encoding,
        location="X" if encoding.startswith("legacy") else draw(st.sampled_from(LOCATIONS)),
        data_dtype=data_dtype, index_dtype=draw(st.sampled_from(INDEX_DTYPES)),
        indptr_dtype=draw(st.sampled_from(INDEX_DTYPES)),
        name_kind="fixed" if encoding.startswith("legacy") else draw(st.sampled_from(NAME_KINDS)),
        chunked=draw(st.booleans()), unsorted=draw(st.booleans()),
        duplicates=draw(st.booleans()), explicit_zeros=draw(st.booleans()),
        soft_link=draw(st.integers(0, 4)) == 0, flaw=None,
        chunk_size=draw(st.integers(1, 12)),
    )
    if flawed is not False:
        options = _applicable_flaws(case)
        if flawed or draw(st.booleans()):
            case.flaw = draw(st.sampled_from(options))
    return case


def _applicable_flaws(case: Case) -> list[str]:
    nnz = int(np.count_nonzero(case.counts))
    n_obs, n_vars = case.counts.shape
    major = n_obs if case.encoding.endswith("csr") else n_vars
    signed_data = case.data_dtype.startswith(("int", "float"))
    floats = case.data_dtype.startswith("float")
    out = [f for f in ANY_FLAWS if not (
        (f == "value_negative" and not (signed_data and nnz))
        or (f in ("value_nan", "value_inf", "value_fraction") and not (floats and nnz))
        or (f == "value_huge" and not (case.data_dtype in ("float32", "float64") and nnz))
        or (f in ("var_never_written", "var_huge_claim") and case.encoding.startswith("legacy"))
        or (f == "obs_long" and case.obs is None)
    )]
    if case.encoding == "dense":
        out += [f for f in DENSE_FLAWS if n_obs or f in ("dense_1d", "dense_never_written")]
        return out
    out += [f for f in SPARSE_FLAWS if not (
        (f == "indptr_not_monotone" and not (major >= 2 and nnz))
        or (f in ("indptr_not_from_zero", "data_short", "indices_out_of_range") and not nnz)
        or (f == "indptr_negative" and not (case.indptr_dtype.startswith("int") and major))
        or (f == "indices_negative" and not (case.index_dtype.startswith("int") and nnz))
        or (f == "row_overfull" and not n_obs)
        or (f == "csc_without_obs" and not (case.encoding.endswith("csc") and n_obs))
    )]
    return out


# --- writing ---------------------------------------------------------------------------------


def write_case(path: Path, case: Case) -> None:
    """Write ``case`` to ``path`` with h5py, flaw included."""
    flaw = case.flaw
    with h5py.File(path, "w") as f:
        legacy = case.encoding.startswith("legacy")
        if not legacy:
            f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        _write_names(f, "var", case.var, case, flaw)
        if case.obs is not None and flaw != "csc_without_obs":
            obs = case.obs + ([b"extra_cell"] if flaw == "obs_long" else [])
            _write_names(f, "obs", obs, case, None)
        counts = _flawed_values(case)
        if case.location == "X":
            parent, key = f, "X"
        else:
            _write_matrix(f, "X", np.log1p(case.counts) + 0.5, case, None, path)  # not counts
            if case.location == "raw/X":
                parent, key = f.create_group("raw"), "X"
                _write_names(parent, "var", case.var, case, flaw)
            else:
                parent, key = f.create_group("layers"), "counts"
        if flaw == "x_external_link":
            other = path.with_name(path.stem + "_target.h5")
            with h5py.File(other, "w") as g:
                _write_matrix(g, "X", counts, case, None, other)
            parent[key] = h5py.ExternalLink(str(other), "/X")
        elif flaw == "x_soft_link_loop":
            parent[key] = h5py.SoftLink(f"{parent.name.rstrip('/')}/{key}")
        elif flaw == "x_empty_group":
            parent.create_group(key)
        elif case.soft_link:
            _write_matrix(f.require_group("stored"), "matrix", counts, case, flaw, path)
            parent[key] = h5py.SoftLink("/stored/matrix")
        else:
            _write_matrix(parent, key, counts, case, flaw, path)


def _write_names(group: h5py.Group, key: str, names: list[bytes], case: Case,
                 flaw: str | None) -> None:
    if key == "var" and flaw == "var_missing":
        return
    if key == "var" and flaw == "var_short":
        names = names[:-1]
    if case.encoding.startswith("legacy"):
        width = max([len(n) for n in names] + [1])
        group.create_dataset(key, data=np.array([(n,) for n in names],
                                                dtype=[("index", f"S{width}")]))
        return
    g = group.create_group(key)
    g.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0",
                    "_index": "_index", "column-order": []})
    if key == "var" and flaw == "var_never_written":
        g.create_dataset("_index", shape=(len(names),), chunks=(1,), dtype="S8")
        return
    if key == "var" and flaw == "var_huge_claim":
        g.create_dataset("_index", shape=(MAX_FEATURES * 4,), chunks=(1 << 16,), dtype="S8")
        return
    if case.name_kind == "vlen":
        g.create_dataset("_index", data=np.array(names, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
    elif case.name_kind == "fixed" or not names:
        width = max([len(n) for n in names] + [1])
        g.create_dataset("_index", data=np.array(names, dtype=f"S{width}"))
    else:
        cats = list(dict.fromkeys(names))
        c = g.create_group("_index")
        c.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0",
                        "ordered": False})
        c.create_dataset("categories", data=np.array(cats, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        c.create_dataset("codes", data=np.array([cats.index(n) for n in names], dtype=np.int8))


def _flawed_values(case: Case) -> np.ndarray:
    """The counts in the file's dtype, with a value flaw planted in the first stored entry."""
    m = case.counts.astype(case.data_dtype)
    bad = {"value_negative": -3, "value_nan": np.nan, "value_inf": np.inf, "value_huge": 1e35,
           "value_fraction": 0.5}.get(case.flaw or "")
    if bad is not None:
        i, j = (int(v[0]) for v in np.nonzero(m))
        m[i, j] = bad
    return m


def _dataset(group: h5py.Group, key: str, data: np.ndarray, case: Case, **kw: object) -> None:
    if case.chunked and data.size:
        group.create_dataset(key, data=data, chunks=True, compression="gzip", **kw)
    else:
        group.create_dataset(key, data=data, **kw)


def _write_matrix(group: h5py.Group, key: str, m: np.ndarray, case: Case, flaw: str | None,
                  path: Path) -> None:
    if case.encoding == "dense":
        _write_dense(group, key, m, case, flaw, path)
        return
    csr = case.encoding.endswith("csr")
    data, indices, indptr = _sparse_arrays(m if csr else m.T, case)
    n_obs, n_vars = m.shape
    shape: object = np.array([n_obs, n_vars])
    minor = n_vars if csr else n_obs
    data, indices, indptr, shape = _sparse_flaw(flaw, data, indices, indptr, shape, minor, case)
    g = group.create_group(key)
    if flaw == "data_never_written":  # claims 2**40 entries, stores none
        g.create_dataset("data", shape=(1 << 40,), chunks=(1 << 12,), dtype=data.dtype)
        g.create_dataset("indices", shape=(1 << 40,), chunks=(1 << 12,), dtype=indices.dtype)
        indptr = indptr.astype(np.int64)
        indptr[-1] = 1 << 39
    else:
        _dataset(g, "data", data, case)
        if flaw != "indices_missing":
            _dataset(g, "indices", indices, case)
    _dataset(g, "indptr", indptr, case)
    kind = "csr" if csr else "csc"
    if case.encoding.startswith("legacy"):
        if flaw == "encoding_unknown":
            g.attrs["h5sparse_format"] = "coo"
        elif flaw != "encoding_missing":
            g.attrs["h5sparse_format"] = kind
        if flaw != "shape_missing":
            g.attrs["h5sparse_shape"] = shape
        return
    if flaw == "encoding_unknown":
        g.attrs["encoding-type"] = "coo_matrix"
    elif flaw != "encoding_missing":
        g.attrs["encoding-type"] = f"{kind}_matrix"
    g.attrs["encoding-version"] = "0.1.0"
    if flaw != "shape_missing":
        g.attrs["shape"] = shape


def _sparse_arrays(major: np.ndarray, case: Case, duplicates: bool | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compressed arrays along the rows of ``major``, with the valid oddities of ``case``.

    Duplicates stay within what a matrix row may store (as many entries as genes): past that the
    reader refuses the row, so the oddity is dropped for such matrices.
    """
    duplicates = case.duplicates if duplicates is None else duplicates
    lines = []
    for row in major:
        entries = [(int(j), row[j]) for j in np.flatnonzero(row)]
        zeros = np.flatnonzero(row == 0)
        if case.explicit_zeros and zeros.size:  # a stored zero where the matrix holds none
            entries.append((int(zeros[0]), 0))
        if duplicates:  # a value split into two entries at the same index
            entries = [e for j, v in entries for e in ([(j, v - 1), (j, 1)] if v >= 2 else [(j, v)])]
        if case.unsorted:
            entries.reverse()
        lines.append(entries)
    csr = case.encoding.endswith("csr")
    n_obs, n_vars = case.counts.shape
    per_row = ([len(e) for e in lines] if csr else
               np.bincount([j for e in lines for j, _ in e], minlength=n_obs).tolist())
    if duplicates and max(per_row, default=0) > n_vars:
        return _sparse_arrays(major, case, duplicates=False)
    indices = [j for e in lines for j, _ in e]
    data = [v for e in lines for _, v in e]
    indptr = np.cumsum([0] + [len(e) for e in lines])
    return (np.array(data, dtype=major.dtype).reshape(-1),
            np.array(indices, dtype=case.index_dtype), indptr.astype(case.indptr_dtype))


def _sparse_flaw(flaw: str | None, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray,
                 shape: object, minor: int, case: Case) -> tuple:
    n_obs, n_vars = case.counts.shape
    if flaw == "shape_rows":
        shape = np.array([n_obs + 1, n_vars])
    elif flaw == "shape_cols":
        shape = np.array([n_obs, n_vars + 2])
    elif flaw == "shape_garbage":
        shape = "ten by four"
    elif flaw == "huge_shape":
        shape = np.array([1 << 40, n_vars])
    elif flaw == "huge_n_vars":
        shape = np.array([n_obs, MAX_FEATURES + 1])
    elif flaw == "indptr_not_monotone":  # [0, nnz, 0, ...]: inside data, but going back
        indptr = indptr.copy()
        indptr[1], indptr[2] = indptr[-1], 0
    elif flaw == "indptr_past_data":
        indptr = indptr.copy()
        indptr[-1] = len(data) + 3
    elif flaw == "indptr_not_from_zero":
        indptr = indptr.copy()
        indptr[0] = 1
    elif flaw == "indptr_negative":
        indptr = indptr.copy()
        indptr[-1 if len(indptr) == 2 else 1] = -4
    elif flaw == "indptr_short":
        indptr = indptr[:-1]
    elif flaw == "indices_out_of_range":
        indices = indices.copy()
        indices[0] = minor + 7
    elif flaw == "indices_negative":
        indices = indices.copy()
        indices[0] = -1
    elif flaw == "data_short":
        data = data[:-1]
    elif flaw == "data_bool":
        data = data != 0
    elif flaw == "indices_float":
        indices = indices.astype(np.float64)
    elif flaw == "row_overfull":  # more entries in one row than the matrix has columns
        k = n_vars + 1
        if case.encoding.endswith("csr"):
            data = np.concatenate([np.zeros(k, data.dtype), data])
            indices = np.concatenate([np.zeros(k, indices.dtype), indices])
            indptr = np.concatenate([[0], indptr[1:] + k]).astype(indptr.dtype)
        else:  # CSC: k entries for row 0 in column 0
            data = np.concatenate([np.zeros(k, data.dtype), data])
            indices = np.concatenate([np.zeros(k, indices.dtype), indices])
            indptr = np.concatenate([[0], indptr[1:] + k]).astype(indptr.dtype)
    return data, indices, indptr, shape


def _write_dense(group: h5py.Group, key: str, m: np.ndarray, case: Case, flaw: str | None,
                 path: Path) -> None:
    if flaw == "dense_1d":
        group.create_dataset(key, data=m.ravel())
    elif flaw == "dense_never_written":
        group.create_dataset(key, shape=m.shape, dtype=m.dtype, fillvalue=1,
                             chunks=(1, max(1, m.shape[1])) if m.size else None)
    elif flaw == "dense_virtual":
        source = path.with_name(path.stem + "_source.h5")
        with h5py.File(source, "w") as s:
            s.create_dataset("m", data=m)
        layout = h5py.VirtualLayout(shape=m.shape, dtype=m.dtype)
        layout[...] = h5py.VirtualSource(str(source), "m", shape=m.shape)
        group.create_virtual_dataset(key, layout, fillvalue=0)
    elif flaw == "dense_external_storage":
        raw = path.with_name(path.stem + "_raw.bin")
        raw.write_bytes(m.tobytes())
        group.create_dataset(key, shape=m.shape, dtype=m.dtype,
                             external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
    else:
        _dataset(group, key, m, case)


# --- the oracle ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What scoring a case gave: ``ok`` (checked against the reference) or ``error`` (message)."""

    kind: str
    message: str = ""
    peak_bytes: int = 0


def expected_table(case: Case, bundle: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Cell ids, probabilities and zero-count flags a well-formed case must score to, from a
    dense numpy reference of what the file holds (independent of the reader and gene matcher)."""
    keys = {p: i for i, p in enumerate(PANEL)}
    gene_map = np.array([keys.get(n.decode("utf-8", "replace").upper(), -1) for n in case.var])
    card = json.loads((bundle / "card.json").read_text())
    x, zero = reference_panel(case.counts.astype(np.float64), gene_map, card["normalization"])
    ids = ([str(i) for i in range(case.counts.shape[0])] if case.obs is None
           else [o.decode("utf-8", "replace") for o in case.obs])
    return ids, forward(x, bundle), zero


def reference_panel(counts: np.ndarray, gene_map: np.ndarray,
                    norm: dict) -> tuple[np.ndarray, np.ndarray]:
    """The contract's normalisation in dense float64 numpy, cell by cell.

    Unlike ``helpers.reference_normalize`` it reads "sd == 0" exactly: a cell whose present panel
    genes all hold the same value has sd 0 (numpy's mean of equal values can be off by an ulp,
    which would turn the z-scores into +-1 noise), as the contract and the kernel have it.
    """
    n_panel = len(PANEL)
    present = np.zeros(n_panel, bool)
    present[gene_map[gene_map >= 0]] = True
    out = np.zeros((counts.shape[0], n_panel))
    zero = counts.sum(axis=1) == 0
    for i in np.flatnonzero(~zero):
        x = np.zeros(n_panel)
        np.add.at(x, gene_map[gene_map >= 0], counts[i, gene_map >= 0])
        x = np.log1p(x * norm["target_sum"] / counts[i].sum())
        v = x[present]
        x = (x - v.mean()) / v.std() if np.ptp(v) > 0 else np.zeros(n_panel)
        x = (x - np.asarray(norm["gene_mean"])) / np.asarray(norm["gene_std"])
        out[i] = np.where(present, np.clip(x, -norm["clip"], norm["clip"]), 0.0)
    return out, zero


def check_case(case: Case, folder: Path, bundle: Path, measure: bool = False) -> Outcome:
    """Write and score ``case``; raise AssertionError when the outcome breaks the contract."""
    path = folder / "case.h5ad"
    write_case(path, case)
    if measure:
        tracemalloc.start()
    try:
        table = score(path, model=bundle, chunk_size=case.chunk_size, threads=1)
    except ScdrError as e:
        assert not case.well_formed, f"well-formed file refused: {e}"
        assert e.exit_code == EXIT_BAD_INPUT, f"a file flaw must be bad input (2), got {e}"
        assert isinstance(e, InputError), type(e)
        message = str(e)
        assert message and "\n" not in message, repr(message)
        return Outcome("error", message, _peak(measure))
    finally:
        peak = _peak(measure)
        if measure:
            tracemalloc.stop()
    assert case.well_formed, f"flaw {case.flaw} not detected"
    ids, prob, zero = expected_table(case, bundle)
    assert table.cell_ids == ids
    np.testing.assert_array_equal(table.zero_counts, zero)
    np.testing.assert_allclose(table.probability, prob, rtol=1e-4, atol=1e-5)
    _check_reader(path, case)
    return Outcome("ok", peak_bytes=peak)


def _check_reader(path: Path, case: Case) -> None:
    """The reader's chunks rebuild exactly the counts the file holds."""
    with open_counts(path) as src:
        got = src.read_all(case.chunk_size)[0].toarray()
    np.testing.assert_array_equal(got, case.counts.astype(np.float64))


def _peak(measure: bool) -> int:
    return tracemalloc.get_traced_memory()[1] if measure and tracemalloc.is_tracing() else 0


def run_cli(path: Path, bundle: Path, out_dir: Path) -> tuple[int, str]:
    """``scdr-score`` in process: exit code and stderr."""
    result = CliRunner().invoke(score_command, [
        str(path), "--model", str(bundle), "-o", str(out_dir / "out.csv"), "-q", "--force",
        "--summary", str(out_dir / "summary.json")])
    return result.exit_code, result.stderr


# --- tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def panel_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle over PANEL with a per-gene affine, so every step of the recipe matters."""
    rng = np.random.default_rng(7)
    return write_bundle(tmp_path_factory.mktemp("hardening") / "paneldrug", PANEL,
                        [None] * len(PANEL), n_pathways=4, seed=11, drug="paneldrug", aliases=(),
                        gene_mean=0.2 * rng.standard_normal(len(PANEL)),
                        gene_std=0.5 + rng.random(len(PANEL)))


@SETTINGS
@given(case=h5ad_cases(flawed=False))
def test_well_formed_files_score_exactly_as_the_reference(panel_bundle, case):
    with tempfile.TemporaryDirectory() as tmp:
        outcome = check_case(case, Path(tmp), panel_bundle)
    assert outcome.kind == "ok"


@SETTINGS
@given(case=h5ad_cases(flawed=True))
def test_flawed_files_fail_with_one_clear_error_in_bounded_memory(panel_bundle, case):
    with tempfile.TemporaryDirectory() as tmp:
        outcome = check_case(case, Path(tmp), panel_bundle, measure=True)
        assert outcome.peak_bytes < MEMORY_BOUND, (case.flaw, outcome.peak_bytes)
        if outcome.kind == "error":
            code, stderr = run_cli(Path(tmp) / "case.h5ad", panel_bundle, Path(tmp))
            assert code == EXIT_BAD_INPUT, stderr
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("scdr-score: error: "), stderr
            summary = json.loads((Path(tmp) / "summary.json").read_text())
            assert summary["status"] == "error" and summary["exit_code"] == EXIT_BAD_INPUT
            assert not (Path(tmp) / "out.csv").exists()


def _case(**kw: object) -> Case:
    base = dict(counts=np.array([[1, 0, 2, 5, 0, 3], [0, 0, 0, 0, 0, 0], [4, 1, 0, 0, 2, 1]]),
                var=[p.encode() for p in PANEL], obs=[b"a", b"b", b"c"], encoding="csr",
                location="X", data_dtype="int32", index_dtype="int32", indptr_dtype="int64",
                name_kind="vlen", chunked=False, unsorted=False, duplicates=False,
                explicit_zeros=False, soft_link=False, flaw=None, chunk_size=2)
    base.update(kw)
    return Case(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("flaw, words", [
    ("x_external_link", "external link"),
    ("dense_virtual", "virtual dataset"),
    ("dense_external_storage", "external raw files"),
    ("data_never_written", "incomplete"),
    ("dense_never_written", "incomplete"),
    ("var_huge_claim", "at most"),
    ("huge_shape", "indptr has"),
    ("huge_n_vars", "at most"),
    ("x_soft_link_loop", "soft links"),
    ("row_overfull", "entries for"),
    ("value_huge", "beyond any count"),
])
def test_hostile_structures_are_named_in_the_error(tmp_path, panel_bundle, flaw, words):
    encoding = "dense" if flaw.startswith("dense") else "csr"
    data_dtype = "float32" if flaw == "value_huge" else "int32"
    case = _case(flaw=flaw, encoding=encoding, data_dtype=data_dtype)
    outcome = check_case(case, tmp_path, panel_bundle, measure=True)
    assert outcome.kind == "error" and words in outcome.message, outcome.message
    assert outcome.peak_bytes < MEMORY_BOUND


def test_the_well_formed_baseline_case_scores(tmp_path, panel_bundle):
    for encoding, soft in itertools.product(ENCODINGS, (False, True)):
        case = _case(encoding=encoding, soft_link=soft,
                     name_kind="fixed" if encoding.startswith("legacy") else "categorical")
        assert check_case(case, tmp_path, panel_bundle).kind == "ok", encoding


def test_big_chunks_are_handed_on_in_bounded_blocks(tmp_path, monkeypatch, panel_bundle):
    import scdr.scoring.reader.limits as h5ad

    monkeypatch.setattr(h5ad, "BLOCK_ENTRIES", 5)
    monkeypatch.setattr(h5ad, "_DENSE_BLOCK_VALUES", 6)  # dense slabs of one row
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 4, size=(9, 6))
    for encoding in ("csr", "csc", "dense"):
        case = _case(counts=counts, encoding=encoding, obs=[b"c%d" % i for i in range(9)],
                     chunk_size=9)
        write_case(tmp_path / "f.h5ad", case)
        with open_counts(tmp_path / "f.h5ad") as src:
            chunks = list(src.chunks(9))
        assert len(chunks) > 1, encoding
        # at most the budget, or one row (CSR, CSC), or the budget plus one slab (dense)
        limit = 5 + 6 if encoding == "dense" else 5
        assert all(c.data.size <= limit or c.stop - c.start == 1 for c in chunks), encoding
        got = sp.vstack([sp.csr_matrix((c.data, c.indices, c.indptr), shape=(c.stop - c.start, 6))
                         for c in chunks]).toarray()
        np.testing.assert_array_equal(got, counts)
        assert check_case(case, tmp_path, panel_bundle).kind == "ok"


def test_a_fifo_as_input_is_refused_without_blocking(tmp_path, panel_bundle):
    import os

    fifo = tmp_path / "cells.h5ad"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a file"):
        score(fifo, model=panel_bundle)


def test_malformed_in_memory_sparse_matrix_is_refused(panel_bundle):
    m = sp.csr_matrix((3, 6), dtype=np.float32)
    m.indptr = np.array([0, 2, 1, 2], dtype=np.int32)  # not monotone; scipy slicing trusts it
    m.indices = np.array([0, 9], dtype=np.int32)
    m.data = np.array([1.0, 2.0], dtype=np.float32)
    with pytest.raises(InputError, match="malformed"):
        score(m, model=panel_bundle, gene_names=PANEL)


def test_attribute_of_a_damaged_type_is_refused_before_hdf5_converts_it(tmp_path, panel_bundle):
    # found by the fuzzer: a flipped bit made encoding-type a vlen int8 sequence, and reading
    # that attribute segfaults inside libhdf5; the reader must look at the type first
    case = _case()
    path = tmp_path / "case.h5ad"
    write_case(path, case)
    with h5py.File(path, "a") as f:
        del f["X"].attrs["encoding-type"]
        value = np.empty((), dtype=h5py.vlen_dtype(np.int8))
        value[()] = np.frombuffer(b"csr_matrix", np.int8)
        f["X"].attrs.create("encoding-type", data=value, dtype=h5py.vlen_dtype(np.int8))
    with pytest.raises(InputError, match="attribute 'encoding-type' of /X is not what AnnData"):
        score(path, model=panel_bundle)


def test_names_of_a_sequence_type_are_refused(tmp_path, panel_bundle):
    case = _case()
    path = tmp_path / "case.h5ad"
    write_case(path, case)
    with h5py.File(path, "a") as f:
        del f["var/_index"]
        names = f["var"].create_dataset("_index", shape=(6,), dtype=h5py.vlen_dtype(np.int8))
        for i in range(6):
            names[i] = np.frombuffer(PANEL[i].encode(), np.int8)
    with pytest.raises(InputError, match="expected strings or numbers"):
        score(path, model=panel_bundle)


def test_cell_whose_panel_values_are_all_equal_has_sd_zero(tmp_path, panel_bundle):
    # found by the fuzzer as a flaw of the numpy reference, not of scoring: equal values have
    # sd 0, so the cell's z-scores are 0 (float64 means can be an ulp off and fake an sd)
    counts = np.array([[1, 1, 1, 1, 1, 1], [7, 7, 7, 0, 0, 0], [2, 2, 2, 2, 2, 2]])
    case = _case(counts=counts, var=[p.encode() for p in PANEL[:3]] + [b"A", b"B", b"C"])
    assert check_case(case, tmp_path, panel_bundle).kind == "ok"


def test_damaged_global_heap_is_refused_instead_of_looping_in_libhdf5(tmp_path, panel_bundle):
    # found by the fuzzer: a global heap collection whose free-space object has size 0 sends
    # libhdf5 2.0 into an endless loop on the first string read; scoring must refuse the file
    path = tmp_path / "case.h5ad"
    write_case(path, _case())
    blob = bytearray(path.read_bytes())
    heap = blob.index(b"GCOL")
    p = heap + 16
    while int.from_bytes(blob[p : p + 2], "little") != 0:  # walk to the free-space object
        p += 16 + (int.from_bytes(blob[p + 8 : p + 16], "little") + 7) // 8 * 8
    blob[p + 8 : p + 16] = bytes(8)
    path.write_bytes(bytes(blob))
    code = ("from scdr.scoring import score\n"
            f"score({str(path)!r}, model={str(panel_bundle)!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "InputError" in proc.stderr and "damaged global heap" in proc.stderr, proc.stderr
