"""Image-classification data for co-training and transfer: loading, schema detection, RGB conversion, presets,
per-example transforms and the collator.

Everything here produces the canonical layout the rest of the library expects:

* ``load_image_dataset(DataArguments) -> datasets.DatasetDict`` with splits ``train``, ``validation`` and, when
  the source has a distinct labelled test split, ``test``; each split has exactly two columns, ``image``
  (:class:`datasets.Image`) and ``label`` (:class:`datasets.ClassLabel` with names). Corrupt images are removed
  and counted (``dataset_dict.report.num_corrupt_images``), never trained on.
* ``load_eval_split(name, split) -> datasets.Dataset``: ONE split in the same layout (for evaluation), without a
  train split and, for Hub ids, without downloading the other splits.
* ``build_transforms(...)`` returns a callable for :meth:`datasets.Dataset.set_transform` that turns a batch of
  rows into ``pixel_values`` (float32, normalised with the processor's mean/std, ``(3, H, W)`` at the model's
  size) and ``labels`` (int). Because the ``image`` column is consumed lazily, the Trainer must run with
  ``remove_unused_columns=False`` (otherwise it drops ``image`` before the transform sees it).
* ``collate_fn(examples)`` stacks them into ``{"pixel_values": (B, 3, H, W), "labels": (B,)}``.

Batched, on-device augmentation (RandAugment, MixUp, CutMix) lives in :mod:`hf_advsoup.augmentation`; it runs on
``[0, 1]`` pixels after the trainer un-normalises, since attacks also work in pixel space.

Provenance: the co-training recipe (appendix A of Rebuffi et al., ICLR 2023) uses random resized crops and
horizontal flips per example (here) plus RandAugment/MixUp/CutMix per batch (augmentation.py); transfer
(appendix C) resizes to the model's size without keeping the aspect ratio and flips horizontally.
No torchvision: PIL, numpy and torch only.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image as PILImage

logger = logging.getLogger(__name__)

__all__ = [
    "DATASET_PRESETS",
    "DataArguments",
    "DataReport",
    "DatasetPreset",
    "DatasetUnavailableError",
    "ImageClassificationTransform",
    "build_transforms",
    "collate_fn",
    "detect_columns",
    "find_preset",
    "load_digits_dataset",
    "load_eval_split",
    "load_image_dataset",
    "set_image_transforms",
    "to_rgb",
]

#: Column names tried, in order, when ``--image_column`` / ``--label_column`` are not given.
IMAGE_COLUMN_CANDIDATES: tuple[str, ...] = ("image", "img", "pixel_values", "picture", "images", "jpg", "png")
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = ("label", "labels", "fine_label", "class", "target", "cls", "category")
#: Split names recognised as an existing validation split when neither the preset nor the flags name one.
VALIDATION_SPLIT_CANDIDATES: tuple[str, ...] = ("validation", "valid", "val", "dev")

# ImageNet statistics: the fallback normalisation when no image processor is given (ViT's own processors use
# mean = std = 0.5; callers with a processor always get the processor's values).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetPreset:
    """Where a data set lives on the Hub and how to split it.

    Split semantics (shared by every preset and by :func:`load_image_dataset`):

    * ``train_split`` feeds ``train``.
    * ``eval_split`` feeds ``validation`` (used for evaluation during training and model selection). When it is
      ``None`` (the data set has no labelled validation split), ``validation_fraction`` of ``train_split`` is
      carved out, stratified by label, with ``validation_seed``; ``train`` keeps the rest.
    * ``test_split`` feeds ``test``: the split the paper reports accuracy on. ImageNet reports on its
      ``validation`` split (its test split is unlabelled), so it has no ``test``.

    Attributes:
        name: Short name used with ``--dataset_name``.
        hub_id: Hub repository id, or ``None`` for the embedded data set (digits).
        config_name: Hub config (subset) name, e.g. ``"cropped_digits"`` for SVHN.
        image_column: Image column in the Hub data set.
        label_column: Label column in the Hub data set.
        train_split: Split to train on.
        eval_split: Labelled held-out split used as ``validation``; ``None`` to carve one out of train.
        test_split: Split reported on (becomes ``test``); ``None`` when there is none.
        validation_fraction: Fraction of train carved out as ``validation`` when ``eval_split`` is ``None``.
        validation_seed: Seed of that carve-out (fixed so that runs share one validation set).
        num_labels: Number of classes.
        image_size: Resolution (pixels, square) of the paper's from-scratch co-training on this data set: 224 for
            ImageNet and large-image data sets, the native size for small ones (CIFAR is not rescaled; the paper
            uses patch 4 with stride 2 instead, Section 5.3 / appendix A).
        transfer_image_size: Resolution for transfer (appendix C: every data set is resized to 224x224).
        description: One line for logs and docs.
    """

    name: str
    hub_id: str | None
    config_name: str | None
    image_column: str
    label_column: str
    train_split: str
    eval_split: str | None
    test_split: str | None
    validation_fraction: float
    validation_seed: int
    num_labels: int
    image_size: int
    transfer_image_size: int = 224
    description: str = ""


DATASET_PRESETS: dict[str, DatasetPreset] = {
    preset.name: preset
    for preset in (
        DatasetPreset(
            name="imagenet-1k", hub_id="ILSVRC/imagenet-1k", config_name=None, image_column="image",
            label_column="label", train_split="train", eval_split="validation", test_split=None,
            validation_fraction=0.0, validation_seed=0, num_labels=1000, image_size=224,
            description="ImageNet-1k (gated on the Hub: accept its terms, then `hf auth login`); the paper's main "
            "benchmark, reported on the 50k validation images.",
        ),
        DatasetPreset(
            name="cifar10", hub_id="uoft-cs/cifar10", config_name=None, image_column="img", label_column="label",
            train_split="train", eval_split=None, test_split="test", validation_fraction=0.02, validation_seed=0,
            num_labels=10, image_size=32, description="CIFAR-10 (32x32; Table 5, Table 6).",
        ),
        DatasetPreset(
            name="cifar100", hub_id="uoft-cs/cifar100", config_name=None, image_column="img",
            label_column="fine_label", train_split="train", eval_split=None, test_split="test",
            validation_fraction=0.02, validation_seed=0, num_labels=100, image_size=32,
            description="CIFAR-100, fine labels (32x32; Table 5, Table 6).",
        ),
        DatasetPreset(
            name="sun397", hub_id="tanganke/sun397", config_name=None, image_column="image", label_column="label",
            train_split="train", eval_split=None, test_split="test", validation_fraction=0.1, validation_seed=0,
            num_labels=397, image_size=224, description="SUN-397 scene recognition (Table 5, Table 6).",
        ),
        DatasetPreset(
            name="resisc45", hub_id="timm/resisc45", config_name=None, image_column="image", label_column="label",
            train_split="train", eval_split="validation", test_split="test", validation_fraction=0.0,
            validation_seed=0, num_labels=45, image_size=224,
            description="RESISC-45 remote sensing (256x256; Table 5, Table 6).",
        ),
        DatasetPreset(
            name="dmlab", hub_id="dpdl-benchmark/dmlab", config_name=None, image_column="image",
            label_column="label", train_split="train", eval_split="validation", test_split="test",
            validation_fraction=0.0, validation_seed=0, num_labels=6, image_size=224,
            description="DMLab (VTAB; 6 distance classes; Table 5, Table 6).",
        ),
        DatasetPreset(
            name="mnist", hub_id="ylecun/mnist", config_name=None, image_column="image", label_column="label",
            train_split="train", eval_split=None, test_split="test", validation_fraction=0.02, validation_seed=0,
            num_labels=10, image_size=28, description="MNIST (28x28 grayscale; Table 5).",
        ),
        DatasetPreset(
            name="svhn", hub_id="ufldl-stanford/svhn", config_name="cropped_digits", image_column="image",
            label_column="label", train_split="train", eval_split=None, test_split="test",
            validation_fraction=0.02, validation_seed=0, num_labels=10, image_size=32,
            description="SVHN cropped digits (32x32; Table 5); the `extra` split is not used.",
        ),
        DatasetPreset(
            name="digits", hub_id=None, config_name=None, image_column="image", label_column="label",
            train_split="train", eval_split="validation", test_split=None, validation_fraction=0.2,
            validation_seed=0, num_labels=10, image_size=16,
            description="scikit-learn's bundled 8x8 digits (1,797 images), embedded: works offline; the default. "
            "Not in the paper; 16x16 keeps a tiny ViT (patch 4, stride 2) fast on a CPU.",
        ),
    )
}


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class DataArguments:
    """Data options, parsed by ``HfArgumentParser`` next to ``TrainingArguments``.

    Names avoid ``TrainingArguments``' fields (argparse refuses duplicates): the split seed is ``split_seed``, not
    ``data_seed`` (that one is the Trainer's sampler seed).
    """

    dataset_name: str = field(
        default="digits",
        metadata={
            "help": "A preset name (" + ", ".join(DATASET_PRESETS) + "), a Hub data set id, or a local path: a "
            "folder of class subfolders (imagefolder), a `save_to_disk` folder, a parquet file or a folder of "
            "parquet files. Default: the embedded scikit-learn digits, which needs no network."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Hub config (subset) name; default: the preset's (e.g. SVHN's cropped_digits)."}
    )
    train_split: str | None = field(default=None, metadata={"help": "Split to train on; default: preset's or 'train'."})
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "Labelled split used as `validation`; default: the preset's, else the first of "
            "validation/valid/val/dev that exists; when none exists, `validation_fraction` of train is carved out."
        },
    )
    test_split: str | None = field(
        default=None,
        metadata={
            "help": "Split reported as `test`; default: the preset's, else 'test' when it exists. 'none' drops it."
        },
    )
    image_column: str | None = field(
        default=None,
        metadata={
            "help": "Image column; default: detected ("
            + "/".join(IMAGE_COLUMN_CANDIDATES)
            + ", or the only Image feature)."
        },
    )
    label_column: str | None = field(
        default=None,
        metadata={
            "help": "Label column; default: detected ("
            + "/".join(LABEL_COLUMN_CANDIDATES)
            + ", or the only ClassLabel feature)."
        },
    )
    validation_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Fraction of train carved out as `validation` when no validation split exists (stratified). "
            "Default: the preset's (CIFAR/MNIST/SVHN 0.02, SUN-397 0.1), else 0.1. With 0, `validation` is the test "
            "split instead (the paper's protocol: train on all of train, report test)."
        },
    )
    split_seed: int = field(
        default=0, metadata={"help": "Seed of the validation carve-out and of max_*_samples subsampling."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep a random subset of this many training examples (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep a random subset of this many examples in `validation` and `test`."}
    )
    verify_images: bool = field(
        default=True,
        metadata={
            "help": "Decode every image once at load time and drop (and count) the ones that fail. Turn off for huge "
            "data sets; corrupt images are then still skipped (with a warning) by the transform and collator."
        },
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for image verification (datasets' num_proc); default: one."}
    )
    dataset_cache_dir: str | None = field(
        default=None, metadata={"help": "Where `datasets` caches downloaded/prepared data; default: HF_DATASETS_CACHE."}
    )
    random_resized_crop: bool = field(
        default=True,
        metadata={
            "help": "Train with random resized crops (co-training recipe, appendix A). False: plain resize to the "
            "model's size without keeping the aspect ratio (transfer recipe, appendix C)."
        },
    )
    crop_min_scale: float = field(
        default=0.08, metadata={"help": "Smallest crop area, as a fraction of the image, for random resized crops."}
    )
    horizontal_flip: bool = field(default=True, metadata={"help": "Random horizontal flips (p=0.5) during training."})

    def __post_init__(self) -> None:
        if self.validation_fraction is not None and not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}.")
        if not 0.0 < self.crop_min_scale <= 1.0:
            raise ValueError(f"crop_min_scale must be in (0, 1], got {self.crop_min_scale}.")


class DatasetUnavailableError(OSError):
    """A data set could not be found or downloaded (offline, no network, gated, or a typo)."""


@dataclass
class DataReport:
    """What :func:`load_image_dataset` did; attached to the result as ``dataset_dict.report``.

    Attributes:
        source: ``"preset:<name>"``, ``"hub:<id>"`` or ``"local:<kind>:<path>"``.
        image_column: Source image column (renamed ``image``).
        label_column: Source label column (renamed ``label``).
        splits: Canonical split -> source split (``"train[carved]"`` for a carved validation split).
        num_corrupt_images: Canonical split -> number of undecodable images removed.
        corrupt_examples: A few paths/indices of removed images, for the log.
    """

    source: str
    image_column: str
    label_column: str
    splits: dict[str, str] = field(default_factory=dict)
    num_corrupt_images: dict[str, int] = field(default_factory=dict)
    corrupt_examples: list[str] = field(default_factory=list)

    @property
    def total_corrupt_images(self) -> int:
        return sum(self.num_corrupt_images.values())


# ----------------------------------------------------------------------------------------------------------------
# Image conversion
# ----------------------------------------------------------------------------------------------------------------
def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Scale a high-bit-depth or float single-channel array to uint8 without clipping."""
    array = array.astype(np.float64)
    if mode.startswith("I;16"):
        # Full 16-bit range: 65535 / 257 = 255 exactly.
        return np.round(array / 257.0).clip(0, 255).astype(np.uint8)
    if mode == "F":
        low, high = float(array.min()), float(array.max())
        if low >= 0.0 and high <= 1.0:  # float images conventionally live in [0, 1]
            return np.round(array * 255.0).astype(np.uint8)
        if low >= 0.0 and high <= 255.0:
            return np.round(array).astype(np.uint8)
        span = high - low
        if span == 0:
            return np.zeros_like(array, dtype=np.uint8)
        return np.round((array - low) / span * 255).astype(np.uint8)
    # Mode "I" (32-bit int): Pillow opens some 16-bit files as "I". Values beyond 8 bits mean 16-bit data.
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 255.0:
        return array.astype(np.uint8)
    if low >= 0.0 and high <= 65535.0:
        return np.round(array / 257.0).astype(np.uint8)
    span = high - low
    return np.round((array - low) / span * 255).astype(np.uint8)


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Convert a PIL image of any mode to 8-bit RGB.

    * ``1``, ``L``: replicated to three channels.
    * ``LA``, ``RGBA``, ``PA`` and ``P`` with transparency: composited on a white background (dropping alpha
      would turn transparent pixels into whatever colour they happen to store, often black).
    * ``CMYK``, ``YCbCr``, ``HSV``, ``RGBX``...: Pillow's conversion.
    * ``I;16*`` (16-bit): divided by 257, so 0..65535 maps onto 0..255 (Pillow's own conversion clips at 255).
    * ``I`` (32-bit int): 0..255 kept, 0..65535 treated as 16-bit, anything else min-max scaled.
    * ``F`` (float): [0, 1] scaled by 255, [0, 255] kept, anything else min-max scaled.

    Raises:
        ValueError: for a mode Pillow cannot convert to RGB, naming the mode.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        gray = _to_uint8(np.asarray(image), mode)
        return PILImage.fromarray(gray, mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ValueError(f"Cannot convert an image of mode {mode!r} to RGB: {err}") from err


def _decode(value: Any) -> PILImage.Image:
    """Decode one ``datasets.Image`` cell (a PIL image, or a ``{"bytes", "path"}`` dict when ``decode=False``)."""
    if isinstance(value, PILImage.Image):
        return value
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        image = PILImage.open(io.BytesIO(data)) if data is not None else PILImage.open(path)
    elif isinstance(value, (str, os.PathLike)):
        image = PILImage.open(value)
    else:
        raise TypeError(f"Unsupported image value of type {type(value).__name__}.")
    image.load()  # force the full decode now: lazy PIL images fail later, inside a worker
    return image


def _describe(value: Any, index: int) -> str:
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return f"row {index}"


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------
def load_digits_dataset(seed: int = 0, validation_fraction: float = 0.2) -> datasets.DatasetDict:
    """The embedded default: scikit-learn's bundled digits as an image data set (offline, no download).

    ``sklearn.datasets.load_digits()`` holds 1,797 8x8 grayscale images with values 0..16; they are scaled to
    0..255 (``round(v * 255 / 16)``), stored as mode ``"L"`` PIL images, labelled with ``ClassLabel`` names
    ``"0"``..``"9"``, and split into ``train`` / ``validation`` (stratified, ``validation_fraction`` of the
    images, deterministic given ``seed``): 1,437 / 360 with the defaults.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = [PILImage.fromarray(p, mode="L") for p in pixels]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    full = datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    split = full.train_test_split(test_size=validation_fraction, seed=seed, stratify_by_column="label")
    return datasets.DatasetDict({"train": split["train"], "validation": split["test"]})


def find_preset(name: str) -> DatasetPreset | None:
    """The preset for a preset name or a preset's Hub id (case-insensitive), else ``None``."""
    if name in DATASET_PRESETS:
        return DATASET_PRESETS[name]
    for preset in DATASET_PRESETS.values():  # a Hub id of a preset gets the preset's columns and splits
        if preset.hub_id is not None and preset.hub_id.lower() == name.lower():
            return preset
    return None


def _as_dataset_dict(obj: datasets.Dataset | datasets.DatasetDict) -> datasets.DatasetDict:
    return obj if isinstance(obj, datasets.DatasetDict) else datasets.DatasetDict({"train": obj})


def _load_local(path: str, cache_dir: str | None) -> tuple[datasets.DatasetDict, str]:
    """Load a local image folder, ``save_to_disk`` folder or parquet file(s); returns the data and its kind."""
    if os.path.isfile(path):
        if path.endswith(".parquet"):
            loaded = datasets.load_dataset("parquet", data_files={"train": path}, cache_dir=cache_dir)
            return _as_dataset_dict(loaded), "parquet"
        raise ValueError(
            f"Unsupported local file {path!r}: pass a .parquet file, a folder of class subfolders, a folder written "
            "by `save_to_disk`, or a folder of parquet files."
        )
    if os.path.exists(os.path.join(path, "dataset_dict.json")) or os.path.exists(os.path.join(path, "state.json")):
        return _as_dataset_dict(datasets.load_from_disk(path)), "save_to_disk"
    has_parquet = any(name.endswith(".parquet") for _, _, files in os.walk(path) for name in files)
    builder = "parquet" if has_parquet else "imagefolder"
    return _as_dataset_dict(datasets.load_dataset(builder, data_dir=path, cache_dir=cache_dir)), builder


# Errors that mean "the Hub (or the cache) could not give us this data set"; ConnectionError is an OSError.
_HUB_ERRORS: tuple[type[BaseException], ...] = (OSError, datasets.exceptions.DatasetNotFoundError)


def _hub_unavailable(hub_id: str, config_name: str | None, err: BaseException) -> DatasetUnavailableError:
    """The one offline/network/gated error message, for whole-data-set and single-split loads alike."""
    presets = ", ".join(DATASET_PRESETS)
    return DatasetUnavailableError(
        f"Could not load the data set {hub_id!r}"
        + (f" (config {config_name!r})" if config_name else "")
        + f" from the Hugging Face Hub: {err}\n"
        "Check the network connection and the id; if HF_HUB_OFFLINE=1 (or HF_DATASETS_OFFLINE=1) is set, only "
        "data already in the local cache can be loaded; gated data sets (ImageNet-1k) need their terms accepted "
        "and `hf auth login`. Alternatively pass a local path (an image folder, a `save_to_disk` folder or "
        f"parquet files) or a preset ({presets}); `digits` is embedded and works offline."
    )


def _default_eval_split(available: Sequence[str], name: str) -> str:
    """The split to evaluate on when none is named: ``test``, else the first of ``VALIDATION_SPLIT_CANDIDATES``,
    else the only split (e.g. an image folder without split folders, which ``datasets`` names ``train``)."""
    for candidate in ("test", *VALIDATION_SPLIT_CANDIDATES):
        if candidate in available:
            return candidate
    if len(available) == 1:
        return available[0]
    raise ValueError(
        f"Cannot choose a split of {name!r} to evaluate on; available splits: {', '.join(available)}. Name one."
    )


def _load_hub(hub_id: str, config_name: str | None, cache_dir: str | None) -> datasets.DatasetDict:
    """Every split of a Hub data set (downloads and prepares all of them)."""
    try:
        return _as_dataset_dict(datasets.load_dataset(hub_id, config_name, cache_dir=cache_dir))
    except _HUB_ERRORS as err:
        raise _hub_unavailable(hub_id, config_name, err) from err


def _hub_split_data_files(
    hub_id: str, config_name: str | None, split: str | None, cache_dir: str | None
) -> tuple[str, dict[str, list[str]] | None]:
    """``(split, data files of that split only)`` from the repository's metadata (no data is downloaded).

    ``split=None`` picks :func:`_default_eval_split` of the splits the metadata lists.

    Why: in ``datasets`` 5.x, ``load_dataset(..., split=s)`` still downloads and prepares *every* split (the
    packaged builders download all of ``config.data_files`` before ``as_dataset(split=s)`` picks one). Passing
    the split's own files as ``data_files`` makes the builder see that split alone. ``None`` when the builder
    does not expose per-split files (then ``split=`` alone is used).

    Raises:
        ValueError: ``split`` is not one of the data set's splits (listing them), before anything is downloaded;
            or ``split`` is ``None`` and the splits cannot be listed.
    """
    try:
        builder = datasets.load_dataset_builder(hub_id, config_name, cache_dir=cache_dir)
    except _HUB_ERRORS as err:
        raise _hub_unavailable(hub_id, config_name, err) from err
    data_files = getattr(builder.config, "data_files", None)
    if not data_files:
        if split is None:
            raise ValueError(f"Cannot list the splits of {hub_id!r}: name the split to evaluate on.")
        return split, None
    split = split if split is not None else _default_eval_split(list(data_files), hub_id)
    if split not in data_files:
        raise ValueError(
            f"Split {split!r} not found in {hub_id!r}"
            + (f" (config {config_name!r})" if config_name else "")
            + f"; available splits: {', '.join(data_files)}."
        )
    return split, {split: list(data_files[split])}


def _load_hub_split(
    hub_id: str, config_name: str | None, split: str | None, cache_dir: str | None
) -> tuple[str, datasets.Dataset]:
    """One split of a Hub data set, ``(split, data)``: ``datasets.load_dataset(..., split=split)`` restricted to
    that split's files (``split=None``: :func:`_default_eval_split`)."""
    split, data_files = _hub_split_data_files(hub_id, config_name, split, cache_dir)
    try:
        loaded = datasets.load_dataset(hub_id, config_name, split=split, data_files=data_files, cache_dir=cache_dir)
    except _HUB_ERRORS as err:
        if data_files is None or not datasets.config.HF_HUB_OFFLINE:
            raise _hub_unavailable(hub_id, config_name, err) from err
        # Offline, a cache written by a whole-data-set load is keyed without our data_files: try that one.
        try:
            loaded = datasets.load_dataset(hub_id, config_name, split=split, cache_dir=cache_dir)
        except _HUB_ERRORS:
            raise _hub_unavailable(hub_id, config_name, err) from err
    except ValueError as err:  # datasets' "Unknown split" when the metadata could not list the splits
        raise ValueError(f"Could not load split {split!r} of {hub_id!r}: {err}") from err
    return split, loaded


def _load_source(
    name: str,
    config_name: str | None,
    cache_dir: str | None,
    *,
    split_seed: int = 0,
    validation_fraction: float | None = None,
    single_split: bool = False,
    split: str | None = None,
) -> tuple[datasets.DatasetDict, str, DatasetPreset | None]:
    """Resolve ``name`` (preset, local path, Hub id) and load it: ``(raw splits, source string, preset)``.

    ``single_split`` restricts a Hub load to ``split`` (``None``: :func:`_default_eval_split`) and downloads
    nothing else; the embedded preset and local data are always loaded whole (they are already on disk).
    ``validation_fraction`` (falsy: the preset's) and ``split_seed`` only shape the embedded digits' split.
    """
    preset = find_preset(name)
    local_path = os.path.expanduser(name)
    if preset is not None and preset.hub_id is None:  # embedded
        fraction = validation_fraction or preset.validation_fraction
        raw = load_digits_dataset(seed=split_seed, validation_fraction=fraction)
        return raw, f"preset:{preset.name}", preset
    if preset is None and os.path.exists(local_path):
        raw, kind = _load_local(local_path, cache_dir)
        return raw, f"local:{kind}:{local_path}", preset
    hub_id = preset.hub_id if preset is not None else name
    config = config_name or (preset.config_name if preset is not None else None)
    if single_split:
        split, loaded = _load_hub_split(hub_id, config, split, cache_dir)
        raw = datasets.DatasetDict({split: loaded})
    else:
        raw = _load_hub(hub_id, config, cache_dir)
    return raw, (f"preset:{preset.name}" if preset is not None else f"hub:{hub_id}"), preset


def detect_columns(
    features: datasets.Features, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """Find the image and label columns of a split.

    Explicit names are checked; otherwise the first name in ``IMAGE_COLUMN_CANDIDATES`` /
    ``LABEL_COLUMN_CANDIDATES`` present wins, then a lone ``datasets.Image`` / ``ClassLabel`` column.

    Raises:
        ValueError: listing the available columns when a column is missing or cannot be detected.
    """
    columns = list(features)
    listing = ", ".join(f"{name} ({type(feat).__name__})" for name, feat in features.items())

    def pick(explicit: str | None, candidates: Sequence[str], feature_type: type, what: str, flag: str) -> str:
        if explicit is not None:
            if explicit not in features:
                raise ValueError(f"{what} column {explicit!r} (--{flag}) is not in the data set; columns: {listing}.")
            return explicit
        for name in candidates:
            if name in features:
                return name
        typed = [name for name, feat in features.items() if isinstance(feat, feature_type)]
        if len(typed) == 1:
            return typed[0]
        raise ValueError(
            f"Could not detect the {what.lower()} column; columns: {listing}. Tried {', '.join(candidates)} and a "
            f"single {feature_type.__name__} feature. Pass --{flag} to choose one."
        )

    image = pick(image_column, IMAGE_COLUMN_CANDIDATES, datasets.Image, "Image", "image_column")
    label = pick(label_column, LABEL_COLUMN_CANDIDATES, datasets.ClassLabel, "Label", "label_column")
    if image == label:
        raise ValueError(f"The image and label columns are both {image!r}; columns: {', '.join(columns)}.")
    return image, label


def _canonical_image_column(ds: datasets.Dataset) -> datasets.Dataset:
    """Make ``image`` a ``datasets.Image`` feature (from struct {bytes, path}, file paths, or pixel arrays)."""
    feature = ds.features["image"]
    if isinstance(feature, datasets.Image):
        return ds
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "binary", "large_binary"):
        return ds.cast_column("image", datasets.Image())
    if isinstance(feature, dict) and {"bytes", "path"} <= set(feature):
        return ds.cast_column("image", datasets.Image())
    # Pixel arrays (lists / Array2D / Array3D): encode as PIL images once.
    def to_pil(batch: dict[str, list]) -> dict[str, list]:
        out = []
        for value in batch["image"]:
            array = np.asarray(value)
            if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
                array = np.moveaxis(array, 0, -1)  # CHW -> HWC
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            if array.dtype != np.uint8:
                array = np.round(array * 255 if array.max() <= 1.0 else array).clip(0, 255).astype(np.uint8)
            out.append(PILImage.fromarray(array))
        return {"image": out}

    features = ds.features.copy()
    features["image"] = datasets.Image()
    return ds.map(to_pil, batched=True, features=features, desc="Encoding pixel arrays as images")


def _canonical_columns(ds: datasets.Dataset, image_column: str, label_column: str) -> datasets.Dataset:
    """Keep the image and label columns only, named ``image`` / ``label``, with ``image`` a ``datasets.Image``."""
    detect_columns(ds.features, image_column, label_column)  # same schema in every split, or a clear error
    ds = ds.select_columns([image_column, label_column])
    ds = ds.rename_columns({k: v for k, v in ((image_column, "image"), (label_column, "label")) if k != v})
    return _canonical_image_column(ds)


def _canonical_labels(splits: dict[str, datasets.Dataset]) -> dict[str, datasets.Dataset]:
    """Give every split the same ``ClassLabel`` ``label`` column (names from the data, or "0".."N-1")."""
    features = {name: ds.features["label"] for name, ds in splits.items()}
    if all(isinstance(feat, datasets.ClassLabel) for feat in features.values()):
        names_per_split = {name: tuple(feat.names) for name, feat in features.items()}
        if len(set(names_per_split.values())) == 1:
            return splits
        # e.g. image folders whose splits hold different class sets: align on the union, sorted.
        union = sorted(set().union(*names_per_split.values()))
        mapping = {label: index for index, label in enumerate(union)}
        return {
            name: ds.align_labels_with_mapping(mapping, "label").cast_column("label", datasets.ClassLabel(names=union))
            for name, ds in splits.items()
        }
    kinds = {name: getattr(feat, "dtype", type(feat).__name__) for name, feat in features.items()}
    if all(isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string") for feat in features.values()):
        names = sorted(set().union(*(set(ds.unique("label")) for ds in splits.values())))
        return {name: ds.cast_column("label", datasets.ClassLabel(names=names)) for name, ds in splits.items()}
    if all(isinstance(feat, (datasets.Value, datasets.ClassLabel)) for feat in features.values()):
        values = np.concatenate([np.asarray(ds.unique("label")) for ds in splits.values()])
        if values.size and (not np.all(np.isfinite(values.astype(np.float64))) or np.any(values != np.round(values))):
            raise ValueError(f"Labels must be integers or strings; found non-integral values ({kinds}).")
        if values.size and values.min() < 0:
            raise ValueError(
                f"Labels must be >= 0, found {int(values.min())} (an unlabelled split, e.g. a test split with -1?). "
                "Choose labelled splits with --train_split / --eval_split / --test_split."
            )
        num_classes = int(values.max()) + 1 if values.size else 0
        class_label = datasets.ClassLabel(names=[str(i) for i in range(num_classes)])
        return {name: ds.cast_column("label", class_label) for name, ds in splits.items()}
    raise ValueError(f"Unsupported label feature types {kinds}: use an integer, string or ClassLabel column.")


def _remove_corrupt(
    ds: datasets.Dataset, split: str, num_proc: int | None, report: DataReport
) -> datasets.Dataset:
    """Drop (and count) rows whose image does not decode; returns the data set with decoding left on."""
    raw = ds.cast_column("image", datasets.Image(decode=False))

    def decodes(images: list[Any], indices: list[int]) -> list[bool]:
        flags = []
        for value, index in zip(images, indices):
            try:
                with _decode(value) as image:
                    flags.append(image.width > 0 and image.height > 0)
            except Exception as err:  # noqa: BLE001 - any decoder failure means "corrupt": Pillow raises many types
                logger.warning("Skipping corrupt image in split %r (%s): %s", split, _describe(value, index), err)
                flags.append(False)
        return flags

    # keep_in_memory: only a boolean column and an index mapping are built; nothing is written next to the data.
    flags = raw.map(
        lambda images, indices: {"_decodes": decodes(images, indices)}, batched=True, with_indices=True,
        input_columns=["image"], remove_columns=raw.column_names, keep_in_memory=True, num_proc=num_proc,
        desc=f"Verifying images ({split})",
    )["_decodes"]
    bad = [index for index, ok in enumerate(flags) if not ok]
    report.num_corrupt_images[split] = len(bad)
    if not bad:
        return ds
    report.corrupt_examples.extend(_describe(raw[i]["image"], i) for i in bad[:5])
    logger.warning("Removed %d corrupt image(s) out of %d from split %r.", len(bad), len(raw), split)
    return ds.select([index for index, ok in enumerate(flags) if ok], keep_in_memory=True)


def _check_images(
    ds: datasets.Dataset, split: str, verify: bool, num_proc: int | None, report: DataReport
) -> datasets.Dataset:
    """``verify``: remove and count corrupt images now. Otherwise defer decoding to the transform, which skips
    (and logs) undecodable images, and count 0."""
    if verify:
        return _remove_corrupt(ds, split, num_proc, report)
    report.num_corrupt_images[split] = 0
    return ds.cast_column("image", datasets.Image(decode=False))


def _carve_validation(
    train: datasets.Dataset, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split ``fraction`` of ``train`` off as validation, stratified by label when possible: ``(train, val)``."""
    counts = np.bincount(np.asarray(train["label"]), minlength=train.features["label"].num_classes)
    # Stratify when every class has >= 2 examples (datasets' stratified split requires it).
    stratify = "label" if counts.min() >= 2 and round(fraction * len(train)) >= len(counts) else None
    carved = train.train_test_split(test_size=fraction, seed=seed, stratify_by_column=stratify)
    return carved["train"], carved["test"]


def _subsample(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    if limit is None or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit))


def load_image_dataset(data_args: DataArguments) -> datasets.DatasetDict:
    """Load ``data_args.dataset_name`` into the canonical layout (see the module docstring).

    Steps: resolve the source (preset, local path, Hub id), detect/rename the image and label columns, make
    ``label`` a ``ClassLabel`` shared by all splits, remove and count corrupt images (``verify_images``), choose
    or carve ``validation``, pick ``test``, then subsample (``max_*_samples``).

    Returns:
        A ``DatasetDict`` with ``train``, ``validation`` and possibly ``test``; ``result.report`` is a
        :class:`DataReport` (source, columns, split provenance, corrupt-image counts). The attribute lives on
        this object only: ``DatasetDict.map``/``filter`` return new objects without it.

    Raises:
        ValueError: unknown columns (the message lists the data set's columns), a missing split (listing the
            available ones), unusable labels.
        DatasetUnavailableError: a Hub id that cannot be reached (offline, network, gated, typo).
    """
    raw, source, preset = _load_source(
        data_args.dataset_name, data_args.dataset_config_name, data_args.dataset_cache_dir,
        split_seed=data_args.split_seed, validation_fraction=data_args.validation_fraction,
    )
    available = list(raw)

    # --- splits ---------------------------------------------------------------------------------------------
    def require(split: str, flag: str) -> str:
        if split not in raw:
            raise ValueError(f"Split {split!r} (--{flag}) not found; available splits: {', '.join(available)}.")
        return split

    train_split = require(data_args.train_split or (preset.train_split if preset else "train"), "train_split")
    if data_args.eval_split is not None:
        eval_split: str | None = require(data_args.eval_split, "eval_split")
    elif preset is not None:
        eval_split = preset.eval_split if preset.eval_split in raw else None
    else:
        eval_split = next((s for s in VALIDATION_SPLIT_CANDIDATES if s in raw and s != train_split), None)
    if data_args.test_split is not None:
        test_split = None if data_args.test_split.lower() == "none" else require(data_args.test_split, "test_split")
    elif preset is not None:
        test_split = preset.test_split if preset.test_split in raw else None
    else:
        test_split = "test" if "test" in raw and "test" not in (train_split, eval_split) else None
    if eval_split is not None and eval_split == train_split:
        raise ValueError(
            f"--eval_split and --train_split are both {train_split!r}; leave --eval_split unset to carve one out."
        )
    if test_split is not None and test_split in (train_split, eval_split):
        test_split = None

    # --- columns --------------------------------------------------------------------------------------------
    image_column, label_column = detect_columns(
        raw[train_split].features,
        data_args.image_column or (preset.image_column if preset else None),
        data_args.label_column or (preset.label_column if preset else None),
    )
    report = DataReport(source=source, image_column=image_column, label_column=label_column)
    splits: dict[str, datasets.Dataset] = {}
    for canonical, source_split in (("train", train_split), ("validation", eval_split), ("test", test_split)):
        if source_split is None:
            continue
        splits[canonical] = _canonical_columns(raw[source_split], image_column, label_column)
        report.splits[canonical] = source_split
    splits = _canonical_labels(splits)

    # --- corrupt images -------------------------------------------------------------------------------------
    for split in list(splits):
        splits[split] = _check_images(
            splits[split], split, data_args.verify_images, data_args.preprocessing_num_workers, report
        )

    # --- validation carve-out -------------------------------------------------------------------------------
    if "validation" not in splits:
        fraction = data_args.validation_fraction
        if fraction is None:
            fraction = preset.validation_fraction if preset is not None else 0.1
        if fraction > 0:
            splits["train"], splits["validation"] = _carve_validation(splits["train"], fraction, data_args.split_seed)
            report.splits["validation"] = f"{train_split}[carved {fraction:g}, seed {data_args.split_seed}]"
            report.num_corrupt_images["validation"] = 0
        elif "test" in splits:
            splits["validation"] = splits.pop("test")
            report.splits["validation"] = report.splits.pop("test")
            report.num_corrupt_images["validation"] = report.num_corrupt_images.pop("test")
        else:
            raise ValueError(
                f"No validation split: the data has {', '.join(available)}; set --validation_fraction > 0 to carve "
                "one out of train, or --eval_split."
            )

    # --- subsampling ----------------------------------------------------------------------------------------
    splits["train"] = _subsample(splits["train"], data_args.max_train_samples, data_args.split_seed)
    for split in ("validation", "test"):
        if split in splits:
            splits[split] = _subsample(splits[split], data_args.max_eval_samples, data_args.split_seed)

    result = datasets.DatasetDict({k: splits[k] for k in ("train", "validation", "test") if k in splits})
    num_classes = result["train"].features["label"].num_classes
    if preset is not None and num_classes != preset.num_labels and data_args.max_train_samples is None:
        logger.warning("Preset %s expects %d classes but the data has %d.", preset.name, preset.num_labels, num_classes)
    result.report = report  # type: ignore[attr-defined]
    logger.info(
        "Loaded %s: %s; %d classes; columns image<-%r, label<-%r; splits %s; corrupt images removed: %s",
        source, {k: len(v) for k, v in result.items()}, num_classes, image_column, label_column, report.splits,
        report.num_corrupt_images,
    )
    return result


def load_eval_split(
    dataset_name: str,
    split: str | None = None,
    *,
    dataset_config_name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    verify_images: bool = True,
    split_seed: int = 0,
    cache_dir: str | None = None,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Load ONE split of ``dataset_name`` for evaluation, in the canonical layout; no train split is needed.

    Same sources, column detection, label canonicalisation and corrupt-image handling as
    :func:`load_image_dataset` (the same helpers), but only the requested split: a Hub id is loaded with
    ``datasets.load_dataset(id, config, split=split, data_files={split: <that split's files>})``, so the other
    splits (e.g. ImageNet's 1.28M training images) are neither downloaded nor verified.

    Args:
        dataset_name: A preset name or a preset's Hub id, a Hub id, or a local path (image folder,
            ``save_to_disk`` folder, parquet file or folder).
        split: Source split name. Default: for a preset, its test split when it has one, else its eval split
            (ImageNet-1k: ``validation``; ``digits``: ``validation``); otherwise ``test``, else the first of
            ``validation/valid/val/dev``, else the only split. For a preset without a validation split (CIFAR,
            MNIST, SVHN, SUN-397), ``"validation"`` is the seeded carve-out of train that :func:`load_image_dataset`
            makes (this loads the train split). ``digits``' ``train``/``validation`` are exactly
            ``load_image_dataset``'s (same seed).
        dataset_config_name: Hub config; default: the preset's.
        image_column, label_column: Source columns; default: the preset's, else detected (:func:`detect_columns`).
        max_samples: Keep a seeded random subset of this many examples (``load_image_dataset``'s
            ``max_eval_samples``: the same subset for the same split and seed).
        verify_images: Decode every image once and remove (count, log) the corrupt ones; False defers decoding to
            the transform, which skips undecodable images.
        split_seed: Seed of the digits split, the validation carve-out and ``max_samples``.
        cache_dir: ``datasets`` cache; default HF_DATASETS_CACHE.
        num_proc: Processes for image verification.

    Returns:
        A ``datasets.Dataset`` with columns ``image`` (``datasets.Image``) and ``label`` (``ClassLabel``: the
        data set's names, or ``"0"``..``"N-1"`` for integer labels, N = largest label of this split + 1);
        ``dataset.report`` is a :class:`DataReport` (source, columns, ``splits = {split: source split}``,
        corrupt-image counts). The attribute lives on this object only (``map``/``filter`` drop it).

    Raises:
        ValueError: a split that does not exist (the message lists the available ones), unknown columns,
            unusable labels, ``max_samples <= 0``.
        DatasetUnavailableError: a Hub id that cannot be reached (offline, network, gated, typo).
    """
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples}.")
    preset = find_preset(dataset_name)
    carve_fraction: float | None = None
    source_split = split
    if preset is not None:
        split = split or preset.test_split or preset.eval_split
        if split is None:
            raise ValueError(f"Preset {preset.name!r} has neither a test nor an eval split: name the split.")
        source_split = split
        if preset.hub_id is not None and split == "validation" and preset.eval_split is None:
            # No labelled validation split on the Hub: load_image_dataset carves one out of train.
            source_split, carve_fraction = preset.train_split, preset.validation_fraction
    raw, source, _ = _load_source(
        dataset_name, dataset_config_name, cache_dir, split_seed=split_seed, single_split=True, split=source_split
    )
    available = list(raw)
    if source_split is None:
        source_split = _default_eval_split(available, dataset_name)
    split = split or source_split
    if source_split not in raw:
        raise ValueError(f"Split {source_split!r} not found in {dataset_name!r}; available splits: "
                         f"{', '.join(available)}.")

    image_column, label_column = detect_columns(
        raw[source_split].features,
        image_column or (preset.image_column if preset else None),
        label_column or (preset.label_column if preset else None),
    )
    report = DataReport(source=source, image_column=image_column, label_column=label_column)
    ds = _canonical_labels({split: _canonical_columns(raw[source_split], image_column, label_column)})[split]
    ds = _check_images(ds, source_split, verify_images, num_proc, report)
    report.splits[split] = source_split
    if carve_fraction is not None:
        _, ds = _carve_validation(ds, carve_fraction, split_seed)
        report.splits[split] = f"{source_split}[carved {carve_fraction:g}, seed {split_seed}]"
    ds = _subsample(ds, max_samples, split_seed)
    ds.report = report  # type: ignore[attr-defined]
    logger.info(
        "Loaded %s split %r (%s): %d examples; %d classes; columns image<-%r, label<-%r; corrupt images removed: %s",
        source, split, report.splits[split], len(ds), ds.features["label"].num_classes, image_column, label_column,
        report.num_corrupt_images,
    )
    return ds


# ----------------------------------------------------------------------------------------------------------------
# Transforms and collation
# ----------------------------------------------------------------------------------------------------------------
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
    without keeping the aspect ratio (appendix C) -> normalise. Randomness comes from ``torch``'s global RNG,
    which the DataLoader seeds per worker (and ``Trainer`` seeds from ``--seed``/``--data_seed``).

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

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Random (left, top, right, bottom) box: torchvision's RandomResizedCrop.get_params, on torch's RNG."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            draws = torch.rand(4).tolist()
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

    def image_to_tensor(self, image: PILImage.Image) -> torch.Tensor:
        """One PIL image -> normalised float32 ``(3, H, W)``."""
        image = to_rgb(image)
        target = (self.size[1], self.size[0])  # PIL wants (width, height)
        if self.train and self.random_resized_crop:
            image = image.resize(target, self.resample, box=self._crop_box(*image.size))
        elif image.size != target:
            image = image.resize(target, self.resample)
        array = np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy refuses read-only memory
        if self.train and self.hflip and torch.rand(()).item() < 0.5:
            array = array[:, ::-1]
        pixels = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)
        return pixels.sub_(self.mean).div_(self.std)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pixel_values: list[torch.Tensor | None] = []
        for index, value in enumerate(batch["image"]):
            try:
                pixel_values.append(self.image_to_tensor(_decode(value)))
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
