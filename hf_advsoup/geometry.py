"""The input geometry of a run: which image size and patch size a model gets when the user does not say, and what a
token count costs before training starts.

A ViT cuts each image into ``((image_size - patch_size) // stride + 1) ** 2`` patches (its tokens); attention costs
grow with their square. ViT-B/16 reads 14 x 14 = 196 tokens at 224 px; the paper's CIFAR ViT-S reads 15 x 15 = 225
with patch 4, stride 2 at 32 px. A 224-px model with 4-px patches reads 3,136, and one co-training step of even a
tiny model then takes minutes on a CPU.

- :func:`infer_image_size`: data that is not a preset gets the most common size of its training images (the shorter
  side; read from the image headers of up to :data:`SIZE_SAMPLE` images), clamped to
  [:data:`MIN_INFERRED_IMAGE_SIZE`, :data:`MAX_INFERRED_IMAGE_SIZE`].
- :func:`choose_patch_size`: the largest of :data:`PATCH_SIZES` that leaves at least :data:`MIN_PATCHES_PER_SIDE`
  patches per side (4 up to 63 px, 8 up to 127 px, 16 from 128 px: 196 tokens at 224 px, as ViT-B/16).
- :func:`estimate_step_seconds`: times one forward and backward of the model on this machine, without changing the
  model, its gradients or any random state, and scales it to one training step; scripts refuse a geometry whose
  step would take longer than they allow (``scripts/cotrain.py --max_step_seconds``).
"""

from __future__ import annotations

import io
import time
from collections import Counter
from dataclasses import dataclass

import torch

from .configuration_advsoup import patch_grid

__all__ = [
    "MAX_INFERRED_IMAGE_SIZE",
    "MIN_INFERRED_IMAGE_SIZE",
    "MIN_PATCHES_PER_SIDE",
    "PATCH_SIZES",
    "SIZE_SAMPLE",
    "choose_patch_size",
    "estimate_step_seconds",
    "infer_image_size",
    "num_tokens",
]

MAX_INFERRED_IMAGE_SIZE = 224
"""Largest inferred image size (ViT's standard input): larger images are resized down to it."""
MIN_INFERRED_IMAGE_SIZE = 16
"""Smallest inferred image size: smaller images are upscaled to it (as the digits preset does with its 8x8 images), so
that 4-px patches still leave 16 tokens."""
PATCH_SIZES = (4, 8, 16)
"""Patch sizes :func:`choose_patch_size` picks from: the paper's 4 (32-px images) to ViT's 16 (224 px)."""
MIN_PATCHES_PER_SIDE = 8
"""Patches per side the chosen patch size must leave (ViT-B/16: 14 at 224 px; the paper's CIFAR ViT: 8 at 32 px with
non-overlapping 4-px patches)."""
SIZE_SAMPLE = 256
"""Training images whose size is read (evenly spaced through the split) to find the most common one."""


def num_tokens(image_size: int, patch_size: int, patch_stride: int | None = None) -> int:
    """Patch tokens per image (the classification token not counted)."""
    rows, columns = patch_grid(image_size, patch_size, patch_stride or patch_size)
    return rows * columns


def _image_size_of(value) -> tuple[int, int] | None:
    """``(width, height)`` of an undecoded ``datasets.Image`` value (its header only), ``None`` when unreadable."""
    from PIL import Image

    try:
        if isinstance(value, Image.Image):
            return value.size
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        if source is None:
            return None
        with Image.open(source) as image:
            return image.size
    except Exception:  # a corrupt image has no size; loading counts and removes it elsewhere
        return None


def infer_image_size(dataset, *, sample: int = SIZE_SAMPLE) -> tuple[int, str]:
    """``(image_size, reason)`` for a data set that is not a preset: the shorter side of the most common size among
    up to ``sample`` training images (evenly spaced through ``dataset``, a ``datasets.Dataset`` with an ``image``
    column), clamped to [:data:`MIN_INFERRED_IMAGE_SIZE`, :data:`MAX_INFERRED_IMAGE_SIZE`]. Only image headers
    are read."""
    import datasets

    total = len(dataset)
    if total == 0:
        raise ValueError("The training split is empty: there are no images to take the image size from.")
    count = min(sample, total)
    step = total / count
    indices = sorted({int(i * step) for i in range(count)})
    raw = dataset.select(indices)
    if isinstance(raw.features.get("image"), datasets.Image):
        raw = raw.cast_column("image", datasets.Image(decode=False))
    sizes = Counter(size for size in (_image_size_of(value) for value in raw["image"]) if size is not None)
    if not sizes:
        raise ValueError("None of the sampled training images could be read: cannot take the image size from the "
                         "data. Give --image_size.")
    (width, height), frequency = sizes.most_common(1)[0]
    side = min(width, height)
    size = min(max(side, MIN_INFERRED_IMAGE_SIZE), MAX_INFERRED_IMAGE_SIZE)
    sampled = sum(sizes.values())
    reason = f"{width}x{height} is the most common size: {frequency} of {sampled} sampled training images"
    if len(sizes) > 1:
        reason += f", {len(sizes)} sizes in all"
    if size < side:
        reason += f"; resized down to {MAX_INFERRED_IMAGE_SIZE} px, ViT's standard input"
    elif size > side:
        reason += f"; upscaled to at least {MIN_INFERRED_IMAGE_SIZE} px"
    return size, reason


def choose_patch_size(image_size: int) -> tuple[int, str]:
    """``(patch_size, reason)``: the largest of :data:`PATCH_SIZES` leaving at least :data:`MIN_PATCHES_PER_SIDE`
    patches per side of an ``image_size`` image, else the smallest."""
    fitting = [patch for patch in PATCH_SIZES if image_size // patch >= MIN_PATCHES_PER_SIDE]
    patch = max(fitting) if fitting else min(PATCH_SIZES)
    sizes = ", ".join(str(p) for p in PATCH_SIZES)
    return patch, (f"the largest of {sizes} px that leaves at least {MIN_PATCHES_PER_SIDE} patches per side, else "
                   f"{min(PATCH_SIZES)}")


@dataclass(frozen=True)
class StepEstimate:
    """What one training step is expected to cost: ``seconds`` = ``seconds_per_image_pass`` x ``images`` x
    ``passes`` (forward-and-backward passes of one batch per step), measured at batch ``probe_batch``."""

    seconds: float
    seconds_per_image_pass: float
    images: int
    passes: float
    probe_batch: int

    def describe(self) -> str:
        return (f"a training step is estimated at {_number(self.seconds)} s on this machine (a forward and backward "
                f"took {_number(1000 * self.seconds_per_image_pass)} ms per image at batch {self.probe_batch}; x "
                f"{self.images} images x {self.passes:g} passes per step)")


def _number(value: float) -> str:
    """Two significant digits below 100, a whole number above (``0.35``, ``14``, ``201``, ``1,234``)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.2g}"


def _time_pass(model: torch.nn.Module, image_size: int, batch: int, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` forward-and-backward passes of ``batch`` zero images."""
    parameter = next(model.parameters())
    pixel_values = torch.zeros(batch, 3, image_size, image_size, device=parameter.device, dtype=parameter.dtype)
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        output = model(pixel_values=pixel_values)
        logits = output.logits if hasattr(output, "logits") else output
        logits.float().sum().backward()
        best = min(best, time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return best


def estimate_step_seconds(model: torch.nn.Module, image_size: int, *, images: int, passes: float,
                          limit: float | None = None, max_probe_seconds: float = 2.0,
                          repeats: int = 2) -> StepEstimate:
    """Time forward-and-backward passes of zero images through ``model`` (on its device, the fastest of ``repeats``)
    and scale the time per image to a step of ``images`` images and ``passes`` passes.

    One image is timed first, then batches of 2, 4, ... up to ``images`` (the training batch), which share fixed
    costs as training does, while the next pass is expected (at most twice the last one) to take under
    ``max_probe_seconds``. The doubling also stops while the step is above ``limit`` (seconds) and doubling the batch
    no longer cuts the time per image by a third: the time is then set by the tokens (3,136 tokens: about 0.8 s per
    image here), not by fixed costs or by threads waiting for a busy core (with 2 threads on 2 busy cores, one pass
    of one 16-token image once took 0.9 s here, against 0.5 ms per image at batch 8 with one thread). It exists to
    catch steps of minutes; on a busy machine it can be several times the real step.

    The model's parameters, gradients, train/eval mode and every random generator are left as they were: a run that
    estimates first trains bit for bit as one that does not.
    """
    grads = {name: p.grad for name, p in model.named_parameters()}
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]):
            model.train()
            last = _time_pass(model, image_size, 1, repeats)
            per_image, batch, probed = last, 1, 1
            while probed < images:
                bigger = min(2 * probed, images)
                if last * bigger / probed > max_probe_seconds:
                    break
                seconds = _time_pass(model, image_size, bigger, repeats)
                compute_bound = seconds / bigger > (last / probed) * 2 / 3
                if seconds / bigger < per_image:
                    per_image, batch = seconds / bigger, bigger
                probed, last = bigger, seconds
                if limit is not None and per_image * images * passes > limit and compute_bound:
                    break
    finally:
        model.train(was_training)
        for name, p in model.named_parameters():
            p.grad = grads[name]
    return StepEstimate(seconds=per_image * images * passes, seconds_per_image_pass=per_image, images=images,
                        passes=passes, probe_batch=batch)
