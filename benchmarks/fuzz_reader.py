"""Fuzz the h5ad reader (and the scoring behind it) for a fixed time budget; print the counts.

Two kinds of input, alternated:

* **structures**: hypothesis generates AnnData files with h5py exactly as the property tests do
  (``tests/scoring/reader/test_hardening_h5ad.py``: encodings, dtypes, name storage, valid
  oddities, one flaw at most), with the same oracle: a well-formed file scores exactly as a
  dense numpy reference of what it holds, a flawed one raises ``InputError`` (exit 2) in one
  line, within a memory bound.
* **bytes**: a generated file with random byte-level damage (bit flips, random spans, boundary
  integers, truncation, duplicated spans): scoring must end in a result of the right shape or in
  an ``InputError``; nothing else. The file is the generated h5ad or, one time in three
  (``bytes-10x``), the same counts as a 10x Genomics ``.h5`` (``tests/scoring/reader/test_reader_tenx.py``),
  half of them with antibody features for the reader to drop.

Every input runs in a worker process that is replaced when it dies (a crash: a segfault in
HDF5, Numba or ONNX Runtime), hangs past ``--timeout``, or exceeds its address-space limit.
Findings are saved with the file that caused them. Usage::

    PYTHONPATH=tests:tests/scoring/reader python benchmarks/fuzz_reader.py --minutes 10 [--seed 0] [--out DIR]
"""

import argparse
import collections
import multiprocessing as mp
import random
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

MUTATIONS = ("bitflip", "span", "integer", "truncate", "duplicate")
BOUNDARY = (0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1)
ROUND = 200  # hypothesis examples per round (a round is one seed)
TENX_SHARE = 1 / 3  # share of byte-damaged files that are 10x Genomics .h5 rather than h5ad


def main() -> None:
    """Parse the options, fuzz until the budget is spent, print the tally."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per input")
    parser.add_argument("--bytes-share", type=float, default=0.5,
                        help="share of inputs that are byte-damaged files")
    parser.add_argument("--memory-gib", type=float, default=4.0,
                        help="address space a worker may add beyond its start (GiB)")
    parser.add_argument("--out", type=Path, default=None, help="where findings are saved")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="scdr-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    fuzzer = Fuzzer(args, out)
    try:
        fuzzer.run()
    finally:
        fuzzer.close()
    fuzzer.report()


class Fuzzer:
    """Generates inputs here, scores them in a disposable worker, tallies the outcomes."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        from helpers import write_bundle
        from test_hardening_h5ad import PANEL

        self.args, self.out = args, out
        self.rng = random.Random(args.seed)
        self.work = Path(tempfile.mkdtemp(prefix="scdr-fuzz-work-"))
        self.bundle = write_bundle(self.work / "bundle", PANEL, [None] * len(PANEL),
                                   n_pathways=4, seed=11, drug="paneldrug", aliases=(),
                                   gene_mean=[0.1 * i for i in range(len(PANEL))],
                                   gene_std=[0.5 + 0.1 * i for i in range(len(PANEL))])
        self.tally: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.flaws: collections.Counter[str] = collections.Counter()
        self.findings: list[dict[str, Any]] = []
        self.ctx = mp.get_context("spawn")  # no fork of a process holding runtime threads
        self.worker: Any = None
        self.conn: Any = None
        self.deadline = 0.0
        self.started = 0.0

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Alternate structural and byte-level inputs until the budget is spent."""
        from hypothesis import HealthCheck, Phase, given, seed, settings
        from test_hardening_h5ad import h5ad_cases, write_case

        self.started = time.monotonic()
        self.deadline = self.started + 60 * self.args.minutes
        self._start_worker()
        round_no = 0
        while time.monotonic() < self.deadline:
            @seed(self.args.seed * 1_000_003 + round_no)
            @settings(max_examples=ROUND, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=h5ad_cases())
            def one(case: Any) -> None:
                if time.monotonic() >= self.deadline:
                    return
                folder = self.work / "case"
                folder.mkdir(exist_ok=True)
                if self.rng.random() >= self.args.bytes_share:
                    self._submit("structure", case, None)
                    return
                case.flaw = None  # damage a well-formed file
                if self.rng.random() < TENX_SHARE:
                    mode, seed_file = "bytes-10x", folder / "seed.h5"
                    _write_tenx_case(seed_file, case, self.rng)
                else:
                    mode, seed_file = "bytes", folder / "seed.h5ad"
                    write_case(seed_file, case)
                blob = _mutate(seed_file.read_bytes(), self.rng)
                self._submit(mode, case, blob)

            one()
            round_no += 1

    def _submit(self, mode: str, case: Any, blob: bytes | None) -> None:
        self.tally[f"{mode}: tried"] += 1
        self.conn.send((mode, case, blob))
        if not self.conn.poll(self.args.timeout):
            self._finding(mode, case, blob, "hang", f"no answer within {self.args.timeout:.0f} s"
                          f"\n{self._worker_stack()}")
            self._restart()
            return
        try:
            result = self.conn.recv()
        except (EOFError, OSError):
            self.worker.join(5)
            self._finding(mode, case, blob, "crash", f"worker died (exit {self.worker.exitcode})"
                          f"\n{self._worker_stack()}")
            self._restart()
            return
        kind = result["kind"]
        if kind == "finding":
            self._finding(mode, case, blob, result["what"], result["detail"])
            return
        self.tally[f"{mode}: {kind}"] += 1
        if kind == "error":
            self.errors[_gist(result["message"])] += 1
            if mode == "structure":
                self.flaws[case.flaw or "no cells"] += 1

    def _finding(self, mode: str, case: Any, blob: bytes | None, what: str, detail: str) -> None:
        from test_hardening_h5ad import write_case

        n = len(self.findings)
        path = self.out / f"finding_{n:03d}_{what}.h5ad"
        if blob is not None:
            path.write_bytes(blob)
        else:
            write_case(path, case)
        path.with_suffix(".txt").write_text(f"{mode}: {what}\n{detail}\n\n{case!r}\n")
        self.findings.append({"mode": mode, "what": what, "detail": detail, "file": str(path)})
        self.tally[f"{mode}: finding"] += 1
        print(f"finding {n}: {mode} {what}: {detail.splitlines()[0][:200]} -> {path}", flush=True)

    # --- worker management -------------------------------------------------------------------

    def _start_worker(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.worker = self.ctx.Process(
            target=_worker, args=(child, str(self.bundle), str(self.work / "run"),
                                  self.args.memory_gib, self.args.timeout), daemon=True)
        self.worker.start()
        child.close()
        if not self.conn.poll(300) or self.conn.recv() != "ready":
            raise SystemExit("the fuzz worker did not start")

    def _worker_stack(self) -> str:
        """Where the worker was when it hung or crashed (written by faulthandler)."""
        stack = self.work / "run" / "stack.txt"
        return stack.read_text(errors="replace") if stack.exists() else "(no stack)"

    def _restart(self) -> None:
        self.tally["worker restarts"] += 1
        if self.worker.is_alive():
            self.worker.kill()
        self.worker.join(10)
        self._start_worker()

    def close(self) -> None:
        """Stop the worker and remove the scratch folder."""
        import shutil

        if self.worker is not None and self.worker.is_alive():
            self.conn.send(None)
            self.worker.join(10)
            if self.worker.is_alive():
                self.worker.kill()
        shutil.rmtree(self.work, ignore_errors=True)

    def report(self) -> None:
        """Print the counts: inputs tried, outcomes, refusals by kind, findings."""
        elapsed = time.monotonic() - self.started
        tried = sum(v for k, v in self.tally.items() if k.endswith(": tried"))
        print(f"\nscdr reader fuzz: {tried:,} inputs in {elapsed / 60:.1f} min "
              f"({tried / max(elapsed, 1e-9):.1f}/s), seed {self.args.seed}")
        for key in sorted(self.tally):
            print(f"  {key:<28} {self.tally[key]:>8,}")
        print("flaws planted in refused structural inputs:")
        for flaw, n in sorted(self.flaws.items(), key=lambda kv: -kv[1]):
            print(f"  {flaw:<28} {n:>8,}")
        print("refusals (InputError), by message:")
        for gist, n in self.errors.most_common(25):
            print(f"  {n:>8,}  {gist}")
        print(f"findings: {len(self.findings)}" + (f" (saved in {self.out})" if self.findings
                                                   else ""))
        for f in self.findings:
            print(f"  {f['mode']} {f['what']}: {f['detail'].splitlines()[0][:160]}  {f['file']}")


def _worker(conn: Any, bundle: str, folder: str, memory_gib: float, timeout: float) -> None:
    """Score inputs sent over ``conn`` until None arrives; answer each with its outcome."""
    import faulthandler
    import resource

    import numpy as np
    from test_hardening_h5ad import check_case, run_cli

    from scdr.scoring import score
    from scdr.scoring.errors import EXIT_BAD_INPUT, ScdrError

    work = Path(folder)
    work.mkdir(parents=True, exist_ok=True)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    base = _address_space()
    limit = base + int(memory_gib * (1 << 30))
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    stack = open(work / "stack.txt", "w")  # noqa: SIM115 - held for faulthandler
    faulthandler.enable(file=stack)  # a crash leaves its Python stack here
    conn.send("ready")
    n = 0
    while True:
        job = conn.recv()
        if job is None:
            return
        mode, case, blob = job
        n += 1
        stack.seek(0)
        stack.truncate()
        faulthandler.dump_traceback_later(0.8 * timeout, file=stack)  # a hang leaves it too
        try:
            if mode == "structure":
                outcome = check_case(case, work, Path(bundle), measure=True)
                if outcome.peak_bytes > (48 << 20):
                    raise AssertionError(f"traced peak {outcome.peak_bytes:,} bytes")
                if outcome.kind == "error" and n % 10 == 0:  # the CLI path, now and then
                    code, stderr = run_cli(work / "case.h5ad", Path(bundle), work)
                    lines = stderr.strip().splitlines()
                    if code != EXIT_BAD_INPUT or len(lines) != 1 \
                            or not lines[0].startswith("scdr-score: error: "):
                        raise AssertionError(f"CLI gave exit {code} and stderr {stderr!r}")
                answer = {"kind": outcome.kind, "message": outcome.message}
            else:
                path = work / "damaged.h5ad"
                path.write_bytes(blob)
                try:
                    table = score(path, model=bundle, chunk_size=case.chunk_size, threads=1)
                except ScdrError as e:
                    if e.exit_code != EXIT_BAD_INPUT or "\n" in str(e):
                        raise AssertionError(f"exit {e.exit_code}: {e!r}") from None
                    answer = {"kind": "error", "message": str(e)}
                else:
                    n_cells = len(table.cell_ids)
                    if not (table.probability.shape == (n_cells,)
                            and np.all(np.isfinite(table.probability))):
                        raise AssertionError("damaged file scored to malformed output")
                    answer = {"kind": "ok", "message": ""}
        except AssertionError as e:
            answer = {"kind": "finding", "what": "contract", "detail": str(e)}
        except MemoryError:
            answer = {"kind": "finding", "what": "memory", "detail": traceback.format_exc()}
        except Exception as e:  # a traceback reaching the user: the thing this hunts for
            answer = {"kind": "finding", "what": f"exception {type(e).__name__}",
                      "detail": traceback.format_exc()}
        faulthandler.cancel_dump_traceback_later()
        conn.send(answer)


def _address_space() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _write_tenx_case(path: Path, case: Any, rng: random.Random) -> None:
    """The counts and names of ``case`` as a 10x Genomics .h5, with antibody features half the
    time."""
    import numpy as np
    import scipy.sparse as sp
    from test_reader_tenx import write_tenx

    counts, ids = case.counts, list(case.var)
    types = ["Gene Expression"] * len(ids)
    if rng.random() < 0.5:
        extra = np.random.default_rng(rng.randrange(2**32)).integers(0, 9, (counts.shape[0], 2))
        counts = np.hstack([counts, extra])
        ids += [b"CD3", b"CD19"]
        types += ["Antibody Capture"] * 2
    write_tenx(path, sp.csr_matrix(counts), ids, types=types, barcodes=case.obs,
               chunked=case.chunked)


def _mutate(blob: bytes, rng: random.Random) -> bytes:
    """``blob`` with one to three random kinds of byte-level damage."""
    data = bytearray(blob)
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(MUTATIONS)
        if not data:
            break
        at = rng.randrange(len(data))
        if kind == "bitflip":
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
        elif kind == "span":
            n = rng.randint(1, 64)
            data[at : at + n] = bytes(rng.randrange(256) for _ in range(min(n, len(data) - at)))
        elif kind == "integer":
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(BOUNDARY) & ((1 << (8 * width)) - 1)
            data[at : at + width] = value.to_bytes(width, "little")[: len(data) - at]
        elif kind == "truncate":
            del data[at:]
        else:
            n = rng.randint(1, 256)
            data[at:at] = data[max(0, at - n) : at]
    return bytes(data)


def _gist(message: str) -> str:
    """A refusal message without its numbers and paths, to count kinds of refusal."""
    import re

    text = re.sub(r"(?<!\w)/\S*", "<path>", message)
    text = re.sub(r"\d[\d,]*", "N", text)
    return text[:110]


if __name__ == "__main__":
    main()
