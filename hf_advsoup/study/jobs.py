"""Running the study's jobs: a dependency graph executed by a few worker processes, with reuse of finished jobs.

A :class:`Job` is one unit of work of :mod:`hf_advsoup.study.tasks` (train a run, evaluate a run, evaluate soups,
fine-tune a transfer) with JSON inputs (``spec``), a folder it owns, and the jobs it needs first. :func:`run_jobs`
runs a set of jobs ``workers`` at a time -- in separate processes (a ``spawn`` pool, one torch thread each: on a
2-core machine two single-threaded processes beat one two-threaded process for these tiny models), or in this
process with ``workers=1`` -- each job after its dependencies, and reuses a job finished by an earlier invocation
when its inputs and those of every job it depends on are unchanged (``<directory>/job.json`` records them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Job", "JobError", "format_duration", "run_jobs", "worker_pool"]

logger = logging.getLogger(__name__)

JOB_RECORD = "job.json"
"""The record a finished job leaves in its folder: inputs, fingerprint, result, wall time."""
JOB_STARTED = ".job_started.json"
"""The record a resumable job leaves when it starts (its fingerprint): a later invocation resumes in the folder only
when the fingerprint is the same (hidden, so ``scripts/cotrain.py`` does not count it as a previous run's file)."""


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``"1 min 15 s"``; ``3700`` -> ``"1 h 01 min"``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class JobError(RuntimeError):
    """A job failed; the message names it, its log file and the end of its log."""


@dataclass
class Job:
    """One unit of work.

    Attributes:
        name: unique name, e.g. ``"train/cls_token_eps0.1_s0"``; also names the log file.
        kind: the task that runs it (a key of :data:`hf_advsoup.study.tasks.TASKS`).
        spec: the task's inputs (JSON values only). A finished job is reused when its spec and its dependencies'
            are unchanged.
        directory: the folder the job owns (deleted before it runs, its record written there after).
        deps: names of the jobs that must finish first.
        resumable: keep what an interrupted run of the same job (same fingerprint) left in ``directory`` -- e.g.
            the checkpoints a training resumes from -- instead of starting in an empty folder.
    """

    name: str
    kind: str
    spec: dict[str, Any]
    directory: str
    deps: tuple[str, ...] = field(default=())
    resumable: bool = False


def _fingerprints(jobs: dict[str, Job]) -> tuple[list[str], dict[str, str]]:
    """Topological order and, per job, a hash of its spec and (recursively) its dependencies' fingerprints."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError(f"Job dependency cycle: {' -> '.join(path + (name,))}.")
        state[name] = 1
        for dep in jobs[name].deps:
            if dep not in jobs:
                raise ValueError(f"Job {name} depends on {dep}, which is not among the jobs to run.")
            visit(dep, path + (name,))
        state[name] = 2
        order.append(name)

    for name in jobs:
        visit(name, ())
    prints: dict[str, str] = {}
    for name in order:
        job = jobs[name]
        payload = json.dumps({"kind": job.kind, "spec": job.spec, "deps": [prints[d] for d in sorted(job.deps)]},
                             sort_keys=True, default=str)
        prints[name] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return order, prints


def _load_record(job: Job, fingerprint: str) -> dict[str, Any] | None:
    path = Path(job.directory) / JOB_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return record if record.get("fingerprint") == fingerprint else None


def _read_fingerprint(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError):
        return None


def _log_path(log_dir: Path, name: str) -> Path:
    return log_dir / (name.replace("/", "__") + ".log")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes for :func:`run_jobs` (one torch thread each). Starting one costs
    imports (seconds); a caller that runs several batches of jobs keeps one pool for all of them."""
    from . import tasks

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # read by the spawned workers' libraries at import
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=tasks.init_worker)


def run_jobs(jobs: Sequence[Job], *, workers: int = 2, log_dir: str | Path, reuse: bool = True,
             pool: ProcessPoolExecutor | None = None, execute: Callable[..., dict] | None = None) -> dict[str, dict]:
    """Run ``jobs`` (each after its ``deps``), ``workers`` at a time, and return ``{name: record}``.

    A record is ``{"name", "kind", "spec", "fingerprint", "result", "wall_time_s", "finished", "reused"}``;
    ``result`` is what the task returned. With ``reuse``, a job whose ``job.json`` holds the same fingerprint (its
    spec and its dependencies' fingerprints) is not run again, unless a job it depends on runs. ``workers >= 2``
    runs jobs in a pool of spawned processes (one torch thread each); ``workers=1`` runs them in this process, in
    dependency order. ``pool``: a :func:`worker_pool` to use (default: one started and shut down here). ``execute``:
    ``(kind, spec, directory, log_path) -> {"result", "wall_time_s"}``, a module-level function (default:
    :func:`hf_advsoup.study.tasks.execute`). Jobs given twice must be identical (sections share runs by name).

    Raises:
        JobError: the first job that failed (after the jobs already running have finished), with its log's end.
        ValueError: a missing dependency, a cycle, or two different jobs with one name.
    """
    from . import tasks

    execute = execute or tasks.execute
    by_name: dict[str, Job] = {}
    for job in jobs:
        known = by_name.get(job.name)
        if known is not None and (known.spec, known.kind, tuple(known.deps)) != (job.spec, job.kind, tuple(job.deps)):
            raise ValueError(f"Two different jobs are named {job.name!r}: {known.spec} vs {job.spec}.")
        by_name[job.name] = job
    order, prints = _fingerprints(by_name)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)

    records: dict[str, dict] = {}
    todo: list[str] = []
    for name in order:
        job = by_name[name]
        record = _load_record(job, prints[name]) if reuse else None
        if record is not None and not any(dep in todo for dep in job.deps):
            record["reused"] = True
            records[name] = record
        else:
            todo.append(name)
    if not todo:
        logger.info("All %d job(s) reused from earlier invocations.", len(order))
        return records
    logger.info("%d job(s) to run (%d reused), %d at a time.", len(todo), len(order) - len(todo), max(workers, 1))

    def start(name: str) -> tuple[Job, Path]:
        job = by_name[name]
        started = Path(job.directory) / JOB_STARTED
        resumes = job.resumable and started.exists() and _read_fingerprint(started) == prints[name]
        if os.path.exists(job.directory) and not resumes:
            shutil.rmtree(job.directory)  # the job owns its folder: nothing stale survives into the new run
        if job.resumable:
            Path(job.directory).mkdir(parents=True, exist_ok=True)
            started.write_text(json.dumps({"name": name, "fingerprint": prints[name]}))
            if resumes:
                logger.info("%s continues in %s (interrupted earlier with the same inputs)", name, job.directory)
        return job, _log_path(log_dir, name)

    def finish(name: str, outcome: dict[str, Any]) -> None:
        job = by_name[name]
        record = {"name": name, "kind": job.kind, "spec": job.spec, "fingerprint": prints[name],
                  "result": outcome["result"], "wall_time_s": outcome["wall_time_s"],
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        Path(job.directory).mkdir(parents=True, exist_ok=True)
        (Path(job.directory) / JOB_RECORD).write_text(json.dumps(record, indent=2, default=str))
        record["reused"] = False
        records[name] = record
        logger.info("[%d/%d] done %s in %s", len([n for n in todo if n in records]), len(todo), name,
                    format_duration(outcome["wall_time_s"]))

    def failure(name: str, error: BaseException) -> JobError:
        log = _log_path(log_dir, name)
        return JobError(f"Job {name} failed: {type(error).__name__}: {error}\nLog: {log}\n--- end of the log ---\n"
                        f"{_tail(log)}")

    if workers <= 1:
        for name in todo:
            job, log = start(name)
            logger.info("[%d/%d] running %s", todo.index(name) + 1, len(todo), name)
            try:
                outcome = execute(job.kind, job.spec, job.directory, str(log))
            except Exception as error:
                raise failure(name, error) from error
            finish(name, outcome)
        return records

    pending = list(todo)
    running: dict[Any, str] = {}
    error: JobError | None = None
    with contextlib.nullcontext(pool) if pool is not None else worker_pool(workers) as pool:
        while pending or running:
            if error is None:
                for name in [n for n in pending if all(d in records for d in by_name[n].deps)]:
                    if len(running) >= workers:
                        break
                    job, log = start(name)
                    pending.remove(name)
                    running[pool.submit(execute, job.kind, job.spec, job.directory, str(log))] = name
                    logger.info("started %s (%d running, %d waiting)", name, len(running), len(pending))
            if not running:
                if error is None and pending:
                    raise ValueError(f"Jobs {pending} cannot start: a dependency did not finish.")
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                exception = future.exception()
                if exception is not None:
                    if error is None:
                        error = failure(name, exception)
                        logger.error("%s failed; waiting for the %d running job(s), starting no new one.", name,
                                     len(running))
                    continue
                finish(name, future.result())
    if error is not None:
        raise error
    return records
