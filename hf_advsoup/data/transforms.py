"""Per-example transforms for ``Dataset.set_transform`` (random resized crop, flip, resize, normalisation) and the
collator. Batched, on-device augmentation (RandAugment, MixUp, CutMix) lives in :mod:`hf_advsoup.augmentation`."""

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

logger = logging.getLogger(__name__)

__all__ = ["ImageClassificationTransform", "build_transforms", "collate_fn", "set_image_transforms"]

_KEY_SIZE = 64
"""Images larger than this (pixels, either side) are identified by a _KEY_SIZE x _KEY_SIZE sample of their pixels."""


def _processor_geometry(image_processor: Any) -> tuple[tuple[int, int], tuple[float, ...], tuple[float, ...], int]:
    """(height, width), mean, std and PIL resample code of an image processor (or a (size, mean, std) tuple)."""
    if isinstance(image_processor, (tuple, list)):
        size, mean, std = image_processor
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (int(height), int(width)), tuple(mean), tuple(std), int(PILImage.Resampling.BILINEAR)
    size = image_processor.size

    def get(key: str) -> Any:
        return getattr(size, key, None) if not isinstance(size, dict) else size.get(key)

    if get("height") and get("width"):
        hw = (int(get("height")), int(get("width")))
    elif get("shortest_edge"):  # square at the shortest edge: ViTs need a fixed grid of patches
        hw = (int(get("shortest_edge")),) * 2
    else:
        raise ValueError(f"Cannot read a target size from the image processor's size {size!r}.")
    do_normalize = getattr(image_processor, "do_normalize", True)
    mean = tuple(image_processor.image_mean) if do_normalize else (0.0, 0.0, 0.0)
    std = tuple(image_processor.image_std) if do_normalize else (1.0, 1.0, 1.0)
    resample = int(getattr(image_processor, "resample", PILImage.Resampling.BILINEAR))
    return hw, mean, std, resample


class ImageClassificationTransform:
    """Per-example preprocessing for ``Dataset.set_transform`` (picklable, so DataLoader workers can use it).

    Train: RGB -> random resized crop to ``size`` (area ``scale``, aspect ``ratio``; torchvision's algorithm) or a
    plain resize -> horizontal flip with probability 0.5 -> [0, 1] -> normalise. Eval: RGB -> resize to ``size``
    without keeping the aspect ratio (appendix C) -> normalise.

    Randomness: after :meth:`set_epoch` (which :class:`~hf_advsoup.trainer.CoTrainer` calls at the start of every
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
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need three channels and std > 0, got mean={mean}, std={std}.")
        self.size = (int(size[0]), int(size[1]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
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
        array = np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy refuses read-only memory
        if self.train and self.hflip and torch.rand((), generator=generator).item() < 0.5:
            array = array[:, ::-1]
        pixels = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)
        return pixels.sub_(self.mean).div_(self.std)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pixel_values: list[torch.Tensor | None] = []
        for index, value in enumerate(batch["image"]):
            try:
                generator = self._generator(value) if self.train else None
                pixel_values.append(self.image_to_tensor(_decode(value), generator))
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
) -> ImageClassificationTransform:
    """Transform for ``Dataset.set_transform`` at the model's size and normalisation.

    Args:
        image_processor: A transformers image processor (``size`` with height/width, ``image_mean``,
            ``image_std``, ``resample``; e.g. ``ViTImageProcessorPil``, which needs no torchvision) or a tuple
            ``(size, mean, std)`` with ``size`` an int or ``(height, width)``.
        train: Random resized crop / flip when True; a plain resize when False.
        random_resized_crop: Train with random resized crops (co-training, appendix A); False resizes without
            keeping the aspect ratio (transfer, appendix C).
        scale: Crop area range as fractions of the image (default (0.08, 1), as in timm/MAE).
        hflip: Random horizontal flip with probability 0.5 during training.
    """
    size, mean, std, resample = _processor_geometry(image_processor)
    return ImageClassificationTransform(
        size, mean, std, train, random_resized_crop=random_resized_crop, scale=scale, hflip=hflip, resample=resample
    )


def set_image_transforms(
    dataset_dict: datasets.DatasetDict, image_processor: Any, data_args: DataArguments
) -> datasets.DatasetDict:
    """Attach the train transform to ``train`` and the eval transform to every other split (in place).

    The Trainer must then run with ``remove_unused_columns=False`` and ``data_collator=collate_fn``.
    """
    for split, ds in dataset_dict.items():
        is_train = split == "train"
        ds.set_transform(
            build_transforms(
                image_processor, train=is_train, random_resized_crop=data_args.random_resized_crop,
                scale=(data_args.crop_min_scale, 1.0), hflip=data_args.horizontal_flip,
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
