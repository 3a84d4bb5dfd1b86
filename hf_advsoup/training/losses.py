"""The loss of co-training (Eq. 2 of Rebuffi et al., ICLR 2023) in pieces: probability targets with label smoothing
(hard or mixup/CutMix soft labels), the per-sample soft cross-entropy, the class indices an attack aims at, and the
clean accuracy the Trainer reports. :meth:`hf_advsoup.training.CoTrainer.compute_loss` puts them together.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers.trainer_utils import EvalPrediction


def smoothed_targets(labels: torch.Tensor, num_labels: int, smoothing: float = 0.0,
                     validate: bool = True) -> torch.Tensor:
    """Probability targets of shape ``(batch, num_labels)`` (fp32): ``(1 - smoothing) * y + smoothing / num_labels``.

    ``labels`` are class indices ``(batch,)`` or soft targets ``(batch, num_labels)`` (mixup/CutMix). Equal to the
    label smoothing of :class:`~transformers.trainer_pt_utils.LabelSmoother` for hard labels. ``validate`` checks
    that class indices lie in ``[0, num_labels)`` (a ``ValueError`` otherwise), which reads them back from the
    device; without it, indices are clamped into range and the caller checks them (``CoTrainer`` does, at its next
    log: :meth:`StepChecks.record_labels`).
    """
    if labels.is_floating_point() and labels.dim() == 2:
        if labels.shape[1] != num_labels:
            raise ValueError(f"Soft labels have {labels.shape[1]} classes but the model has {num_labels}.")
        targets = labels.float()
    elif labels.dim() == 1 and not validate:
        targets = F.one_hot(labels.long().clamp(0, num_labels - 1), num_labels).float()
    elif labels.dim() == 1:
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
            raise ValueError(
                f"Labels must be class indices in [0, {num_labels}); got values in [{int(labels.min())}, "
                f"{int(labels.max())}]. Check the label column and the model's num_labels."
            )
        targets = F.one_hot(labels.long(), num_labels).float()
    else:
        raise ValueError(f"labels must be (batch,) class indices or (batch, {num_labels}) soft labels, got "
                         f"{tuple(labels.shape)}.")
    if smoothing > 0:
        targets = targets * (1.0 - smoothing) + smoothing / num_labels
    return targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy ``-sum_k targets_k * log_softmax(logits)_k``, shape ``(batch,)``, computed in fp32."""
    return -(targets * logits.float().log_softmax(dim=-1)).sum(dim=-1)


def hard_labels(labels: torch.Tensor) -> torch.Tensor:
    """Class indices for the attack: the labels themselves, or the dominant class of soft (mixup) labels."""
    return labels.argmax(dim=-1) if labels.dim() == 2 else labels.long()


def compute_accuracy(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Top-1 accuracy of clean-mode predictions (``clean_accuracy``, a fraction in [0, 1]), computed offline."""
    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    labels = np.asarray(eval_prediction.label_ids)
    if labels.ndim == 2:
        labels = labels.argmax(-1)
    return {"clean_accuracy": float((np.asarray(logits).argmax(-1) == labels).mean())}


__all__ = [
    "compute_accuracy",
    "hard_labels",
    "smoothed_targets",
    "soft_cross_entropy",
]
