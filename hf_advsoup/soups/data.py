"""Evaluation data and the model's state during an evaluation: batches from tensors or a loader, the first N
examples, autocast, a temporary eval mode, a forward counter and the restriction of logits to a data set's classes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

EvalData = Any
"""Evaluation data: a ``(pixel_values, labels)`` pair of tensors, or an iterable (e.g. a ``DataLoader``) of batches,
each a mapping with ``"pixel_values"`` and ``"labels"`` (the project's ``collate_fn``) or a ``(pixel_values, labels)``
pair. ``pixel_values`` are normalized by the model's image processor, shape ``(batch, channels, height, width)``."""


def iter_batches(data: EvalData, batch_size: int, max_examples: int | None = None) -> Iterator[tuple]:
    """Yield ``(pixel_values, labels)`` batches from :data:`EvalData`, stopping after ``max_examples`` examples."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        pixel_values, labels = data
        if pixel_values.shape[0] != labels.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} images but {labels.shape[0]} labels.")
        batches: Iterable = (
            (pixel_values[i : i + batch_size], labels[i : i + batch_size])
            for i in range(0, pixel_values.shape[0], batch_size)
        )
    else:
        batches = data
    seen = 0
    for batch in batches:
        if isinstance(batch, Mapping):
            if "pixel_values" not in batch or "labels" not in batch:
                raise KeyError(f"A batch needs 'pixel_values' and 'labels'; got keys {sorted(batch)}.")
            x, y = batch["pixel_values"], batch["labels"]
        else:
            x, y = batch
        if max_examples is not None:
            if seen >= max_examples:
                return
            x, y = x[: max_examples - seen], y[: max_examples - seen]
        seen += x.shape[0]
        yield x, y


def collect_examples(data: EvalData, max_examples: int | None, batch_size: int = 256) -> tuple:
    """The first ``max_examples`` examples of ``data`` as two CPU tensors ``(pixel_values, labels)``."""
    xs, ys = [], []
    for x, y in iter_batches(data, batch_size, max_examples):
        xs.append(x.cpu())
        ys.append(y.cpu())
    if not xs:
        raise ValueError("The evaluation data set is empty.")
    return torch.cat(xs), torch.cat(ys)


def _autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


class _EvalMode:
    """Put a module in eval mode for a block and restore its previous mode (no hidden mode change)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.modes = {m: m.training for m in self.module.modules()}
        self.module.eval()
        return self.module

    def __exit__(self, *exc):
        for m, mode in self.modes.items():
            m.training = mode


class ForwardCounter:
    """Count the images that go through ``module.forward`` (a forward pre-hook), e.g. during an attack.

    An ensemble forward is two calls of the underlying network, so it counts twice. Use as a context manager;
    ``count`` holds the number of single-image forward passes seen.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.count = 0
        self._handle = None

    def _hook(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("pixel_values")
        if isinstance(x, torch.Tensor):
            self.count += x.shape[0]

    def __enter__(self) -> ForwardCounter:
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


@contextlib.contextmanager
def restrict_logits(model: nn.Module, class_indices: Sequence[int] | None) -> Iterator[nn.Module]:
    """Within the block, every forward of ``model`` returns ``logits[..., class_indices]``: the model's scores of an
    evaluation set's classes, in the evaluation set's label order (``class_indices[i]`` is the model's class of
    evaluation label ``i``; :func:`hf_advsoup.data.labels.match_class_names`).

    This is how ImageNet-A and ImageNet-R (200 of ImageNet's 1,000 classes; Hendrycks et al. 2021) are evaluated: a
    prediction is the best of the evaluation set's classes. A forward hook does it, so everything that calls the
    model sees the restricted logits: soups, :meth:`~AdvSoupViTForImageClassification.ensemble_forward` (each mode
    restricted before the probabilities are averaged) and the attacks. ``None`` leaves the model untouched. A
    forward given ``labels`` raises (its loss was computed over all classes). The hook is removed on exit.
    """
    if class_indices is None:
        yield model
        return
    index = torch.as_tensor(list(class_indices), dtype=torch.long)

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return output.index_select(-1, index.to(output.device))
        if getattr(output, "loss", None) is not None:
            raise RuntimeError("restrict_logits: the forward computed a loss over all classes; call the model "
                               "without labels.")
        output.logits = output.logits.index_select(-1, index.to(output.logits.device))
        return output

    handle = model.register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


def _restricted(
    model: nn.Module, datasets: Mapping[str, EvalData], class_indices: Mapping[str, Sequence[int]] | None
) -> Iterator[tuple[str, EvalData]]:
    """``datasets.items()``, with ``model``'s logits restricted to ``class_indices[name]`` (:func:`restrict_logits`)
    while the caller's loop body handles data set ``name``; the hook is removed when the loop moves on or ends (or
    when the generator is closed, after an exception)."""
    for name, data in datasets.items():
        with restrict_logits(model, (class_indices or {}).get(name)):
            yield name, data


__all__ = [
    "EvalData",
    "ForwardCounter",
    "collect_examples",
    "iter_batches",
    "restrict_logits",
]
