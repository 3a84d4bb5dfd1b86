"""The flagship engine: train the co-trained model and its two baselines, evaluate them, write the Hub folder.

Order of work (:meth:`Flagship.run`), all in one graph of jobs (:mod:`hf_advsoup.study.jobs`), ``--jobs`` at a
time in single-threaded processes (on a 2-core CPU two such jobs train more images per second than one two-threaded
process or two-process DDP: ``benchmarks/benchmark_parallelism.py``):

1. training: the co-trained model and the adversarial baseline side by side, then the nominal baseline, each with
   ``scripts/cotrain.py`` on the preset's recipe; resumable (an interrupted run continues from its last checkpoint,
   exactly);
2. evaluation, per image chunk so that an interruption loses at most one chunk per worker: clean accuracy of every
   soup and baseline on the whole test split; the ``report`` attack on the first ``report_examples`` test images
   for every soup and both baselines; full AutoAttack (standard version) on the first ``autoattack_examples`` for
   clean mode, the 0.5 soup, robust mode and the adversarial baseline;
3. ``results.json`` (every accuracy from image counts, with its interval; every comparison paired over the same
   images), the card, the plots, and the model files, into the output folder, laid out as the Hub repository.

Run again after an interruption, the same command reuses every finished job and continues the unfinished ones; with
more images requested (``--autoattack_examples``) it runs only the new chunks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..study.jobs import Job, format_duration, run_jobs
from .preset import FLAGSHIP_PRESETS, FlagshipPreset, System, get_flagship_preset

__all__ = ["Flagship", "FlagshipArguments", "run_flagship"]

logger = logging.getLogger(__name__)

TASKS = "hf_advsoup.flagship.tasks"
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
"""What the card folder takes from the co-trained run (the EMA weights, as saved by ``scripts/cotrain.py``)."""
REMOTE_CODE = ("configuration_advsoup.py", "modeling_advsoup.py")
"""The remote code ``save_pretrained`` writes beside the weights: copied into the folder (so that it loads with
``trust_remote_code=True`` where hf_advsoup is not installed) but not committed in this repository (a copy of the
package's modules; ``.gitignore``)."""


@dataclass
class FlagshipArguments:
    """What to run, where, and how much of the evaluation."""

    preset: str = field(
        default="fashion-mnist-flagship",
        metadata={"help": f"The flagship preset: {', '.join(FLAGSHIP_PRESETS)}.", "choices": list(FLAGSHIP_PRESETS)},
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "The model's folder, laid out as its Hub repository (card, config, weights, processor, "
                  "results.json, plots). Default: the preset's (model_cards/fashion-mnist-flagship); with --quick, "
                  "<work_dir>/card."},
    )
    work_dir: str | None = field(
        default=None,
        metadata={"help": "Training runs, evaluation chunks and logs. Default: runs/flagship/<preset> "
                  "(runs/flagship_quick/<preset> with --quick), ignored by git."},
    )
    stage: str = field(
        default="all",
        metadata={"help": "all: train, evaluate, write the folder. train: only the three trainings. report_only: "
                  "rewrite the card and plots of --output_dir from its results.json.",
                  "choices": ["all", "train", "report_only"]},
    )
    jobs: int = field(
        default=2,
        metadata={"help": "Jobs run at once, each a single-threaded process (default 2: one per core of a 2-core "
                  "machine); 1 runs them one by one in this process."},
    )
    autoattack_examples: int | None = field(
        default=None,
        metadata={"help": "Test images under full AutoAttack (the first N, in chunks). Default: the preset's."},
    )
    report_examples: int | None = field(
        default=None,
        metadata={"help": "Test images under the report attack (the first N). Default: the preset's."},
    )
    defence_examples: int | None = field(
        default=None,
        metadata={"help": "Test images the per-image defences are evaluated on (the first N; at most "
                  "--report_examples). Default: the preset's."},
    )
    defences: bool = field(
        default=True,
        metadata={"help": "Evaluate the per-image defences too (docs/selection.md): beta='auto' with a selector "
                  "trained against the system it defends, and the mix family chosen on validation, next to the fixed "
                  "soups and an ensemble, under adaptive attacks on the first defence_examples test images; writes "
                  "auto_results.json into the model's folder. About an hour on 2 cores; false to skip."},
    )
    quick: bool = field(
        default=False,
        metadata={"help": "A smoke run of the whole pipeline at a minuscule scale (minutes; numbers meaningless)."},
    )
    cotrain_script: str | None = field(
        default=None, metadata={"help": "Path of scripts/cotrain.py. Default: the repository's."},
    )

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {self.jobs}.")
        for name in ("autoattack_examples", "report_examples", "defence_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value}.")


def _repository_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class Flagship:
    """One invocation: the preset, the folders, the jobs and their records."""

    def __init__(self, preset: FlagshipPreset, args: FlagshipArguments, command: str | None = None):
        report = args.report_examples or preset.report_examples
        preset = dataclasses.replace(
            preset, autoattack_examples=args.autoattack_examples or preset.autoattack_examples,
            report_examples=report,
            # the preset's default follows a smaller --report_examples (the defences reuse its images); an explicit
            # --defence_examples above --report_examples is refused by the preset
            defence_examples=args.defence_examples or min(preset.defence_examples, report))
        self.preset = preset
        self.args = args
        self.command = command or "hf_advsoup.flagship.run_flagship(...)"
        root = _repository_root()
        default_work = Path("runs") / ("flagship_quick" if args.quick else "flagship") / preset.name
        self.work_dir = Path(args.work_dir) if args.work_dir else default_work
        self.output_dir = Path(args.output_dir or (self.work_dir / "card" if args.quick else preset.output_dir))
        self.recipe = (root / preset.recipe) if not Path(preset.recipe).is_absolute() else Path(preset.recipe)
        self.cotrain_script = Path(args.cotrain_script) if args.cotrain_script else root / "scripts" / "cotrain.py"
        self.records: dict[str, dict] = {}

    # ----------------------------------------------------------------------------------------------- checks
    def check(self) -> None:
        """Everything the run needs, before any work: the recipe and training script, the data, the attacks'
        packages, a usable output folder. Raises ValueError/FileNotFoundError/ImportError with one sentence."""
        for path, what in ((self.recipe, "recipe"), (self.cotrain_script, "training script")):
            if not path.is_file():
                raise FileNotFoundError(f"The {what} {path} does not exist.")
        for folder, flag in ((self.output_dir, "--output_dir"), (self.work_dir, "--work_dir")):
            if folder.exists() and not folder.is_dir():
                raise FileExistsError(f"{flag} {folder} is a file, not a folder; nothing was run. Choose another "
                                      f"{flag}.")
        if self.args.stage != "train":
            try:
                import pyautoattack  # noqa: F401
            except ImportError as error:
                raise ImportError("The flagship's evaluation runs AutoAttack, which needs pyautoattack: pip install "
                                  "--no-deps pyautoattack==0.2.0 (nothing was run).") from error
        from ..data import DataArguments, load_image_dataset

        dataset_name = self._dataset_name()
        data = load_image_dataset(DataArguments(dataset_name=dataset_name))  # fails here, in one line, if missing
        logger.info("Data %s: %s", dataset_name, {split: len(part) for split, part in data.items()})

    def _dataset_name(self) -> str:
        import yaml

        recipe = yaml.safe_load(self.recipe.read_text()) or {}
        return str(recipe.get("dataset_name", self.preset.dataset_name))

    # ----------------------------------------------------------------------------------------------- jobs
    def run_dir(self, run: str) -> Path:
        return self.work_dir / "runs" / run

    def train_jobs(self) -> list[Job]:
        """The three trainings (co-trained and adversarial first: they run side by side), resumable."""
        recipe_hash = _sha256(self.recipe)
        jobs = []
        order = sorted(self.preset.runs, key=lambda run: {"cotrained": 0, "adversarial": 1}.get(run.name, 2))
        for run in order:
            argv = [str(self.recipe), *run.argv, "--output_dir", str(self.run_dir(run.name)), "--seed",
                    str(self.preset.seed), "--disable_tqdm", "true", "--soup_table", "false"]
            jobs.append(Job(f"train/{run.name}", "train",
                            {"cotrain_script": str(self.cotrain_script), "argv": argv, "recipe_sha256": recipe_hash},
                            str(self.run_dir(run.name)), resumable=True))
        return jobs

    def eval_jobs(self) -> list[Job]:
        """Clean outcomes of every run on the whole test split, then the attacks chunk by chunk (the first chunk of
        every system before the second of any, AutoAttack before report within a chunk)."""
        p = self.preset
        dataset_name = self._dataset_name()
        jobs = []
        for run in p.runs:
            betas = list(p.betas) if run.name == "cotrained" else [run.beta]
            jobs.append(Job(f"clean/{run.name}", f"{TASKS}:clean",
                            {"model_dir": str(self.run_dir(run.name)), "dataset_name": dataset_name, "betas": betas},
                            str(self.work_dir / "eval" / "clean" / run.name), deps=(f"train/{run.name}",)))
        largest = max(p.autoattack_examples, p.report_examples)
        for start in range(0, largest, p.chunk_size):
            for attack, systems, limit in (("autoattack", p.autoattack_systems(), p.autoattack_examples),
                                           ("report", p.report_systems(), p.report_examples)):
                if start >= limit:
                    continue
                stop = min(start + p.chunk_size, limit)
                for system in systems:
                    jobs.append(self._attack_job(system, attack, start, stop, dataset_name))
        return jobs

    def defence_jobs(self) -> list[Job]:
        """Phase 1 of the defences: the selector (trained against the system it defends) and the mixtures' choice on
        validation, both after the co-trained run."""
        p = self.preset
        selector = Job("train/selector", "hf_advsoup.study.tasks:run_script", {
            "script": str(self.cotrain_script.parent / "train_selector.py"),
            "argv": ["--model_name_or_path", str(self.run_dir("cotrained")), "--dataset_name", self._dataset_name(),
                     "--output_dir", str(self.run_dir("selector")), "--overwrite_output_dir", "--seed",
                     str(p.seed), "--report_to", "none", "--disable_tqdm", "true", *p.selector_argv],
        }, str(self.run_dir("selector")), deps=("train/cotrained",))
        choose = Job("choose/mix", f"{TASKS}:choose_mix", {
            "model_dir": str(self.run_dir("cotrained")), "dataset_name": self._dataset_name(),
            "examples": p.defence_validation_examples, "epsilon": p.epsilon, "floors": list(p.mix_floors),
            "seed": p.seed, "attack_steps": p.defence_attack_steps,
        }, str(self.work_dir / "eval" / "choose_mix"), deps=("train/cotrained",))
        return [selector, choose]

    def defence_systems(self) -> list[dict[str, Any]]:
        """The systems of phase 2: auto, the chosen mixtures, every soup of the sweep, the ensembles."""
        p = self.preset
        chosen = self.records["choose/mix"]["result"]["chosen"]
        mixes = list({json.dumps(c["config"], sort_keys=True): c["config"] for c in chosen if c["config"]}.values())
        return ([{"family": "auto"}] + [{"family": "mix", "mix": mix} for mix in mixes]
                + [{"family": "soup", "beta": b} for b in sorted(p.betas, reverse=True)]
                + [{"family": "ensemble", "beta": b} for b in p.ensemble_betas])

    def defence_chunk_jobs(self) -> list[Job]:
        """Phase 2 of the defences: every system under the adaptive attacks, chunk by chunk of test images."""
        p = self.preset
        systems = self.defence_systems()
        jobs = []
        for start in range(0, p.defence_examples, p.defence_chunk_size):
            stop = min(start + p.defence_chunk_size, p.defence_examples)
            jobs.append(Job(f"defences/{start:05d}-{stop:05d}", f"{TASKS}:defend", {
                "model_dir": str(self.run_dir("cotrained")), "selector_dir": str(self.run_dir("selector")),
                "dataset_name": self._dataset_name(), "start": start, "stop": stop, "epsilon": p.epsilon,
                "seed": p.seed, "systems": systems, "attack_steps": p.defence_attack_steps,
                "autoattack_attacks": list(p.defence_autoattack_attacks),
            }, str(self.work_dir / "eval" / "defences" / f"{start:05d}-{stop:05d}"),
                deps=("train/cotrained", "train/selector", "choose/mix")))
        return jobs

    def _attack_job(self, system: System, attack: str, start: int, stop: int, dataset_name: str) -> Job:
        p = self.preset
        where = f"{attack}/{system.key}/{start:05d}-{stop:05d}"
        steps = 3 if p.quick_mode and attack != "autoattack" else None
        return Job(where, f"{TASKS}:attack", {
            "model_dir": str(self.run_dir(system.run)), "dataset_name": dataset_name, "beta": system.beta,
            "attack": attack, "epsilon": p.epsilon, "start": start, "stop": stop, "seed": p.seed,
            "attack_steps": steps, "autoattack_attacks": list(p.autoattack_attacks) if attack == "autoattack" else [],
        }, str(self.work_dir / "eval" / where), deps=(f"train/{system.run}",))

    # ----------------------------------------------------------------------------------------------- the run
    def run(self) -> dict[str, Any]:
        self.check()
        began = time.perf_counter()
        jobs = self.train_jobs() + ([] if self.args.stage == "train" else self.eval_jobs())
        defences = self.args.defences and self.args.stage != "train"
        if defences:
            jobs += self.defence_jobs()
        logger.info("Flagship %s: %d jobs (%d trainings), %d at a time; work in %s", self.preset.name, len(jobs),
                    len(self.preset.runs), self.args.jobs, self.work_dir)
        self.records = run_jobs(jobs, workers=self.args.jobs, log_dir=self.work_dir / "logs")
        if defences:  # phase 2: the systems depend on the mixtures chosen in phase 1
            jobs += self.defence_chunk_jobs()
            self.records = run_jobs(jobs, workers=self.args.jobs, log_dir=self.work_dir / "logs")
        elapsed = time.perf_counter() - began
        stages = self.stage_times()
        for stage, seconds in stages.items():
            print(f"{stage:40s} {format_duration(seconds)}")
        print(f"{'this invocation (wall)':40s} {format_duration(elapsed)}")
        if self.args.stage == "train":
            return {"stages": stages, "invocation_wall_s": elapsed}
        from .card import collect, write_folder

        results = collect(self)
        results["timings"] = {"stages": stages, "last_invocation_wall_s": elapsed}
        write_folder(self, results)
        print(f"Model folder: {self.output_dir} (card {self.output_dir / 'README.md'})")
        return results

    def stage_times(self) -> dict[str, float]:
        """Wall time of each training run, and the summed wall time of the jobs of each evaluation (job times add
        up to core time: two jobs ran at once)."""
        out: dict[str, float] = {}
        for name, record in self.records.items():
            kind, _, rest = name.partition("/")
            if kind == "train":
                out[f"training {rest} (wall)"] = record["wall_time_s"]
            elif kind == "choose":
                out["choosing the mixtures on validation"] = record["wall_time_s"]
            else:
                key = f"evaluation: {kind} (sum of jobs)"
                out[key] = out.get(key, 0.0) + record["wall_time_s"]
        return out

    def machine(self) -> str:
        import torch

        return (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {self.args.jobs} job(s) at "
                "a time, one thread each")


def run_flagship(args: FlagshipArguments, preset: FlagshipPreset | None = None,
                 command: str | None = None) -> dict[str, Any]:
    """Run the flagship of ``args`` (or ``preset``: tests pass a minuscule one); with ``--stage report_only`` only
    rewrite the card from ``results.json``. Returns the results dictionary."""
    preset = preset or get_flagship_preset(args.preset, quick=args.quick)
    if args.stage == "report_only":
        from .card import rewrite_card

        return rewrite_card(Path(args.output_dir or preset.output_dir))
    return Flagship(preset, args, command).run()


def copy_model_files(source: Path, destination: Path) -> list[str]:
    """Copy the co-trained model's files (weights, config, processor, remote code) from its run folder."""
    destination.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in MODEL_FILES + REMOTE_CODE:
        if (source / name).is_file():
            shutil.copy2(source / name, destination / name)
            copied.append(name)
    missing = [name for name in MODEL_FILES if name not in copied]
    if missing:
        raise FileNotFoundError(f"The co-trained run {source} has no {', '.join(missing)}: did its training finish?")
    return copied


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
