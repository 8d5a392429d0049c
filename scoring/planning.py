"""Where a ``scdr-score`` run writes: input files from names and globs, and for each input the
table per model, the attribution files and the report, all checked before any cell is scored.

A plain function of the command line's values, so that the rules (``{stem}`` with several inputs,
``{drug}`` with several models, one table on standard output, existing files) are tested alone.
"""

import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scdr.scoring.errors import InputError, ScdrError
from scdr.scoring.output import STDOUT, check_output_path, default_output_path, table_format


@dataclass(frozen=True)
class OutputPlan:
    """The files one input's run writes: a table per model, attribution files, a report."""

    input: Path
    tables: list[Path]  # one per model, in model order
    attributions: list[Path] | None = None  # one per model with --explain
    report: Path | None = None


def plan_outputs(
    inputs: Sequence[Path],
    drugs: Sequence[str],
    *,
    output: str | None = None,
    explain_out: str | None = None,
    report: str | None = None,
    explain: bool = False,
    distributed: bool = False,
    overwrite: bool = False,
) -> list[OutputPlan]:
    """The outputs of every input for models ``drugs``; ScdrError for a plan that would clash,
    lose a file or write a table in a format the run cannot produce."""
    if len(inputs) > 1:
        for name, value in (("--output", output), ("--explain-out", explain_out), ("--report", report)):
            if value is not None and "{stem}" not in value:
                raise ScdrError(f"several inputs: put {{stem}} in {name}")
    plans = []
    for path in inputs:
        tables = _per_model(drugs, _stem(output, path), lambda d, p=path: default_output_path(p, d))
        attributions = None
        if explain:
            attributions = _per_model(
                drugs, _stem(explain_out, path),
                lambda d, p=path, t=tables: t[drugs.index(d)].with_name(
                    f"{p.stem}.scdr.{d}.attributions.h5"))
        rep = Path(_stem(report, path)) if report else None
        _check_tables(tables, len(inputs), distributed)
        for out in tables + (attributions or []) + ([rep] if rep else []):
            if str(out) != STDOUT:
                check_output_path(out, overwrite)
        plans.append(OutputPlan(path, tables, attributions, rep))
    written = [p for plan in plans for p in plan.tables + (plan.attributions or [])
               + ([plan.report] if plan.report else []) if str(p) != STDOUT]
    if len({p.resolve() for p in written}) != len(written):
        raise ScdrError("two outputs of this run would be the same file; name them apart")
    return plans


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Input paths in the order given; a pattern the shell left unexpanded is globbed (sorted)."""
    paths: list[Path] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?[") and not Path(pattern).exists():
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise InputError(f"no input matches {pattern}")
            paths += [Path(m) for m in matches]
        else:
            paths.append(Path(pattern))
    if len(set(p.resolve() for p in paths)) != len(paths):
        raise ScdrError("an input is named twice")
    return paths


def _check_tables(outs: list[Path], n_inputs: int, distributed: bool) -> None:
    """Every table name has a known format; stdout and compressed tables where they can be written."""
    for out in outs:
        fmt = table_format(out)
        if str(out) == STDOUT and (n_inputs > 1 or len(outs) > 1 or distributed):
            raise ScdrError("-o - writes one table to standard output: give one input and one drug")
        if distributed and (fmt.gzip or fmt.parquet):
            raise ScdrError(f"--distributed writes .csv, .tsv or .txt tables, not {out.name}; "
                            "compress the table afterwards")


def _stem(template: str | None, path: Path) -> str | None:
    return None if template is None else template.replace("{stem}", path.stem)


def _per_model(drugs: Sequence[str], output: str | None, default: Callable[[str], Path]) -> list[Path]:
    if output is None:
        return [default(d) for d in drugs]
    if len(drugs) > 1 and "{drug}" not in output:
        raise ScdrError("several models write several files: put {drug} in the output name")
    paths = [Path(output.replace("{drug}", d)) for d in drugs]
    if len(set(paths)) != len(paths):
        raise ScdrError("two models would write the same output file; name each drug once")
    return paths
