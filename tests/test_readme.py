"""The documentation's code runs as written.

Every fenced code block of README.md and docs/*.md tagged ``python`` (or ``py``) or ``bash``,
``sh``, ``shell`` or ``console`` is run, one test case per block, named by file and line
(``docs/api.md:42``). Each runs in a fresh temporary folder holding ``examples/celseq2_p1.h5ad``
(read-only), so that the relative paths users copy work and nothing is written into the
repository: python blocks in a fresh interpreter, shell blocks with ``bash -e -o pipefail`` and
this interpreter's ``bin`` folder first on PATH (``scdr-score``, ``scdr-models``).

The one convention: a block that cannot run here (it installs packages, needs a GPU, a Dask
cluster or the full training data) is preceded by a line ``<!-- no-run: REASON -->``; it is
reported as skipped with that reason. Blocks that show usage rather than code to run (synopses)
are plain ``` fences without a language and are not collected.

The docs are also checked for what they promise their readers: relative links (and their
anchors) resolve, no issue numbers, and the README stays short.
"""

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
READER_DOCS = [*DOCS, ROOT / "benchmarks" / "README.md"]
EXAMPLE = ROOT / "examples" / "celseq2_p1.h5ad"
PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell", "console"}
NO_RUN = re.compile(r"^<!--\s*no-run:\s*(?P<reason>\S.*?)\s*-->$")
FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
TIMEOUT_S = 600
README_MAX_LINES = 200


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its code and, if marked, why it is not run."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    no_run: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.lang in PYTHON | SHELL


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, info, start = m["fence"], m["info"].strip(), i
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        i += 1
        body = []
        while i < len(lines) and not closing.match(lines[i]):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.name}:{start + 1}: code fence never closed")
        i += 1
        above = start - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        marker = NO_RUN.match(lines[above].strip()) if above >= 0 else None
        found.append(Block(path, start + 1, info.split()[0].lower() if info else "",
                           "\n".join(body) + "\n", marker["reason"] if marker else None))
    return found


def shell_code(block: Block) -> str:
    """The commands of a shell block; for ``console`` blocks, the ``$ `` lines and their continuations."""
    if block.lang != "console":
        return block.code
    out, continued = [], False
    for line in block.code.splitlines():
        if line.startswith("$ ") or continued:
            out.append(line[2:] if line.startswith("$ ") and not continued else line)
            continued = line.rstrip().endswith("\\")
    return "\n".join(out) + "\n"


ALL_BLOCKS = [b for path in DOCS for b in blocks(path)]
RUNNABLE = [b for b in ALL_BLOCKS if b.runnable]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder where ``examples/celseq2_p1.h5ad`` exists, read-only, as in the repository."""
    (tmp_path / "examples").mkdir()
    copy = tmp_path / "examples" / EXAMPLE.name
    shutil.copyfile(EXAMPLE, copy)
    copy.chmod(0o444)
    return tmp_path


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.name for b in RUNNABLE])
def test_snippet_runs(block: Block, workdir: Path) -> None:
    if block.no_run is not None:
        pytest.skip(f"{block.name}: no-run: {block.no_run}")
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MPLBACKEND"] = "Agg"
    if block.lang in PYTHON:
        script = workdir / "_snippet.py"
        script.write_text(block.code, encoding="utf-8")
        cmd = [sys.executable, script.name]
    else:
        script = workdir / "_snippet.sh"
        script.write_text(shell_code(block), encoding="utf-8")
        cmd = ["bash", "-e", "-o", "pipefail", script.name]
    try:
        done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.name}: still running after {TIMEOUT_S} s:\n{block.code}")
    if done.returncode != 0:
        pytest.fail(f"{block.name} ({block.lang}) exited {done.returncode}\n--- code\n{block.code}"
                    f"--- stdout (end)\n{done.stdout[-3000:]}\n--- stderr (end)\n{done.stderr[-3000:]}")


def test_docs_have_runnable_snippets() -> None:
    """The collection itself works: the README's quick start is found and is run."""
    readme = [b for b in RUNNABLE if b.path.name == "README.md" and b.no_run is None]
    assert any("scdr-score examples/celseq2_p1.h5ad --drug cisplatin" in b.code for b in readme)
    assert any(b.lang in PYTHON for b in readme)


def test_no_run_markers_sit_on_runnable_blocks() -> None:
    """A no-run marker belongs right above a python or shell block; anywhere else it is a typo."""
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        marked = {b.line for b in blocks(path) if b.no_run is not None and b.runnable}
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if "no-run" not in line:
                continue
            assert NO_RUN.match(line.strip()), f"{path.name}:{i + 1}: malformed no-run marker"
            nxt = i + 1
            while nxt < len(lines) and not lines[nxt].strip():
                nxt += 1
            assert nxt + 1 in marked, f"{path.name}:{i + 1}: no-run marker not above a runnable block"


def _prose(path: Path) -> str:
    """The Markdown of ``path`` without its fenced code blocks."""
    return re.sub(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1\s*$", "", path.read_text(encoding="utf-8"),
                  flags=re.M | re.S)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of ``path``: lower case, punctuation dropped, spaces to
    hyphens, ``-1``, ``-2`` ... for repeats."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*$", _prose(path), flags=re.M):
        text = heading.replace("`", "").replace("*", "").lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        n = counts.get(slug, 0)
        anchors.add(slug if n == 0 else f"{slug}-{n}")
        counts[slug] = n + 1
    return anchors


@pytest.mark.parametrize("path", READER_DOCS, ids=[str(p.relative_to(ROOT)) for p in READER_DOCS])
def test_links_resolve(path: Path) -> None:
    """Every relative link points at a file of the repository, and its #anchor at a heading there."""
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(path)):
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        assert dest.exists(), f"{path.name}: link to missing {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{path.name}: no heading for #{anchor} in {dest.name}"


@pytest.mark.parametrize("path", READER_DOCS, ids=[str(p.relative_to(ROOT)) for p in READER_DOCS])
def test_no_issue_numbers(path: Path) -> None:
    """User-facing docs describe the software, not its tracker."""
    text = path.read_text(encoding="utf-8")
    found = re.findall(r"\b[Ii]ssues? #?\d+|(?<![\w/&])#\d+\b", text)
    assert not found, f"{path.name}: {found}"


def test_readme_is_short() -> None:
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; details belong in docs/"
