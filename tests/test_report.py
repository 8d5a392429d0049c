"""The HTML report renders in a real headless Chromium: images load, tables are there."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import EXAMPLE

ARTEFACTS = Path(__file__).resolve().parent / "artefacts"


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
def report(tmp_path_factory, example_with_umap, bundle_dir):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("report")
    proc = subprocess.run(
        [sys.executable, "-m", "scdr.scoring.cli", str(example_with_umap), "--model", str(bundle_dir),
         "-o", str(out / "t.csv"), "--explain", "--steps", "4", "--groupby", "cell_line",
         "--report", str(out / "report.html"), "-q"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out / "report.html"


def test_report_is_self_contained(report):
    text = report.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched from the network
    assert text.count("data:image/png;base64,") == 3  # histogram, attributions, embedding
    for group in ("A549", "H1975", "H2228", "H838", "HCC827"):
        assert f"<td>{group}</td>" in text


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
        assert len(images) == 3 and all(done and width > 100 for done, width in images)
        tables = browser.execute_script(
            "return [document.querySelectorAll('#summary tr').length, "
            "document.querySelectorAll('table.groups tr').length];")
        assert tables[0] >= 6 and tables[1] == 6  # header + five cell lines
        ARTEFACTS.mkdir(exist_ok=True)
        shot = ARTEFACTS / "report.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        browser.quit()
