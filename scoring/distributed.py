"""Scale out on Dask distributed: row ranges of each file are scored by workers with the local
code path, checkpointed as parts in a run folder next to each output, and assembled in input
order into exactly the bytes a single-machine run writes.

A run is resumable: ``--resume`` checks that the run folder belongs to the same inputs, models
and options (its ``manifest.json``) and submits only the ranges without a finished part. A part
is finished when its rows and its ``.json`` record (label counts) have both been renamed into
place, so a task killed half-way leaves nothing that counts. Workers that die are replaced and
their tasks rerun by Dask (``distributed.scheduler.allowed-failures``); a task that fails on bad
data fails the run, naming the file and the rows.
"""

import csv
import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from scdr.scoring import __version__
from scdr.scoring.atomic import publish, write_json_atomic
from scdr.scoring.bundle import Bundle, load_bundle
from scdr.scoring.engine import ChunkResult, ModelRun, ReadOptions, open_source, prepare_run, stream
from scdr.scoring.errors import InputError, OutputError, ScdrError
from scdr.scoring.output import TableWriter, table_delimiter, table_header

MANIFEST = "manifest.json"
CHUNKS_PER_TASK = 8


@dataclass
class Job:
    """One input file: its outputs (one per model), run folders and row ranges."""

    input: Path
    outputs: list[Path]
    n_obs: int
    ranges: list[tuple[int, int]]
    manifest: dict[str, Any]
    reused: int = 0
    counts: dict[tuple[int, int], list[dict[str, int]]] = field(default_factory=dict)

    def parts_dir(self, output: Path) -> Path:
        """The run folder of one output table."""
        return output.with_name(f"{output.name}.parts")

    def part(self, output: Path, rng: tuple[int, int]) -> Path:
        """Where the rows ``rng`` of one output are checkpointed."""
        return self.parts_dir(output) / f"{rng[0]:012d}-{rng[1]:012d}.part"

    def done(self, rng: tuple[int, int]) -> bool:
        """A range is finished when every output has its part and its record."""
        return all(self.part(o, rng).with_suffix(".json").exists() for o in self.outputs)


def score_distributed(
    inputs: list[Path],
    bundles: list[Bundle],
    outputs: list[list[Path]],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    resume: bool = False,
    force: bool = False,
    pathways: bool = False,
    options: ReadOptions,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Score every input on a Dask cluster (``scheduler`` address, or ``workers`` local
    processes); ``outputs[i][k]`` is the table of input ``i`` for bundle ``k``."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ScdrError("--scheduler/--workers need the dask extra: pip install 'scdr[dask]'") from None
    t0 = time.perf_counter()
    task = {**asdict(replace(options, device="cpu", threads=options.threads or 1)),
            "pathways": pathways, "rows_per_task": options.chunk_size * CHUNKS_PER_TASK}
    jobs = [_plan(path, bundles, outs, task, resume, force, log)
            for path, outs in zip(inputs, outputs)]
    run_id = uuid.uuid4().hex[:12]
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=50)
    client = Client(scheduler or cluster)
    try:
        futures = {}
        for job in jobs:
            for rng in job.ranges:
                if job.done(rng):
                    continue
                fut = client.submit(
                    score_range, str(job.input), rng[0], rng[1], [str(b.path) for b in bundles],
                    [str(job.part(o, rng)) for o in job.outputs],
                    [table_delimiter(o) for o in job.outputs], task, run_id,
                    key=f"scdr-{run_id}-{len(futures)}", pure=False)
                futures[fut] = (job, rng)
        total = sum(j.n_obs for j in jobs)
        done_cells = total - sum(r[1] - r[0] for _, r in futures.values())
        for fut in as_completed(list(futures)):
            job, rng = futures[fut]
            try:
                job.counts[rng] = fut.result()
            except ScdrError as e:
                raise type(e)(f"{job.input} rows {rng[0]}-{rng[1] - 1}: {e}") from None
            done_cells += rng[1] - rng[0]
            if progress is not None:
                progress(done_cells, total)
        attempts = sum(len(list(j.parts_dir(o).glob(f"attempt-{run_id}-*")))
                       for j in jobs for o in j.outputs[:1])
        summaries = [_assemble(job, bundles, task) for job in jobs]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return {
        "runs": summaries,
        "distributed": {"scheduler": scheduler or f"local, {workers or 1} workers",
                        "tasks": len(futures), "ranges_reused": sum(j.reused for j in jobs),
                        "retries": max(0, attempts - len(futures)),
                        "rows_per_task": task["rows_per_task"]},
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "scdr_version": __version__,
    }


def score_range(input_path: str, start: int, stop: int, bundle_dirs: list[str],
                part_paths: list[str], delimiters: list[str], task: dict[str, Any],
                run_id: str) -> list[dict[str, int]]:
    """Worker task: score rows ``start:stop`` with the local code path and checkpoint one part
    per model (rows, then a JSON record of label counts), each renamed into place."""
    first = Path(part_paths[0])
    (first.parent / f"attempt-{run_id}-{start}-{uuid.uuid4().hex[:8]}").touch()
    bundles = [load_bundle(d) for d in bundle_dirs]
    options = _read_options(task)
    with open_source(input_path, None, None, options) as source:
        runs = [prepare_run(b, source, options) for b in bundles]
        writers = {id(r): TableWriter(Path(p), r.bundle.pathway_names if task["pathways"]
                                      else None, header=False, delimiter=d)
                   for r, p, d in zip(runs, part_paths, delimiters)}
        try:
            for w in writers.values():
                w.open()

            def sink(run: ModelRun, res: ChunkResult) -> None:
                writers[id(run)].write(res)

            stream(source, runs, options, sink, rows=(start, stop))
            for w in writers.values():
                w.commit()
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
    counts = [{"cells": r.n_cells, "sensitive": r.n_sensitive, "zero_count_cells": r.n_zero}
              for r in runs]
    for path, c in zip(part_paths, counts):
        write_json_atomic(Path(path).with_suffix(".json"), c)
    return counts


def _plan(path: Path, bundles: list[Bundle], outputs: list[Path], task: dict[str, Any],
          resume: bool, force: bool, log: Callable[[str], None]) -> Job:
    """Validate the input here (coverage, counts) and prepare or reuse its run folders."""
    options = replace(_read_options(task), threads=1)
    with open_source(path, None, None, options) as source:
        for b in bundles:
            prepare_run(b, source, options)
        n_obs = source.n_obs
    step = task["rows_per_task"]
    stat = path.stat()
    manifest = {
        "scdr_version": __version__, "input": str(path.resolve()), "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns, "n_obs": n_obs, "options": task,
        "models": [b.sha256 for b in bundles],
        "outputs": [str(o.resolve()) for o in outputs],
    }
    job = Job(path, outputs, n_obs, [(lo, min(lo + step, n_obs)) for lo in range(0, n_obs, step)],
              manifest)
    for out in outputs:
        folder = job.parts_dir(out)
        if folder.exists():
            if force and not resume:
                shutil.rmtree(folder)
            elif not resume:
                raise OutputError(f"{folder} holds an unfinished run: pass --resume to finish it, "
                                  "or --force to start again")
            else:
                _check_manifest(folder, manifest)
        if not folder.exists():
            folder.mkdir()
            write_json_atomic(folder / MANIFEST, manifest)
    job.reused = sum(job.done(r) for r in job.ranges)
    for r in job.ranges:
        if job.done(r):
            job.counts[r] = [json.loads(job.part(o, r).with_suffix(".json").read_text())
                             for o in outputs]
    if job.reused:
        log(f"{path}: resuming, {job.reused} of {len(job.ranges)} ranges already scored")
    return job


def _check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    try:
        previous = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        raise OutputError(f"{folder} has no readable {MANIFEST}; remove it to start again") from None
    if previous != manifest:
        changed = sorted(k for k in manifest if previous.get(k) != manifest[k])
        raise InputError(f"{folder} belongs to a different run ({', '.join(changed)} changed); "
                         "remove it, or pass --force without --resume to start again")


def _assemble(job: Job, bundles: list[Bundle], task: dict[str, Any]) -> dict[str, Any]:
    """Concatenate each output's parts under its header, publish it, drop the run folder."""
    models = []
    for k, (bundle, out) in enumerate(zip(bundles, job.outputs)):
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with tmp.open("w", encoding="utf-8", newline="") as fh:
                csv.writer(fh, delimiter=table_delimiter(out), lineterminator="\n").writerow(
                    table_header(bundle.pathway_names if task["pathways"] else None, False))
                for rng in job.ranges:
                    with job.part(out, rng).open("r", encoding="utf-8", newline="") as part:
                        shutil.copyfileobj(part, fh, 1 << 20)
            publish(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        counts = [job.counts[r][k] for r in job.ranges]
        sensitive = sum(c["sensitive"] for c in counts)
        models.append({"drug": bundle.drug, "output": str(out), "sha256": bundle.sha256,
                       "labels": {"sensitive": sensitive, "resistant": job.n_obs - sensitive},
                       "zero_count_cells": sum(c["zero_count_cells"] for c in counts)})
    for out in job.outputs:
        shutil.rmtree(job.parts_dir(out), ignore_errors=True)
    return {"input": str(job.input), "cells": job.n_obs, "models": models}


def _read_options(task: dict[str, Any]) -> ReadOptions:
    """The read options a task carries (the rest of the task describes its outputs)."""
    return ReadOptions(**{f.name: task[f.name] for f in fields(ReadOptions)})
