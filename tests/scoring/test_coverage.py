"""--min-coverage / min_coverage: the panel fraction a file must name, refused below it with the
option named, warned about below 80%, recorded in the summary."""

import json
import subprocess
import sys

import pytest
from helpers import write_h5ad

from scdr.scoring import score
from scdr.scoring.errors import EXIT_BAD_INPUT, InputError, ScdrError

CLI = [sys.executable, "-m", "scdr.scoring.cli"]


@pytest.fixture(scope="module")
def partial(tmp_path_factory, bundle_dir, example_counts):
    """The example with 60% of the test bundle's panel genes kept (and every other gene)."""
    m, var, obs = example_counts
    panel = json.loads((bundle_dir / "card.json").read_text())["genes"]["ensembl_ids"]
    keep = set(panel[: int(0.6 * len(panel))])
    cols = [j for j, v in enumerate(var) if v in keep or v not in set(panel)]
    return write_h5ad(tmp_path_factory.mktemp("cov") / "partial.h5ad", m.tocsc()[:, cols].tocsr(),
                      [var[j] for j in cols], obs)


def _cli(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_the_default_floor_passes_60_percent_with_a_warning(tmp_path, bundle_dir, partial):
    summary = tmp_path / "s.json"
    proc = _cli(partial, "--model", bundle_dir, "-o", tmp_path / "t.csv", "--summary", summary)
    assert proc.returncode == 0, proc.stderr
    run = json.loads(summary.read_text())
    assert run["min_coverage"] == 0.5 and 0.55 < run["models"][0]["coverage"] < 0.65
    assert "below 80%" in proc.stderr


def test_a_higher_floor_refuses_the_file_and_names_the_option(tmp_path, bundle_dir, partial):
    out = tmp_path / "t.csv"
    proc = _cli(partial, "--model", bundle_dir, "-o", out, "--min-coverage", "0.7")
    assert proc.returncode == EXIT_BAD_INPUT and not out.exists()
    line = proc.stderr.strip()
    assert "\n" not in line and "the floor is 70% coverage, set by --min-coverage" in line, line


def test_a_floor_above_80_percent_silences_the_warning_it_makes_moot(tmp_path, bundle_dir,
                                                                    example_counts):
    m, var, obs = example_counts
    panel = json.loads((bundle_dir / "card.json").read_text())["genes"]["ensembl_ids"]
    keep = set(panel[: int(0.75 * len(panel))])
    cols = [j for j, v in enumerate(var) if v in keep or v not in set(panel)]
    path = write_h5ad(tmp_path / "p75.h5ad", m.tocsc()[:, cols].tocsr(), [var[j] for j in cols], obs)
    proc = _cli(path, "--model", bundle_dir, "-o", tmp_path / "t.csv", "--min-coverage", "0.7")
    assert proc.returncode == 0 and "below 80%" in proc.stderr
    table = score(path, model=bundle_dir, min_coverage=0.7)
    assert 0.7 <= table.coverage < 0.8


def test_the_api_takes_the_same_floor(bundle_dir, partial):
    assert 0.55 < score(partial, model=bundle_dir).coverage < 0.65
    with pytest.raises(InputError, match="floor is 70%"):
        score(partial, model=bundle_dir, min_coverage=0.7)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "abc"])
def test_a_floor_outside_0_1_is_a_usage_error(tmp_path, bundle_dir, partial, value):
    proc = _cli(partial, "--model", bundle_dir, "-o", tmp_path / "t.csv", "--min-coverage", value)
    assert proc.returncode == 2 and "--min-coverage" in proc.stderr and not (tmp_path / "t.csv").exists()


def test_the_api_refuses_a_floor_outside_0_1(bundle_dir, partial):
    with pytest.raises(ScdrError, match="min_coverage must be in"):
        score(partial, model=bundle_dir, min_coverage=0.0)
