"""Loading a data set into the canonical layout: :func:`load_image_dataset` (train / validation / test) and
:func:`load_eval_split` (one split, for evaluation)."""

from __future__ import annotations

import logging

import datasets

from .arguments import DataArguments
from .presets import find_preset
from .schema import (
    VALIDATION_SPLIT_CANDIDATES,
    DataReport,
    _canonical_columns,
    _canonical_labels,
    _carve_validation,
    _check_images,
    _preset_class_names,
    _subsample,
    detect_columns,
)
from .sources import _default_eval_split, _load_source

logger = logging.getLogger(__name__)

__all__ = ["load_eval_split", "load_image_dataset"]


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
    loaded = _load_source(
        data_args.dataset_name, data_args.dataset_config_name, data_args.dataset_cache_dir,
        split_seed=data_args.split_seed, validation_fraction=data_args.validation_fraction,
    )
    raw, source, preset = loaded.splits, loaded.source, loaded.preset
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
    report = DataReport(source=source, image_column=image_column, label_column=label_column,
                        location=loaded.location)
    splits: dict[str, datasets.Dataset] = {}
    for canonical, source_split in (("train", train_split), ("validation", eval_split), ("test", test_split)):
        if source_split is None:
            continue
        splits[canonical] = _canonical_columns(raw[source_split], image_column, label_column)
        report.splits[canonical] = source_split
    splits = _canonical_labels(splits, label_column)
    if preset is not None:
        splits = _preset_class_names(splits, preset.class_names, preset.name)
    names = splits["train"].features["label"].names
    if len(names) < 2:
        raise ValueError(
            f"{data_args.dataset_name} has {len(names)} class ({', '.join(map(repr, names)) or 'none'}): training a "
            "classifier needs at least 2. An image folder needs one subfolder per class (<folder>/<class name>/"
            "<image>); images directly in the folder, or in a single subfolder, make one class."
        )

    # --- corrupt images -------------------------------------------------------------------------------------
    for split in list(splits):
        splits[split] = _check_images(
            splits[split], split, data_args.verify_images and not loaded.images_verified,
            data_args.preprocessing_num_workers, report, built_by_loader=loaded.images_verified,
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
    loaded = _load_source(
        dataset_name, dataset_config_name, cache_dir, split_seed=split_seed, single_split=True, split=source_split
    )
    raw, source = loaded.splits, loaded.source
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
    report = DataReport(source=source, image_column=image_column, label_column=label_column,
                        location=loaded.location)
    splits = _canonical_labels({split: _canonical_columns(raw[source_split], image_column, label_column)},
                               label_column)
    if preset is not None:
        splits = _preset_class_names(splits, preset.class_names, preset.name)
    ds = _check_images(splits[split], source_split, verify_images and not loaded.images_verified, num_proc, report,
                       built_by_loader=loaded.images_verified)
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
