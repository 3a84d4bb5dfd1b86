"""Exponential moving average of the weights (the paper's EMA, momentum 0.9999): the fp32 shadow, the callback that
updates it after each optimizer step and writes it into each checkpoint (``ema.safetensors``)."""

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

    def save(self, path: str) -> None:
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.shadow.items()}
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
        self.shadow = {name: tensors[name].to(device=p.device, dtype=torch.float32) for name, p in params.items()}
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
        if args.should_save and self.ema.initialized:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            os.makedirs(folder, exist_ok=True)
            self.ema.save(os.path.join(folder, EMA_WEIGHTS_NAME))


__all__ = [
    "EMACallback",
    "EMA_WEIGHTS_NAME",
    "WeightEMA",
]
