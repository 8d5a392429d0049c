"""Make docs/report.png: the HTML report of the bundled example, rendered by headless Chromium.

    python examples/report_screenshot.py     (needs the plot extra and Debian's chromium)
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Score the example with --explain --report, then screenshot the page."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs chromium (Debian package chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.html"
        subprocess.run(["scdr-score", str(ROOT / "examples" / "celseq2_p1.h5ad"), "--drug",
                        "cisplatin", "-o", f"{tmp}/t.csv", "--explain", "--groupby", "cell_line",
                        "--report", str(report), "-q"], check=True)
        out = ROOT / "docs" / "report.png"
        subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--no-first-run", "--hide-scrollbars", f"--screenshot={out}",
                        "--window-size=1000,1450", report.as_uri()], check=True,
                       capture_output=True)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
