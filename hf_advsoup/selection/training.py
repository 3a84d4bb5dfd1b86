"""Training the soup selector of ``beta="auto"`` (:class:`SelectorTrainer`), with every other weight frozen.

Two objectives (:attr:`SelectorTrainingArguments.objective`):

- ``"detection"``: the selector learns to tell clean images (target ``beta = 1``) from training-attack images made on
  robust mode (target ``beta = 0``), as co-training makes its adversarial half. A detector of one attack: the adaptive
  evaluation (:mod:`.evaluation`) pushes it to clean mode (docs/selection.md).
- ``"composite"``: the selector is trained against the system it defends, as adaptive smoothing trains its mixing
  network (Bai et al., "Improving the Accuracy-Robustness Trade-Off of Classifiers via Adaptive Smoothing", SIAM J.
  Math. Data Science 2024): each batch is attacked **end to end through the selector** (the selected model, pushed
  toward clean mode with ``composite_clean_push``: the attack that breaks a detector), and the loss is a composite of
  the final prediction's cross-entropy on the clean images and on the attacked ones
  (``CE(clean) + composite_robust_weight * CE(attacked)``), not a detection loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import EvalPrediction

from ..attacks import AttackConfig, Normalization, attack
from ..modeling_advsoup import AdvSoupViTForImageClassification
from ..training import step_generator
from ..training_args import FREE_TRAIN_ATTACK
from .systems import AutoSoupClassifier

logger = logging.getLogger(__name__)

__all__ = ["OBJECTIVES", "SelectorTrainer", "SelectorTrainingArguments", "composite_metrics",
           "cotraining_attack_settings", "selector_metrics"]

RUN_ARGS_NAME = "run_args.json"
"""The file ``scripts/cotrain.py`` writes into its output folder with every argument of the run."""

OBJECTIVES = ("detection", "composite")

_COTRAINING_ATTACK_FIELDS = {
    "train_attack_norm": "norm",
    "train_epsilon": "epsilon",
    "train_attack_steps": "steps",
    "train_attack_step_size": "step_size",
    "train_attack_targeted": "targeted",
    "train_attack_random_start": "random_start",
}
"""Co-training argument -> :class:`~hf_advsoup.attacks.AttackConfig` field, for the training attack."""


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
    objective: str = field(
        default="detection",
        metadata={"help": "What the selector learns: 'detection' (clean images -> clean mode, training-attack images "
                  "on robust mode -> robust mode; the original objective) or 'composite' (attacked end to end "
                  "through the selector, the final prediction's cross-entropy on clean and attacked images; adaptive "
                  "smoothing's objective, docs/selection.md).", "choices": list(OBJECTIVES)},
    )
    composite_robust_weight: float = field(
        default=1.0,
        metadata={"help": "composite: weight of the attacked images' cross-entropy (the clean images' has 1). Higher "
                  "buys robustness with clean accuracy."},
    )
    composite_clean_push: float = field(
        default=1.0,
        metadata={"help": "composite: lambda of the training attack's push toward clean mode (it maximises the "
                  "margin loss plus lambda * log(beta), the adaptive attack (c) of the evaluation); 0: a plain "
                  "end-to-end attack."},
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

    def __post_init__(self):
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"Unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}.")
        if self.composite_robust_weight < 0 or self.composite_clean_push < 0:
            raise ValueError("composite_robust_weight and composite_clean_push must be >= 0, got "
                             f"{self.composite_robust_weight} and {self.composite_clean_push}.")

    def train_attack_config(self, cotraining: Mapping[str, Any] | None = None) -> AttackConfig:
        """The training attack: ``cotraining`` settings (:func:`cotraining_attack_settings`) overridden by this
        run's fields that are not ``None``; preset ``"pgd2"`` when neither names one."""
        settings = {k: v for k, v in dict(cotraining or {}).items() if v is not None}
        if settings.get("train_attack") == FREE_TRAIN_ATTACK:
            # Free co-training has no attack of its own (its perturbation is built up across the replays of a
            # minibatch): PGD-2, co-training's default, at the run's radius and norm is the nearest standalone attack.
            settings = {k: v for k, v in settings.items() if k in ("train_attack_norm", "train_epsilon")}
            settings["train_attack"] = "pgd2"
            if self.train_attack is None:
                logger.warning(
                    "The model was co-trained with --train_attack free, which has no standalone attack: the selector's "
                    "robust-mode examples come from PGD-2 at the run's radius (%s). Give --train_attack to choose "
                    "another.", settings.get("train_epsilon", "the preset's"))
        if self.train_attack == FREE_TRAIN_ATTACK:
            raise ValueError("--train_attack free is a co-training mode (Shafahi et al.'s replays), not an attack the "
                             "selector can train against: give an attack preset such as pgd2.")
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


def composite_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Metrics of a composite-objective evaluation: accuracy of the selected model on the clean images
    (``auto_clean_accuracy``) and on their end-to-end attacked versions (``auto_attacked_accuracy``), and the mean
    ``beta`` the selector gave each kind."""
    clean_right, attacked_right, clean_beta, attacked_beta = (np.asarray(p, dtype=np.float64).reshape(-1)
                                                              for p in eval_prediction.predictions[:4])
    return {"auto_clean_accuracy": float(clean_right.mean()), "auto_attacked_accuracy": float(attacked_right.mean()),
            "mean_beta_clean": float(clean_beta.mean()), "mean_beta_attacked": float(attacked_beta.mean())}


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
      (:func:`hf_advsoup.trainer.step_generator`), so a resumed run repeats it.

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
        kwargs.setdefault("compute_metrics", composite_metrics if args.objective == "composite" else selector_metrics)
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
        """The loss of ``args.objective`` on ``inputs["pixel_values"]`` and their attacked versions; ``inputs["labels"]``
        (class indices) steer the attack.

        ``detection``: binary cross-entropy of the selector with target 1 on the clean images and 0 on their
        training-attack versions on robust mode; returns the mean loss (and ``{"clean_selector_logits",
        "attacked_selector_logits"}``, each ``(batch,)``). ``composite``: see :meth:`composite_loss`."""
        pixel_values, labels = inputs["pixel_values"], inputs.get("labels")
        if labels is None:
            raise ValueError("SelectorTrainer needs labels in every batch: the training attack is steered by them.")
        labels = labels.argmax(-1) if labels.dim() == 2 else labels.long()
        if self.args.objective == "composite":
            return self.composite_loss(model, pixel_values, labels, return_outputs)
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

    def composite_loss(self, model, pixel_values: torch.Tensor, labels: torch.Tensor, return_outputs: bool = False):
        """``CE(auto(x), y) + composite_robust_weight * CE(auto(x_adv), y)``: ``x_adv`` is the training attack run
        end to end on the selected model (through the selector: :class:`~.systems.AutoSoupClassifier`, pushed toward
        clean mode by ``composite_clean_push``, margin loss), the backbone frozen; the gradient reaches the selector
        only. Returns the loss (and ``{"clean_right", "attacked_right", "clean_beta", "attacked_beta"}``)."""
        unwrapped = self.accelerator.unwrap_model(model)
        push = self.args.composite_clean_push
        config = self.train_attack if not push else dataclasses.replace(self.train_attack, loss="margin")
        target = AutoSoupClassifier(unwrapped, clean_push=push)
        attacked = attack(target, pixel_values, labels, config, normalization=self.normalization,
                          generator=self._generator(pixel_values.device, model.training))
        batch = pixel_values.shape[0]
        with _eval_modes(model):
            outputs = model(pixel_values=torch.cat([pixel_values, attacked]), beta="auto")
        logits = outputs.logits.float()
        clean_loss = F.cross_entropy(logits[:batch], labels)
        attacked_loss = F.cross_entropy(logits[batch:], labels)
        loss = clean_loss + self.args.composite_robust_weight * attacked_loss
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"Non-finite selector loss at step {self.state.global_step}: check the inputs and "
                                     "lower the learning rate.")
        right = (logits.argmax(-1) == torch.cat([labels, labels])).float()
        beta = outputs.beta.float()
        parts = {"clean_right": right[:batch], "attacked_right": right[batch:], "clean_beta": beta[:batch],
                 "attacked_beta": beta[batch:]}
        return (loss, parts) if return_outputs else loss
