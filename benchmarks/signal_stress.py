"""Signals at random moments never hang scdr-score or leave a half-written output.

    python benchmarks/signal_stress.py [--runs 200] [--input FILE.h5ad] [--seed 0]

Each run starts `scdr-score` on the input in its own process group and, after a random delay
spanning start-up (imports, numba's cached kernels), the chunks, the last chunk and the rename,
sends a burst of 2-5 SIGINT/SIGTERM signals, some to the child alone and some to its whole group,
as coreutils `timeout` does. A run must end within `--deadline` seconds (else it is a hang: it is
killed and counted), exit 130 (or 0 when it finished before the first signal), leave no temporary
file, leave the output only when it exited 0, and write a `--summary` whose status matches.
A signal in the interpreter's own first milliseconds, before any scdr code runs, ends the process
with the signal's default action; such runs are counted apart and must have written nothing.
Prints one line per outcome and exits 1 if any run broke a rule.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "celseq2_p1.h5ad"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_once(index: int, rng: random.Random, input_path: Path, work: Path, deadline: float,
             max_delay: float) -> tuple[str, str]:
    """One signalled run: (outcome, detail); outcome 'ok' or what went wrong."""
    out = work / f"run{index}.csv"
    summary = work / f"run{index}.json"
    cmd = [sys.executable, "-m", "scdr.scoring.launch", str(input_path), "--drug", "cisplatin",
           "-o", str(out), "--summary", str(summary), "--chunk-size", "64", "-q", "--force"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    time.sleep(rng.uniform(0.0, max_delay))
    for _ in range(rng.randint(2, 5)):
        sig = rng.choice(SIGNALS)
        try:
            if rng.random() < 0.5:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            break
        time.sleep(rng.uniform(0.0, 0.02))
    try:
        _, err = proc.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "hang", f"run {index} did not end within {deadline:g} s"
    leftovers = [p.name for p in work.glob(f".run{index}.*")]
    if leftovers:
        return "temp file left", f"run {index}: {leftovers}"
    code = proc.returncode
    text = err.decode(errors="replace")
    if (code < 0 and not text.strip()) or "Fatal Python error: init_" in text:
        # the interpreter's own start-up, before any scdr code ran: nothing can be written
        if out.exists() or summary.exists():
            return "output from a run killed in start-up", f"run {index}"
        return "ok", "killed in interpreter start-up, before scdr ran (nothing written)"
    if code not in (0, 130):
        return f"exit {code}", f"run {index}: {text.strip()[-1500:]}"
    if code == 130 and out.exists():
        return "output after interrupt", f"run {index}"
    if code == 0 and not out.exists():
        return "no output after success", f"run {index}"
    if not summary.exists():
        return "no summary", f"run {index} (exit {code})"
    status = json.loads(summary.read_text()).get("status")
    if status != ("ok" if code == 0 else "error"):
        return "summary status wrong", f"run {index}: exit {code}, status {status}"
    return "ok", "finished" if code == 0 else "interrupted"


def stress(runs: int, input_path: Path, seed: int, deadline: float, max_delay: float) -> Counter:
    """All runs; a Counter of outcomes (details of failures printed as they happen)."""
    rng = random.Random(seed)
    outcomes: Counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i in range(runs):
            outcome, detail = run_once(i, rng, input_path, work, deadline, max_delay)
            outcomes[outcome if outcome != "ok" else f"ok ({detail})"] += 1
            if outcome != "ok":
                print(f"FAIL {outcome}: {detail}", file=sys.stderr, flush=True)
            for p in work.glob(f"run{i}.*"):
                p.unlink()
    return outcomes


def main(argv: list[str] | None = None) -> int:
    """Run the stress test and print the outcome counts."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--input", type=Path, default=EXAMPLE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline", type=float, default=30.0, help="seconds a run may take to end")
    p.add_argument("--max-delay", type=float, default=3.0, help="latest first signal, seconds")
    args = p.parse_args(argv)
    started = time.perf_counter()
    outcomes = stress(args.runs, args.input, args.seed, args.deadline, args.max_delay)
    for outcome, n in sorted(outcomes.items()):
        print(f"{n:5d}  {outcome}")
    bad = sum(n for o, n in outcomes.items() if not o.startswith("ok"))
    print(f"{args.runs} runs in {time.perf_counter() - started:.0f} s: {bad} broke a rule")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
