"""Which pathways drive the calls? Pathway attributions of the shipped models on the plates.

For each EGFR inhibitor: the pathways whose mean attribution differs most between HCC827 cells
(EGFR exon-19 deletion, the sensitive line) and the other four lines; for cisplatin: the pathways
with the largest mean |attribution| overall. Singlets only. Prints a table, whether a knowledge
node of the drug (its target node or an EGFR/ERBB, resp. DNA-damage, set of training/knowledge.py)
is among the top 3 (EGFR inhibitors) or top 5 (cisplatin), and writes
``benchmarks/results/biology_check.csv``.

    python benchmarks/biology_check.py --data ../shared/data
"""

import csv
from pathlib import Path

import click
import h5py
import numpy as np

from scdr.scoring import score
from scdr.scoring.bundle import list_bundles
from scdr.scoring.engine import ExplainSettings

PLATES = ("sc_celseq2_5cl_p1.h5ad", "sc_celseq2_5cl_p2.h5ad", "sc_celseq2_5cl_p3.h5ad")
EGFR = ("erlotinib", "gefitinib", "afatinib", "osimertinib")
TOP = 5


@click.command()
@click.option("--data", type=click.Path(exists=True, path_type=Path), required=True,
              help="The shared data folder (singlecell/ holds the plates).")
@click.option("--out", type=click.Path(path_type=Path),
              default=Path(__file__).resolve().parent / "results" / "biology_check.csv")
def main(data: Path, out: Path) -> None:
    """Print the top pathways per drug and write them as CSV."""
    shipped = {card["drug"] for _, card in list_bundles()}
    rows = []
    for drug in [*EGFR, "cisplatin"]:
        if drug not in shipped:
            click.echo(f"{drug}: no shipped model, skipped")
            continue
        attr, lines, names = _attributions(drug, data)
        if drug in EGFR:
            diff = attr[lines == "HCC827"].mean(axis=0) - attr[lines != "HCC827"].mean(axis=0)
            order = np.argsort(-np.abs(diff))[:TOP]
            what, values = "HCC827 minus other lines", diff
        else:
            values = np.abs(attr).mean(axis=0)
            order = np.argsort(-values)[:TOP]
            what = "mean |attribution|, all cells"
        for rank, j in enumerate(order, 1):
            rows.append({"drug": drug, "measure": what, "rank": rank, "pathway": names[j],
                         "value": f"{values[j]:.4f}"})
        click.echo(f"{drug:<12} ({what}): " + ", ".join(
            f"{names[j].removeprefix('HALLMARK_')} {values[j]:+.3f}" for j in order))
        within = 3 if drug in EGFR else 5
        hit = [names[j] for j in order[:within] if names[j].startswith(("TARGET: ", "KNOWLEDGE: "))]
        click.echo(f"{'':<12} knowledge node in the top {within}: "
                   + (f"yes ({'; '.join(hit)})" if hit else "no"))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["drug", "measure", "rank", "pathway", "value"])
        w.writeheader()
        w.writerows(rows)


def _attributions(drug: str, data: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    attrs, lines = [], []
    names: list[str] = []
    for plate in PLATES:
        path = data / "singlecell" / plate
        table = score(path, drug=drug, explain=ExplainSettings())
        with h5py.File(path, "r") as f:
            singlet = _column(f, "demuxlet_cls") == "SNG"
            line = _column(f, "cell_line")
        attrs.append(table.attributions[singlet])
        lines.append(line[singlet])
        names = table.pathway_names
    return np.concatenate(attrs), np.concatenate(lines), names


def _column(f: h5py.File, name: str) -> np.ndarray:
    g = f["obs"][name]
    cats = np.array([c.decode() if isinstance(c, bytes) else c for c in g["categories"][()]])
    return cats[g["codes"][()]]


if __name__ == "__main__":
    main()
