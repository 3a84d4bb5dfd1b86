"""Exponential moving average of the weights (the paper's EMA, momentum 0.9999): the fp32 shadow, the callback that
updates it after each optimizer step and writes it into each checkpoint (``ema.safetensors``).

Under FSDP the shadow follows each process's shards (``DTensor`` s like the parameters); checkpoints hold the whole
EMA (gathered by every process, written by the main one), and loading one puts each process's part of it back,
so a checkpoint resumes with any number of processes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

EMA_WEIGHTS_NAME = "ema.safetensors"
"""File holding the fp32 EMA of the weights inside a checkpoint folder (safetensors)."""


class WeightEMA:
    """Exponential moving average of the trainable weights in an fp32 shadow (the paper's EMA, momentum 0.9999).

    ``shadow <- d * shadow + (1 - d) * weights`` after each optimizer step, with ``d = decay`` or, with ``warmup``,
    ``min(decay, (1 + n) / (10 + n))`` at update ``n`` (TensorFlow's ``num_updates`` rule) so that short runs average
    their recent weights rather than their initialisation. Parameters are matched by name; frozen parameters are not
    tracked (they do not change).
    """

    def __init__(self, decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}.")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {}

    @property
    def initialized(self) -> bool:
        return bool(self.shadow)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @staticmethod
    def _tracked(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        _reshard(model)
        return ((name, p) for name, p in model.named_parameters() if p.requires_grad)

    @torch.no_grad()
    def initialize(self, model: nn.Module) -> None:
        self.shadow = {name: p.detach().float().clone() for name, p in self._tracked(model)}
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if not self.initialized:
            self.initialize(model)
            return
        weight = 1.0 - self.current_decay()
        shadows, params = [], []
        for name, p in self._tracked(model):
            shadows.append(self.shadow[name])
            params.append(p.detach().float())
        torch._foreach_lerp_(shadows, params, weight)
        self.num_updates += 1

    @contextlib.contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Load the EMA weights into ``model`` for the duration of the block, then put the raw weights back."""
        if not self.initialized:
            yield model
            return
        backup = {}
        with torch.no_grad():
            for name, p in self._tracked(model):
                backup[name] = p.detach().clone()
                p.copy_(self.shadow[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in self._tracked(model):
                    p.copy_(backup[name])

    def full_shadow(self) -> dict[str, torch.Tensor]:
        """The whole EMA on CPU (``DTensor`` shards gathered: under FSDP every process must call it)."""
        return {name: _full(t).detach().cpu().contiguous() for name, t in self.shadow.items()}

    def save(self, path: str | None, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write the EMA (``tensors``: what :meth:`full_shadow` returned, else it is called here) to ``path``
        (``None``: gather only, the call of a process that does not write)."""
        tensors = self.full_shadow() if tensors is None else tensors
        if path is not None:
            save_file(tensors, path, metadata={"num_updates": str(self.num_updates), "decay": repr(self.decay)})

    def load(self, path: str, model: nn.Module) -> None:
        from safetensors import safe_open

        tensors = load_file(path)
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
        params = dict(self._tracked(model))
        missing = sorted(set(params) - set(tensors))
        if missing:
            raise ValueError(f"{path} lacks EMA weights for {missing[:5]} (and {max(len(missing) - 5, 0)} more).")
        self.shadow = {name: _like(tensors[name].to(dtype=torch.float32), p) for name, p in params.items()}
        self.num_updates = int(metadata.get("num_updates", 0))


class EMACallback(TrainerCallback):
    """Updates a :class:`WeightEMA` after each optimizer step and writes it into each checkpoint folder."""

    def __init__(self, ema: WeightEMA):
        self.ema = ema

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # A resumed run loaded its EMA in CoTrainer._load_from_checkpoint (called before this event).
        if not self.ema.initialized:
            self.ema.initialize(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(model)

    def on_save(self, args, state, control, **kwargs):
        if not self.ema.initialized:
            return
        tensors = self.ema.full_shadow()  # every process: gathers FSDP shards
        if args.should_save:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            os.makedirs(folder, exist_ok=True)
            self.ema.save(os.path.join(folder, EMA_WEIGHTS_NAME), tensors)


def _reshard(model: nn.Module) -> None:
    """Put every FSDP2 unit of ``model`` back to its shards: after an evaluation forward, the root unit keeps its
    parameters gathered (plain tensors) until the next forward, so the EMA would meet another set of tensors."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _full(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``full`` (a whole tensor) laid out like ``param``: this process's shard of it when ``param`` is a
    ``DTensor``, else on ``param``'s device."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        # Every process read the same file: each keeps its own part, nothing is sent.
        return distribute_tensor(full.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
    return full.to(device=param.device)


__all__ = [
    "EMACallback",
    "EMA_WEIGHTS_NAME",
    "WeightEMA",
]
