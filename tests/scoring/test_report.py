"""The HTML report of a CLI run, as a biologist reads it: the model box with the card's figures,
violins per group, the attribution heatmap, the UMAP by group, reader-friendly pathway names and
no throughput figures; and it renders in a real headless Chromium (images load, tables are there)."""

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from helpers import EXAMPLE, ROOT

ARTEFACTS = ROOT / "tests" / "artefacts"
LINES = ("A549", "H1975", "H2228", "H838", "HCC827")
PATHWAYS = ["HALLMARK_E2F_TARGETS", "REACTOME_SIGNALING_BY_EGFR", "GOBP_DNA_REPAIR",
            "KNOWLEDGE: Signaling by ERBB2", "TARGET: EGFR", "HALLMARK_TNFA_SIGNALING_VIA_NFKB",
            "KEGG_CELL_CYCLE", "HALLMARK_UV_RESPONSE_DN"]
METRICS = {
    "bulk_cross_validation": {"folds": 5, "auroc_mean": 0.7648, "auroc_sd": 0.0566},
    "single_cell_evaluation": {
        "data": "three sc_mixology plates, singlets; HCC827 sensitive",
        "auroc": 0.9439, "aupr": 0.7188, "spearman": 0.7,
        "baselines": {"marker": {"genes": ["EGFR"], "auroc": 0.9912, "aupr": 0.9853},
                      "logistic_regression": {"auroc": 0.6671},
                      "random_forest": {"auroc": 0.8441}},
    },
}


class VisibleText(HTMLParser):
    """The text a reader sees: element content, without attributes, styles or image data."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("style", "script")

    def handle_endtag(self, tag):
        self._skip -= tag in ("style", "script")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def visible_text(page: str) -> str:
    """What a browser shows of ``page`` (titles and alt text excluded)."""
    parser = VisibleText()
    parser.feed(page)
    return " ".join(parser.parts)


@pytest.fixture(scope="module")
def example_with_umap(tmp_path_factory):
    ad = pytest.importorskip("anndata")
    adata = ad.read_h5ad(EXAMPLE)
    rng = np.random.default_rng(0)
    codes = adata.obs["cell_line"].cat.codes.to_numpy()
    adata.obsm["X_umap"] = np.c_[codes * 3 + rng.normal(size=len(codes)), rng.normal(size=len(codes))]
    path = tmp_path_factory.mktemp("umap") / "cells.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def carded_bundle(tmp_path_factory, bundle_dir):
    """The test bundle with database-prefixed pathway names and a card holding evaluation figures
    (the card is not hashed; the graphs are unchanged)."""
    folder = tmp_path_factory.mktemp("carded") / "testdrug"
    shutil.copytree(bundle_dir, folder)
    card = json.loads((folder / "card.json").read_text())
    card["pathways"]["names"] = PATHWAYS
    card["metrics"] = METRICS
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def run_report(out: Path, cells: Path, bundle: Path, *extra: str) -> str:
    """Score with ``--report`` and return the page."""
    proc = subprocess.run(
        [sys.executable, "-m", "scdr.scoring.cli", str(cells), "--model", str(bundle),
         "-o", str(out / "t.csv"), "--report", str(out / "report.html"), "-q", *extra],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return (out / "report.html").read_text()


@pytest.fixture(scope="module")
def report(tmp_path_factory, example_with_umap, carded_bundle):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("report")
    run_report(out, example_with_umap, carded_bundle, "--explain", "--steps", "4",
               "--groupby", "cell_line")
    return out / "report.html"


def test_report_is_self_contained(report):
    text = report.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched from the network
    # UMAP by group, violins, UMAP by probability, overall histogram
    assert text.count("data:image/png;base64,") == 4
    for group in LINES:
        assert f"<td>{group}</td>" in text
    assert not list(report.parent.glob(".report.html.*"))  # published atomically, no temp left


def test_model_box_shows_the_cards_figures_and_the_caveat(report):
    text = report.read_text()
    box = text[text.index("<div class='model-box'"):]
    box = box[:box.index("</div>")]
    for figure in ("0.765 &plusmn; 0.057", "0.944", "0.719", "0.700", "0.991", "0.985", "0.667",
                   "0.844"):
        assert figure in box, figure
    for row in ("this model", "target-gene marker (EGFR)", "logistic regression", "random forest"):
        assert f"<th>{row}</th>" in box
    assert ("On the single-cell validation data this model ranks cells worse than EGFR expression "
            "alone (AUROC 0.94 vs 0.99).") in box
    assert "no single-cell evaluation" not in text


def test_violins_heatmap_and_umap_by_group(report):
    text = report.read_text()
    assert "P(sensitive) per cell_line" in text  # the violins' caption
    assert "obsm/X_umap labelled by cell_line" in text
    heatmap = text[text.index("<table class='heatmap'>"):]
    heatmap = heatmap[:heatmap.index("</table>")]
    assert heatmap.count("<tr>") == 1 + len(PATHWAYS)
    for group in LINES:
        assert f">{group}</th>" in heatmap
    assert ">all resistant</th>" in heatmap or ">all sensitive</th>" in heatmap


def test_pathway_names_are_shown_without_database_prefixes(report):
    text = report.read_text()
    seen = visible_text(text)
    for prefix in ("HALLMARK_", "REACTOME_", "GOBP_", "KEGG_", "KNOWLEDGE:"):
        assert prefix not in seen, prefix
    for shown in ("E2F targets", "SIGNALING BY EGFR", "DNA REPAIR", "Signaling by ERBB2",
                  "TARGET: EGFR", "TNFA signaling via NFKB", "UV response down"):
        assert f">{shown}</th>" in text, shown
    for full in PATHWAYS:  # the full name stays in the label's tooltip
        assert f"title='{full}'" in text, full


def test_no_throughput_figures(report):
    text = report.read_text()
    assert "cells/s" not in text and "cells_per_s" not in text and "wall time" not in text


def test_without_groups_or_explain_there_are_no_violins_or_heatmap(tmp_path, bundle_dir):
    pytest.importorskip("matplotlib")
    text = run_report(tmp_path, EXAMPLE, bundle_dir)
    assert text.count("data:image/png;base64,") == 1  # the histogram only
    assert "class='heatmap'" not in text and "per cell_line" not in text
    assert "Run with <code>--explain</code>" in text
    assert "no single-cell evaluation in the card" in text  # the test bundle's card has none
    assert "class='caveat'" not in text


def test_report_renders_in_headless_chromium(report):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian packages chromium and chromium-driver are not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--window-size=1100,2400"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=driver)
    browser = webdriver.Chrome(options=options, service=service)
    try:
        browser.get(report.as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);")
        assert len(images) == 4 and all(done and width > 100 for done, width in images)
        counts = browser.execute_script(
            "return [document.querySelectorAll('#summary tr').length, "
            "document.querySelectorAll('table.groups tr').length, "
            "document.querySelectorAll('table.heatmap tr').length, "
            "document.querySelectorAll('.model-box table.metrics tr').length, "
            "document.querySelectorAll('.model-box .caveat').length];")
        assert counts[0] >= 5 and counts[1] == 6  # header + five cell lines
        assert counts[2] == 1 + len(PATHWAYS) and counts[3] == 5 and counts[4] == 1
        seen = browser.execute_script("return document.body.innerText;")
        assert "HALLMARK_" not in seen and "cells/s" not in seen and "E2F targets" in seen
        tooltip = browser.execute_script(
            "return Array.from(document.querySelectorAll('table.heatmap th.pathway'))"
            ".map(t => t.title);")
        assert "HALLMARK_E2F_TARGETS" in tooltip
        ARTEFACTS.mkdir(exist_ok=True)
        shot = ARTEFACTS / "report.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        browser.quit()
