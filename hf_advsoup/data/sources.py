"""Where images come from: the embedded digits, local folders and files, and the Hugging Face Hub (whole data sets
or one split). Every loader returns raw splits; :mod:`.schema` makes them canonical."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import datasets
import numpy as np
from PIL import Image as PILImage

from .presets import DATASET_PRESETS, DatasetPreset, find_preset
from .schema import VALIDATION_SPLIT_CANDIDATES

logger = logging.getLogger(__name__)

__all__ = ["DatasetUnavailableError", "load_digits_dataset"]


class DatasetUnavailableError(OSError):
    """A data set could not be found or downloaded (offline, no network, gated, or a typo)."""


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
