"""Adversarial co-training (Eq. 2 of Rebuffi et al., ICLR 2023) with the Hugging Face Trainer, one concern per module:

* :mod:`.trainer`: :class:`CoTrainer`, the :class:`~transformers.Trainer` subclass (the loss, the attack, free
  co-training, evaluation, saving and resuming);
* :mod:`.losses`: targets with label smoothing, the soft cross-entropy, attack labels, the clean accuracy metric;
* :mod:`.randomness`: the per-step generators that make a resumed run repeat augmentation and attacks;
* :mod:`.ema`: the EMA of the weights and its callback;
* :mod:`.callbacks`: the training transform's epoch and the catastrophic-overfitting monitor;
* :mod:`.step_checks`: the per-step checks kept on the device, and the non-finite loss error;
* :mod:`.checkpoints`: which checkpoint to resume from, corrupt weight files;
* :mod:`.distributed`: FSDP on CPU processes, FSDP2's initialisation before attacks, what a run is sharded like.

``hf_advsoup.trainer`` re-exports all of it (the import path of earlier versions).
"""

from .callbacks import CatastrophicOverfittingCallback, TransformEpochCallback
from .checkpoints import LATEST_CHECKPOINT_VALUES, CorruptCheckpointError, check_weight_files, resolve_checkpoint
from .ema import EMA_WEIGHTS_NAME, EMACallback, WeightEMA
from .losses import compute_accuracy, hard_labels, smoothed_targets, soft_cross_entropy
from .randomness import step_generator
from .step_checks import NonFiniteLossError, StepChecks
from .trainer import BatchAugmenterFn, CoTrainer

__all__ = [
    "EMA_WEIGHTS_NAME",
    "LATEST_CHECKPOINT_VALUES",
    "BatchAugmenterFn",
    "CatastrophicOverfittingCallback",
    "CoTrainer",
    "CorruptCheckpointError",
    "EMACallback",
    "NonFiniteLossError",
    "StepChecks",
    "TransformEpochCallback",
    "WeightEMA",
    "check_weight_files",
    "compute_accuracy",
    "hard_labels",
    "resolve_checkpoint",
    "smoothed_targets",
    "soft_cross_entropy",
    "step_generator",
]
