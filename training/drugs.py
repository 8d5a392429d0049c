"""The shipped drugs: GDSC names, aliases and the bulk-only label rule each one is trained with.

Label rule choice (made on GDSC bulk data only, before any single-cell figure was computed):
drugs that act through one oncogenic driver (EGFR, ALK/MET, BRAF V600E inhibitors) produce a
left-skewed ln IC50 distribution: most lines sit in one resistant mode and a minority forms a
sensitive tail. For them the default 0.3-quantile cut falls at a pooled robust z of about -0.45,
inside that resistant mode and within the disagreement of two GDSC screens of the same drug
(see `benchmarks/train_all.py --label-report`), so about a third of the "sensitive" lines would
be noise. They use a fixed cut in the tail instead, z <= -1.5 (ln IC50 at least 1.5 robust SDs
below the median), which leaves 50-115 sensitive training lines each. Cytotoxic, epigenetic and
multi-kinase drugs have no such tail (<= 2.5% of lines at z <= -2) and keep the 0.3 quantile.
"""

from __future__ import annotations

from dataclasses import dataclass

TARGETED_Z_MAX = -1.5
DEFAULT_QUANTILE = 0.3


@dataclass(frozen=True)
class DrugSpec:
    """One shipped drug: folder name, aliases for --drug, mechanism class and label rule."""

    name: str  # lower-case folder name and GDSC lookup key
    aliases: tuple[str, ...]
    mechanism: str
    targeted: bool  # single-driver targeted agent: label rule z <= TARGETED_Z_MAX

    @property
    def label_z(self) -> float | None:
        """The fixed z cut for targeted drugs; None means the quantile rule."""
        return TARGETED_Z_MAX if self.targeted else None


_EGFR = "EGFR inhibitor"
DRUGS: tuple[DrugSpec, ...] = (
    DrugSpec("cisplatin", ("Cisplatin", "CDDP"), "DNA cross-linker (platinum)", False),
    DrugSpec("erlotinib", ("Erlotinib", "Tarceva", "OSI-774"), f"{_EGFR} (1st generation)", True),
    DrugSpec("gefitinib", ("Gefitinib", "Iressa", "ZD1839"), f"{_EGFR} (1st generation)", True),
    DrugSpec("afatinib", ("Afatinib", "Gilotrif", "BIBW2992"), "EGFR/HER2 inhibitor (2nd gen.)", True),
    DrugSpec("osimertinib", ("Osimertinib", "Tagrisso", "AZD9291"), f"{_EGFR} (3rd gen., T790M)", True),
    DrugSpec("crizotinib", ("Crizotinib", "Xalkori", "PF-02341066"), "ALK/MET/ROS1 inhibitor", True),
    DrugSpec("docetaxel", ("Docetaxel", "Taxotere"), "microtubule stabiliser (taxane)", False),
    DrugSpec("plx-4720", ("PLX-4720", "PLX4720"), "BRAF V600E inhibitor", True),
    DrugSpec(
        "i-bet-762",
        ("I-BET-762", "IBET762", "GSK525762A", "GSK525762", "molibresib"),
        "BET bromodomain inhibitor",
        False,
    ),
    DrugSpec("sorafenib", ("Sorafenib", "Nexavar", "BAY 43-9006"), "multi-kinase (RAF, VEGFR, PDGFR)", False),
    DrugSpec("etoposide", ("Etoposide", "VP-16"), "topoisomerase II poison", False),
    DrugSpec("vorinostat", ("Vorinostat", "SAHA", "Zolinza"), "HDAC inhibitor", False),
)


def find_drug(name: str) -> DrugSpec | None:
    """The spec whose name or alias matches `name` (case- and punctuation-free), else None."""
    key = _key(name)
    for spec in DRUGS:
        if key in {_key(spec.name), *(_key(a) for a in spec.aliases)}:
            return spec
    return None


def _key(name: str) -> str:
    """Upper case with everything but A-Z and 0-9 removed."""
    return "".join(ch for ch in name.upper() if ch.isalnum())
