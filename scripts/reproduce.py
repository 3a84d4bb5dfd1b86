#!/usr/bin/env python
"""Reproduce, in small, the qualitative claims of "Revisiting adapters with adversarial training" (Rebuffi, Croce &
Gowal, ICLR 2023) on a 2-core CPU, and write the report as the model card of the co-trained digits model.

Sections (``--sections``, run in this order; each reuses the runs of the previous ones):

- ``epsilon``: a short sweep that chooses the l_inf radius for the data set (the paper's 4/255 is for natural
  images); the rule is :func:`choose_epsilon`.
- ``table1``: Table 1 in small: nominal training, adversarial training, fully shared co-training and co-training
  with each adapter type; clean accuracy in clean mode, robust accuracy (PGD-40) in robust mode.
- ``soups``: Table 9 / Figure 4 in small: the soup sweep of the dual-token model vs. ensembles vs. the soup of two
  independently trained networks (the nominal and adversarial runs of Table 1).
- ``table2``: Table 2 in small: PGD-2 vs PGD-5 vs FAST-AT vs N-FGSM as the training attack (plus both one-step
  attacks with their authors' recommended, larger, steps), with catastrophic overfitting detected from the robust
  accuracy monitored at every epoch.
- ``alpha``: Figure 3 in small: a sweep over the co-training weight alpha (alpha = 1 is nominal training, alpha = 0
  adversarial training: the two runs of Table 1).
- ``transfer``: Table 6 in small: pre-train (nominal, adversarial, co-trained) on the first half of the classes
  (digits 0-4), fine-tune on the other half (digits 5-9, new labels, new head) with the ``head`` and ``all``
  strategies; the co-trained token is initialised from robust mode and from clean mode.

Launch (offline; about 30 minutes on 2 CPU cores with the defaults, well under a minute with ``--quick``)::

    OMP_NUM_THREADS=1 python scripts/reproduce.py                      # everything, writes model_cards/digits/
    OMP_NUM_THREADS=1 python scripts/reproduce.py --quick --output_dir /tmp/quick   # a smoke run (minutes)
    python scripts/reproduce.py --sections table1 soups --epsilon 8/255  # a subset, radius given (no sweep)
    python scripts/reproduce.py --dataset_name uoft-cs/cifar10 --image_size 32 --output_dir model_cards/cifar10-small

Training goes through ``scripts/cotrain.py`` (``main(argv)``) and ``hf_advsoup.transfer.run_transfer``; robust
accuracy through ``hf_advsoup.evaluation.evaluate_robustness`` with the library's ``pgd40`` preset; the soups
through ``hf_advsoup.soups.evaluate_soups`` and ``hf_advsoup.plots``. No second training loop, no second attack.

Outputs in ``--output_dir``: ``README.md`` (the card: setup, one table per claim, plots, "what we see vs. the
paper", all generated from the numbers), ``results.json`` (every number with its settings, seeds and timings),
``soup_results.{json,csv,md}``, and the PNG plots. Checkpoints stay in ``--work_dir`` (default ``runs/reproduce``,
ignored by git); a finished run is reused when the script is run again with the same arguments.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser

logger = logging.getLogger("reproduce")

SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS_DIR.parent
SECTIONS = ("epsilon", "table1", "soups", "table2", "alpha", "transfer")
ADAPTERS = ("cls_token", "layernorm", "pos_embed", "patch_embed")
ADAPTER_TITLES = {
    "cls_token": "classification token",
    "layernorm": "normalization layers",
    "pos_embed": "position embedding",
    "patch_embed": "patch embedder",
}


# ----------------------------------------------------------------------------------------------------- arguments
@dataclass
class ReproduceArguments:
    """What to reproduce, at which scale, and where to write the report. Defaults: the full study on the embedded
    digits (about 30 minutes on 2 CPU cores with ``OMP_NUM_THREADS=1``)."""

    output_dir: str = field(
        default="model_cards/digits",
        metadata={"help": "Where the report (README.md card, results.json, plots) is written."},
    )
    work_dir: str | None = field(
        default=None,
        metadata={"help": "Checkpoints and per-run logs (not part of the report). Default: runs/reproduce "
                  "(runs/reproduce_quick with --quick), ignored by git."},
    )
    quick: bool = field(
        default=False,
        metadata={"help": "A smoke run at a minuscule scale (2 epochs, 2-layer width-32 ViT, 256 training images, "
                  "PGD-40 shortened to 5 steps on 32 images, 3 betas, 3 alphas): minutes, numbers meaningless."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of every training run, data order and attack."})
    sections: list[str] = field(
        default_factory=lambda: list(SECTIONS),
        metadata={"help": f"Sections to run, any of: {', '.join(SECTIONS)}. Default: all."},
    )
    dataset_name: str = field(
        default="digits",
        metadata={"help": "The embedded 'digits' (offline) or any data set hf_advsoup.data.load_image_dataset "
                  "accepts (a preset such as cifar10, a Hub id, a local folder; needs the network for the Hub)."},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Input size in pixels. Default: the preset's (digits: 16), else 32."}
    )
    epsilon: str | None = field(
        default=None,
        metadata={"help": "l_inf radius in [0, 1] pixel units (e.g. 8/255) for training and evaluation. Given: the "
                  "epsilon sweep is skipped. Default: chosen by the sweep (8/255 if the sweep is not run)."},
    )
    epsilon_grid: list[str] = field(
        default_factory=lambda: ["4/255", "8/255", "16/255"],
        metadata={"help": "Radii of the epsilon sweep (one adversarial training run each)."},
    )
    num_train_epochs: int | None = field(
        default=None, metadata={"help": "Epochs of every training run. Default: 30 (the digits recipe); quick: 2."}
    )
    hidden_size: int | None = field(default=None, metadata={"help": "ViT width. Default 64 (quick: 32)."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "ViT depth. Default 4 (quick: 2)."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Heads. Default 4 (quick: 2)."})
    intermediate_size: int | None = field(default=None, metadata={"help": "MLP width. Default 128 (quick: 64)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a random subset of this many images. Default: all (quick: 256)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on a random subset of the validation split. Default: all (quick: "
                                "96)."}
    )
    robust_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Robust accuracy (PGD-40) on the first N validation images. Default: all (quick: 32)."},
    )
    attack_steps: int | None = field(
        default=None, metadata={"help": "Override PGD-40's 40 steps (quick: 5). Default: the preset's 40."}
    )
    monitor_samples: int = field(
        default=128,
        metadata={"help": "Robust accuracy monitored after every epoch (PGD with --monitor_steps steps) on this many "
                  "validation images: the catastrophic-overfitting detector of Table 2."},
    )
    monitor_steps: int = field(default=10, metadata={"help": "Steps of the monitoring attack (Adam PGD)."})
    soup_betas: list[float] | None = field(
        default=None, metadata={"help": "Soup/ensemble betas. Default 0, 0.1, ..., 1 (quick: 0, 0.5, 1)."}
    )
    alphas: list[float] | None = field(
        default=None,
        metadata={"help": "Co-training weights of the alpha sweep. Default 0, 0.2, 0.4, 0.5, 0.6, 0.8, 1 (quick: "
                  "0, 0.5, 1)."},
    )
    transfer_steps: int | None = field(
        default=None, metadata={"help": "Fine-tuning steps of each transfer run. Default 300 (quick: 10)."}
    )
    transfer_strategies: list[str] = field(
        default_factory=lambda: ["head", "all"], metadata={"help": "Fine-tuning strategies of the transfer section."}
    )
    reuse_runs: bool = field(
        default=True,
        metadata={"help": "Reuse a finished run of --work_dir trained with the same arguments (its recorded wall "
                  "time is reported, and the report says it was reused)."},
    )
    report_only: bool = field(
        default=False,
        metadata={"help": "Rewrite README.md from --output_dir/results.json (and soup_results.json) without training "
                  "or evaluating anything (after a change of the report's wording)."},
    )
    threads: int = field(
        default=1,
        metadata={"help": "torch threads. 1 is fastest for these tiny models on a shared 2-core machine."},
    )

    def __post_init__(self) -> None:
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f"Unknown sections {unknown}; valid sections: {', '.join(SECTIONS)}.")
        quick = {
            "num_train_epochs": 2, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "max_train_samples": 256, "max_eval_samples": 96, "robust_eval_samples": 32,
            "attack_steps": 5, "soup_betas": [0.0, 0.5, 1.0], "alphas": [0.0, 0.5, 1.0], "transfer_steps": 10,
        }
        full = {
            "num_train_epochs": 30, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
            "intermediate_size": 128, "max_train_samples": None, "max_eval_samples": None,
            "robust_eval_samples": None, "attack_steps": None,
            "soup_betas": [round(0.1 * i, 1) for i in range(11)], "alphas": [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0],
            "transfer_steps": 300,
        }
        for key, value in (quick if self.quick else full).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.quick:
            self.monitor_samples = min(self.monitor_samples, 32)
            self.monitor_steps = min(self.monitor_steps, 3)
            if len(self.epsilon_grid) > 2:
                self.epsilon_grid = self.epsilon_grid[1:3]
        if self.work_dir is None:
            self.work_dir = "runs/reproduce_quick" if self.quick else "runs/reproduce"
        if not self.sections:
            raise ValueError(f"--sections is empty; choose among {', '.join(SECTIONS)}.")


@dataclass
class RunSpec:
    """One training run of the study (a call of ``scripts/cotrain.py``)."""

    name: str
    title: str
    alpha: float
    adapter: str
    epsilon: str | None = None
    train_attack: str = "pgd2"
    step_size_factor: float | None = None  # training step size as a multiple of epsilon; None: the preset's
    dataset: str | None = None  # a local save_to_disk folder (transfer pre-training); None: the study's data set


# ----------------------------------------------------------------------------------------------------- helpers
def parse_eps(text: str) -> float:
    from hf_advsoup.attacks import parse_epsilon

    return float(parse_epsilon(text, "linf"))


def eps_slug(text: str) -> str:
    """``"8/255"`` -> ``"eps8"`` (names of runs)."""
    value = parse_eps(text) * 255
    return f"eps{value:g}".replace(".", "p")


def pct(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def points(a: float, b: float) -> str:
    """``a - b`` in percentage points, one decimal."""
    return f"{100 * abs(a - b):.1f} points"


def fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def catastrophic_overfitting(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Catastrophic overfitting from the robust accuracy monitored after every epoch.

    A *drop* is the event the library's detector (:class:`hf_advsoup.trainer.CatastrophicOverfittingCallback`)
    warns about: a value below ``catastrophic_overfitting_drop`` (0.5) times the best so far, once the best exceeded
    ``catastrophic_overfitting_min_best`` (0.05); the defaults are read from :class:`CoTrainingArguments`. The
    report calls it catastrophic overfitting (``detected``) only when the robustness is not regained: the last
    monitored value is still below ``drop`` times the best of the run (the paper's Figures 6 and 10). A drop that
    recovers (e.g. early in training, near chance level) is reported as ``transient``.

    Returns ``{"monitored", "detected", "transient", "epoch", "best_before", "after", "best", "final", ...}``.
    """
    from hf_advsoup.training_args import CoTrainingArguments

    fields = CoTrainingArguments.__dataclass_fields__
    drop = fields["catastrophic_overfitting_drop"].default
    min_best = fields["catastrophic_overfitting_min_best"].default
    series = [(h.get("epoch"), h["eval_robust_accuracy"]) for h in history if "eval_robust_accuracy" in h]
    out: dict[str, Any] = {"detected": False, "transient": False, "monitored": bool(series), "drop": drop,
                           "min_best": min_best, "final": series[-1][1] if series else None,
                           "best": max((v for _, v in series), default=None)}
    best = -1.0
    for epoch, value in series:
        if best > min_best and value < drop * best:
            collapsed = out["final"] < drop * out["best"]
            out.update(detected=collapsed, transient=not collapsed, epoch=epoch, best_before=best, after=value)
            break
        best = max(best, value)
    return out


RECIPE_KEYS = {
    "model_args": ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
                   "patch_stride", "pooling", "drop_path_rate", "image_size"),
    "data_args": ("random_resized_crop", "crop_min_scale", "horizontal_flip"),
    "augmentation_args": ("randaugment_num_layers", "mixup_alpha", "cutmix_alpha"),
    "training_args": ("num_train_epochs", "per_device_train_batch_size", "optim", "adam_beta1", "adam_beta2",
                      "base_learning_rate", "learning_rate", "lr_scheduler_type", "warmup_epochs", "weight_decay",
                      "label_smoothing_factor", "ema_decay", "max_grad_norm"),
}


def recipe_of(run_dir: Path) -> dict[str, Any]:
    """The settings shared by the study's runs, read from the ``run_args.json`` that ``scripts/cotrain.py`` writes
    (so the report states what was run, not what we believe the defaults are)."""
    path = Path(run_dir) / "run_args.json"
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    return {key: saved.get(group, {}).get(key) for group, keys in RECIPE_KEYS.items() for key in keys}


def describe_recipe(r: dict[str, Any]) -> tuple[str, str]:
    """(model row, training row) of the report's setup table from :func:`recipe_of`."""
    model = (f"ViT, hidden {r['hidden_size']}, {r['num_hidden_layers']} layers, {r['num_attention_heads']} heads, "
             f"MLP {r['intermediate_size']}, patch {r['patch_size']}"
             + (f" stride {r['patch_stride']}" if r.get("patch_stride") else "")
             + f", {r['pooling']}-pooled head, stochastic depth {r['drop_path_rate']:g}, {r['image_size']}x"
             f"{r['image_size']} inputs")
    crops = (f"random resized crops (min scale {r['crop_min_scale']:g})" if r["random_resized_crop"] else "no crops")
    training = (f"{r['num_train_epochs']:g} epochs, batch {r['per_device_train_batch_size']}, {r['optim']} (betas "
                f"{r['adam_beta1']:g}, {r['adam_beta2']:g}), lr {r['learning_rate']:g} (base {r['base_learning_rate']:g}"
                f" per 256), {r['lr_scheduler_type']} schedule with {r['warmup_epochs']:g} warm-up epoch(s), weight "
                f"decay {r['weight_decay']:g}, label smoothing {r['label_smoothing_factor']:g}, gradient clipping "
                f"{r['max_grad_norm']:g}, EMA {r['ema_decay']:g} (evaluated and saved), {crops}, "
                f"{'horizontal flips' if r['horizontal_flip'] else 'no flips'}, RandAugment layers "
                f"{r['randaugment_num_layers']}, mixup {r['mixup_alpha']:g}, CutMix {r['cutmix_alpha']:g}; "
                "co-training attack PGD-2 unless stated")
    return model, training


def describe_attack(config) -> str:
    """``pgd40`` as configured: optimiser step and decay, from the :class:`AttackConfig` itself."""
    decay = getattr(config, "lr_decay_steps", None)
    return (f"PGD-{config.steps} (`pgd40` preset, {config.steps} steps, Adam step {config.step_size:g}"
            + (f" decayed 10x at steps {', '.join(str(d) for d in decay)}" if decay else "")
            + f", {'random start' if config.random_start else 'no random start'})")


def class_subset(dataset_dict, classes: list[int]):
    """The examples whose label is in ``classes``, relabelled ``0..len(classes)-1`` with the original names.

    Used by the transfer section (pre-train on the first half of the classes, transfer to the second half)."""
    import datasets

    names = dataset_dict["train"].features["label"].names
    keep = set(classes)
    mapping = {c: i for i, c in enumerate(classes)}
    label = datasets.ClassLabel(names=[names[c] for c in classes])
    out = {}
    for split, ds in dataset_dict.items():
        ds = ds.filter(lambda y: y in keep, input_columns="label")
        ds = ds.map(lambda y: {"label": mapping[y]}, input_columns="label")
        out[split] = ds.cast_column("label", label)
    return datasets.DatasetDict(out)


def pareto_front(points_: dict[float, tuple[float, float]]) -> list[float]:
    """Keys whose (clean, robust) pair no other pair dominates (>= in both, > in one)."""
    front = []
    for key, (c, r) in points_.items():
        dominated = any(c2 >= c and r2 >= r and (c2 > c or r2 > r) for k2, (c2, r2) in points_.items() if k2 != key)
        if not dominated:
            front.append(key)
    return sorted(front)


# ----------------------------------------------------------------------------------------------------- the study
class Study:
    """Trains (or reuses) the runs, evaluates them, and accumulates the results of each section."""

    def __init__(self, args: ReproduceArguments):
        self.args = args
        self.work_dir = Path(args.work_dir)
        self.output_dir = Path(args.output_dir)
        self.results: dict[str, Any] = {"sections": {}, "runs": {}, "timings": {}}
        self.epsilon: str | None = args.epsilon
        self._eval_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._run_evals: dict[str, dict[str, Any]] = {}
        self._datasets: dict[str, Any] = {}

    # -------------------------------------------------------------- data
    def image_size(self) -> int:
        from hf_advsoup.data import find_preset

        if self.args.image_size is not None:
            return self.args.image_size
        preset = find_preset(self.args.dataset_name)
        return preset.image_size if preset is not None and preset.image_size else 32

    def load_dataset(self):
        """The study's data set (canonical layout), loaded once."""
        from hf_advsoup.data import DataArguments, load_image_dataset

        if "full" not in self._datasets:
            self._datasets["full"] = load_image_dataset(DataArguments(
                dataset_name=self.args.dataset_name, max_train_samples=self.args.max_train_samples,
                max_eval_samples=self.args.max_eval_samples,
            ))
        return self._datasets["full"]

    def class_halves(self) -> tuple[list[int], list[int]]:
        n = self.load_dataset()["train"].features["label"].num_classes
        first = list(range((n + 1) // 2))
        return first, list(range(len(first), n))

    def eval_tensors(self, key: str, processor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized validation images and labels (``key``: ``"all"``, ``"first"`` or ``"second"`` half of the
        classes), through the evaluation transform of ``processor``."""
        from hf_advsoup.data import build_transforms, collate_fn

        if key not in self._eval_cache:
            data = self.load_dataset()
            if key != "all":
                first, second = self.class_halves()
                data = class_subset(data, first if key == "first" else second)
            split = data["validation"]
            split = split.with_transform(build_transforms(processor, train=False))
            batch = collate_fn([split[i] for i in range(len(split))])
            self._eval_cache[key] = (batch["pixel_values"], batch["labels"])
        return self._eval_cache[key]

    def first_half_dataset_path(self) -> str:
        """The first half of the classes, saved with ``save_to_disk`` for ``scripts/cotrain.py``."""
        first, _ = self.class_halves()
        slug = "".join(c if c.isalnum() else "_" for c in self.args.dataset_name)
        path = self.work_dir / "data" / f"{slug}_classes_{first[0]}-{first[-1]}_seed{self.args.seed}"
        if not (path / "dataset_dict.json").exists():
            subset = class_subset(self.load_dataset(), first)
            path.parent.mkdir(parents=True, exist_ok=True)
            subset.save_to_disk(str(path))
        return str(path)

    # -------------------------------------------------------------- training
    def cotrain_argv(self, spec: RunSpec, output_dir: Path) -> list[str]:
        a = self.args
        eps = spec.epsilon or self.epsilon or "8/255"
        argv = [
            "--output_dir", str(output_dir),
            "--dataset_name", spec.dataset or a.dataset_name,
            "--image_size", str(self.image_size()),
            "--seed", str(a.seed),
            "--num_train_epochs", str(a.num_train_epochs),
            "--hidden_size", str(a.hidden_size),
            "--num_hidden_layers", str(a.num_hidden_layers),
            "--num_attention_heads", str(a.num_attention_heads),
            "--intermediate_size", str(a.intermediate_size),
            "--adapter", spec.adapter,
            "--alpha", f"{spec.alpha:g}",
            "--robust_eval_samples", str(a.monitor_samples if spec.alpha < 1 else 0),
            "--eval_strategy", "epoch",
            "--save_strategy", "no",
            "--logging_strategy", "epoch",
            "--log_level", "warning",
            "--disable_tqdm", "true",
            "--report_to", "none",
        ]
        if spec.alpha < 1:  # a nominal run computes no attack: its arguments do not depend on the radius
            argv += ["--train_attack", spec.train_attack, "--train_epsilon", eps, "--eval_epsilon", eps,
                     "--eval_attack_steps", str(a.monitor_steps)]
        if spec.step_size_factor is not None:
            argv += ["--train_attack_step_size", repr(spec.step_size_factor * parse_eps(eps))]
        if spec.dataset is None:
            if a.max_train_samples is not None:
                argv += ["--max_train_samples", str(a.max_train_samples)]
            if a.max_eval_samples is not None:
                argv += ["--max_eval_samples", str(a.max_eval_samples)]
        return argv

    def train(self, spec: RunSpec) -> dict[str, Any]:
        """Train ``spec`` with ``scripts/cotrain.py`` (or reuse it), return its record (argv, wall time, the
        per-epoch monitoring history, catastrophic overfitting)."""
        if spec.name in self.results["runs"]:
            return self.results["runs"][spec.name]
        output_dir = self.work_dir / "runs" / spec.name
        argv = self.cotrain_argv(spec, output_dir)
        record_path = output_dir / "study_run.json"
        if self.args.reuse_runs and record_path.exists():
            record = json.loads(record_path.read_text())
            if record.get("argv") == argv:
                logger.info("Reusing run %s (%s, trained in %s)", spec.name, spec.title,
                            fmt_seconds(record["wall_time_s"]))
                record["reused"] = True
                self.results["runs"][spec.name] = record
                return record
        if output_dir.exists():
            shutil.rmtree(output_dir)
        logger.info("Training %s: %s (alpha=%g, adapter=%s, attack=%s, eps=%s, %d epochs)", spec.name, spec.title,
                    spec.alpha, spec.adapter, spec.train_attack if spec.alpha < 1 else "none",
                    (spec.epsilon or self.epsilon) if spec.alpha < 1 else "-", self.args.num_train_epochs)
        sys.path.insert(0, str(SCRIPTS_DIR))
        try:
            import cotrain
        finally:
            sys.path.remove(str(SCRIPTS_DIR))
        start = time.perf_counter()
        cotrain.main(argv)
        wall = time.perf_counter() - start
        state = json.loads((output_dir / "trainer_state.json").read_text())
        history = [
            {k: v for k, v in entry.items() if k in ("epoch", "eval_clean_accuracy", "eval_robust_accuracy",
                                                     "eval_robust_mode_clean_accuracy", "loss", "clean_loss",
                                                     "adversarial_loss")}
            for entry in state.get("log_history", [])
        ]
        record = {
            "name": spec.name, "title": spec.title, "spec": dataclasses.asdict(spec), "argv": argv,
            "wall_time_s": wall, "history": history, "recipe": recipe_of(output_dir),
            "catastrophic_overfitting": catastrophic_overfitting(history), "reused": False,
        }
        record_path.write_text(json.dumps(record, indent=2))
        logger.info("Trained %s in %s", spec.name, fmt_seconds(wall))
        self.results["runs"][spec.name] = record
        return record

    def model_dir(self, name: str) -> Path:
        return self.work_dir / "runs" / name

    def load_model(self, name: str):
        from transformers import AutoImageProcessor

        from hf_advsoup import AdvSoupViTForImageClassification

        path = self.model_dir(name)
        model = AdvSoupViTForImageClassification.from_pretrained(path).eval()
        return model, AutoImageProcessor.from_pretrained(path)

    # -------------------------------------------------------------- evaluation
    def attack(self, epsilon: str):
        from hf_advsoup.attacks import AttackConfig

        overrides = {"epsilon": epsilon}
        if self.args.attack_steps is not None:
            overrides["steps"] = self.args.attack_steps
        return AttackConfig.from_preset("pgd40", **overrides)

    def evaluate(self, name: str, data_key: str = "all", epsilons: list[str] | None = None) -> dict[str, Any]:
        """Clean accuracy in clean mode (beta=1) and in robust mode (beta=0) on the whole validation split, and
        robust accuracy in robust mode under PGD-40 at each of ``epsilons`` (default: the study's) on the first
        ``robust_eval_samples`` images. Single-copy models (adapter 'none') ignore beta."""
        from hf_advsoup.attacks import Normalization
        from hf_advsoup.evaluation import evaluate_robustness

        epsilons = epsilons or [self.epsilon]
        key = f"{name}|{data_key}|{','.join(epsilons)}"
        if key in self._run_evals:
            return self._run_evals[key]
        model, processor = self.load_model(name)
        x, y = self.eval_tensors(data_key, processor)
        correct = {1.0: 0, 0.0: 0}
        with torch.no_grad():
            for i in range(0, x.shape[0], 256):
                for beta in correct:
                    logits = model(pixel_values=x[i : i + 256], beta=beta).logits
                    correct[beta] += int((logits.argmax(-1) == y[i : i + 256]).sum())
        n_robust = x.shape[0] if self.args.robust_eval_samples is None else min(self.args.robust_eval_samples,
                                                                                 x.shape[0])
        start = time.perf_counter()
        attacks = [self.attack(e) for e in epsilons]
        result = evaluate_robustness(
            model, x[:n_robust], y[:n_robust], attacks, normalization=Normalization.from_processor(processor),
            forward_kwargs={"beta": 0.0}, seed=self.args.seed, show_progress=False,
        )
        robust = dict(zip(epsilons, result.attack_accuracies.values()))
        out = {
            "clean_accuracy_clean_mode": correct[1.0] / x.shape[0],
            "clean_accuracy_robust_mode": correct[0.0] / x.shape[0],
            "robust_accuracy_robust_mode": robust[epsilons[0]],
            "robust_accuracy_by_epsilon": robust,
            "num_clean_examples": int(x.shape[0]),
            "num_robust_examples": int(n_robust),
            "attack": result.attacks[0] if result.attacks else None,
            "num_parameters": int(model.num_parameters()),
            "adapter": model.config.adapter,
            "eval_time_s": time.perf_counter() - start,
        }
        logger.info("Evaluated %s: clean %s (clean mode), robust %s (robust mode, PGD-%s at %s, %d images)", name,
                    pct(out["clean_accuracy_clean_mode"]), pct(out["robust_accuracy_robust_mode"]),
                    attacks[0].steps, epsilons[0], n_robust)
        self._run_evals[key] = out
        return out

    # -------------------------------------------------------------- run specs shared by sections
    def nominal_spec(self, dataset: str | None = None, suffix: str = "") -> RunSpec:
        return RunSpec(f"nominal{suffix}", "Nominal training", 1.0, "none", dataset=dataset)

    def adversarial_spec(self, epsilon: str | None = None, dataset: str | None = None, suffix: str = "") -> RunSpec:
        eps = epsilon or self.epsilon
        return RunSpec(f"adversarial_{eps_slug(eps)}{suffix}", "Adversarial training (PGD-2)", 0.0, "none",
                       epsilon=eps, dataset=dataset)

    def cotrain_spec(self, adapter: str = "cls_token", alpha: float = 0.5, attack: str = "pgd2",
                     step_size_factor: float | None = None, dataset: str | None = None, suffix: str = "") -> RunSpec:
        eps = self.epsilon
        parts = [adapter if adapter != "none" else "shared"]
        if alpha != 0.5:
            parts.append(f"alpha{alpha:g}")
        if attack != "pgd2":
            parts.append(attack)
        if step_size_factor is not None:
            parts.append(f"step{step_size_factor:g}eps")
        parts.append(eps_slug(eps))
        title = ("Co-training, fully shared (no adapter)" if adapter == "none"
                 else f"Co-training, doubled {ADAPTER_TITLES[adapter]}")
        return RunSpec("_".join(parts) + suffix, title, alpha, adapter, epsilon=eps, train_attack=attack,
                       step_size_factor=step_size_factor, dataset=dataset)

    # -------------------------------------------------------------- sections
    def section_epsilon(self) -> dict[str, Any]:
        """Train nominally once and adversarially at each radius of the grid; choose with :func:`choose_epsilon`."""
        grid = list(self.args.epsilon_grid)
        nominal = self.nominal_spec()
        self.train(nominal)
        rows = []
        for eps in grid:
            # One radius per evaluation, as in the other sections: the attack's random starts (and so the numbers)
            # are then the ones Table 1 reports for the same model and radius.
            nominal_eval = self.evaluate(nominal.name, epsilons=[eps])
            spec = self.adversarial_spec(eps)
            record = self.train(spec)
            adv = self.evaluate(spec.name, epsilons=[eps])
            rows.append({
                "epsilon": eps, "epsilon_value": parse_eps(eps), "run": spec.name,
                "nominal_clean_accuracy": nominal_eval["clean_accuracy_clean_mode"],
                "nominal_robust_accuracy": nominal_eval["robust_accuracy_robust_mode"],
                "adversarial_clean_accuracy": adv["clean_accuracy_clean_mode"],
                "adversarial_robust_accuracy": adv["robust_accuracy_robust_mode"],
                "train_time_s": record["wall_time_s"],
            })
        choice = choose_epsilon(rows)
        self.epsilon = choice["epsilon"]
        logger.info("Chosen epsilon: %s (%s)", self.epsilon, choice["reason"])
        return {"rows": rows, "choice": choice, "nominal_run": nominal.name}

    def section_table1(self) -> dict[str, Any]:
        specs = [self.nominal_spec(), self.adversarial_spec(), self.cotrain_spec("none")]
        specs += [self.cotrain_spec(adapter) for adapter in ADAPTERS]
        rows = []
        single = None
        for spec in specs:
            record = self.train(spec)
            ev = self.evaluate(spec.name)
            if spec.adapter == "none" and single is None:
                single = ev["num_parameters"]
            rows.append({
                "run": spec.name, "setup": spec.title, "adapter": spec.adapter, "alpha": spec.alpha,
                "clean_accuracy": ev["clean_accuracy_clean_mode"], "robust_accuracy": ev["robust_accuracy_robust_mode"],
                "clean_accuracy_robust_mode": ev["clean_accuracy_robust_mode"],
                "num_parameters": ev["num_parameters"],
                "extra_parameters": ev["num_parameters"] - single if single is not None else None,
                "catastrophic_overfitting": record["catastrophic_overfitting"],
                "train_time_s": record["wall_time_s"], "reused": record.get("reused", False),
            })
        return {"rows": rows}

    def section_soups(self) -> dict[str, Any]:
        from hf_advsoup.attacks import Normalization
        from hf_advsoup.plots import plot_all
        from hf_advsoup.soups import SoupEvaluationArguments, evaluate_soups

        names = {"cotrained": self.cotrain_spec(), "nominal": self.nominal_spec(),
                 "adversarial": self.adversarial_spec()}
        for spec in names.values():
            self.train(spec)
        model, processor = self.load_model(names["cotrained"].name)
        nominal, _ = self.load_model(names["nominal"].name)
        adversarial, _ = self.load_model(names["adversarial"].name)
        x, y = self.eval_tensors("all", processor)
        soup_args = SoupEvaluationArguments(
            betas=list(self.args.soup_betas), attack="pgd40", epsilon=self.epsilon, attack_steps=self.args.attack_steps,
            batch_size=128, max_robust_examples=self.args.robust_eval_samples, seed=self.args.seed, progress=True,
        )
        result = evaluate_soups(model, {self.args.dataset_name: (x, y)}, soup_args,
                                normalization=Normalization.from_processor(processor),
                                independent_models=(nominal, adversarial))
        result.settings.update({"cotrained_run": names["cotrained"].name, "nominal_run": names["nominal"].name,
                                "adversarial_run": names["adversarial"].name})
        self.output_dir.mkdir(parents=True, exist_ok=True)
        files = {k: str(Path(v).name) for k, v in result.save(self.output_dir).items()}
        files.update({k: str(Path(v).name) for k, v in plot_all(result, self.output_dir).items()})
        curves = {}
        for family in ("soup", "ensemble", "independent_soup"):
            curves[family] = {
                "clean": result.curve(self.args.dataset_name, family, "clean_accuracy"),
                "robust": result.curve(self.args.dataset_name, family, "robust_accuracy"),
            }
        self._soup_result = result
        return {"curves": curves, "files": files, "selection": result.selection, "runs": {k: v.name for k, v in
                                                                                             names.items()}}

    def section_table2(self) -> dict[str, Any]:
        attacks = [
            ("PGD-2 (the default)", "pgd2", None),
            ("PGD-5", "pgd5", None),
            ("FAST-AT, the paper's reduced step", "fast_at", None),
            ("N-FGSM, the paper's reduced step", "nfgsm", None),
            ("FAST-AT, Wong et al.'s recommended step", "fast_at", 1.25),
            ("N-FGSM, de Jorge et al.'s recommended step", "nfgsm", 1.0),
        ]
        rows = []
        for title, attack, factor in attacks:
            spec = self.cotrain_spec("cls_token", attack=attack, step_size_factor=factor)
            record = self.train(spec)
            ev = self.evaluate(spec.name)
            from hf_advsoup.attacks import AttackConfig

            overrides: dict[str, Any] = {"epsilon": self.epsilon}
            if factor is not None:
                overrides["step_size"] = factor * parse_eps(self.epsilon)
            config = AttackConfig.from_preset(attack, **overrides)
            rows.append({
                "run": spec.name, "attack": title, "preset": attack, "steps": config.steps,
                "step_size": float(config.effective_step_size), "step_over_eps": float(config.effective_step_size)
                / parse_eps(self.epsilon),
                "clean_accuracy": ev["clean_accuracy_clean_mode"], "robust_accuracy": ev["robust_accuracy_robust_mode"],
                "catastrophic_overfitting": record["catastrophic_overfitting"],
                "monitor": [(h.get("epoch"), h["eval_robust_accuracy"]) for h in record["history"]
                            if "eval_robust_accuracy" in h],
                "train_time_s": record["wall_time_s"], "reused": record.get("reused", False),
            })
        self.output_dir.mkdir(parents=True, exist_ok=True)
        plot_monitoring(rows, self.output_dir / "training_attacks.png", self.epsilon, self.args.monitor_steps)
        return {"rows": rows, "plot": "training_attacks.png"}

    def section_alpha(self) -> dict[str, Any]:
        rows = []
        for alpha in self.args.alphas:
            if alpha == 1.0:
                spec = self.nominal_spec()
            elif alpha == 0.0:
                spec = self.adversarial_spec()
            else:
                spec = self.cotrain_spec("cls_token", alpha=alpha)
            record = self.train(spec)
            ev = self.evaluate(spec.name)
            rows.append({"alpha": alpha, "run": spec.name, "clean_accuracy": ev["clean_accuracy_clean_mode"],
                         "robust_accuracy": ev["robust_accuracy_robust_mode"],
                         "train_time_s": record["wall_time_s"], "reused": record.get("reused", False)})
        front = pareto_front({r["alpha"]: (r["clean_accuracy"], r["robust_accuracy"]) for r in rows})
        self.output_dir.mkdir(parents=True, exist_ok=True)
        plot_alpha(rows, front, self.output_dir / "alpha_sweep.png", self.epsilon)
        return {"rows": rows, "pareto_front": front, "plot": "alpha_sweep.png"}

    def section_transfer(self) -> dict[str, Any]:
        from hf_advsoup.data import DataArguments
        from hf_advsoup.training_args import CoTrainingArguments
        from hf_advsoup.transfer import PAPER_RECIPE, TransferArguments, run_transfer

        first, second = self.class_halves()
        path = self.first_half_dataset_path()
        suffix = f"_classes{first[0]}-{first[-1]}"
        sources = {
            "Nominal": self.nominal_spec(dataset=path, suffix=suffix),
            "Adversarial": self.adversarial_spec(dataset=path, suffix=suffix),
            "Co-trained": self.cotrain_spec("cls_token", dataset=path, suffix=suffix),
        }
        pretrain = {}
        for label, spec in sources.items():
            record = self.train(spec)
            ev = self.evaluate(spec.name, data_key="first")
            pretrain[label] = {"run": spec.name, "clean_accuracy": ev["clean_accuracy_clean_mode"],
                               "robust_accuracy": ev["robust_accuracy_robust_mode"],
                               "train_time_s": record["wall_time_s"], "reused": record.get("reused", False)}
        target = class_subset(self.load_dataset(), second)
        columns = [("Nominal", "Nominal", "clean"), ("Adversarial", "Adversarial", "robust"),
                   ("Co-trained, robust mode", "Co-trained", "robust"), ("Co-trained, clean mode", "Co-trained",
                                                                         "clean")]
        steps = self.args.transfer_steps
        # The paper's recipe (appendix C) with fewer steps and a smaller batch; no flips: digits are not symmetric.
        data_defaults = {**PAPER_RECIPE.data_defaults(), "horizontal_flip": False}
        training = {**PAPER_RECIPE.training_defaults(), "max_steps": steps, "warmup_steps": max(1, steps // 10),
                    "per_device_train_batch_size": 64}
        recipe = {k: v for k, v in {**training, **data_defaults}.items() if k not in ("alpha", "robust_eval_samples")}
        training.update({"per_device_eval_batch_size": 256, "eval_strategy": "no", "save_strategy": "no",
                         "logging_strategy": "no", "report_to": "none", "seed": self.args.seed,
                         "disable_tqdm": True, "log_level": "warning"})
        cells = []
        for strategy in self.args.transfer_strategies:
            for column, source, token_init in columns:
                out = self.work_dir / "transfer" / f"{sources[source].name}_{token_init}_{strategy}"
                start = time.perf_counter()
                transfer_args = TransferArguments(model_name_or_path=str(self.model_dir(sources[source].name)),
                                                  token_init=token_init, strategy=strategy)
                data_args = DataArguments(dataset_name=self.args.dataset_name, **data_defaults)
                logger.info("Transfer %s (%s token) -> classes %s-%s, strategy %s, %d steps", source, token_init,
                            second[0], second[-1], strategy, steps)
                info = run_transfer(transfer_args, data_args, CoTrainingArguments(output_dir=str(out), **training),
                                    dataset_dict=target)
                cells.append({"strategy": strategy, "column": column, "source": source, "token_init": token_init,
                              "accuracy": info.metrics["eval_clean_accuracy"],
                              "wall_time_s": time.perf_counter() - start})
                logger.info("  accuracy %s", pct(cells[-1]["accuracy"]))
        return {"source_classes": first, "target_classes": second, "pretrain": pretrain, "cells": cells,
                "columns": [c[0] for c in columns], "strategies": list(self.args.transfer_strategies),
                "steps": steps, "recipe": recipe}


def choose_epsilon(rows: list[dict[str, Any]], max_nominal_robust: float = 0.10,
                   min_clean_ratio: float = 0.90) -> dict[str, Any]:
    """The radius of the study: the **largest** radius of the grid at which (a) the nominally trained model is
    broken (PGD-40 robust accuracy <= ``max_nominal_robust``, as 4/255 breaks nominal ImageNet models) and (b)
    adversarial training keeps at least ``min_clean_ratio`` of the nominal clean accuracy (a mild trade-off, as at
    4/255 on ImageNet: 76.9% vs 82.6% in the paper, a ratio of 0.93), i.e. the hardest threat model still in the
    paper's regime. When no radius meets both, the one with the largest robust-accuracy gain of adversarial over
    nominal training."""
    ok = [r for r in rows if r["nominal_robust_accuracy"] <= max_nominal_robust
          and r["adversarial_clean_accuracy"] >= min_clean_ratio * r["nominal_clean_accuracy"]]
    if ok:
        best = max(ok, key=lambda r: r["epsilon_value"])
        reason = (f"largest radius with nominal robust accuracy <= {100 * max_nominal_robust:g}% and adversarial "
                  f"clean accuracy >= {min_clean_ratio:g} x nominal")
    else:
        best = max(rows, key=lambda r: r["adversarial_robust_accuracy"] - r["nominal_robust_accuracy"])
        reason = ("no radius met both criteria; fallback: largest robust-accuracy gain of adversarial over nominal "
                  "training")
    return {"epsilon": best["epsilon"], "reason": reason, "max_nominal_robust": max_nominal_robust,
            "min_clean_ratio": min_clean_ratio}


# ----------------------------------------------------------------------------------------------------- plots
def _figure(size=(5.5, 4.5)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_alpha(rows: list[dict[str, Any]], front: list[float], path: Path, epsilon: str) -> Path:
    """Figure 3 in small: clean accuracy (clean mode) vs robust accuracy (robust mode), one point per alpha."""
    figure = _figure()
    ax = figure.add_subplot()
    xs = [100 * r["clean_accuracy"] for r in rows]
    ys = [100 * r["robust_accuracy"] for r in rows]
    ax.plot(xs, ys, "o", color="tab:blue", label="co-training (alpha)")
    fr = sorted((r for r in rows if r["alpha"] in front), key=lambda r: r["clean_accuracy"])
    ax.plot([100 * r["clean_accuracy"] for r in fr], [100 * r["robust_accuracy"] for r in fr], "-",
            color="tab:red", alpha=0.6, label="Pareto front")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(f"α={r['alpha']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("clean accuracy, clean mode (%)")
    ax.set_ylabel(f"robust accuracy, robust mode (%), PGD-40 l_inf {epsilon}")
    ax.set_title("Co-training loss weighting (α=1 nominal, α=0 adversarial)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.savefig(path, dpi=120)
    return path


def plot_monitoring(rows: list[dict[str, Any]], path: Path, epsilon: str, steps: int) -> Path:
    """Robust accuracy (robust mode) monitored after every epoch, one line per training attack (Figure 6); a run
    whose robustness collapsed and was not regained (:func:`catastrophic_overfitting`) is labelled so."""
    figure = _figure((6.5, 4.5))
    ax = figure.add_subplot()
    for r in rows:
        if r["monitor"]:
            ax.plot([e for e, _ in r["monitor"]], [100 * v for _, v in r["monitor"]], marker=".",
                    label=r["attack"] + (" [collapsed]" if catastrophic_overfitting(
                        [{"epoch": e, "eval_robust_accuracy": v} for e, v in r["monitor"]])["detected"] else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"robust accuracy, robust mode (%)\nmonitoring PGD-{steps}, l_inf {epsilon}")
    ax.set_title("Robust accuracy during co-training, per training attack", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    figure.savefig(path, dpi=120)
    return path


# ----------------------------------------------------------------------------------------------------- the report
PAPER_CLAIMS = {
    "epsilon": "l_inf 4/255 on natural images, where a nominal model has no robustness and adversarial training costs "
               "a few points of clean accuracy",
    "table1": "co-training with a doubled classification token matches or beats nominal training in clean mode and "
              "nearly matches adversarial training in robust mode; fully shared co-training (no adapter) loses all "
              "robustness",
    "soups": "soups of the two tokens trade clean for robust accuracy smoothly and as well as (or better than) "
             "ensembles at half their cost, while soups of two independently trained networks collapse in between",
    "table2": "PGD-5 is on par with PGD-2; FAST-AT and N-FGSM with the reduced steps lose about 1 point of robust "
              "accuracy; with their authors' recommended steps both overfit catastrophically (no robustness)",
    "alpha": "only alpha between 0 and 0.4 is on the Pareto front; between alpha=1 and 0.4, decreasing alpha "
             "improves both modes",
    "transfer": "fine-tuning all weights from the co-trained model transfers better on average than from nominal or "
                "adversarial pre-training",
}


def _row_by(rows, key, value):
    return next((r for r in rows if r.get(key) == value), None)


def observations(study: Study) -> dict[str, list[str]]:
    """Sentences built by comparing the numbers (never typed by hand), per section."""
    S = study.results["sections"]
    out: dict[str, list[str]] = {}
    if "epsilon" in S:
        s = []
        for r in S["epsilon"]["rows"]:
            cost = r["nominal_clean_accuracy"] - r["adversarial_clean_accuracy"]
            if r["adversarial_clean_accuracy"] < 0.5 * r["nominal_clean_accuracy"]:
                s.append(f"At {r['epsilon']} adversarial training did not learn the task "
                         f"({pct(r['adversarial_clean_accuracy'])} clean accuracy) in this budget.")
            else:
                s.append(f"At {r['epsilon']} the nominal model keeps {pct(r['nominal_robust_accuracy'])} robust "
                         f"accuracy and adversarial training {'costs' if cost > 0 else 'gains'} {points(cost, 0)} of "
                         f"clean accuracy ({pct(r['adversarial_robust_accuracy'])} robust).")
        s.append(f"Chosen: {S['epsilon']['choice']['epsilon']}.")
        out["epsilon"] = s
    if "table1" in S:
        rows = S["table1"]["rows"]
        nominal = _row_by(rows, "alpha", 1.0)
        adv = _row_by(rows, "alpha", 0.0)
        shared = next((r for r in rows if r["adapter"] == "none" and r["alpha"] not in (0.0, 1.0)), None)
        token = next((r for r in rows if r["adapter"] == "cls_token"), None)
        s = []
        if nominal and token:
            d = token["clean_accuracy"] - nominal["clean_accuracy"]
            verdict = "as in the paper" if d >= -0.01 else "unlike the paper, where it matches or beats nominal"
            s.append(f"Co-training with a doubled classification token reached {pct(token['clean_accuracy'])} clean "
                     f"accuracy in clean mode, {points(d, 0)} {'above' if d >= 0 else 'below'} nominal training "
                     f"({pct(nominal['clean_accuracy'])}): {verdict}.")
        if adv and token:
            d = token["robust_accuracy"] - adv["robust_accuracy"]
            if d >= 0:
                verdict = "at least as robust as adversarial training (in the paper it is about 4 points less robust)"
            elif d >= -0.03:
                verdict = "close to adversarial training, as in the paper"
            else:
                verdict = "a larger gap than in the paper (about 4 points on ImageNet)"
            s.append(f"In robust mode it reached {pct(token['robust_accuracy'])} robust accuracy vs "
                     f"{pct(adv['robust_accuracy'])} for adversarial training ({points(d, 0)} "
                     f"{'more' if d >= 0 else 'less'}): {verdict}.")
            if nominal:
                dc = adv["clean_accuracy"] - nominal["clean_accuracy"]
                if dc < -0.01:
                    recovered = token["clean_accuracy"] - adv["clean_accuracy"]
                    s.append(f"Adversarial training cost {points(dc, 0)} of clean accuracy at this radius "
                             f"({pct(adv['clean_accuracy'])}); co-training's clean mode recovers "
                             f"{points(recovered, 0) if recovered > 0 else 'none'} of it.")
                else:
                    s.append(f"At this radius adversarial training did not cost clean accuracy "
                             f"({pct(adv['clean_accuracy'])} vs {pct(nominal['clean_accuracy'])} nominal), so there "
                             "is no clean-accuracy loss for co-training to recover (the paper's main motivation).")
        if shared and token:
            lost = token["robust_accuracy"] - shared["robust_accuracy"]
            if shared["robust_accuracy"] < 0.05:
                verdict = "it loses all robustness, as in the paper"
            elif lost <= 0.03:
                verdict = "it keeps about as much robustness as the dual-token model, unlike the paper (0% robust)"
            else:
                verdict = "it keeps some robustness, unlike the paper (0% robust)"
            s.append(f"Fully shared co-training {'lost' if lost >= 0 else 'gained'} {points(lost, 0)} of robustness "
                     f"relative to the dual-token "
                     f"model ({pct(shared['robust_accuracy'])} vs {pct(token['robust_accuracy'])}): {verdict}"
                     f"{'; catastrophic overfitting was detected during its training' if _co(study, shared)['detected'] else ''}.")
        adapters = [r for r in rows if r["adapter"] in ADAPTERS]
        if adapters:
            best = max(adapters, key=lambda r: r["clean_accuracy"] + r["robust_accuracy"])
            s.append(f"Among the adapters, the best sum of clean and robust accuracy came from the doubled "
                     f"{ADAPTER_TITLES[best['adapter']]} ({pct(best['clean_accuracy'])} / "
                     f"{pct(best['robust_accuracy'])}); the paper prefers the classification token for its 768 "
                     f"parameters.")
        out["table1"] = s
    if "soups" in S:
        c = S["soups"]["curves"]
        s = []
        soup, ens, ind = c["soup"], c["ensemble"], c["independent_soup"]
        inner = [b for b in soup["robust"] if 0 < b < 1 and b in ind.get("robust", {})]
        if inner:
            mid = min(inner, key=lambda b: abs(b - 0.5))
            s.append(f"At beta={mid:g} the soup of the two tokens keeps {pct(soup['clean'][mid])} clean / "
                     f"{pct(soup['robust'][mid])} robust accuracy, while the soup of two independently trained "
                     f"networks gives {pct(ind['clean'][mid])} / {pct(ind['robust'][mid])}"
                     f"{' (it collapses, as in the paper)' if ind['clean'][mid] < 0.5 * soup['clean'][mid] else ' (it does not collapse here, unlike the paper)'}.")
        common = [b for b in soup["robust"] if b in ens.get("robust", {}) and 0 < b < 1]
        if common:
            wins = sum(1 for b in common if soup["clean"][b] + soup["robust"][b] >= ens["clean"][b] + ens["robust"][b])
            s.append(f"Soups matched or beat ensembles (sum of clean and robust accuracy) at {wins} of "
                     f"{len(common)} inner betas, at half the compute"
                     f"{', as in the paper' if wins >= len(common) / 2 else '; in the paper soups are on par with or better than ensembles'}.")
        if soup["robust"]:
            b0, b1 = min(soup["robust"]), max(soup["robust"])
            s.append(f"From beta={b0:g} to beta={b1:g} the soups go from {pct(soup['clean'][b0])} / "
                     f"{pct(soup['robust'][b0])} to {pct(soup['clean'][b1])} / {pct(soup['robust'][b1])} "
                     f"(clean / robust).")
            robust_gap = soup["robust"][b0] - soup["robust"][b1]
            clean_gap = soup["clean"][b1] - soup["clean"][b0]
            if robust_gap < 0.05 and clean_gap < 0.02:
                s.append(f"The two modes barely differ here (the clean mode keeps {pct(soup['robust'][b1])} robust "
                         f"accuracy, the robust mode {pct(soup['clean'][b0])} clean accuracy): the tokens did not "
                         "specialise at this radius and scale, so the soups have no trade-off to traverse, unlike "
                         "the paper, where the clean mode is not robust and the soups trade one for the other.")
            else:
                s.append(f"Going from robust to clean mode trades {points(robust_gap, 0)} of robust accuracy for "
                         f"{points(clean_gap, 0)} of clean accuracy"
                         + (", as in the paper." if robust_gap > 0 and clean_gap > 0 else
                            "; in the paper both change in opposite directions."))
        out["soups"] = s
    if "table2" in S:
        rows = S["table2"]["rows"]
        s = []
        p2 = _row_by(rows, "preset", "pgd2")
        p5 = _row_by(rows, "preset", "pgd5")
        if p2 and p5:
            d = p5["robust_accuracy"] - p2["robust_accuracy"]
            s.append(f"PGD-5 gave {points(d, 0)} {'more' if d >= 0 else 'less'} robust accuracy than PGD-2 "
                     f"({pct(p5['robust_accuracy'])} vs {pct(p2['robust_accuracy'])}; paper: +0.4 points).")
        for r in rows:
            if r["preset"] in ("fast_at", "nfgsm") and p2:
                d = r["robust_accuracy"] - p2["robust_accuracy"]
                co = _co(study, r)
                s.append(f"{r['attack']} ({r['step_over_eps']:.3g} eps): {pct(r['robust_accuracy'])} robust accuracy, {points(d, 0)} "
                         f"{'above' if d >= 0 else 'below'} PGD-2; catastrophic overfitting "
                         + (f"detected at epoch {co['epoch']:g} (monitored robust accuracy {pct(co['best_before'])} "
                            f"-> {pct(co['after'])}, not regained)." if co["detected"] else "not detected."))
        out["table2"] = s
    if "alpha" in S:
        rows, front = S["alpha"]["rows"], S["alpha"]["pareto_front"]
        outside = [a for a in front if a > 0.4]
        s = [f"The Pareto front of (clean accuracy in clean mode, robust accuracy in robust mode) holds alpha = "
             f"{', '.join(f'{a:g}' for a in front)}"
             + (" (within the paper's 0-0.4)." if not outside else
                f"; the paper's front is 0-0.4, here it also holds {', '.join(f'{a:g}' for a in outside)}.")]
        upper = sorted((r for r in rows if r["alpha"] >= 0.4), key=lambda r: -r["alpha"])  # alpha = 1 down to 0.4
        if len(upper) >= 2:
            both = all(b["clean_accuracy"] >= a["clean_accuracy"] and b["robust_accuracy"] >= a["robust_accuracy"]
                       for a, b in zip(upper, upper[1:]))
            ends = (upper[0], upper[-1])
            s.append(f"From alpha={ends[0]['alpha']:g} down to {ends[1]['alpha']:g}, clean accuracy went "
                     f"{pct(ends[0]['clean_accuracy'])} -> {pct(ends[1]['clean_accuracy'])} and robust accuracy "
                     f"{pct(ends[0]['robust_accuracy'])} -> {pct(ends[1]['robust_accuracy'])}; "
                     + ("no decrease of alpha hurt either mode, as in the paper (where both improve)." if both else
                        "some decrease of alpha hurt one of the modes (in the paper both improve)."))
        best_clean = max(rows, key=lambda r: r["clean_accuracy"])
        best_robust = max(rows, key=lambda r: r["robust_accuracy"])
        s.append(f"The best clean accuracy came from alpha={best_clean['alpha']:g} ({pct(best_clean['clean_accuracy'])}), "
                 f"the best robust accuracy from alpha={best_robust['alpha']:g} ({pct(best_robust['robust_accuracy'])}).")
        out["alpha"] = s
    if "transfer" in S:
        T = S["transfer"]
        s = []
        for strategy in T["strategies"]:
            cells = {c["column"]: c["accuracy"] for c in T["cells"] if c["strategy"] == strategy}
            if not cells:
                continue
            best = max(cells, key=cells.get)
            co = max(cells.get("Co-trained, robust mode", -1), cells.get("Co-trained, clean mode", -1))
            base = max(cells.get("Nominal", -1), cells.get("Adversarial", -1))
            if co - base > 0.01:
                verdict = "the co-trained model transfers best, as in the paper"
            elif co - base >= -0.01:
                verdict = "on par with the best baseline (within a point; the paper finds co-training ahead)"
            else:
                verdict = "the co-trained model does not transfer best here, unlike the paper"
            s.append(f"Fine-tuning {'all weights' if strategy == 'all' else 'the ' + strategy}: best from "
                     f"{best} ({pct(cells[best])}); co-trained {pct(co)} vs best baseline {pct(base)}: {verdict}.")
        out["transfer"] = s
    return out


def render_report(study: Study) -> str:
    """The card's markdown (YAML front matter with the measured model-index when the soups were run)."""
    a, R = study.args, study.results
    S = R["sections"]
    obs = observations(study)
    lines: list[str] = []
    soup_result = getattr(study, "_soup_result", None)
    front = None
    try:
        from huggingface_hub import ModelCardData

        from hf_advsoup.hub import DatasetInfo, build_eval_results

        kwargs: dict[str, Any] = dict(library_name="transformers", license="apache-2.0", pipeline_tag="image-classification",
                                      tags=["adversarial-robustness", "model-soups", "adversarial-training",
                                            "vision-transformer", "hf_advsoup", "reproduction"],
                                      metrics=["accuracy"])
        if soup_result is not None:
            kwargs["model_name"] = f"advsoup-vit-{a.dataset_name}-reproduction"
            kwargs["eval_results"] = build_eval_results(
                soup_result, {a.dataset_name: DatasetInfo(a.dataset_name, split="validation")}, families=("soup",))
        front = ModelCardData(**kwargs).to_yaml()
    except Exception as error:  # the card stays readable without the front matter
        logger.warning("No YAML front matter: %s", error)
    if front:
        lines += ["---", front, "---", ""]
    recipe = next((r["recipe"] for r in R["runs"].values() if r.get("recipe") and r["spec"]["dataset"] is None),
                  None)
    model_row, training_row = describe_recipe(recipe) if recipe else ("—", "—")
    lines += [
        f"# Adversarial co-training and soups on {a.dataset_name}, in small: a reproduction study",
        "",
        "The card of the dual-classification-token ViT co-trained on "
        f"`{a.dataset_name}` (the `cls_token` run of Table 1 below), and a small-scale reproduction of the qualitative "
        "claims of *Revisiting adapters with adversarial training* (Rebuffi, Croce & Gowal, ICLR 2023). Every number "
        "on this page was produced by `scripts/reproduce.py` (see `results.json`); the paper's claims are quoted in "
        "words, its numbers are on its pages.",
        "",
        *(["**Quick mode (smoke test scale): the numbers below mean nothing.**", ""] if a.quick else []),
        "## Setup",
        "",
        "| | |",
        "|---|---|",
        f"| command | `{R['command']}` |",
        f"| data | `{a.dataset_name}`: {R['data']['num_train']} training / {R['data']['num_validation']} validation "
        f"images, {R['data']['num_classes']} classes, {study.image_size()}x{study.image_size()} inputs |",
        f"| model | {model_row} |",
        f"| training | {training_row} (`scripts/cotrain.py` with its embedded digits recipe; every run's arguments are "
        "in `results.json`) |",
        f"| epsilon | l_inf {study.epsilon} in [0, 1] pixel units"
        f"{' (chosen by the sweep below)' if 'epsilon' in S else ' (given)'} |",
        f"| clean accuracy | clean mode (beta = 1), all {R['data']['num_validation']} validation images |",
        f"| robust accuracy | robust mode (beta = 0), {describe_attack(study.attack(study.epsilon or '8/255'))}, "
        f"l_inf {study.epsilon}, on the first {R['data']['num_robust']} validation images; a misclassified clean "
        "image counts as not robust |",
        f"| monitoring | after each epoch: robust accuracy with PGD-{a.monitor_steps} on {a.monitor_samples} "
        "validation images (catastrophic-overfitting detector) |",
        f"| seed | {a.seed} (every run, data order, attack) |",
        *([f"| report | rendered again from `results.json` by `python scripts/reproduce.py --report_only` "
           f"({R['rerendered']}); the numbers are those of the run |"] if R.get("rerendered") else []),
        f"| machine | {R['machine']} |",
        f"| wall time | total {fmt_seconds(R['timings'].get('total', 0))}: "
        + ", ".join(f"{k} {fmt_seconds(v)}" for k, v in R["timings"].items() if k != "total") + " |",
        "",
    ]
    reused = [n for n, r in R["runs"].items() if r.get("reused")]
    if reused:
        lines += [f"{len(reused)} run(s) were reused from an earlier invocation with the same arguments "
                  f"({', '.join(reused)}); their recorded training times are shown.", ""]
    if "epsilon" in S:
        E = S["epsilon"]
        lines += ["## Choosing epsilon", "",
                  "One nominal run and one adversarial-training run (PGD-2, `alpha=0`) per radius; PGD-40 robust "
                  "accuracy at that radius. Rule (`choose_epsilon`): " + E["choice"]["reason"] + ".", "",
                  "| epsilon | nominal clean | nominal robust | adversarial clean | adversarial robust | chosen |",
                  "|---|---|---|---|---|---|"]
        for r in E["rows"]:
            lines.append(f"| {r['epsilon']} | {pct(r['nominal_clean_accuracy'])} | {pct(r['nominal_robust_accuracy'])}"
                         f" | {pct(r['adversarial_clean_accuracy'])} | {pct(r['adversarial_robust_accuracy'])} | "
                         f"{'**yes**' if r['epsilon'] == E['choice']['epsilon'] else ''} |")
        lines.append("")
    if "table1" in S:
        lines += ["## Table 1 in small: adapters", "",
                  "| setup | run | extra parameters | clean acc. (clean mode) | robust acc. (robust mode) | clean acc. "
                  "(robust mode) | catastrophic overfitting | train time |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in S["table1"]["rows"]:
            lines.append(f"| {r['setup']} | `{r['run']}` | {r['extra_parameters'] if r['extra_parameters'] is not None else '—'} "
                         f"| {pct(r['clean_accuracy'])} | {pct(r['robust_accuracy'])} | "
                         f"{pct(r['clean_accuracy_robust_mode'])} | {_co_text(_co(study, r))} | "
                         f"{fmt_seconds(r['train_time_s'])} |")
        lines += ["", "Nominal and adversarial training are single networks (no adapter: both modes are the same "
                  "model). Fully shared co-training uses `alpha=0.5` and one copy of every weight.", ""]
        nominal = _row_by(S["table1"]["rows"], "alpha", 1.0)
        sweep = _row_by(S.get("epsilon", {}).get("rows", []), "epsilon", study.epsilon)
        if nominal and sweep and sweep["nominal_robust_accuracy"] != nominal["robust_accuracy"]:
            lines += [f"The nominal model's robust accuracy at {study.epsilon} is {pct(sweep['nominal_robust_accuracy'])}"
                      f" in the epsilon sweep and {pct(nominal['robust_accuracy'])} here: the two evaluations drew "
                      "different random starts for the attack (the sweep attacked every radius in one evaluation).",
                      ""]
    if "soups" in S:
        c = S["soups"]["curves"]
        betas = sorted(set(c["soup"]["clean"]) | set(c["independent_soup"]["clean"]))
        lines += ["## Table 9 / Figure 4 in small: soups, ensembles and the soup of two networks", "",
                  f"The co-trained dual-token model (`{S['soups']['runs']['cotrained']}`) at each beta (1 = clean "
                  "mode, 0 = robust mode); ensembles average the two modes' probabilities (twice the compute); the "
                  f"two-network soup interpolates all weights of the nominal (`{S['soups']['runs']['nominal']}`, "
                  f"beta = 1) and adversarial (`{S['soups']['runs']['adversarial']}`, beta = 0) networks.", "",
                  "| beta | soup clean | soup robust | ensemble clean | ensemble robust | two-network soup clean | "
                  "two-network soup robust |", "|---|---|---|---|---|---|---|"]
        for b in betas:
            lines.append(f"| {b:g} | {pct(c['soup']['clean'].get(b))} | {pct(c['soup']['robust'].get(b))} | "
                         f"{pct(c['ensemble']['clean'].get(b))} | {pct(c['ensemble']['robust'].get(b))} | "
                         f"{pct(c['independent_soup']['clean'].get(b))} | {pct(c['independent_soup']['robust'].get(b))} |")
        files = S["soups"]["files"]
        lines += ["", f"![trade-off]({files.get('tradeoff', 'tradeoff.png')})",
                  f"![accuracy vs beta]({files.get('accuracy_vs_beta', 'accuracy_vs_beta.png')})", "",
                  "All soup numbers with their settings: `soup_results.json`, `soup_results.csv`, `soup_results.md`.",
                  ""]
    if "table2" in S:
        lines += ["## Table 2 in small: the training attack", "",
                  "Co-training with a doubled classification token, `alpha=0.5`, each training attack at "
                  f"{study.epsilon}. Catastrophic overfitting: the monitored robust accuracy fell below "
                  "half its best so far (the rule of the library's detector).", "",
                  "| training attack | steps | step / eps | clean acc. (clean mode) | robust acc. (robust mode) | "
                  "catastrophic overfitting | train time |", "|---|---|---|---|---|---|---|"]
        for r in S["table2"]["rows"]:
            lines.append(f"| {r['attack']} | {r['steps']} | {r['step_over_eps']:.3g} | {pct(r['clean_accuracy'])} | "
                         f"{pct(r['robust_accuracy'])} | {_co_text(_co(study, r))} | "
                         f"{fmt_seconds(r['train_time_s'])} |")
        lines += ["", f"![robust accuracy during training]({S['table2']['plot']})", ""]
    if "alpha" in S:
        lines += ["## Figure 3 in small: the co-training weight alpha", "",
                  "alpha = 1 is nominal training and alpha = 0 adversarial training (the single networks of Table 1); "
                  "in between, co-training with a doubled classification token.", "",
                  "| alpha | clean acc. (clean mode) | robust acc. (robust mode) | on the Pareto front | train time |",
                  "|---|---|---|---|---|"]
        for r in S["alpha"]["rows"]:
            lines.append(f"| {r['alpha']:g} | {pct(r['clean_accuracy'])} | {pct(r['robust_accuracy'])} | "
                         f"{'yes' if r['alpha'] in S['alpha']['pareto_front'] else ''} | {fmt_seconds(r['train_time_s'])} |")
        lines += ["", f"![alpha sweep]({S['alpha']['plot']})", ""]
    if "transfer" in S:
        T = S["transfer"]
        src = "-".join(str(x) for x in (T["source_classes"][0], T["source_classes"][-1]))
        tgt = "-".join(str(x) for x in (T["target_classes"][0], T["target_classes"][-1]))
        lines += ["## Table 6 in small: transfer", "",
                  f"Pre-training on classes {src} (same recipe as above), transfer to classes {tgt} (new labels, "
                  f"new head) with `hf_advsoup.transfer.run_transfer`, the paper's recipe (`PAPER_RECIPE`) with "
                  f"fewer steps, a smaller batch and no flips (digits are not mirror-symmetric): "
                  + ", ".join(f"{k} {v}" for k, v in T["recipe"].items()) +
                  f". Clean accuracy on the validation images of classes {tgt}.", "",
                  "Pre-trained sources on classes " + src + ": " + ", ".join(
                      f"{k} {pct(v['clean_accuracy'])} clean / {pct(v['robust_accuracy'])} robust" for k, v in
                      T["pretrain"].items()) + ".", "",
                  "| strategy | " + " | ".join(T["columns"]) + " |", "|---" * (len(T["columns"]) + 1) + "|"]
        for strategy in T["strategies"]:
            cells = {c["column"]: c["accuracy"] for c in T["cells"] if c["strategy"] == strategy}
            name = {"head": "Fine-tune head", "all": "Fine-tune all", "head+token": "Fine-tune head + cls token"}.get(
                strategy, strategy)
            lines.append(f"| {name} | " + " | ".join(pct(cells.get(col)) for col in T["columns"]) + " |")
        lines.append("")
    lines += ["## What we see vs. the paper", ""]
    titles = {"epsilon": "Epsilon", "table1": "Table 1", "soups": "Table 9 / Figure 4", "table2": "Table 2",
              "alpha": "Figure 3", "transfer": "Table 6"}
    for section in titles:
        if section in obs:
            lines.append(f"- **{titles[section]}** "
                         f"(paper: {PAPER_CLAIMS[section]}). " + " ".join(obs[section]))
    not_run = [s for s in SECTIONS if s not in S]
    if not_run:
        lines += ["", f"Sections not run in this invocation: {', '.join(not_run)}."]
    n_val, n_rob = R["data"]["num_validation"], R["data"]["num_robust"]
    lines += ["", f"Caveats: one seed (--seed {a.seed}); {n_val} validation images (one image is {100 / n_val:.2f} "
              f"points of clean accuracy), robust accuracy on {n_rob} (one image is {100 / n_rob:.2f} points); a "
              f"{study.image_size()}x{study.image_size()} toy data set and a tiny ViT trained for minutes: "
              "differences of a point or two are within noise.", "",
              "## Use the model", "",
              "The checkpoints are not committed (they are rebuilt by the command above in "
              f"`{a.work_dir}/runs/`):", "", "```python",
              "import hf_advsoup  # registers the Auto classes",
              "from transformers import AutoModelForImageClassification",
              f"model = AutoModelForImageClassification.from_pretrained(\"{a.work_dir}/runs/"
              f"{S.get('soups', {}).get('runs', {}).get('cotrained', 'cls_token_' + eps_slug(study.epsilon or '8/255'))}\", "
              "beta=0.5)", "```", ""]
    return "\n".join(lines)


def _co(study: Study, row: dict[str, Any]) -> dict[str, Any]:
    run = study.results["runs"].get(row["run"])
    return catastrophic_overfitting(run["history"]) if run else row["catastrophic_overfitting"]


def _co_text(co: dict[str, Any]) -> str:
    if not co.get("monitored"):
        return "not monitored (no attack)"
    if co["detected"]:
        return (f"**yes**, epoch {co['epoch']:g}: {pct(co['best_before'])} -> {pct(co['after'])}, not regained "
                f"(final {pct(co['final'])})")
    if co.get("transient"):
        return (f"no (transient drop at epoch {co['epoch']:g}: {pct(co['best_before'])} -> {pct(co['after'])}, "
                f"final {pct(co['final'])})")
    return "no"


# ----------------------------------------------------------------------------------------------------- driver
def write_outputs(study: Study) -> None:
    study.output_dir.mkdir(parents=True, exist_ok=True)
    results = dict(study.results)
    results["epsilon"] = study.epsilon
    results["arguments"] = dataclasses.asdict(study.args)
    results["observations"] = observations(study)
    (study.output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (study.output_dir / "README.md").write_text(render_report(study))


def _float_keys(curves: dict[str, Any]) -> dict[str, Any]:
    return {fam: {m: {float(b): v for b, v in c.items()} for m, c in d.items()} for fam, d in curves.items()}


def rewrite_report(output_dir: Path) -> dict[str, Any]:
    """``--report_only``: render README.md again from the saved results (no run, no evaluation)."""
    from hf_advsoup.soups import SoupEvaluation

    saved = json.loads((output_dir / "results.json").read_text())
    arguments = {k: v for k, v in saved["arguments"].items() if k in ReproduceArguments.__dataclass_fields__}
    arguments["output_dir"] = str(output_dir)
    study = Study(ReproduceArguments(**arguments))
    study.epsilon = saved["epsilon"]
    study.results = {k: v for k, v in saved.items() if k not in ("epsilon", "arguments", "observations")}
    study.results["rerendered"] = time.strftime("%Y-%m-%d %H:%M %Z")
    if "soups" in study.results["sections"]:
        study.results["sections"]["soups"]["curves"] = _float_keys(study.results["sections"]["soups"]["curves"])
        if (output_dir / "soup_results.json").exists():
            study._soup_result = SoupEvaluation.load_json(output_dir / "soup_results.json")
    sections = study.results["sections"]
    if "table2" in sections:
        plot_monitoring(sections["table2"]["rows"], output_dir / sections["table2"]["plot"], study.epsilon,
                        study.args.monitor_steps)
    if "alpha" in sections:
        plot_alpha(sections["alpha"]["rows"], sections["alpha"]["pareto_front"], output_dir / sections["alpha"]["plot"],
                   study.epsilon)
    (output_dir / "README.md").write_text(render_report(study))
    logger.info("Rewrote %s and the section plots from results.json", output_dir / "README.md")
    return study.results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the requested sections, write the report after each one, return the results dictionary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = HfArgumentParser(ReproduceArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.report_only:
        return rewrite_report(Path(args.output_dir))
    study = Study(args)
    total_start = time.perf_counter()
    data = study.load_dataset()
    n_val = len(data["validation"])
    study.results.update({
        "command": "python scripts/reproduce.py" + (" " + " ".join(argv) if argv else ""),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)"
                   + (", CUDA available (not used)" if torch.cuda.is_available() else ""),
        "data": {"num_train": len(data["train"]), "num_validation": n_val,
                 "num_classes": data["train"].features["label"].num_classes,
                 "num_robust": n_val if args.robust_eval_samples is None else min(n_val, args.robust_eval_samples)},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    })
    if study.epsilon is None and "epsilon" not in args.sections:
        study.epsilon = "8/255"
        logger.warning("No --epsilon and no epsilon sweep: using 8/255 (the digits recipe's).")
    for section in [s for s in SECTIONS if s in args.sections]:
        if section == "epsilon" and args.epsilon is not None:
            logger.info("--epsilon %s given: skipping the epsilon sweep.", args.epsilon)
            continue
        logger.info("=== Section %s ===", section)
        start = time.perf_counter()
        study.results["sections"][section] = getattr(study, f"section_{section}")()
        study.results["timings"][section] = time.perf_counter() - start
        study.results["timings"]["total"] = time.perf_counter() - total_start
        write_outputs(study)
        logger.info("=== Section %s done in %s; report written to %s ===", section,
                    fmt_seconds(study.results["timings"][section]), study.output_dir / "README.md")
        for sentence in observations(study).get(section, []):
            print(f"[{section}] {sentence}")
    study.results["timings"]["total"] = time.perf_counter() - total_start
    write_outputs(study)
    print(f"Report: {study.output_dir / 'README.md'} (total {fmt_seconds(study.results['timings']['total'])})")
    return study.results


if __name__ == "__main__":
    main()
