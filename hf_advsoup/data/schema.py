"""The canonical layout: ``image`` (``datasets.Image``) and ``label`` (``ClassLabel``) columns, detected and renamed;
labels shared by every split; corrupt images removed and counted; validation carve-out and subsampling."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
from PIL import Image as PILImage

from .images import _decode, _describe

logger = logging.getLogger(__name__)

__all__ = ["DataReport", "detect_columns"]

#: Column names tried, in order, when ``--image_column`` / ``--label_column`` are not given.
IMAGE_COLUMN_CANDIDATES: tuple[str, ...] = ("image", "img", "pixel_values", "picture", "images", "jpg", "png")
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = ("label", "labels", "fine_label", "class", "target", "cls", "category")
#: Split names recognised as an existing validation split when neither the preset nor the flags name one.
VALIDATION_SPLIT_CANDIDATES: tuple[str, ...] = ("validation", "valid", "val", "dev")


@dataclass
class DataReport:
    """What :func:`load_image_dataset` did; attached to the result as ``dataset_dict.report``.

    Attributes:
        source: ``"preset:<name>"``, ``"hub:<id>"`` or ``"local:<kind>:<path>"``.
        location: The local file or folder read (e.g. ``/usr/share/datasets/fashion-mnist`` for the
            ``fashion_mnist`` preset); ``None`` for the Hub and the embedded digits.
        image_column: Source image column (renamed ``image``).
        label_column: Source label column (renamed ``label``).
        splits: Canonical split -> source split (``"train[carved]"`` for a carved validation split).
        num_corrupt_images: Canonical split -> number of undecodable images removed.
        corrupt_examples: A few paths/indices of removed images, for the log.
    """

    source: str
    image_column: str
    label_column: str
    location: str | None = None
    splits: dict[str, str] = field(default_factory=dict)
    num_corrupt_images: dict[str, int] = field(default_factory=dict)
    corrupt_examples: list[str] = field(default_factory=list)

    @property
    def total_corrupt_images(self) -> int:
        return sum(self.num_corrupt_images.values())


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


def _reject_null_labels(splits: dict[str, datasets.Dataset], source_column: str) -> None:
    """Raise when a split has rows without a label: training on them is impossible and dropping them silently
    would change the data set (and, for a test split, the reported numbers)."""
    for name, ds in splits.items():
        column = ds.select_columns(["label"]).with_format("arrow")[:]["label"]
        if column.null_count == 0:
            continue
        rows = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
        raise ValueError(
            f"The label column {source_column!r} has {column.null_count} empty (null) value(s) in split {name!r} "
            f"(of {len(ds)} rows; e.g. rows {', '.join(map(str, rows[:5]))}): every example needs a label. Choose "
            "a labelled split or another --label_column, or remove the unlabelled rows (e.g. "
            f"`ds.filter(lambda row: row[{source_column!r}] is not None)`, then `save_to_disk`)."
        )


def _canonical_labels(
    splits: dict[str, datasets.Dataset], source_column: str = "label"
) -> dict[str, datasets.Dataset]:
    """Give every split the same ``ClassLabel`` ``label`` column (names from the data, or "0".."N-1").

    Raises:
        ValueError: null labels (naming ``source_column``, the split and the count), negative or non-integral
            labels, unsupported label types.
    """
    _reject_null_labels(splits, source_column)
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
    ds: datasets.Dataset, split: str, verify: bool, num_proc: int | None, report: DataReport,
    built_by_loader: bool = False,
) -> datasets.Dataset:
    """``verify``: remove and count corrupt images now. ``built_by_loader`` (IDX pixels, the embedded digits):
    nothing can be corrupt, count 0 and keep decoding on. Otherwise defer decoding to the transform, which skips
    (and logs) undecodable images, and count 0."""
    if verify:
        return _remove_corrupt(ds, split, num_proc, report)
    report.num_corrupt_images[split] = 0
    if built_by_loader:
        return ds
    return ds.cast_column("image", datasets.Image(decode=False))


def _preset_class_names(
    splits: dict[str, datasets.Dataset], names: Sequence[str] | None, preset_name: str
) -> dict[str, datasets.Dataset]:
    """Give the canonical ``label`` column the preset's class names (same label values, new names), so that a data
    set named alike wherever it was read from (the Hub's Fashion-MNIST says "T - shirt / top", the preset
    "T-shirt/top"). A different number of classes is left alone with a warning."""
    if not names:
        return splits
    out = {}
    for split, ds in splits.items():
        feature = ds.features["label"]
        if list(feature.names) == list(names):
            out[split] = ds
        elif feature.num_classes == len(names):
            if split == next(iter(splits)):
                logger.info("Renaming the classes of %s to the preset's names: %s", preset_name, ", ".join(names))
            out[split] = ds.cast_column("label", datasets.ClassLabel(names=list(names)))
        else:
            logger.warning("%s has %d classes, the preset %d: keeping the data's class names.", preset_name,
                           feature.num_classes, len(names))
            out[split] = ds
    return out


def _labels_array(ds: datasets.Dataset) -> np.ndarray:
    """The ``label`` column as an int64 array, read through Arrow (``np.asarray(ds["label"])`` iterates row by row
    in datasets 5.x: 30 s for 60,000 rows)."""
    return np.asarray(ds.select_columns(["label"]).with_format("numpy")[:]["label"], dtype=np.int64)


def _carve_validation(
    train: datasets.Dataset, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split ``fraction`` of ``train`` off as validation, stratified by label when possible: ``(train, val)``.

    The same indices as ``train.train_test_split(test_size=fraction, seed=seed, stratify_by_column="label")``
    (``ceil(fraction * n)`` validation rows; datasets' own stratified sampler and generator), computed from the
    labels read in one Arrow pass: datasets' method reads them row by row (30 s on Fashion-MNIST's 60,000).
    """
    from datasets.utils.stratify import stratified_shuffle_split_generate_indices

    labels = _labels_array(train)
    counts = np.bincount(labels, minlength=train.features["label"].num_classes)
    num_validation = math.ceil(fraction * len(train))
    num_train = len(train) - num_validation
    if num_train <= 0 or num_validation <= 0:
        raise ValueError(f"Cannot carve {fraction:g} of {len(train)} training examples into a validation split.")
    generator = np.random.default_rng(seed)
    # Stratify when every class has >= 2 examples (datasets' stratified split requires it).
    if counts.min() >= 2 and round(fraction * len(train)) >= len(counts):
        train_indices, validation_indices = next(
            stratified_shuffle_split_generate_indices(labels, num_train, num_validation, rng=generator)
        )
    else:
        permutation = generator.permutation(len(train))
        validation_indices, train_indices = permutation[:num_validation], permutation[num_validation:]
    return train.select(train_indices), train.select(validation_indices)


def _subsample(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    if limit is None or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit))
