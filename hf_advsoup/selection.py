"""The soup selector (``beta="auto"``): training it, and evaluating the selected model against attacks that know
about it.

The paper ends (appendix E) with "the automatic selection of the right soup for each sample" as future work. The
model side lives in :mod:`hf_advsoup.modeling_advsoup` (:class:`~hf_advsoup.modeling_advsoup.AdvSoupSelector`, which
must run under remote code): ``model(x, beta="auto")`` gives each image the soup ``beta = sigmoid(score)`` its
selector picks from the tokens after the first ``config.selector_layers`` robust-mode blocks. This module holds what
is needed around it:

- **Training** (:class:`SelectorTrainer`, :class:`SelectorTrainingArguments`): after co-training, with every weight of
  the co-trained model frozen, the selector learns to tell clean images (target ``beta = 1``) from training-attack
  images (target ``beta = 0``), made by the library's attack core through robust mode exactly as in co-training
  (:func:`hf_advsoup.attacks.attack` with ``forward_kwargs={"beta": 0.0}``). A :class:`~transformers.Trainer`
  subclass: the Trainer's loop, optimizer, schedule, logging, checkpoints and saving (the saved folder is the whole
  model, selector included, with its remote code).
- **Adaptive evaluation** (:func:`evaluate_auto_soup`): a selector is a detector of adversarial examples, and
  detectors that are evaluated only against attacks that ignore them look strong and are not (Carlini & Wagner
  2017; Tramer et al., "On adaptive attacks to adversarial example defenses", NeurIPS 2020). So ``beta="auto"`` is
  attacked four ways, and its robust accuracy is the per-example worst case over all of them:

  (a) ``transfer``: the attack on robust mode (``beta=0``), its images then classified by the auto model;
  (b) ``end_to_end``: the attack on the whole selected model, through the selector (:class:`AutoSoupClassifier`;
      the soft selector is differentiable, a hard one is differentiated straight through its sigmoid, BPDA);
  (c) ``toward_clean``: (b) with the margin loss plus ``lambda * log(beta)``: it maximises the loss while pushing
      the selector toward clean mode (``beta -> 1``), one run per ``lambda``;
  (d) ``autoattack``: AutoAttack (the ``autoattack`` preset, through the library's wrapper) on the whole selected
      model as in (b).

  Fixed soups are attacked the same way on the same examples ((a), (b), (d); (c) needs a selector), so that "auto"
  is compared with the best fixed ``beta`` under one threat model.

What a selector can and cannot promise is in docs/selection.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import EvalPrediction

from .attacks import (
    AttackConfig,
    Normalization,
    attack,
    attack_mode,
    format_epsilon,
)
from .configuration_advsoup import validate_beta
from .evaluation import PerExampleAccuracies
from .modeling_advsoup import AdvSoupViTForImageClassification
from .soups import (
    ForwardCounter,
    build_attack,
    collect_examples,
    describe_threat_model,
    iter_batches,
    threat_model_of,
)
from .training import step_generator

logger = logging.getLogger(__name__)

RUN_ARGS_NAME = "run_args.json"
"""The file ``scripts/cotrain.py`` writes into its output folder with every argument of the run."""

_COTRAINING_ATTACK_FIELDS = {
    "train_attack_norm": "norm",
    "train_epsilon": "epsilon",
    "train_attack_steps": "steps",
    "train_attack_step_size": "step_size",
    "train_attack_targeted": "targeted",
    "train_attack_random_start": "random_start",
}
"""Co-training argument -> :class:`~hf_advsoup.attacks.AttackConfig` field, for the training attack."""


# --------------------------------------------------------------------------------------------------- training
def cotraining_attack_settings(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """The training attack of the co-training run saved in ``model_path`` (its ``run_args.json``): ``{"train_attack":
    preset, "train_epsilon": ..., ...}`` with the values that run used (``None`` where it kept the preset's), or
    ``None`` when the folder has no ``run_args.json`` (a Hub id, a model trained elsewhere)."""
    path = Path(model_path) / RUN_ARGS_NAME
    if not path.is_file():
        return None
    training = json.loads(path.read_text(encoding="utf-8")).get("training_args", {})
    return {name: training.get(name) for name in ("train_attack", *_COTRAINING_ATTACK_FIELDS)}


@dataclass
class SelectorTrainingArguments(TrainingArguments):
    r"""Training arguments of :class:`SelectorTrainer` (the soup selector of ``beta="auto"``).

    Every :class:`~transformers.TrainingArguments` field is accepted. The training attack makes the selector's
    robust-mode examples exactly as co-training made its adversarial half: the fields left at ``None`` take the
    co-training run's values (``run_args.json`` of the model folder, see :func:`cotraining_attack_settings`), else
    the preset's. Defaults that differ from ``TrainingArguments``: a small head trained briefly (learning rate 3e-3,
    3 epochs, cosine schedule, 5% warm-up, no weight decay, a log every 10 steps) and
    ``remove_unused_columns=False`` (on-the-fly image transforms).
    """

    train_attack: str | None = field(
        default=None,
        metadata={"help": "Preset of the attack that makes the robust-mode (target beta = 0) examples, run on robust "
                  "mode (beta=0) as in co-training. Default: the co-training run's (run_args.json), else 'pgd2'."},
    )
    train_attack_norm: str | None = field(
        default=None, metadata={"help": "Threat model of the training attack ('linf' or 'l2'). Default: as above."}
    )
    train_epsilon: str | None = field(
        default=None,
        metadata={"help": "Radius of the training attack in [0, 1] pixel units, a number or a fraction ('4/255'). "
                  "Default: the co-training run's, else the preset's."},
    )
    train_attack_steps: int | None = field(
        default=None, metadata={"help": "Iterations of the training attack. Default: as above."}
    )
    train_attack_step_size: str | None = field(
        default=None, metadata={"help": "Step of the training attack in pixel units ('2.5/255'). Default: as above."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Let scripts/train_selector.py write into an --output_dir that is not empty."},
    )
    learning_rate: float = field(default=3e-3, metadata={"help": "AdamW learning rate of the selector head."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs over the training images."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of the selector head."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Linear warm-up: steps, or a fraction of all steps when < 1."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every this many optimizer steps."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep all dataset columns: on-the-fly transforms (set_transform) need the raw image column."},
    )

    def train_attack_config(self, cotraining: Mapping[str, Any] | None = None) -> AttackConfig:
        """The training attack: ``cotraining`` settings (:func:`cotraining_attack_settings`) overridden by this
        run's fields that are not ``None``; preset ``"pgd2"`` when neither names one."""
        settings = {k: v for k, v in dict(cotraining or {}).items() if v is not None}
        own = {name: getattr(self, name) for name in ("train_attack", *_COTRAINING_ATTACK_FIELDS) if hasattr(self, name)}
        settings.update({k: v for k, v in own.items() if v is not None})
        preset = settings.pop("train_attack", None) or "pgd2"
        overrides = {_COTRAINING_ATTACK_FIELDS[k]: v for k, v in settings.items() if k in _COTRAINING_ATTACK_FIELDS}
        return AttackConfig.from_preset(preset, **overrides)


def selector_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Detection metrics of a selector evaluation (:class:`SelectorTrainer`): ``clean_as_clean`` (fraction of clean
    images given ``beta > 0.5``), ``attacked_as_robust`` (training-attack images given ``beta < 0.5``), their mean
    ``detection_accuracy``, and the mean soft ``beta`` on each kind (``mean_beta_clean``, ``mean_beta_attacked``)."""
    clean, attacked = (np.asarray(p, dtype=np.float64).reshape(-1) for p in eval_prediction.predictions[:2])
    clean_as_clean = float((clean > 0).mean())
    attacked_as_robust = float((attacked < 0).mean())
    return {
        "clean_as_clean": clean_as_clean,
        "attacked_as_robust": attacked_as_robust,
        "detection_accuracy": (clean_as_clean + attacked_as_robust) / 2,
        "mean_beta_clean": float((1 / (1 + np.exp(-clean))).mean()),
        "mean_beta_attacked": float((1 / (1 + np.exp(-attacked))).mean()),
    }


@contextlib.contextmanager
def _eval_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Every submodule in eval mode for the block, each one's own mode restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, training in modes:
            module.training = training


class SelectorTrainer(Trainer):
    r"""Trains the soup selector of a co-trained :class:`~hf_advsoup.AdvSoupViTForImageClassification`, with every
    other weight frozen.

    Differences from :class:`~transformers.Trainer`:

    - **Frozen backbone**: at construction every parameter outside ``model.vit.selector`` gets
      ``requires_grad=False`` (so the optimizer holds the selector only); the model must have a selector
      (:meth:`~hf_advsoup.AdvSoupViTForImageClassification.add_selector`).
    - **Loss** (:meth:`compute_loss`): binary cross-entropy of the selector's score ``s`` (``beta = sigmoid(s)``)
      with target 1 on the batch's clean images and 0 on their training-attack versions. The attack is the library's
      (:func:`~hf_advsoup.attacks.attack`) on robust mode (``beta=0``), through the unwrapped model, as co-training
      makes its adversarial half. Both halves then go through one forward of the (wrapped) model with
      ``beta="auto"``, the path that is deployed; the frozen network runs in eval mode (it is a fixed feature
      extractor: no dropout or stochastic depth in the features the selector learns from), and the selector has no
      train-time randomness.
    - **Evaluation** reports :func:`selector_metrics` on the evaluation set (clean images and their training-attack
      versions, attack randomness seeded by ``args.seed``), ``eval_loss`` being the same cross-entropy.
    - **Randomness** of the training attack: a generator seeded by ``(seed, optimizer step, micro-batch, process)``
      (:func:`hf_advsoup.training.step_generator`), so a resumed run repeats it.

    Args:
        model: a co-trained model with a selector.
        args: :class:`SelectorTrainingArguments`.
        train_attack: the attack that makes the robust-mode examples (default: ``args.train_attack_config()``).
        normalization: the image processor's mean/std (default: read from ``processing_class``).
        **kwargs: everything :class:`~transformers.Trainer` takes (``train_dataset``, ``eval_dataset``,
            ``data_collator``, ``processing_class``, ``callbacks``, ...).
    """

    args: SelectorTrainingArguments

    def __init__(self, model: AdvSoupViTForImageClassification | None = None,
                 args: SelectorTrainingArguments | None = None, *, train_attack: AttackConfig | None = None,
                 normalization: Normalization | None = None, **kwargs):
        if not isinstance(args, SelectorTrainingArguments):
            raise TypeError(f"SelectorTrainer needs SelectorTrainingArguments, got {type(args).__name__}.")
        if getattr(model, "selector", None) is None:
            raise ValueError("SelectorTrainer trains a soup selector, and this model has none: call "
                             "model.add_selector(num_layers=...) first (scripts/train_selector.py does).")
        selector = {id(p) for p in model.selector.parameters()}
        for param in model.parameters():
            param.requires_grad_(id(param) in selector)
        kwargs.setdefault("compute_metrics", selector_metrics)
        super().__init__(model=model, args=args, **kwargs)
        # Our model's forward has **kwargs, so Trainer would assume compute_loss already divides by the accumulation
        # steps; the loss below is a per-batch mean: let the Trainer divide it.
        self.model_accepts_loss_kwargs = False
        if normalization is None:
            processor = self.processing_class
            if processor is None or getattr(processor, "image_mean", None) is None:
                raise ValueError("SelectorTrainer needs the image normalization (the attack works on [0, 1] pixels): "
                                 "pass normalization=Normalization(mean, std) or processing_class=<image processor>.")
            normalization = Normalization.from_processor(processor)
        self.normalization = normalization
        self.train_attack = train_attack if train_attack is not None else args.train_attack_config()
        self._rng_position: tuple[int, int] | None = None
        self._eval_batches = 0

    def _generator(self, device: torch.device, training: bool) -> torch.Generator:
        if not training:  # the same attack randomness at every evaluation
            self._eval_batches += 1
            return step_generator(self.args.seed, 0, self._eval_batches, self.args.process_index, device, stream=1)
        step = self.state.global_step
        micro = 0 if self._rng_position is None or self._rng_position[0] != step else self._rng_position[1] + 1
        self._rng_position = (step, micro)
        return step_generator(self.args.seed, step, micro, self.args.process_index, device)

    def evaluation_loop(self, *args, **kwargs):
        self._eval_batches = 0
        return super().evaluation_loop(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Binary cross-entropy of the selector on ``inputs["pixel_values"]`` (target 1) and their training-attack
        versions on robust mode (target 0); ``inputs["labels"]`` (class indices) steer the attack. Returns the
        mean loss (and ``{"clean_selector_logits", "attacked_selector_logits"}``, each ``(batch,)``)."""
        pixel_values, labels = inputs["pixel_values"], inputs.get("labels")
        if labels is None:
            raise ValueError("SelectorTrainer needs labels in every batch: the training attack is steered by them.")
        labels = labels.argmax(-1) if labels.dim() == 2 else labels.long()
        unwrapped = self.accelerator.unwrap_model(model)
        attacked = attack(unwrapped, pixel_values, labels, self.train_attack, normalization=self.normalization,
                          forward_kwargs={"beta": 0.0}, generator=self._generator(pixel_values.device, model.training))
        batch = pixel_values.shape[0]
        with _eval_modes(model):
            outputs = model(pixel_values=torch.cat([pixel_values, attacked]), beta="auto")
        scores = outputs.selector_logits
        targets = torch.cat([scores.new_ones(batch), scores.new_zeros(batch)])
        loss = F.binary_cross_entropy_with_logits(scores, targets)
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"Non-finite selector loss at step {self.state.global_step}: check the inputs and "
                                     "lower the learning rate.")
        parts = {"clean_selector_logits": scores[:batch], "attacked_selector_logits": scores[batch:]}
        return (loss, parts) if return_outputs else loss


# --------------------------------------------------------------------------------------------------- the attacked model
class AutoSoupClassifier(nn.Module):
    """``model(x, beta="auto")`` as one classifier, for attacks: ``forward(pixel_values)`` returns the logits of each
    image's selected soup, with the gradient flowing through the selector (soft selector: its sigmoid; hard selector:
    straight through its sigmoid, BPDA) and through the soup.

    With ``clean_push = lambda > 0`` (attack (c) of :func:`evaluate_auto_soup`) every logit except the top one is
    shifted by ``lambda * log(beta_soft)``, ``beta_soft = sigmoid(selector score)``. The prediction (argmax) is
    unchanged, so the attack's "fooled" test and the final evaluation see the real model; while an example is
    classified correctly, its margin loss becomes ``margin + lambda * log(beta_soft)``: the attack maximises the
    classification loss and, at the same time, the selector's vote for clean mode. (``log`` of the sigmoid rather
    than the sigmoid: its gradient does not vanish where the selector is sure an image is attacked.)

    It wraps the model (no weight is copied) and takes no other forward arguments.
    """

    def __init__(self, model: AdvSoupViTForImageClassification, clean_push: float = 0.0):
        super().__init__()
        if getattr(model, "selector", None) is None:
            raise ValueError("AutoSoupClassifier needs a model with a soup selector (beta='auto').")
        if not math.isfinite(clean_push) or clean_push < 0:
            raise ValueError(f"clean_push must be a finite number >= 0, got {clean_push}.")
        self.model = model
        self.clean_push = float(clean_push)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        outputs = self.model(pixel_values=pixel_values, beta="auto")
        logits = outputs.logits.float()
        if not self.clean_push:
            return logits
        push = self.clean_push * F.logsigmoid(outputs.selector_logits.float())
        others = 1.0 - F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        return logits + push[:, None] * others


# --------------------------------------------------------------------------------------------------- evaluation
def _default_clean_push() -> list[float]:
    return [1.0, 10.0]


@dataclass
class AutoEvaluationArguments:
    """The adaptive evaluation of ``beta="auto"`` (:func:`evaluate_auto_soup`; ``scripts/evaluate_soups.py --auto``).
    Radius and steps are the soup sweep's (``--epsilon``, ``--attack_steps``)."""

    auto: bool = field(
        default=False,
        metadata={"help": "Also evaluate beta='auto' (the model's soup selector) against adaptive attacks: (a) the "
                  "attack on robust mode transferred, (b) end to end through the selector, (c) end to end pushing the "
                  "selector toward clean mode, (d) AutoAttack end to end; robust accuracy is the per-example worst "
                  "case. Fixed soups are attacked the same way on the same examples. Writes auto_results.*."},
    )
    auto_attack: str = field(
        default="pgd40",
        metadata={"help": "Gradient attack preset of (a), (b) and (c) (default pgd40, the paper's PGD-40; (c) uses "
                  "it with the margin loss)."},
    )
    auto_clean_push: list[float] = field(
        default_factory=_default_clean_push,
        metadata={"help": "Weights lambda of attack (c), one run each: maximise margin + lambda * log(beta). "
                  "Default: 1 and 10. Empty to skip (c) (not recommended)."},
    )
    auto_autoattack: bool = field(
        default=True,
        metadata={"help": "Run (d), AutoAttack (needs pyautoattack) on the whole selected model and on each fixed "
                  "soup. Costly: thousands of forward passes per robust example."},
    )
    auto_autoattack_attacks: list[str] = field(
        default_factory=list,
        metadata={"help": "Run only these AutoAttack attacks in (d) (e.g. apgd-ce apgd-t; a weaker, cheaper "
                  "evaluation, named in the report). Default: the standard version (APGD-CE, APGD-T, FAB-T, Square)."},
    )
    auto_fixed_betas: list[float] | None = field(
        default=None,
        metadata={"help": "Fixed soups attacked with the same attacks on the same examples, for the comparison. "
                  "Default: the sweep's --betas."},
    )

    def __post_init__(self):
        if self.auto_fixed_betas is not None:
            self.auto_fixed_betas = [validate_beta(b) for b in self.auto_fixed_betas]
        self.auto_clean_push = [float(v) for v in self.auto_clean_push]
        if any(not math.isfinite(v) or v <= 0 for v in self.auto_clean_push):
            raise ValueError(f"auto_clean_push values must be finite and > 0, got {self.auto_clean_push}.")
        if self.auto_attack == "autoattack":
            raise ValueError("auto_attack is the gradient attack of (a)-(c) (e.g. pgd40); AutoAttack is (d), "
                             "--auto_autoattack.")


@dataclass(frozen=True)
class AdaptiveAttack:
    """One attack of the adaptive evaluation: ``key`` (``transfer``, ``end_to_end``, ``toward_clean_<lambda>``,
    ``autoattack``), a human ``label``, the :class:`~hf_advsoup.attacks.AttackConfig`, and ``clean_push`` (the
    ``lambda`` of (c), else 0)."""

    key: str
    label: str
    config: AttackConfig
    clean_push: float = 0.0

    @property
    def needs_selector(self) -> bool:
        return self.key.startswith("toward_clean")


def adaptive_attacks(args: AutoEvaluationArguments, *, epsilon: float | str | None = None,
                     steps: int | None = None) -> list[AdaptiveAttack]:
    """The attacks (a)-(d) of :func:`evaluate_auto_soup` for ``args``, at radius ``epsilon`` (pixel units; default
    the preset's) with ``steps`` (default the preset's)."""
    gradient = build_attack(args.auto_attack, epsilon=epsilon, steps=steps)
    attacks = [
        AdaptiveAttack("transfer", f"(a) transfer from robust mode, {args.auto_attack}", gradient),
        AdaptiveAttack("end_to_end", f"(b) end to end, {args.auto_attack}", gradient),
    ]
    margin = dataclasses.replace(gradient, loss="margin")
    for weight in args.auto_clean_push:
        attacks.append(AdaptiveAttack(f"toward_clean_{weight:g}",
                                      f"(c) toward clean mode, lambda={weight:g}, {args.auto_attack} margin", margin,
                                      clean_push=weight))
    if args.auto_autoattack:
        autoattack = build_attack("autoattack", epsilon=epsilon)
        name = "AutoAttack standard"
        if args.auto_autoattack_attacks:
            autoattack = dataclasses.replace(autoattack, autoattack_version="custom",
                                             autoattack_attacks=list(args.auto_autoattack_attacks))
            name = f"AutoAttack {'+'.join(args.auto_autoattack_attacks)}"
        attacks.append(AdaptiveAttack("autoattack", f"(d) {name}, end to end", autoattack))
    return attacks


@dataclass
class AutoSoupResult(PerExampleAccuracies):
    """Per-example outcome for one classifier (``"auto"`` or a fixed soup) on the evaluated examples (boolean tensors
    of shape ``(num_examples,)``, CPU). An example is robust to an attack when it is classified correctly clean and
    under the attack (misclassified clean examples are not attacked); ``worst_case_correct`` is the AND over every
    attack run, so it never increases when attacks are added."""

    name: str
    beta: float | None
    clean_correct: torch.Tensor
    attack_correct: dict[str, torch.Tensor]
    mean_beta: dict[str, float] = field(default_factory=dict)
    forward_passes: dict[str, int] = field(default_factory=dict)

    @property
    def worst_case_correct(self) -> torch.Tensor:
        worst = self.clean_correct.clone()
        for correct in self.attack_correct.values():
            worst &= correct
        return worst


    def to_dict(self, per_example: bool = False) -> dict[str, Any]:
        out = {"name": self.name, "beta": self.beta, "clean_accuracy": self.clean_accuracy,
               "robust_accuracy": self.robust_accuracy, "attack_accuracies": self.attack_accuracies,
               "mean_beta": self.mean_beta, "forward_passes": self.forward_passes}
        if per_example:
            out["clean_correct"] = self.clean_correct.tolist()
            out["attack_correct"] = {k: v.tolist() for k, v in self.attack_correct.items()}
        return out


@dataclass
class AutoSoupEvaluation:
    """The adaptive evaluation of ``beta="auto"`` next to fixed soups on the same examples (:func:`evaluate_auto_soup`).

    ``results[0]`` is ``"auto"``; the others are the fixed soups. :meth:`comparison` says how auto compares with the
    best fixed soup; :meth:`to_markdown` / :meth:`save` write the table.
    """

    dataset: str
    num_examples: int
    attacks: list[dict[str, Any]]
    results: list[AutoSoupResult]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def auto(self) -> AutoSoupResult:
        return self.results[0]

    @property
    def fixed(self) -> list[AutoSoupResult]:
        return self.results[1:]

    def comparison(self) -> dict[str, Any]:
        """How auto compares with the fixed soups, all under the worst case of the same attacks:

        - ``most_robust_fixed_at_auto_clean``: the most robust fixed soup whose clean accuracy is at least auto's
          (``None`` when none is that accurate): auto is worth its selector when it is more robust than this one;
        - ``best_fixed_by_mean``: the fixed soup with the best mean of clean and robust accuracy, next to auto's mean;
        - ``dominating_fixed``: fixed soups at least as good as auto on both clean and robust accuracy.
        """
        auto = self.auto
        out: dict[str, Any] = {"auto": {"clean_accuracy": auto.clean_accuracy, "robust_accuracy": auto.robust_accuracy,
                                        "mean_accuracy": (auto.clean_accuracy + auto.robust_accuracy) / 2}}
        if not self.fixed:
            return out
        accurate = [r for r in self.fixed if r.clean_accuracy >= auto.clean_accuracy]
        best = max(accurate, key=lambda r: (r.robust_accuracy, r.clean_accuracy), default=None)
        out["most_robust_fixed_at_auto_clean"] = None if best is None else {
            "beta": best.beta, "clean_accuracy": best.clean_accuracy, "robust_accuracy": best.robust_accuracy}
        by_mean = max(self.fixed, key=lambda r: (r.clean_accuracy + r.robust_accuracy, r.robust_accuracy))
        out["best_fixed_by_mean"] = {"beta": by_mean.beta, "clean_accuracy": by_mean.clean_accuracy,
                                     "robust_accuracy": by_mean.robust_accuracy,
                                     "mean_accuracy": (by_mean.clean_accuracy + by_mean.robust_accuracy) / 2}
        out["dominating_fixed"] = [r.beta for r in self.fixed if r.clean_accuracy >= auto.clean_accuracy
                                   and r.robust_accuracy >= auto.robust_accuracy]
        return out

    def to_dict(self, per_example: bool = False) -> dict[str, Any]:
        return {"dataset": self.dataset, "num_examples": self.num_examples, "attacks": self.attacks,
                "settings": self.settings, "comparison": self.comparison(),
                "results": [r.to_dict(per_example) for r in self.results]}

    def to_markdown(self) -> str:
        """Accuracy (%) per classifier: clean, each attack, worst case; then the comparison."""
        keys = [a["key"] for a in self.attacks]
        header = ["model", "clean"] + [a["label"] for a in self.attacks] + ["worst case", "mean beta (clean)"]
        lines = [f"### beta='auto' vs fixed soups on {self.dataset} ({self.num_examples} examples)", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for result in self.results:
            accuracies = result.attack_accuracies
            cells = [result.name, f"{100 * result.clean_accuracy:.2f}"]
            cells += [f"{100 * accuracies[k]:.2f}" if k in accuracies else "-" for k in keys]
            cells += [f"**{100 * result.robust_accuracy:.2f}**",
                      f"{result.mean_beta['clean']:.3f}" if "clean" in result.mean_beta else "-"]
            lines.append("| " + " | ".join(cells) + " |")
        threat = self.settings.get("threat_model")
        if threat:
            lines += ["", f"Threat model: {describe_threat_model(threat)}. An example counts as robust when it is "
                      "classified correctly clean and under every attack (worst case, per example)."]
        auto = self.auto
        under = {k: v for k, v in auto.mean_beta.items() if k != "clean"}
        if under:
            lines += ["", "Mean beta the selector gave the attacked images: " + ", ".join(
                f"{k} {v:.3f}" for k, v in under.items()) + "."]
        comparison = self.comparison()
        best = comparison.get("most_robust_fixed_at_auto_clean")
        lines.append("")
        if best is not None:
            verdict = "more" if auto.robust_accuracy > best["robust_accuracy"] else "not more"
            lines.append(f"- The most robust fixed soup at least as accurate on clean images as auto: beta={best['beta']:g} "
                         f"(clean {100 * best['clean_accuracy']:.2f}%, robust {100 * best['robust_accuracy']:.2f}%); "
                         f"auto (clean {100 * auto.clean_accuracy:.2f}%, robust {100 * auto.robust_accuracy:.2f}%) is "
                         f"{verdict} robust.")
        elif self.fixed:
            lines.append(f"- No fixed soup reaches auto's clean accuracy ({100 * auto.clean_accuracy:.2f}%).")
        if "best_fixed_by_mean" in comparison:
            by_mean = comparison["best_fixed_by_mean"]
            lines.append(f"- Best fixed soup by mean of clean and robust accuracy: beta={by_mean['beta']:g} "
                         f"({100 * by_mean['mean_accuracy']:.2f}%); auto: {100 * comparison['auto']['mean_accuracy']:.2f}%.")
        if comparison.get("dominating_fixed"):
            lines.append("- Fixed soups at least as good as auto on both: beta=" + ", ".join(
                f"{b:g}" for b in comparison["dominating_fixed"]) + ".")
        return "\n".join(lines) + "\n"

    def save(self, output_dir: str | Path, stem: str = "auto_results") -> dict[str, Path]:
        """Write ``{stem}.json`` (with per-example outcomes) and ``{stem}.md`` into ``output_dir``."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        paths = {"auto_json": output_dir / f"{stem}.json", "auto_markdown": output_dir / f"{stem}.md"}
        paths["auto_json"].write_text(json.dumps(self.to_dict(per_example=True), indent=2) + "\n", encoding="utf-8")
        paths["auto_markdown"].write_text(self.to_markdown(), encoding="utf-8")
        return paths


def evaluate_auto_soup(
    model: AdvSoupViTForImageClassification,
    data,
    args: AutoEvaluationArguments | None = None,
    *,
    normalization: Normalization,
    epsilon: float | str | None = None,
    attack_steps: int | None = None,
    fixed_betas: Sequence[float] = (),
    dataset_name: str = "eval",
    batch_size: int = 64,
    max_examples: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> AutoSoupEvaluation:
    """Clean and robust accuracy of ``model(x, beta="auto")`` under the adaptive attacks (a)-(d) of this module,
    and of each fixed soup in ``fixed_betas`` under (a), (b) and (d), on the same examples.

    Args:
        model: a co-trained model with a trained selector (its weights are never changed).
        data: ``(pixel_values, labels)`` tensors or an iterable of batches (:data:`hf_advsoup.soups.EvalData`);
            ``pixel_values`` normalized by the model's image processor.
        args: which attacks (:class:`AutoEvaluationArguments`; default: its defaults).
        normalization: the processor's mean/std (attacks work in [0, 1] pixel space).
        epsilon, attack_steps: radius (pixel units, ``"8/255"`` accepted) and steps; default: the presets'.
        fixed_betas: the fixed soups to compare with.
        max_examples: evaluate the first ``max_examples`` examples (default: all).
        seed: every (classifier, attack) pair starts from a generator seeded with it, so random starts are the same
            across classifiers.

    Returns:
        An :class:`AutoSoupEvaluation`; also logs the table.
    """
    args = args or AutoEvaluationArguments()
    if getattr(model, "selector", None) is None:
        raise ValueError("evaluate_auto_soup needs a model with a trained soup selector (beta='auto'): train one with "
                         "scripts/train_selector.py.")
    attacks = adaptive_attacks(args, epsilon=epsilon, steps=attack_steps)
    pixel_values, labels = collect_examples(data, max_examples, batch_size)
    device = model.device
    fixed_betas = [validate_beta(b) for b in fixed_betas]
    targets: list[tuple[str, float | None]] = [("auto", None)] + [(f"beta={b:g}", b) for b in fixed_betas]
    auto_module = AutoSoupClassifier(model)
    pushed = {a.key: AutoSoupClassifier(model, clean_push=a.clean_push) for a in attacks if a.needs_selector}

    def classifier(target_beta, attack_spec=None):
        """(module, forward_kwargs) that an attack differentiates for this target."""
        if target_beta is None:
            return (pushed[attack_spec.key] if attack_spec is not None and attack_spec.needs_selector
                    else auto_module), {}
        return model, {"beta": target_beta}

    def predict(target_beta, images):
        with attack_mode(model), torch.no_grad():
            if target_beta is None:
                out = model(pixel_values=images, beta="auto")
                return out.logits.argmax(-1), out.beta.float()
            return model(pixel_values=images, beta=target_beta).logits.argmax(-1), None

    gen_device = device if device.type != "mps" else torch.device("cpu")
    generators: dict[tuple[str, str], torch.Generator] = {}

    def generator(target: str, key: str) -> torch.Generator:
        if (target, key) not in generators:
            generators[(target, key)] = torch.Generator(device=gen_device).manual_seed(seed)
        return generators[(target, key)]

    clean_parts = {name: [] for name, _ in targets}
    attack_parts = {name: {a.key: [] for a in attacks if beta is None or not a.needs_selector}
                    for name, beta in targets}
    beta_sums: dict[str, list[float]] = {}  # auto only: (sum of beta, count) per clean / attack
    passes = {name: dict.fromkeys(attack_parts[name], 0) for name, _ in targets}
    transfer = next(a for a in attacks if a.key == "transfer")
    num_batches = -(-pixel_values.shape[0] // batch_size)
    for x, y in tqdm(iter_batches((pixel_values, labels), batch_size), total=num_batches, disable=not progress,
                     desc="beta='auto' adaptive evaluation", unit="batch"):
        x, y = x.to(device), y.to(device).long()
        # (a) The attack on robust mode does not depend on the attacked classifier: made once per batch.
        transferred = attack(model, x, y, transfer.config, normalization=normalization,
                             forward_kwargs={"beta": 0.0}, generator=generator("robust mode", transfer.key))
        for name, beta in targets:
            prediction, selected = predict(beta, x)
            clean = prediction == y
            clean_parts[name].append(clean.cpu())
            if selected is not None:
                _accumulate(beta_sums, "clean", selected)
            index = clean.nonzero().squeeze(1)
            for spec in attacks:
                if spec.key not in attack_parts[name]:
                    continue
                correct = torch.zeros_like(clean)
                if index.numel():
                    if spec.key == "transfer":
                        adversarial = transferred[index]
                    else:
                        module, kwargs = classifier(beta, spec)
                        with ForwardCounter(model) as counter:
                            adversarial = attack(module, x[index], y[index], spec.config, normalization=normalization,
                                                 forward_kwargs=kwargs, generator=generator(name, spec.key))
                        passes[name][spec.key] += counter.count
                    prediction, selected = predict(beta, adversarial)
                    correct[index] = prediction == y[index]
                    if selected is not None:
                        _accumulate(beta_sums, spec.key, selected)
                attack_parts[name][spec.key].append(correct.cpu())

    results = []
    for name, beta in targets:
        result = AutoSoupResult(
            name=name, beta=beta, clean_correct=torch.cat(clean_parts[name]),
            attack_correct={key: torch.cat(parts) for key, parts in attack_parts[name].items()},
            forward_passes=passes[name])
        if beta is None:
            result.mean_beta = {key: total / count for key, (total, count) in beta_sums.items() if count}
        results.append(result)
    evaluation = AutoSoupEvaluation(
        dataset=dataset_name,
        num_examples=int(labels.shape[0]),
        attacks=[{"key": a.key, "label": a.label, "clean_push": a.clean_push,
                  "threat_model": threat_model_of(a.config, a.config.name)} for a in attacks],
        results=results,
        settings={
            "arguments": dataclasses.asdict(args),
            "threat_model": threat_model_of(attacks[1].config, args.auto_attack),
            "epsilon": attacks[1].config.epsilon,
            "epsilon_str": format_epsilon(attacks[1].config.epsilon, attacks[1].config.norm),
            "seed": seed,
            "selector": {"selector_layers": model.config.selector_layers,
                         "selector_hidden_size": model.config.selector_hidden_size,
                         "selector_mode": model.config.selector_mode,
                         "forward_cost": (model.config.num_hidden_layers + model.config.selector_layers)
                         / model.config.num_hidden_layers},
            "normalization": dataclasses.asdict(normalization),
        },
    )
    auto = evaluation.auto
    logger.info("beta='auto' on %s (%d examples): clean %.2f%%, worst case %.2f%% (%s)", dataset_name,
                evaluation.num_examples, 100 * auto.clean_accuracy, 100 * auto.robust_accuracy,
                ", ".join(f"{k} {100 * v:.2f}%" for k, v in auto.attack_accuracies.items()))
    return evaluation


def _accumulate(sums: dict[str, list[float]], key: str, values: torch.Tensor) -> None:
    total = sums.setdefault(key, [0.0, 0])
    total[0] += float(values.sum())
    total[1] += int(values.numel())


__all__ = [
    "AdaptiveAttack",
    "AutoEvaluationArguments",
    "AutoSoupClassifier",
    "AutoSoupEvaluation",
    "AutoSoupResult",
    "SelectorTrainer",
    "SelectorTrainingArguments",
    "adaptive_attacks",
    "cotraining_attack_settings",
    "evaluate_auto_soup",
    "selector_metrics",
]
