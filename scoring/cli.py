"""Command line: ``scdr-score`` (score an h5ad) and ``scdr-models`` (list shipped models).

Errors are one line on stderr with a stable exit code (see ``scoring.errors``); never a
traceback unless ``SCDR_DEBUG=1``.
"""

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import click

from scdr.scoring import __version__, signals
from scdr.scoring.atomic import write_json_atomic
from scdr.scoring.bundle import list_models
from scdr.scoring.distributed import score_distributed
from scdr.scoring.engine import (
    DEFAULT_CHUNK_SIZE,
    INTERRUPTED,
    MAX_GENE_CELLS,
    MIN_COVERAGE,
    ExplainSettings,
    ReadOptions,
    resolve_bundle,
    score_file,
)
from scdr.scoring.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_PIPE_CLOSED,
    ScdrError,
)
from scdr.scoring.explain import BASELINES, DEFAULT_RULE, DEFAULT_STEPS, RULES
from scdr.scoring.inference import DEVICES
from scdr.scoring.output import check_output_path
from scdr.scoring.planning import expand_inputs, plan_outputs
from scdr.scoring.progress import progress_bar


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_paths", metavar="CELLS...", nargs=-1, required=True)
@click.option("--drug", "drugs", multiple=True,
              help="Shipped model by drug name or alias (any case); repeat for several drugs "
                   "scored in one pass over the file. See scdr-models.")
@click.option("--model", "models", multiple=True, type=click.Path(path_type=Path),
              help="A bundle folder (model.onnx, head.onnx, card.json); repeatable.")
@click.option("-o", "--output", type=str, default=None,
              help="Output table: .csv, .tsv/.txt, .csv.gz/.tsv.gz, .parquet (needs pyarrow), or - "
                   "for CSV on standard output. Default: <stem>.scdr.<drug>.csv next to the "
                   "input. With several models, include {drug} in the name.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--pathways", is_flag=True, help="Add the latent pathway activities as columns.")
@click.option("--layer", default=None,
              help="Matrix to read: X, raw/X, or a layer name. Default: the first of "
                   "layers/counts, raw/X, X that holds integer counts.")
@click.option("--gene-column", default=None,
              help="var column with gene names (e.g. feature_name); default: the var index.")
@click.option("--normalized", is_flag=True,
              help="Input is already log1p(CP10k): skip scaling and log1p. The claim is checked "
                   "on a sample of cells (see docs/cli.md).")
@click.option("--min-coverage", type=click.FloatRange(min=0.0, max=1.0, min_open=True),
              default=MIN_COVERAGE, show_default=True,
              help="Fraction of the model's panel genes the file must name; below 80%% a "
                   "warning is printed.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=DEFAULT_CHUNK_SIZE,
              show_default=True, help="Cells per chunk (memory is bounded by it).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="ONNX Runtime provider: cuda needs onnxruntime-gpu.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for ONNX Runtime and the Numba kernels (default: all cores).")
@click.option("--summary", type=click.Path(path_type=Path), default=None,
              help="Write a JSON run summary here.")
@click.option("--explain", is_flag=True,
              help="Attribute every call to the pathway layer (integrated gradients through "
                   "head.onnx: 2 x steps x pathways head evaluations per cell). Adds top_pathways "
                   "and ig_gap columns and writes the attribution files.")
@click.option("--explain-out", type=str, default=None,
              help="Attribution matrix (HDF5: cell_id, attributions, pathway, logit, relative_gap); "
                   "a <name>.by_group.csv of mean attribution per pathway is written beside it. "
                   "Default: <stem>.scdr.<drug>.attributions.h5 next to the output table.")
@click.option("--steps", type=click.IntRange(min=1), default=DEFAULT_STEPS, show_default=True,
              help="Integration points on the path from baseline to cell.")
@click.option("--rule", type=click.Choice(RULES), default=DEFAULT_RULE, show_default=True,
              help="Quadrature rule for the path integral.")
@click.option("--baseline", type=click.Choice(BASELINES), default="zero", show_default=True,
              help="Attribution baseline: zero pathways, or the card's mean bulk or single-cell "
                   "pathway vector.")
@click.option("--explain-genes", default=None,
              help=f"Comma-separated cell ids (at most {MAX_GENE_CELLS}) that also get gene-level "
                   "attributions through model.onnx. Costly: 2 x steps x (panel genes differing "
                   "from the baseline, i.e. nearly all) full-model evaluations per cell, about "
                   "1-3 s per cell for a 2,000-gene panel on 2 cores.")
@click.option("--groupby", default=None,
              help="obs column (e.g. cell_line) for mean attributions per group.")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Write a self-contained HTML report: per drug the model's figures from its "
                   "card (with a caveat where the target gene's expression ranks cells better), "
                   "P(sensitive) violins per --groupby group, mean attributions per group with "
                   "--explain, obsm/X_umap labelled by group. Needs the plot extra.")
@click.option("--scheduler", default=None,
              help="Score on a running Dask cluster (e.g. tcp://host:8786); files must be on a "
                   "filesystem the workers share. Needs the dask extra.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Score on a local Dask cluster of N worker processes.")
@click.option("--resume", is_flag=True,
              help="Finish an interrupted --scheduler/--workers run from its checkpointed parts.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or coverage messages.")
@click.version_option(__version__, prog_name="scdr")
def score_command(input_paths: tuple[str, ...], drugs: tuple[str, ...], models: tuple[Path, ...],
                  output: str | None, force: bool, pathways: bool, layer: str | None,
                  gene_column: str | None, normalized: bool, min_coverage: float,
                  chunk_size: int, device: str,
                  threads: int | None, summary: Path | None, explain: bool,
                  explain_out: str | None, steps: int, rule: str, baseline: str,
                  explain_genes: str | None, groupby: str | None, report: Path | None,
                  scheduler: str | None, workers: int | None, resume: bool,
                  quiet: bool) -> None:
    """Predict, for every cell of each CELLS file (.h5ad, a 10x Genomics .h5 or an AnnData .zarr
    store; files or globs), sensitive or resistant to a drug. Several files are scored one after
    the other, or in parallel on Dask."""
    def log(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)

    def run() -> dict[str, Any]:
        if not drugs and not models:
            raise ScdrError("name a model: --drug NAME (see scdr-models) or --model DIR")
        bundles = [resolve_bundle(d, None) for d in drugs]
        bundles += [resolve_bundle(None, m) for m in models]
        drug_names = [b.drug for b in bundles]
        inputs = expand_inputs(input_paths)
        distributed = scheduler is not None or workers is not None
        if distributed and (explain or report):
            raise ScdrError("--explain and --report run on one machine; drop --scheduler/--workers")
        if resume and not distributed:
            raise ScdrError("--resume continues a --scheduler/--workers run")
        if (explain_genes or explain_out or (groupby and report is None)) and not explain:
            raise ScdrError("--explain-out and --explain-genes need --explain; --groupby needs "
                            "--explain or --report")
        options = ReadOptions(layer, gene_column, normalized, chunk_size, device, threads,
                              min_coverage)
        settings = None
        if explain:
            cells = frozenset(c.strip() for c in (explain_genes or "").split(",") if c.strip())
            settings = ExplainSettings(steps=steps, rule=rule, baseline=baseline, gene_cells=cells)
        plans = plan_outputs(inputs, drug_names, output=output, explain_out=explain_out,
                             report=None if report is None else str(report), explain=explain,
                             distributed=distributed, overwrite=force or resume)
        if summary is not None:
            check_output_path(summary, True)
        if distributed:
            result = score_distributed(
                inputs, bundles, [p.tables for p in plans], scheduler=scheduler, workers=workers,
                resume=resume, force=force, pathways=pathways, options=options,
                progress=progress_bar(not quiet), log=log)
            runs = result["runs"]
        else:
            runs = [score_file(
                p.input, bundles, p.tables, options, pathways=pathways, explain=settings,
                explain_outputs=p.attributions, groupby=groupby, report=p.report,
                progress=progress_bar(not quiet), log=log) for p in plans]
            result = runs[0] if len(runs) == 1 else {"runs": runs}
        for one in runs:
            for m in one["models"]:
                log(f"{m['drug']}: {m['labels']['sensitive']:,} sensitive, "
                    f"{m['labels']['resistant']:,} resistant -> {m['output']}")
                if "explain" in m:
                    log(f"{m['drug']}: attributions -> {m['explain'].get('attributions')}; "
                        f"worst completeness gap {m['explain']['worst_relative_gap']:.2e}")
            if one.get("report"):
                log(f"report -> {one['report']}")
        return result

    _run_guarded(run, summary)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print the cards' summaries as JSON.")
def models_command(as_json: bool) -> None:
    """List the shipped models with a summary of each card."""
    rows = list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no shipped models found")
        return
    click.echo(f"{'drug':<12} {'genes':>5} {'pathways':>8}  {'bulk CV':>7}  {'cells':>5}  "
               f"{'marker':<14}  aliases")
    for r in rows:
        bulk = "-" if r["bulk_cv_auroc"] is None else f"{r['bulk_cv_auroc']:.3f}"
        cells = "-" if r["cells_auroc"] is None else f"{r['cells_auroc']:.3f}"
        marker = "-" if r["marker_auroc"] is None else \
            f"{r['marker_auroc']:.3f} {'+'.join(r['marker_genes'])}"
        click.echo(f"{r['drug']:<12} {r['genes']:>5} {r['pathways']:>8}  {bulk:>7}  {cells:>5}  "
                   f"{marker:<14}  {', '.join(r['aliases']) or '-'}")
    click.echo("AUROC: bulk CV over GDSC lines; cells: validation plates, this model and the drug's "
               "target-gene expression (marker). Details: scdr-models --json, the model cards.")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (a pipeline's timeout, a batch system) and Ctrl-C abort the outputs.

    The first signal is only recorded (`scoring.signals`): the streaming loop raises it after the
    current chunk. A second signal raises at once."""
    signals.record(signum, frame)


def _run_guarded(run: Callable[[], dict[str, Any]], summary: Path | None) -> None:
    """Run, turning every failure into one line on stderr, an exit code and a summary.

    A signal recorded before the run (during start-up, by `scoring.launch`) is kept: the run
    raises it at its first check. The handlers in place before are restored at the end."""
    previous = signals.current()
    signals.install()
    try:
        result = run()
        result["status"] = "ok"
        code, message = EXIT_OK, ""
    except ScdrError as e:
        result = {"status": "error", "error": str(e), "exit_code": e.exit_code}
        code, message = e.exit_code, f"scdr-score: error: {e}"
    except KeyboardInterrupt:
        result = {"status": "error", "error": "interrupted", "exit_code": EXIT_INTERRUPTED}
        code, message = EXIT_INTERRUPTED, "scdr-score: interrupted; no output written"
    except BrokenPipeError:  # `-o - | head`: the reader has what it wanted; nothing to report
        _silence_stdout()
        result = {"status": "error", "error": "standard output closed by its reader",
                  "exit_code": EXIT_PIPE_CLOSED}
        code, message = EXIT_PIPE_CLOSED, ""
    except Exception as e:  # anything unforeseen is an internal error, reported in one line
        if os.environ.get("SCDR_DEBUG"):
            raise
        result = {"status": "error", "error": f"internal: {type(e).__name__}: {e}",
                  "exit_code": EXIT_INTERNAL}
        code, message = EXIT_INTERNAL, (f"scdr-score: internal error ({type(e).__name__}: {e}); "
                                        "rerun with SCDR_DEBUG=1 and report it")
    signals.ignore()  # the outcome is decided: no signal may interrupt reporting it
    INTERRUPTED.clear()
    if summary is not None:
        try:
            write_json_atomic(summary, result)
        except OSError as e:
            note = f"cannot write summary {summary} ({e.strerror})"
            message = f"{message}; {note}" if message else f"scdr-score: error: {note}"
            code = code or EXIT_OUTPUT
    if message:  # one line, whatever the message holds (paths may contain newlines)
        click.echo(message.replace("\r", "\\r").replace("\n", "\\n"), err=True)
    if not signals.ours(previous):  # in-process callers get their handlers back
        signals.restore(previous)
    sys.exit(code)


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that no flush at exit meets the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


if __name__ == "__main__":
    signals.install()
    score_command()
