"""Per-example transforms for ``Dataset.set_transform`` (random resized crop, flip, resize, evaluation centre crop,
normalisation) and the collator. Batched, on-device augmentation (RandAugment, MixUp, CutMix) lives in
:mod:`hf_advsoup.augmentation`; how a processor's geometry is read and kept in line with these transforms, in
:mod:`.processor`."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image as PILImage

from .arguments import DataArguments
from .images import _decode, _describe, to_rgb
from .processor import align_image_processor, default_eval_crop_pct, processor_geometry, resolve_eval_resize

logger = logging.getLogger(__name__)

__all__ = ["ImageClassificationTransform", "build_transforms", "collate_fn", "set_image_transforms"]

_KEY_SIZE = 64
"""Images larger than this (pixels, either side) are identified by a _KEY_SIZE x _KEY_SIZE sample of their pixels."""


class ImageClassificationTransform:
    """Per-example preprocessing for ``Dataset.set_transform`` (picklable, so DataLoader workers can use it).

    Train: RGB -> random resized crop to ``size`` (area ``scale``, aspect ``ratio``; torchvision's algorithm) or a
    plain resize -> horizontal flip with probability 0.5 -> [0, 1] -> normalise. Eval: RGB -> resize to ``size``
    without keeping the aspect ratio (appendix C) -> normalise; or, with ``eval_resize``, resize the shorter side to
    ``eval_resize`` pixels (an int; the aspect ratio kept, transformers' rounding) or to exactly ``eval_resize =
    (height, width)``, then centre-crop ``size`` (the ImageNet protocol, :mod:`.processor`).

    Randomness: after :meth:`set_epoch` (which :class:`~hf_advsoup.training.CoTrainer` calls at the start of every
    epoch), the crop and flip of an image are a pure function of ``(seed, epoch, the image's content)``: neither
    torch's global RNG, nor the DataLoader worker, nor the order or batch the image comes in play a part, so a run
    resumed mid-epoch repeats them exactly. Before any ``set_epoch`` (e.g. under a plain ``Trainer``), draws come
    from torch's global RNG, which the DataLoader seeds per worker and which a resumed run does not repeat.

    Output of ``__call__`` on a batch dict: ``{"pixel_values": [float32 (3, H, W)], "labels": [int]}``; an image
    that fails to decode yields ``pixel_values=None`` (logged) and :func:`collate_fn` drops it.
    """

    def __init__(
        self,
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        *,
        random_resized_crop: bool = True,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        resample: int = int(PILImage.Resampling.BILINEAR),
        eval_resize: int | tuple[int, int] | None = None,
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need three channels and std > 0, got mean={mean}, std={std}.")
        if isinstance(eval_resize, int) and eval_resize < max(size):
            raise ValueError(f"eval_resize {eval_resize} is smaller than the crop {tuple(size)}.")
        if isinstance(eval_resize, tuple) and (eval_resize[0] < size[0] or eval_resize[1] < size[1]):
            raise ValueError(f"eval_resize {eval_resize} is smaller than the crop {tuple(size)}.")
        self.eval_resize = eval_resize
        self.size = (int(size[0]), int(size[1]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        # (x / 255 - mean) / std of every uint8 value of each channel, computed with the same float32 operations as
        # on whole images: looking pixels up gives the same numbers, bit for bit, at about half the cost.
        self._lut = (torch.arange(256, dtype=torch.float32).div_(255.0).expand(3, 256).clone()
                     .sub_(self.mean.view(3, 1)).div_(self.std.view(3, 1)).numpy())
        self.train = train
        self.random_resized_crop = random_resized_crop
        self.scale = scale
        self.ratio = ratio
        self.hflip = hflip
        self.resample = PILImage.Resampling(resample)
        self.seed: int | None = None
        self.epoch: int | None = None

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Draw the crops and flips of epoch ``epoch`` (0-based) of the run seeded ``seed`` as a pure function of
        ``(seed, epoch, image)``. Called before the epoch's DataLoader iterator (and its worker processes, which get
        a copy of this object) is created."""
        self.epoch, self.seed = int(epoch), int(seed)

    def _generator(self, value: Any) -> torch.Generator | None:
        """The generator of one image's draws, seeded with a 64-bit BLAKE2b hash of ``(seed, epoch, image)``;
        ``None`` (torch's global RNG) before :meth:`set_epoch`.

        The image is identified by its stored bytes or path when the cell holds them (``decode=False``), else by
        its mode, size and pixels; for images larger than ``_KEY_SIZE`` pixels a side, by a fixed nearest-neighbour
        sample of ``_KEY_SIZE`` x ``_KEY_SIZE`` pixels (hashing every pixel of a large photo would cost a third of
        its preprocessing). Identical images thus get identical draws within an epoch.
        """
        if self.epoch is None:
            return None
        digest = hashlib.blake2b(f"{self.seed},{self.epoch},".encode(), digest_size=8)
        if isinstance(value, dict) and value.get("bytes") is not None:
            digest.update(value["bytes"])
        elif isinstance(value, (dict, str, os.PathLike)):
            digest.update(os.fsencode(value["path"] if isinstance(value, dict) else value))
        else:  # a decoded PIL image
            digest.update(f"{value.mode}{value.size}".encode())
            if max(value.size) > _KEY_SIZE:
                value = value.resize((_KEY_SIZE, _KEY_SIZE), PILImage.Resampling.NEAREST)
            digest.update(value.tobytes())
        generator = torch.Generator()
        generator.manual_seed(int.from_bytes(digest.digest(), "little"))
        return generator

    def _crop_box(
        self, width: int, height: int, generator: torch.Generator | None = None
    ) -> tuple[int, int, int, int]:
        """Random (left, top, right, bottom) box: torchvision's RandomResizedCrop.get_params."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            draws = torch.rand(4, generator=generator).tolist()
            target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * draws[0])
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                left = int(draws[2] * (width - w + 1))
                top = int(draws[3] * (height - h + 1))
                return left, top, left + w, top + h
        # Fallback: central crop with the aspect ratio clamped into range.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def image_to_tensor(self, image: PILImage.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """One PIL image -> normalised float32 ``(3, H, W)``; training draws come from ``generator`` (default:
        torch's global RNG)."""
        image = to_rgb(image)
        target = (self.size[1], self.size[0])  # PIL wants (width, height)
        if self.train and self.random_resized_crop:
            image = image.resize(target, self.resample, box=self._crop_box(*image.size, generator=generator))
        elif image.size != target:
            image = image.resize(target, self.resample)
        if self.train and self.hflip and torch.rand((), generator=generator).item() < 0.5:
            image = image.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)  # on the small image, in C
        array = np.asarray(image, dtype=np.uint8)
        pixels = np.empty((3, *array.shape[:2]), dtype=np.float32)
        for channel in range(3):  # normalised by table look-up (see __init__)
            np.take(self._lut[channel], array[..., channel], out=pixels[channel])
        return torch.from_numpy(pixels)

    def resize_center_crop(self, image: PILImage.Image) -> PILImage.Image:
        """The evaluation resize and centre crop to ``size`` (``eval_resize``), on the RGB image, with the
        arithmetic of transformers' processors (shorter side: ``int(eval_resize * long / short)`` for the longer
        one; crop offsets ``(side - crop) // 2``), so that a processor aligned by
        :func:`~hf_advsoup.data.processor.align_image_processor` gives the same pixels."""
        image = to_rgb(image)
        width, height = image.size
        if isinstance(self.eval_resize, int):
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.eval_resize, int(self.eval_resize * long / short)
            new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
        else:
            new_height, new_width = self.eval_resize
        if (new_width, new_height) != image.size:
            image = image.resize((new_width, new_height), self.resample)
        top, left = (new_height - self.size[0]) // 2, (new_width - self.size[1]) // 2
        return image.crop((left, top, left + self.size[1], top + self.size[0]))

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pixel_values: list[torch.Tensor | None] = []
        for index, value in enumerate(batch["image"]):
            try:
                image = _decode(value)
                if not self.train and self.eval_resize is not None:
                    image = self.resize_center_crop(image)  # then image_to_tensor has nothing left to resize
                generator = self._generator(value) if self.train else None
                pixel_values.append(self.image_to_tensor(image, generator))
            except Exception as err:  # noqa: BLE001 - a corrupt image is skipped, never trained on
                logger.warning("Skipping an undecodable image (%s): %s", _describe(value, index), err)
                pixel_values.append(None)
        out: dict[str, list] = {"pixel_values": pixel_values}
        if "label" in batch:  # unlabelled data (inference) has no label column
            out["labels"] = list(batch["label"])
        return out


def build_transforms(
    image_processor: Any,
    train: bool,
    *,
    random_resized_crop: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: bool = True,
    crop_pct: float | None = None,
) -> ImageClassificationTransform:
    """Transform for ``Dataset.set_transform`` at the model's size and normalisation.

    Args:
        image_processor: A transformers image processor (``size`` with height/width or shortest_edge, optional
            ``crop_size``/``do_center_crop``, ``image_mean``, ``image_std``, ``resample``; e.g.
            ``ViTImageProcessorPil``, which needs no torchvision) or a tuple ``(size, mean, std)`` with ``size`` an
            int or ``(height, width)``. The model's input is the crop size when the processor crops.
        train: Random resized crop / flip when True; the evaluation resize (and crop) when False.
        random_resized_crop: Train with random resized crops (co-training, appendix A); False resizes without
            keeping the aspect ratio (transfer, appendix C). Also feeds the default crop rule.
        scale: Crop area range as fractions of the image (default (0.08, 1), as in timm/MAE).
        hflip: Random horizontal flip with probability 0.5 during training.
        crop_pct: Evaluation: resize the shorter side to ``floor(max(size) / crop_pct)`` and centre-crop ``size``;
            1 is a plain resize. Default: the processor's own decision when it records one (``do_center_crop``
            set), else :func:`~hf_advsoup.data.processor.default_eval_crop_pct` (0.875 from 128 px with random
            resized crops, else 1).
    """
    geometry = processor_geometry(image_processor)
    eval_resize = resolve_eval_resize(geometry, crop_pct, random_resized_crop)
    return ImageClassificationTransform(
        geometry.size, geometry.mean, geometry.std, train, random_resized_crop=random_resized_crop, scale=scale,
        hflip=hflip, resample=geometry.resample, eval_resize=eval_resize,
    )


def set_image_transforms(
    dataset_dict: datasets.DatasetDict, image_processor: Any, data_args: DataArguments
) -> datasets.DatasetDict:
    """Attach the train transform to ``train`` and the eval transform to every other split (in place), and align
    ``image_processor`` with them (in place; it is the processor saved with the model, which ``pipeline`` uses):
    ``do_convert_rgb=True`` and the evaluation crop (:func:`~hf_advsoup.data.processor.align_image_processor`).

    The evaluation crop is ``data_args.eval_crop_pct``, else
    :func:`~hf_advsoup.data.processor.default_eval_crop_pct` of the model's input size and
    ``data_args.random_resized_crop``. The Trainer must then run with ``remove_unused_columns=False`` and
    ``data_collator=collate_fn``.
    """
    size = processor_geometry(image_processor).size
    crop_pct = data_args.eval_crop_pct
    if crop_pct is None:
        crop_pct = default_eval_crop_pct(size, data_args.random_resized_crop)
    align_image_processor(image_processor, crop_pct)
    logger.info("Evaluation transform: %s to %dx%d (crop_pct %g); the image processor is set to match.",
                "resize the shorter side, then centre-crop" if crop_pct < 1 else "resize", size[0], size[1], crop_pct)
    for split, ds in dataset_dict.items():
        is_train = split == "train"
        ds.set_transform(
            build_transforms(
                image_processor, train=is_train, random_resized_crop=data_args.random_resized_crop,
                scale=(data_args.crop_min_scale, 1.0), hflip=data_args.horizontal_flip, crop_pct=crop_pct,
            )
        )
    return dataset_dict


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack transformed examples: ``{"pixel_values": float32 (B, 3, H, W), "labels": int64 (B,)}``.

    ``labels`` is left out for unlabelled examples (inference).

    Examples whose image failed to decode (``pixel_values is None``) are dropped with a warning.
    """
    kept = [example for example in examples if example.get("pixel_values") is not None]
    if len(kept) < len(examples):
        logger.warning("Dropped %d undecodable image(s) from a batch of %d.", len(examples) - len(kept), len(examples))
    if not kept:
        raise RuntimeError(f"Every image in this batch of {len(examples)} failed to decode; check the data set.")
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in kept])}
    if any(key in kept[0] for key in ("labels", "label")):
        labels = [example["labels"] if "labels" in example else example["label"] for example in kept]
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
    return batch
