"""The image processor and the transforms must prepare an image the same way: geometry read from a processor, the
evaluation crop rule, and the alignment of the processor saved with a model to the transforms it was trained with.

Why this matters: ``transformers.pipeline`` and a user's own code prepare images with the processor saved next to
the model, while training and evaluation here use :mod:`.transforms`. Two differences existed:

* **Colour.** The transforms composite transparent images (``RGBA``, ``LA``, ``P`` with transparency) on white
  (:func:`~hf_advsoup.data.images.to_rgb`). A processor composites on white only with ``do_convert_rgb=True``
  (``transformers.image_transforms.convert_to_rgb``, PIL and torchvision backends alike); without it the alpha
  channel is dropped and transparent pixels keep whatever colour they store (often black).
* **Evaluation crop.** ImageNet-size evaluation resizes the shorter side to ``size / crop_pct`` and centre-crops
  ``size`` (``crop_pct = 0.875``: 256 -> 224, the protocol of DeiT and MAE, whose recipe the paper follows);
  small images are resized to the model's size directly.

:func:`align_image_processor` writes both decisions into the processor (``do_convert_rgb=True``; ``size`` /
``crop_size`` / ``do_center_crop``), so the processor saved with a model reproduces the evaluation transform.

The crop rule (:func:`default_eval_crop_pct`): ``crop_pct = 0.875`` when the model's input is at least
:data:`CROP_MIN_SIZE` (128) pixels on its shorter side and training uses random resized crops (the Inception-style
pair: random crops for training, a centre crop for evaluation); ``1.0`` otherwise (CIFAR at 32 px, MNIST-like data at
28 px, and transfer, which resizes without cropping, appendix C). ``--eval_crop_pct`` overrides it. An evaluation
transform built from a processor that already records the decision (``do_center_crop`` set) follows the processor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image as PILImage

__all__ = [
    "CROP_MIN_SIZE",
    "DEFAULT_EVAL_CROP_PCT",
    "ProcessorGeometry",
    "align_image_processor",
    "default_eval_crop_pct",
    "eval_resize_for",
    "processor_geometry",
    "resolve_eval_resize",
]

DEFAULT_EVAL_CROP_PCT = 0.875
"""Fraction of the resized image kept by the evaluation centre crop at ImageNet size (224 of 256; DeiT, MAE)."""

CROP_MIN_SIZE = 128
"""Smallest model input (pixels, shorter side) evaluated with a centre crop by default: below, images are small data
sets' native images (28-32 px) where a crop would cut off object pixels the model was trained on."""


def default_eval_crop_pct(size: int | tuple[int, int], random_resized_crop: bool = True) -> float:
    """The evaluation ``crop_pct`` for a model input of ``size`` pixels (int or (height, width)):
    :data:`DEFAULT_EVAL_CROP_PCT` when ``min(size) >= CROP_MIN_SIZE`` and training uses random resized crops, else
    1.0 (a plain resize to ``size``)."""
    shorter = size if isinstance(size, int) else min(size)
    return DEFAULT_EVAL_CROP_PCT if random_resized_crop and shorter >= CROP_MIN_SIZE else 1.0


def eval_resize_for(size: tuple[int, int], crop_pct: float) -> int | None:
    """Shorter side (pixels) an image is resized to before the centre crop of ``size`` at ``crop_pct``
    (``floor(max(size) / crop_pct)``, timm's ``scale_size``: 256 for 224 at 0.875); ``None`` for ``crop_pct == 1``
    (a plain resize to ``size``)."""
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}.")
    if crop_pct == 1.0:
        return None
    return int(math.floor(max(size) / crop_pct))


@dataclass(frozen=True)
class ProcessorGeometry:
    """How an image processor prepares an image for evaluation.

    Attributes:
        size: The model's input, ``(height, width)`` in pixels (the crop size when the processor crops).
        mean, std: Per-channel normalisation (``(0, 0, 0)`` / ``(1, 1, 1)`` when ``do_normalize`` is off).
        resample: PIL resampling filter code.
        eval_resize: Before the centre crop to ``size``, resize the shorter side to this many pixels (an int), or
            to exactly ``(height, width)`` (a tuple); ``None``: no crop, a plain resize to ``size``.
        crop_decided: The processor states ``do_center_crop`` (True or False); ``False`` when it is unset (older
            checkpoints, stock ViT processors): the evaluation then follows :func:`default_eval_crop_pct`.
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: int
    eval_resize: int | tuple[int, int] | None = None
    crop_decided: bool = False


def _get(size: Any, key: str) -> Any:
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def processor_geometry(image_processor: Any) -> ProcessorGeometry:
    """Read a transformers image processor (``size``, ``crop_size``, ``do_center_crop``, ``image_mean``,
    ``image_std``, ``resample``) or a ``(size, mean, std)`` tuple (``size`` an int or ``(height, width)``; no crop
    decided).

    A ``size`` with only ``shortest_edge`` and no crop is read as a square of that side (ViTs need a fixed grid).

    Raises:
        ValueError: no usable size.
    """
    if isinstance(image_processor, (tuple, list)):
        size, mean, std = image_processor
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return ProcessorGeometry((int(height), int(width)), tuple(mean), tuple(std),
                                 int(PILImage.Resampling.BILINEAR))
    size = image_processor.size
    if _get(size, "height") and _get(size, "width"):
        resize: int | tuple[int, int] = (int(_get(size, "height")), int(_get(size, "width")))
    elif _get(size, "shortest_edge"):
        resize = int(_get(size, "shortest_edge"))
    else:
        raise ValueError(f"Cannot read a target size from the image processor's size {size!r}.")
    do_center_crop = getattr(image_processor, "do_center_crop", None)
    crop = getattr(image_processor, "crop_size", None)
    if do_center_crop and crop is not None and _get(crop, "height") and _get(crop, "width"):
        hw = (int(_get(crop, "height")), int(_get(crop, "width")))
        eval_resize: int | tuple[int, int] | None = resize
    else:
        hw = resize if isinstance(resize, tuple) else (resize, resize)
        eval_resize = None
    do_normalize = getattr(image_processor, "do_normalize", True)
    mean = tuple(image_processor.image_mean) if do_normalize else (0.0, 0.0, 0.0)
    std = tuple(image_processor.image_std) if do_normalize else (1.0, 1.0, 1.0)
    resample = int(getattr(image_processor, "resample", PILImage.Resampling.BILINEAR))
    return ProcessorGeometry(hw, mean, std, resample, eval_resize, crop_decided=do_center_crop is not None)


def resolve_eval_resize(
    geometry: ProcessorGeometry, crop_pct: float | None, random_resized_crop: bool = True
) -> int | tuple[int, int] | None:
    """The evaluation resize for ``geometry``: from ``crop_pct`` when given, else the processor's own decision when
    it recorded one, else :func:`default_eval_crop_pct` of the input size."""
    if crop_pct is not None:
        return eval_resize_for(geometry.size, crop_pct)
    if geometry.crop_decided:
        return geometry.eval_resize
    return eval_resize_for(geometry.size, default_eval_crop_pct(geometry.size, random_resized_crop))


def align_image_processor(image_processor: Any, crop_pct: float) -> Any:
    """Make ``image_processor`` prepare images as the evaluation transform at ``crop_pct`` does, in place (it is the
    processor the Trainer saves next to the model): ``do_convert_rgb=True`` (transparency composited on white, like
    :func:`~hf_advsoup.data.images.to_rgb`), and either ``size={"shortest_edge": floor(max(size) / crop_pct)}``,
    ``crop_size=size``, ``do_center_crop=True`` or, for ``crop_pct == 1``, ``size=size`` with
    ``do_center_crop=False`` (recorded explicitly, so that evaluation follows it). ``size`` is the model's input
    (:func:`processor_geometry`). A ``(size, mean, std)`` tuple is returned unchanged. Returns the processor."""
    if isinstance(image_processor, (tuple, list)):
        return image_processor
    height, width = processor_geometry(image_processor).size
    image_processor.do_convert_rgb = True
    resize = eval_resize_for((height, width), crop_pct)
    if resize is None:
        image_processor.size = {"height": height, "width": width}
        image_processor.do_center_crop = False
    else:
        image_processor.size = {"shortest_edge": resize}
        image_processor.crop_size = {"height": height, "width": width}
        image_processor.do_center_crop = True
    return image_processor
