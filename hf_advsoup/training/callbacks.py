"""Trainer callbacks of co-training other than the EMA's: the training transform's epoch (exact resume of crops and
flips) and the catastrophic-overfitting monitor (Figures 6 and 10)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..catastrophic_overfitting import collapse_min_best, is_collapse

logger = logging.getLogger(__name__)


def _dataset_transform(dataset) -> Callable | None:
    """The ``set_transform`` function of a ``datasets.Dataset`` (``None`` for other datasets)."""
    format_ = getattr(dataset, "format", None)
    if not isinstance(format_, dict):
        return None
    return (format_.get("format_kwargs") or {}).get("transform")


class TransformEpochCallback(TrainerCallback):
    """Calls ``set_epoch(epoch, seed)`` on the training data's ``set_transform`` function (when it has one, as
    :class:`hf_advsoup.data.ImageClassificationTransform` does) at the start of every epoch, with ``seed`` =
    ``data_seed`` or ``seed`` (the sampler's seed): its crops and flips then depend on ``(seed, epoch, image)``
    only, so a run resumed mid-epoch repeats them.

    With ``dataloader_persistent_workers`` and ``dataloader_num_workers > 0`` the workers keep the transform of the
    first epoch, so the epoch is not set (a warning says so) and draws stay on the workers' torch RNG.
    """

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self._transform = _dataset_transform(getattr(train_dataloader, "dataset", None))
        if not hasattr(self._transform, "set_epoch"):
            self._transform = None
        elif args.dataloader_persistent_workers and args.dataloader_num_workers > 0:
            logger.warning(
                "dataloader_persistent_workers keeps each worker's copy of the training transform: its crops and "
                "flips come from the workers' torch RNG, and a run resumed mid-epoch will not repeat them."
            )
            self._transform = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        if getattr(self, "_transform", None) is None:
            return
        # state.epoch is epochs done plus the fraction of the current one (a resumed run restores it); the epoch
        # that begins is its integer part (+1e-6 guards a sum of fractions that lands just below an integer).
        epoch = math.floor((state.epoch or 0.0) + 1e-6)
        seed = args.data_seed if args.data_seed is not None else args.seed
        self._transform.set_epoch(epoch, seed)


# ------------------------------------------------------------------------------------------------ monitoring
class CatastrophicOverfittingCallback(TrainerCallback):
    """Watches ``eval_robust_accuracy`` for a collapse (catastrophic overfitting, Figures 6 and 10 of the paper).

    A collapse is reported when, once the best robust accuracy has exceeded ``min_best`` and twice the chance level
    ``1 / num_labels`` (early in training robust accuracy hovers around chance, and a dip there is noise, not a
    collapse), an evaluation falls below ``drop * best``: :func:`hf_advsoup.catastrophic_overfitting.is_collapse`, the
    rule the reproduction study applies to logged runs too. It logs a warning naming the likely causes; with ``stop=True`` it also stops training, prevents
    the collapsed weights from being saved as a checkpoint, and records :attr:`last_good_checkpoint` (the last
    checkpoint saved no later than the last good evaluation), which :class:`CoTrainer` restores after training.
    """

    def __init__(self, drop: float = 0.5, min_best: float = 0.05, stop: bool = False,
                 metric: str = "eval_robust_accuracy", num_labels: int | None = None, cause: str | None = None):
        self.cause = cause
        self.drop = drop
        self.min_best = collapse_min_best(min_best, num_labels)
        self.stop = stop
        self.metric = metric
        self.best: float | None = None
        self.collapsed_at_step: int | None = None
        self.last_good_eval_step: int | None = None
        self.saved_steps: list[tuple[int, str]] = []

    @property
    def collapsed(self) -> bool:
        return self.collapsed_at_step is not None

    @property
    def last_good_checkpoint(self) -> str | None:
        if self.last_good_eval_step is None:
            return None
        good = [path for step, path in self.saved_steps if step <= self.last_good_eval_step and os.path.isdir(path)]
        return good[-1] if good else None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric)
        if value is None:
            return
        if is_collapse(value, self.best, drop=self.drop, min_best=self.min_best):
            if not self.collapsed:
                self.collapsed_at_step = state.global_step
            logger.warning(
                "Catastrophic overfitting at step %d: robust accuracy %.4f fell below %.2f x the best (%.4f). "
                "Typical causes (paper, Section 5.1 and Figure 6): a one-step attack with a large step (use "
                "'pgd2', or N-FGSM/FAST-AT with step <= eps), or a fully shared model (adapter='none').%s%s",
                state.global_step, value, self.drop, self.best,
                f" This run: {self.cause}." if self.cause else "",
                " Stopping (stop_on_catastrophic_overfitting=True)." if self.stop else "",
            )
            if self.stop:
                control.should_training_stop = True
                control.should_save = False
            return
        self.best = value if self.best is None else max(self.best, value)
        if not self.collapsed:
            self.last_good_eval_step = state.global_step

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        self.saved_steps.append((state.global_step, folder))


__all__ = [
    "CatastrophicOverfittingCallback",
    "TransformEpochCallback",
]
