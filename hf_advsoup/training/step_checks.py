"""The checks of every training step, kept on the device and read at logging steps, saves and evaluations (no host
synchronisation per step), and the error a non-finite loss raises."""

from __future__ import annotations

import torch


class NonFiniteLossError(RuntimeError):
    """Raised when the co-training loss is NaN or infinite (the run stops instead of skipping the batch)."""


class StepChecks:
    """The per-step checks and loss bookkeeping of :class:`CoTrainer`, kept on the training device.

    Each training step adds to device tensors only (no ``.item()``, ``float()`` or truth value of a tensor, which
    would make the host wait for the device every step); :meth:`read` brings everything back in one transfer, at
    logging steps, saves and evaluations. Kept per process:

    - the first optimizer step whose loss was NaN/inf, with its loss, clean and adversarial terms;
    - the sums and counts of the clean and adversarial loss terms since the last log;
    - how far the inputs left [0, 1] after un-normalizing (a normalization that does not match the data);
    - class indices outside ``[0, num_labels)`` (used clamped until the check raises);
    - replays of free co-training whose data loader batch differed from the minibatch being replayed.
    """

    LOSS_NAMES = ("clean_loss", "adversarial_loss")

    def __init__(self):
        self._device: torch.device | None = None
        self.loss_counts = [0, 0]

    def _ensure(self, device: torch.device) -> None:
        if self._device == device:
            return
        self._device = device
        self.nonfinite_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.nonfinite_losses = torch.full((3,), float("nan"), device=device)
        self.loss_sums = torch.zeros(2, device=device)
        self.loss_counts = [0, 0]
        self.range_excess = torch.zeros((), device=device)
        self.replay_mismatches = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_labels = torch.zeros((), dtype=torch.int64, device=device)

    def record_losses(self, step: int, loss: torch.Tensor, clean: torch.Tensor | None,
                      adversarial: torch.Tensor | None) -> None:
        self._ensure(loss.device)
        loss = loss.detach().float()
        nan = torch.full((), float("nan"), device=loss.device)
        parts = [nan if value is None else value.detach().float() for value in (clean, adversarial)]
        first = ~torch.isfinite(loss) & (self.nonfinite_step < 0)
        self.nonfinite_step = torch.where(first, step, self.nonfinite_step)
        self.nonfinite_losses = torch.where(first, torch.stack([loss, *parts]), self.nonfinite_losses)
        for index, value in enumerate((clean, adversarial)):
            if value is not None:
                self.loss_sums[index] += parts[index]
                self.loss_counts[index] += 1

    def record_range(self, excess: torch.Tensor) -> None:
        self._ensure(excess.device)
        self.range_excess = torch.maximum(self.range_excess, excess)

    def record_labels(self, labels: torch.Tensor, num_labels: int) -> None:
        """Count class indices outside ``[0, num_labels)`` (soft labels are checked by shape, on the host)."""
        self._ensure(labels.device)
        if labels.dim() == 1 and labels.numel():
            self.bad_labels += ((labels < 0) | (labels >= num_labels)).sum()

    def record_mismatch(self, expected: torch.Tensor, seen: torch.Tensor) -> None:
        self._ensure(seen.device)
        if expected.shape != seen.shape:
            self.replay_mismatches += 1
        else:
            self.replay_mismatches += (expected.to(seen.device) != seen).any().long()

    def read(self, accelerator=None, world_size: int = 1, take_losses: bool = False) -> dict | None:
        """Everything recorded, as Python numbers (one transfer from the device; with ``world_size > 1`` the failure
        flags are summed over processes first, so every process sees a failure on any of them). With
        ``take_losses``, ``loss_means`` holds this process's mean clean/adversarial loss terms since the last such
        read, and the sums restart. ``None`` before the first step."""
        if self._device is None:
            return None
        flags = torch.stack([(self.nonfinite_step >= 0).float(), self.replay_mismatches.float(),
                             self.range_excess.float(), self.bad_labels.float()])
        local = torch.cat([flags, self.nonfinite_step.float().view(1), self.nonfinite_losses, self.loss_sums])
        if world_size > 1 and accelerator is not None:
            flags = accelerator.reduce(flags.clone(), reduction="sum")
        values = torch.cat([flags, local]).tolist()
        counts = self.loss_counts if take_losses else [0, 0]
        if take_losses:
            self.loss_counts = [0, 0]
            self.loss_sums.zero_()
        any_nonfinite, mismatches, excess, bad_labels = values[0:4]
        first_bad, bad_loss, bad_clean, bad_adversarial, clean_sum, adversarial_sum = values[8:]
        return {
            "any_nonfinite": any_nonfinite > 0,
            "replay_mismatches": int(mismatches),
            "range_excess": excess,
            "bad_labels": int(bad_labels),
            "nonfinite_step": int(first_bad),
            "nonfinite_losses": {"loss": bad_loss, "clean_loss": bad_clean, "adversarial_loss": bad_adversarial},
            "loss_means": {name: total / count for name, total, count in
                           zip(self.LOSS_NAMES, (clean_sum, adversarial_sum), counts) if count},
        }


__all__ = [
    "NonFiniteLossError",
    "StepChecks",
]
