"""The study engine: plans the sections' jobs, runs them in parallel, adds second seeds where a compared difference
is small, and writes the card.

Order of work (:meth:`Study.run`):

1. the data: one saved train / validation / test layout (:func:`~hf_advsoup.study.data.prepare_study_data`);
2. the epsilon sweep at the first seed (unless ``--epsilon`` is given), and the radius it chooses on validation;
3. every other selected section's jobs at the first seed, ``--jobs`` at a time;
4. the second seed of every number in a compared difference under the preset's threshold (2 points);
5. each section's table and comparisons (:meth:`Section.collect`), ``results.json``, the card and the plots
   (:mod:`hf_advsoup.study.report`).

Every job is reused by a later invocation with the same inputs (``--reuse_runs``); the card says which were.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..catastrophic_overfitting import find_collapse
from .data import StudyData, prepare_study_data
from .jobs import Job, format_duration, run_jobs, worker_pool
from .presets import STUDY_PRESETS, StudyPreset, get_study_preset
from .rules import seeds_to_resolve
from .sections import SECTIONS
from .specs import METRIC_SCALES, Comparison, RunSpec, TransferResult, epsilon_slug

__all__ = ["Study", "StudyArguments", "rewrite_report", "run_study"]

logger = logging.getLogger(__name__)


@dataclass
class StudyArguments:
    """What to run, where, and how many jobs at once. The data set, the recipe and every size come from the study
    preset (``hf_advsoup.study.presets``); ``--quick`` shrinks it to a smoke run."""

    dataset: str = field(
        default="fashion_mnist",
        metadata={"help": f"The study preset: {', '.join(STUDY_PRESETS)}. Default: fashion_mnist.",
                  "choices": list(STUDY_PRESETS)},
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where the card (README.md), results.json and the plots are written. Default: the preset's "
                  "(model_cards/fashion-mnist, model_cards/digits); with --quick, <work_dir>/card."},
    )
    work_dir: str | None = field(
        default=None,
        metadata={"help": "Runs, evaluations, data and logs (not part of the card). Default: runs/reproduce/<preset> "
                  "(runs/reproduce_quick/<preset> with --quick), ignored by git."},
    )
    quick: bool = field(
        default=False,
        metadata={"help": "A smoke run of every section at a minuscule scale (StudyPreset.quick): minutes, numbers "
                  "meaningless."},
    )
    seed: int = field(default=0, metadata={"help": "First seed of every run, data order and attack; the second seed "
                                           "is seed + 1."})
    sections: list[str] = field(
        default_factory=lambda: [name for name, section in SECTIONS.items() if section.phase != "long"],
        metadata={"help": f"Sections to run, any of: {', '.join(SECTIONS)}; 'all' for every one. Default: all but "
                  "long_horizon (the long runs of the collapse claims, about an hour more: run `--sections all` "
                  "afterwards, which reuses every finished job and adds them to the card).",
                  "choices": [*SECTIONS, "all"]},
    )
    epsilon: str | None = field(
        default=None,
        metadata={"help": "l_inf radius in [0, 1] pixel units (0.1, 8/255). Given: the epsilon sweep is skipped. "
                  "Default: chosen by the sweep on validation (the preset's default radius if the sweep is not run)."},
    )
    jobs: int = field(
        default=2,
        metadata={"help": "Jobs (trainings, evaluations) run at once, each in its own single-threaded process; 1 runs "
                  "them one by one in this process. Default 2 (one per core of a 2-core machine)."},
    )
    max_seeds: int = field(
        default=3,
        metadata={"help": "Seeds at most per measured result: a claim whose 95%% interval straddles its boundary gets "
                  "another seed of both compared results when that can resolve it (rules.seeds_to_resolve), up to "
                  "this many. 1: one seed (such claims stay unresolved)."},
    )
    reuse_runs: bool = field(
        default=True,
        metadata={"help": "Reuse finished jobs of --work_dir whose inputs are unchanged (the card says which)."},
    )
    report_only: bool = field(
        default=False,
        metadata={"help": "Rewrite README.md and the plots of --output_dir from its results.json, running nothing."},
    )
    cotrain_script: str | None = field(
        default=None,
        metadata={"help": "Path of scripts/cotrain.py, which trains every run. Default: the repository's."},
    )

    def __post_init__(self) -> None:
        if "all" in self.sections:
            self.sections = list(SECTIONS)
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f"Unknown sections {unknown}; valid sections: {', '.join(SECTIONS)}.")
        if not self.sections:
            raise ValueError(f"--sections is empty; choose among {', '.join(SECTIONS)}.")
        if self.dataset not in STUDY_PRESETS:
            raise ValueError(f"Unknown --dataset {self.dataset!r}; study presets: {', '.join(STUDY_PRESETS)}.")
        if self.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {self.jobs}.")
        if not 1 <= self.max_seeds <= 5:
            raise ValueError(f"--max_seeds must be between 1 and 5, got {self.max_seeds}.")
        if self.epsilon is not None:
            from ..attacks import parse_epsilon

            parse_epsilon(self.epsilon, "linf")


def _default_cotrain_script() -> Path:
    return Path(__file__).resolve().parents[2] / "scripts" / "cotrain.py"


class Study:
    """One invocation of the study: the preset, the data, the jobs' records and the chosen epsilon.

    Sections ask it for jobs (:meth:`train_job`, :meth:`eval_job`, :meth:`soups_jobs`, :meth:`transfer_job`) and
    for numbers (:meth:`stat`, :meth:`compared`, :meth:`collapses`); only :meth:`run` executes anything."""

    def __init__(self, preset: StudyPreset, args: StudyArguments, command: str | None = None):
        self.preset = preset
        self.command = command or f"hf_advsoup.study.run_study(StudyArguments(dataset={args.dataset!r}, ...))"
        self.args = args
        self.seed = args.seed
        self.seeds = [args.seed + i for i in range(max(args.max_seeds, 1))]
        default_work = Path("runs") / ("reproduce_quick" if args.quick else "reproduce") / preset.name
        self.work_dir = Path(args.work_dir) if args.work_dir else default_work
        self.output_dir = Path(args.output_dir or (self.work_dir / "card" if args.quick else preset.output_dir))
        self.cotrain_script = Path(args.cotrain_script) if args.cotrain_script else _default_cotrain_script()
        if not self.cotrain_script.is_file():
            raise FileNotFoundError(f"{self.cotrain_script} not found: the study trains with scripts/cotrain.py; pass "
                                    "--cotrain_script <path of scripts/cotrain.py>.")
        self.epsilon: str | None = args.epsilon
        self.epsilon_source = "given (--epsilon)" if args.epsilon else None
        self.records: dict[str, dict] = {}
        self.data: StudyData | None = None
        self.timings: dict[str, float] = {}
        self._pool = None  # one pool of worker processes for every batch of jobs (set by run)

    # ----------------------------------------------------------------------------------------------- jobs
    def _data_path(self, classes: tuple[int, ...] | None) -> str:
        return self.data.path if classes is None else self.data.subset_path(classes)

    def run_dir(self, spec: RunSpec, seed: int) -> Path:
        return self.work_dir / "runs" / f"{spec.name}_s{seed}"

    def cotrain_argv(self, spec: RunSpec, seed: int) -> list[str]:
        """The ``scripts/cotrain.py`` command line of ``spec`` at ``seed``: the preset's model and recipe, the study's
        data, monitoring after every epoch on the validation split (not for nominal runs: no attack)."""
        from ..attacks import parse_epsilon

        p = self.preset
        argv = ["--output_dir", str(self.run_dir(spec, seed)), "--dataset_name", self._data_path(spec.classes),
                "--test_split", "none", "--image_size", str(p.image_size), "--seed", str(seed),
                *p.model.to_argv(), *p.recipe.to_argv(), "--adapter", spec.adapter, "--alpha", f"{spec.alpha:g}",
                "--robust_eval_samples", str(p.monitor_samples if spec.alpha < 1 else 0),
                "--eval_strategy", "epoch", "--save_strategy", "no", "--logging_strategy", "epoch",
                "--log_level", "warning", "--disable_tqdm", "true", "--report_to", "none",
                "--soup_table", "false"]  # the study evaluates every run itself
        if spec.alpha < 1:
            eps = spec.epsilon
            argv += ["--train_attack", spec.train_attack, "--train_epsilon", eps, "--eval_epsilon", eps,
                     "--eval_attack_steps", str(p.monitor_steps)]
            if spec.step_over_epsilon is not None:
                argv += ["--train_attack_step_size", repr(spec.step_over_epsilon * float(parse_epsilon(eps, "linf")))]
        return argv + list(spec.extra_argv)

    def train_job(self, spec: RunSpec, seed: int) -> Job:
        return Job(f"train/{spec.name}_s{seed}", "train",
                   {"cotrain_script": str(self.cotrain_script), "argv": self.cotrain_argv(spec, seed)},
                   str(self.run_dir(spec, seed)), resumable=True)

    def eval_job(self, spec: RunSpec, seed: int, split: str, epsilon: str | None = None) -> Job:
        """Evaluate ``spec`` at ``seed`` on ``split`` of its data (the source classes for a class-subset run): clean
        accuracy on the preset's clean subset, robust accuracy with the attacks of record at ``epsilon`` (default:
        the study's) on its robust subset."""
        p = self.preset
        eps = epsilon or self.epsilon
        where = f"{spec.name}_s{seed}/{split}_{epsilon_slug(eps)}"
        test = split == "test"
        return Job(f"eval/{where}", "evaluate", {
            "model_dir": str(self.run_dir(spec, seed)), "data_path": self._data_path(spec.classes), "split": split,
            "clean_samples": p.test_samples if test else p.validation_samples,
            "robust_samples": p.test_robust_samples if test else p.validation_robust_samples,
            "epsilon": eps, "attacks": list(p.report_attacks), "attack_steps": p.report_attack_steps, "seed": seed,
            "batch_size": p.evaluation_batch_size,
        }, str(self.work_dir / "evals" / where), deps=(f"train/{spec.name}_s{seed}",))

    def soups_jobs(self, seed: int) -> list[Job]:
        """The soups section's jobs at ``seed``: its three runs, then the soup evaluation (last)."""
        from .sections import adversarial, cotraining, nominal

        p = self.preset
        runs = {"cotrained": cotraining(self.epsilon, attack=p.recipe.train_attack), "nominal": nominal(),
                "adversarial": adversarial(self.epsilon, p.recipe.train_attack)}
        trains = {k: self.train_job(spec, seed) for k, spec in runs.items()}
        where = f"s{seed}_{epsilon_slug(self.epsilon)}"
        soups = Job(f"soups/{where}", "soups", {
            **{f"{k}_dir": str(self.run_dir(spec, seed)) for k, spec in runs.items()},
            "data_path": self.data.path, "split": "test", "betas": list(p.soup_betas),
            "clean_samples": p.test_samples, "robust_samples": p.soup_robust_samples, "epsilon": self.epsilon,
            "attacks": list(p.report_attacks), "attack_steps": p.report_attack_steps, "seed": seed,
            "extra_points": list(p.soup_extra_points), "dataset_title": p.title, "batch_size": p.evaluation_batch_size,
        }, str(self.work_dir / "soups" / where), deps=tuple(job.name for job in trains.values()))
        return [*trains.values(), soups]

    def transfer_job(self, cell: TransferResult, seed: int) -> Job:
        p = self.preset
        where = f"{cell.source.name}_{cell.token_init}_{cell.strategy}_s{seed}"
        return Job(f"transfer/{where}", "transfer", {
            "source_dir": str(self.run_dir(cell.source, seed)),
            "data_path": self.data.subset_path(tuple(p.transfer_target_classes)),
            "token_init": cell.token_init, "strategy": cell.strategy, "steps": p.transfer_steps,
            "batch_size": p.transfer_batch_size, "horizontal_flip": p.transfer_horizontal_flip, "seed": seed,
        }, str(self.work_dir / "transfer" / where), deps=(f"train/{cell.source.name}_s{seed}",))

    def execute(self, jobs: list[Job]) -> None:
        """Run ``jobs`` (``--jobs`` at a time, reusing finished ones); keep their records."""
        records = run_jobs(jobs, workers=self.args.jobs, log_dir=self.work_dir / "logs", reuse=self.args.reuse_runs,
                           pool=self._pool)
        for name, record in records.items():
            known = self.records.get(name)
            if known is not None and not known["reused"]:
                continue  # run earlier in this invocation: not "reused from an earlier invocation"
            self.records[name] = record

    # ----------------------------------------------------------------------------------------------- numbers
    def result(self, job: Job) -> dict[str, Any] | None:
        record = self.records.get(job.name)
        return None if record is None else record["result"]

    def values(self, measure) -> dict[int, dict[str, Any]]:
        """``{seed: {metric: per-image outcomes}}`` of a measured result at every seed that ran."""
        out = {}
        for seed in self.seeds:
            numbers = measure.values(self, seed)
            if numbers is not None:
                out[seed] = numbers
        return out

    def stat(self, measure, metric: str) -> dict[str, Any]:
        """One number of the tables: ``{"mean", "by_seed", "correct", "total", "interval_95"}`` -- the accuracy
        pooled over the seeds that ran (a count of images), each seed's, and the Wilson interval of the pooled
        count (for ``mean``, of clean and robust accuracy: per image the sum of the two, over twice the images)."""
        from ..intervals import wilson_interval

        scale = METRIC_SCALES.get(metric, 1)
        by_seed = {seed: numbers[metric] for seed, numbers in self.values(measure).items()}
        if not by_seed:
            raise RuntimeError(f"No result for {measure.key} ({metric}): its jobs did not run.")
        correct = sum(int(v.sum()) for v in by_seed.values())
        total = scale * sum(int(v.size) for v in by_seed.values())
        return {"mean": correct / total, "correct": correct, "total": total,
                "interval_95": list(wilson_interval(correct, total)),
                "by_seed": {str(s): int(v.sum()) / (scale * v.size) for s, v in by_seed.items()}}

    def paired(self, comparison: Comparison):
        """The paired difference of a comparison, pooled over the seeds both sides were measured at (images in
        common only: the first ones of the smaller evaluation)."""
        from ..intervals import paired_difference

        a = {s: v[comparison.metric] for s, v in self.values(comparison.a).items()}
        b = {s: v[comparison.metric] for s, v in self.values(comparison.b).items()}
        seeds = sorted(set(a) & set(b))
        if not seeds:
            raise RuntimeError(f"No seed in common between {comparison.a.key} and {comparison.b.key}.")
        n = min(min(a[s].size, b[s].size) for s in seeds)
        return paired_difference({s: a[s][:n] for s in seeds}, {s: b[s][:n] for s in seeds},
                                 scale=METRIC_SCALES.get(comparison.metric, 1), seed=self.seed)

    def compared(self, comparison: Comparison) -> dict[str, Any]:
        """A comparison with its paired interval and verdict, as ``results.json`` and the card hold it."""
        from fractions import Fraction

        from ..intervals import decide, images_to_resolve

        paired = self.paired(comparison)
        verdict = decide(paired, comparison.boundary, comparison.direction)
        return {"key": comparison.key, "label": comparison.label, "metric": comparison.metric,
                "a": comparison.a.key, "b": comparison.b.key, "direction": comparison.direction,
                "boundary": float(Fraction(comparison.boundary)), "boundary_exact": comparison.boundary,
                "claim": comparison.claim, **paired.to_dict(), "verdict": verdict,
                "images_to_resolve": (images_to_resolve(paired, comparison.boundary, comparison.direction)
                                      if verdict == "unresolved" else None),
                "seeds_to_resolve": seeds_to_resolve(paired, comparison.boundary, comparison.direction,
                                                     paired.num_seeds, self.args.max_seeds)}

    def num_parameters(self, spec: RunSpec) -> int:
        return self.result(self.eval_job(spec, self.seed, "test"))["num_parameters"]

    def train_times(self, spec: RunSpec) -> dict[str, float]:
        return {str(s): self.records[f"train/{spec.name}_s{s}"]["wall_time_s"] for s in self.seeds
                if f"train/{spec.name}_s{s}" in self.records}

    def monitored(self, spec: RunSpec, seed: int) -> list[tuple[float, float]]:
        """``[(epoch, robust accuracy)]`` monitored after every epoch of a run (validation subset, cheap attack)."""
        record = self.result(self.train_job(spec, seed)) or {}
        return [(h["epoch"], h["eval_robust_accuracy"]) for h in record.get("history", [])
                if "eval_robust_accuracy" in h]

    def collapse(self, spec: RunSpec, seed: int) -> dict[str, Any]:
        """Catastrophic overfitting of a run by the library detector's rule
        (:func:`hf_advsoup.catastrophic_overfitting.find_collapse`, with the run's own drop and minimum best), on
        the robust accuracy it monitored after every epoch; ``final`` says whether it was regained."""
        series = self.monitored(spec, seed)
        if not series:
            return {"monitored": False, "detected": False}
        record = self.result(self.train_job(spec, seed))
        recipe = record["recipe"]
        drop = recipe.get("catastrophic_overfitting_drop") or 0.5
        min_best = recipe.get("catastrophic_overfitting_min_best") or 0.05
        found = find_collapse([v for _, v in series], drop=drop, min_best=min_best, num_labels=record["num_labels"])
        out = {"monitored": True, "detected": found is not None, "final": series[-1][1],
               "best": max(v for _, v in series), "drop": drop, "min_best": min_best,
               "num_labels": record["num_labels"]}
        if found is not None:
            out.update(epoch=series[found.index][0], best_before=found.best_before, after=found.value)
        return out

    def collapses(self, spec: RunSpec) -> dict[str, dict[str, Any]]:
        return {str(s): self.collapse(spec, s) for s in self.seeds if f"train/{spec.name}_s{s}" in self.records}

    # ----------------------------------------------------------------------------------------------- the run
    def run(self) -> dict[str, Any]:
        """Run the selected sections (see the module docstring); write and return the results."""
        if self.args.jobs < 2:
            return self._run()
        with worker_pool(self.args.jobs) as self._pool:
            try:
                return self._run()
            finally:
                self._pool = None

    def _run(self) -> dict[str, Any]:
        from .report import write_card

        start = time.perf_counter()
        selected = [SECTIONS[name] for name in SECTIONS if name in self.args.sections]
        tick = time.perf_counter()
        self.data = prepare_study_data(self.preset, self.work_dir)
        self.timings["data"] = time.perf_counter() - tick

        tuning = [s for s in selected if s.phase == "tuning"]
        if tuning and self.epsilon is not None:
            logger.info("--epsilon %s given: skipping the epsilon sweep.", self.epsilon)
            selected = [s for s in selected if s.phase != "tuning"]
        elif tuning:
            tick = time.perf_counter()
            logger.info("=== Epsilon sweep (seed %d) ===", self.seed)
            self.execute([job for s in tuning for job in s.jobs(self, self.seed)])
            choice = tuning[0].choose(self)
            self.epsilon, self.epsilon_source = choice["epsilon"], "chosen by the sweep on validation"
            logger.info("Chosen epsilon: %s (%s)", self.epsilon, choice["reason"])
            self.timings["epsilon sweep"] = time.perf_counter() - tick
        if self.epsilon is None:
            self.epsilon, self.epsilon_source = self.preset.default_epsilon, "the preset's default (no sweep)"
            logger.warning("No --epsilon and no epsilon sweep: using the preset's %s.", self.epsilon)

        main = [s for s in selected if s.phase in ("main", "long")]
        tick = time.perf_counter()
        logger.info("=== Sections %s (seed %d) ===", ", ".join(s.name for s in main), self.seed)
        self.execute([job for s in main for job in s.jobs(self, self.seed)])
        self.timings[f"seed {self.seed}"] = time.perf_counter() - tick

        for seed in self.seeds[1:self.args.max_seeds]:
            needed: dict[str, Any] = {}
            for section in main:
                for comparison in section.comparisons(self):
                    if not comparison.claim:
                        continue
                    if seed in self.values(comparison.a) and seed in self.values(comparison.b):
                        continue
                    record = self.compared(comparison)
                    if record["seeds_to_resolve"] is not None:
                        needed[comparison.a.key], needed[comparison.b.key] = comparison.a, comparison.b
            if not needed:
                break
            tick = time.perf_counter()
            logger.info("=== Seed %d of %d measured result(s): claims whose interval straddles their boundary ===",
                        seed, len(needed))
            self.execute([job for m in needed.values() for job in m.jobs(self, seed)])
            self.timings[f"seed {seed}"] = time.perf_counter() - tick

        results = self.results({s.name: s.collect(self) for s in selected})
        results["timings"] = {**self.timings, "total": time.perf_counter() - start}
        results["finished"] = time.strftime("%Y-%m-%d %H:%M %Z")
        write_card(results, self.output_dir, soups_dir=self.soups_dir())
        logger.info("Card written to %s (total %s)", self.output_dir / "README.md",
                    format_duration(results["timings"]["total"]))
        return results

    def soups_dir(self) -> Path | None:
        if "soups" not in self.args.sections or f"soups/s{self.seed}_{epsilon_slug(self.epsilon)}" not in self.records:
            return None
        return Path(self.soups_jobs(self.seed)[-1].directory)

    def results(self, sections: dict[str, Any]) -> dict[str, Any]:
        """Everything the card shows, as JSON: settings, provenance, per-run records, the sections' numbers."""
        import torch

        from .tasks import report_attack_configs

        p = self.preset
        runs = {}
        for name, record in self.records.items():
            if record["kind"] != "train":
                continue
            run = name.split("/", 1)[1]
            spec_name, seed = run.rsplit("_s", 1)
            runs[run] = {"run": spec_name, "seed": int(seed), "train_time_s": record["wall_time_s"],
                         "reused": record["reused"], "argv": record["spec"]["argv"],
                         "history": record["result"]["history"], "recipe": record["result"]["recipe"]}
        attacks = report_attack_configs(list(p.report_attacks), self.epsilon, p.report_attack_steps)
        return {
            "title": p.title,
            "preset": dataclasses.asdict(p),
            "arguments": dataclasses.asdict(self.args),
            "command": self.command,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {self.args.jobs} "
                       "job(s) at a time, one thread each",
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "data": self.data.to_dict(),
            "epsilon": self.epsilon,
            "epsilon_source": self.epsilon_source,
            "seeds": sorted({int(r["seed"]) for r in runs.values()} or {self.seed}), "max_seeds": self.args.max_seeds,
            "attack_of_record": {"presets": list(p.report_attacks), "steps_override": p.report_attack_steps,
                                 "configs": [c.to_dict() for c in attacks], "labels": [c.label for c in attacks]},
            "jobs": {name: {"kind": r["kind"], "wall_time_s": r["wall_time_s"], "reused": r["reused"]}
                     for name, r in self.records.items()},
            "runs": runs,
            "sections": sections,
            "output_dir": str(self.output_dir),
            "work_dir": str(self.work_dir),
        }


def run_study(args: StudyArguments, preset: StudyPreset | None = None, command: str | None = None) -> dict[str, Any]:
    """Run the study of ``args`` (its preset, or ``preset`` when given: tests use a minuscule one) and write its card;
    with ``args.report_only``, only rewrite the card from ``results.json``. ``command`` is how the card says it was
    launched. Returns the results dictionary."""
    preset = preset or get_study_preset(args.dataset, quick=args.quick)
    if args.report_only:
        output_dir = Path(args.output_dir or preset.output_dir)
        return rewrite_report(output_dir)
    return Study(preset, args, command).run()


def rewrite_report(output_dir: str | Path) -> dict[str, Any]:
    """``--report_only``: render README.md and the plots again from ``output_dir/results.json`` (and the
    ``soup_results.json`` beside it), running and evaluating nothing."""
    from .report import write_card

    output_dir = Path(output_dir)
    path = output_dir / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: --report_only rewrites a card from the results.json of an "
                                "earlier run; run the study first (or pass its --output_dir).")
    results = json.loads(path.read_text())
    results["rerendered"] = time.strftime("%Y-%m-%d %H:%M %Z")
    results["output_dir"] = str(output_dir)
    write_card(results, output_dir, soups_dir=None)
    logger.info("Rewrote %s and its plots from results.json", output_dir / "README.md")
    return results

