"""Free co-training: the pieces :class:`~hf_advsoup.training.CoTrainer` uses for ``train_attack="free"``.

Free adversarial training (Shafahi et al., "Adversarial Training for Free!", NeurIPS 2019, Algorithm 1) replays each
minibatch ``m`` times. Every replay is one ordinary training step whose backward also gives the gradient of the loss
with respect to the perturbation ``delta``; ``delta`` then takes a sign step (``delta + step * sign(grad)``,
projected onto the l_inf ball and the [0, 1] box) and is used by the next replay. The attack costs no extra pass:
a co-training step (Eq. 2 of Rebuffi et al., ICLR 2023, one forward/backward on ``[clean, clean + delta]``) costs
about twice a nominal step instead of ``2 + 2 * attack steps`` times.

The trainer keeps its one loop (one optimizer step per minibatch from the data loader); this module supplies

- :class:`FreeReplaySampler`: a sampler that yields every block of indices that one optimizer step consumes
  ``replays`` times in a row, so the Trainer's loop, its schedulers, logging, evaluation, checkpointing and
  mid-epoch resume run unchanged;
- :class:`FreeBatch`: what one process keeps about one replayed micro-batch (the augmented inputs, targets, the
  box bounds and ``delta``);
- :func:`save_free_state` / :func:`load_free_state`: ``delta`` in checkpoints, so that resuming inside a minibatch's
  replays (or with ``free_start="carry"``) continues exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Sampler

FREE_STATE_NAME = "free_perturbation.safetensors"
"""File of a checkpoint holding the perturbations of free co-training (one process; see :func:`free_state_file`)."""


def free_state_file(folder: str, process_index: int, world_size: int) -> str:
    """Path of one process's free co-training state inside a checkpoint folder (named like Trainer's RNG files:
    ``free_perturbation.safetensors`` on one process, ``free_perturbation_<process>.safetensors`` on several)."""
    if world_size > 1:
        stem, ext = os.path.splitext(FREE_STATE_NAME)
        return os.path.join(folder, f"{stem}_{process_index}{ext}")
    return os.path.join(folder, FREE_STATE_NAME)


class FreeReplaySampler(Sampler[int]):
    """Yields every block of ``block_size`` consecutive indices of ``sampler`` ``replays`` times in a row.

    A block is what one optimizer step consumes over all processes and micro-batches: ``per-device batch x
    gradient_accumulation_steps x processes`` indices. The DataLoader cuts it into batches and accelerate's batch
    sharding gives process ``p`` batches ``p, p + processes, ...``, so every process gets the same
    ``gradient_accumulation_steps`` micro-batches at each of ``replays`` consecutive optimizer steps.

    The last block of a pass over ``sampler`` is dropped when incomplete (fewer than ``block_size`` indices), so
    that every replayed minibatch has the full size and a pass has exactly ``replays x (len(sampler) //
    block_size)`` optimizer steps; with a shuffling ``sampler`` the dropped images change from pass to pass.

    ``set_epoch`` is forwarded to ``sampler`` (a seeded sampler reshuffles per epoch, and a resumed run reshuffles
    the same way).
    """

    def __init__(self, sampler: Sampler[int], block_size: int, replays: int):
        if block_size < 1 or replays < 1:
            raise ValueError(f"block_size and replays must be >= 1, got {block_size} and {replays}.")
        self.sampler = sampler
        self.block_size = int(block_size)
        self.replays = int(replays)

    def __iter__(self) -> Iterator[int]:
        block: list[int] = []
        for index in self.sampler:
            block.append(int(index))
            if len(block) == self.block_size:
                for _ in range(self.replays):
                    yield from block
                block = []

    def __len__(self) -> int:
        return len(self.sampler) // self.block_size * self.block_size * self.replays

    @property
    def blocks_per_pass(self) -> int:
        """Minibatches (optimizer steps before replaying) in one pass over the data."""
        return len(self.sampler) // self.block_size

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


@dataclass
class FreeBatch:
    """One process's state for one micro-batch of a replayed minibatch.

    ``first_step`` is the optimizer step of the minibatch's first replay (it identifies the minibatch: replay ``r``
    runs at step ``first_step + r``). Tensors live on the training device; shapes are those of the micro-batch,
    ``(batch, C, H, W)`` for images.

    Attributes:
        first_step: optimizer step of replay 0.
        delta: the current perturbation in [0, 1] pixel units, fp32.
        labels: the data loader's labels for this micro-batch (checked at every replay, and after a resume).
        raw: the data loader's ``pixel_values`` (checked at every replay); ``None`` for a state restored from a
            checkpoint, which only provides ``delta`` and ``labels``.
        pixel_values: the model inputs of the clean half (augmented once, before the replays), fp32, normalized.
        targets: the (label-smoothed, possibly soft) targets of both halves, ``(batch, num_labels)`` fp32.
        bounds: ``(lower, upper)`` of :func:`hf_advsoup.attacks.linf_bounds`: the eps-ball and [0, 1] box.
        leaf: the perturbation of the replay in progress (a leaf that requires grad), until its update.
    """

    first_step: int
    delta: torch.Tensor
    labels: torch.Tensor
    raw: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None
    leaf: torch.Tensor | None = None

    @property
    def restored(self) -> bool:
        """True for a state read from a checkpoint (no inputs cached yet)."""
        return self.raw is None


def save_free_state(path: str, batches: Mapping[int, FreeBatch], *, global_step: int, replays: int) -> None:
    """Write the perturbation and labels of each micro-batch (``batches``: micro-batch index -> state) to ``path``
    (safetensors; metadata: each micro-batch's ``first_step``, the optimizer step and ``replays``)."""
    tensors, first_steps = {}, {}
    for micro, batch in batches.items():
        tensors[f"delta.{micro}"] = batch.delta.detach().float().cpu().contiguous()
        tensors[f"labels.{micro}"] = batch.labels.detach().cpu().contiguous()
        first_steps[str(micro)] = int(batch.first_step)
    metadata = {"first_steps": json.dumps(first_steps), "global_step": str(global_step), "replays": str(replays)}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file(tensors, path, metadata=metadata)


def load_free_state(path: str, device: torch.device) -> tuple[dict[int, FreeBatch], int]:
    """Read :func:`save_free_state`'s file: ``({micro-batch index: restored FreeBatch}, replays)``."""
    with safe_open(path, "pt") as handle:
        metadata = handle.metadata() or {}
        first_steps = json.loads(metadata.get("first_steps", "{}"))
        batches = {
            int(micro): FreeBatch(
                first_step=int(first_step),
                delta=handle.get_tensor(f"delta.{micro}").to(device=device, dtype=torch.float32),
                labels=handle.get_tensor(f"labels.{micro}").to(device),
            )
            for micro, first_step in first_steps.items()
        }
    return batches, int(metadata.get("replays", 0))


__all__ = ["FREE_STATE_NAME", "FreeBatch", "FreeReplaySampler", "free_state_file", "load_free_state",
           "save_free_state"]
