"""A self-contained HTML report of a run, written for the biologist who reads it.

Per drug: a model box with what the bundle's card says the model is worth (bulk cross-validation,
the single-cell evaluation and its baselines, and a plain caveat where the target gene's own
expression ranks the validation cells better), the distribution of P(sensitive), violins of
P(sensitive) per ``--groupby`` group, mean pathway attributions per group as a heatmap (with
``--explain``), and ``obsm/X_umap`` labelled by group and coloured by P(sensitive). Pathways are
shown without database prefixes (``HALLMARK_``, ``REACTOME_``, ``GOBP_``, ...); the full name is
in each label's tooltip. Nothing is fetched: figures are embedded PNGs, the heatmap is a table.
Needs the ``plot`` extra (matplotlib).

Modules, by concern: ``collect`` (the collector and its bounded per-group statistics),
``evidence`` (the card's figures, the caveat and the model box), ``figures`` (matplotlib figures
as embedded PNGs), ``tables`` (run summary, groups, attribution heatmap, pathway display names)
and ``page`` (page assembly and atomic write, reading the embedding, the matplotlib check).
"""

from scdr.scoring.report.collect import ReportCollector
from scdr.scoring.report.evidence import NO_EVALUATION, card_evidence, marker_caveat, model_box
from scdr.scoring.report.page import read_embedding, require_matplotlib, write_report
from scdr.scoring.report.tables import display_name

__all__ = [
    "NO_EVALUATION", "ReportCollector", "card_evidence", "display_name", "marker_caveat",
    "model_box", "read_embedding", "require_matplotlib", "write_report",
]
