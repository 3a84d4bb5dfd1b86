"""Where images come from: the embedded digits, local folders and files (image folders, ``save_to_disk`` folders,
parquet, IDX files), the local IDX copies of the MNIST-like presets, and the Hugging Face Hub (whole data sets or
one split). Every loader returns raw splits (:class:`RawSource`); :mod:`.schema` makes them canonical.

Resolution of a ``--dataset_name`` (:func:`_load_source`), in order:

1. the embedded preset (``digits``);
2. a preset with local IDX files (``mnist``, ``fashion_mnist``): the folder named by its environment variable when
   set (then nothing else is tried), else the first of its ``idx_dirs`` holding the files, else its Hub id;
3. an existing local path;
4. a name that looks like a path (starts with ``/``, ``./``, ``../`` or ``~``, or has more than one ``/``) but does
   not exist: ``FileNotFoundError`` (not a Hub lookup);
5. a Hub id (a preset's, or the name itself); when the Hub does not answer (or ``HF_HUB_OFFLINE=1``), only the local
   cache is tried, so a missing data set fails in seconds (:mod:`hf_advsoup.hub_access`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image as PILImage

from ..hub_access import check_hub_or_go_offline
from .idx import is_idx_folder, load_idx_folder
from .presets import DATASET_PRESETS, DatasetPreset, find_preset
from .schema import VALIDATION_SPLIT_CANDIDATES

logger = logging.getLogger(__name__)

__all__ = ["DatasetUnavailableError", "RawSource", "load_digits_dataset"]


class DatasetUnavailableError(OSError):
    """A data set could not be found or downloaded (offline, no network, gated, or a typo)."""


@dataclass
class RawSource:
    """What :func:`_load_source` found.

    Attributes:
        splits: the raw splits, as the source names them.
        source: ``"preset:<name>"``, ``"hub:<id>"`` or ``"local:<kind>:<path>"``.
        preset: the preset, if ``name`` was one (or a preset's Hub id).
        location: the local file or folder actually read (a preset read from local IDX files included); ``None``
            for the Hub and the embedded digits.
        images_verified: every image was built by the loader itself (IDX pixels, the embedded digits), so a decode
            check at load time would find nothing: it is skipped.
    """

    splits: datasets.DatasetDict
    source: str
    preset: DatasetPreset | None
    location: str | None = None
    images_verified: bool = False


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


def _local_split_files(builder: str, path: str, split: str | None, cache_dir: str | None) -> dict | None:
    """``{split: files}`` of one split of a local parquet or image folder (``split=None``:
    :func:`_default_eval_split`), from the folder's file names alone (nothing is read); ``None`` when the builder
    lists no per-split files."""
    data_files = getattr(datasets.load_dataset_builder(builder, data_dir=path, cache_dir=cache_dir).config,
                         "data_files", None)
    if not data_files:
        return None
    split = split if split is not None else _default_eval_split(list(data_files), path)
    if split not in data_files:
        raise ValueError(f"Split {split!r} not found in {path!r}; available splits: {', '.join(data_files)}.")
    return {split: list(data_files[split])}


def _load_local(path: str, cache_dir: str | None, split: str | None = None,
                single_split: bool = False) -> tuple[datasets.DatasetDict, str]:
    """Load a local image folder, ``save_to_disk`` folder or parquet file(s); returns the data and its kind.

    ``single_split``: a parquet or image folder is read for ``split`` only (its files, found from their names; the
    other splits, e.g. a large training set, are not converted), as for Hub ids; other local data is loaded whole."""
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
    if is_idx_folder(path):
        return load_idx_folder(path), "idx"
    has_parquet = any(name.endswith(".parquet") for _, _, files in os.walk(path) for name in files)
    builder = "parquet" if has_parquet else "imagefolder"
    data_files = _local_split_files(builder, path, split, cache_dir) if single_split else None
    where = {"data_files": data_files} if data_files is not None else {"data_dir": path}
    loaded = _as_dataset_dict(datasets.load_dataset(builder, **where, cache_dir=cache_dir))
    if builder == "imagefolder" and all(ds.column_names == ["image"] for ds in loaded.values()):
        # datasets drops the labels of an image folder whose images all sit in one folder. Keep them: the label is
        # that folder's name (one class), which evaluation can match against a model's classes and training
        # rejects with "found 1 class" instead of "could not detect the label column".
        loaded = _as_dataset_dict(
            datasets.load_dataset(builder, **where, cache_dir=cache_dir, drop_labels=False)
        )
    return loaded, builder


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a Hub id (``name`` or ``namespace/name``): it starts
    with ``/``, ``./``, ``../`` or ``~``, is ``.``/``..``, ends with a separator, has more than one ``/``, or uses
    the platform's other separator (``\\`` on Windows)."""
    if name in (".", "..") or name.startswith(("/", "./", "../", "~")) or name.endswith("/"):
        return True
    if name.count("/") > 1:
        return True
    return any(sep and sep != "/" and sep in name for sep in (os.sep, os.altsep))


def _missing_path_error(name: str) -> FileNotFoundError:
    resolved = Path(os.path.expanduser(name)).absolute()
    parent = next((p for p in resolved.parents if p.exists()), None)
    return FileNotFoundError(
        f"No such file or folder: {name!r} (resolved to {resolved}"
        + (f"; the deepest existing folder is {parent}" if parent is not None else "")
        + "). A local data set is a folder of class subfolders, a `save_to_disk` folder, a parquet file or folder, "
        "or a folder of IDX files; a Hub id has the form 'name' or 'namespace/name'."
    )


# Errors that mean "the Hub (or the cache) could not give us this data set"; ConnectionError is an OSError.
_HUB_ERRORS: tuple[type[BaseException], ...] = (OSError, datasets.exceptions.DatasetNotFoundError)


def _hub_unavailable(
    hub_id: str, config_name: str | None, err: BaseException, note: str = ""
) -> DatasetUnavailableError:
    """The one offline/network/gated error message, for whole-data-set and single-split loads alike; ``note``
    (e.g. where local copies were looked for) goes first."""
    presets = ", ".join(DATASET_PRESETS)
    return DatasetUnavailableError(
        note
        + f"Could not load the data set {hub_id!r}"
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


def _load_hub(hub_id: str, config_name: str | None, cache_dir: str | None, note: str = "") -> datasets.DatasetDict:
    """Every split of a Hub data set (downloads and prepares all of them)."""
    try:
        return _as_dataset_dict(datasets.load_dataset(hub_id, config_name, cache_dir=cache_dir))
    except _HUB_ERRORS as err:
        raise _hub_unavailable(hub_id, config_name, err, note) from err


def _hub_split_data_files(
    hub_id: str, config_name: str | None, split: str | None, cache_dir: str | None, note: str = ""
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
        raise _hub_unavailable(hub_id, config_name, err, note) from err
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
    hub_id: str, config_name: str | None, split: str | None, cache_dir: str | None, note: str = ""
) -> tuple[str, datasets.Dataset]:
    """One split of a Hub data set, ``(split, data)``: ``datasets.load_dataset(..., split=split)`` restricted to
    that split's files (``split=None``: :func:`_default_eval_split`)."""
    split, data_files = _hub_split_data_files(hub_id, config_name, split, cache_dir, note)
    try:
        loaded = datasets.load_dataset(hub_id, config_name, split=split, data_files=data_files, cache_dir=cache_dir)
    except _HUB_ERRORS as err:
        if data_files is None or not datasets.config.HF_HUB_OFFLINE:
            raise _hub_unavailable(hub_id, config_name, err, note) from err
        # Offline, a cache written by a whole-data-set load is keyed without our data_files: try that one.
        try:
            loaded = datasets.load_dataset(hub_id, config_name, split=split, cache_dir=cache_dir)
        except _HUB_ERRORS:
            raise _hub_unavailable(hub_id, config_name, err, note) from err
    except ValueError as err:  # datasets' "Unknown split" when the metadata could not list the splits
        raise ValueError(f"Could not load split {split!r} of {hub_id!r}: {err}") from err
    return split, loaded


def _preset_idx_folder(preset: DatasetPreset) -> tuple[Path | None, list[str]]:
    """The folder of ``preset``'s IDX files, and what was looked at (for the error when there is none).

    The environment variable wins when set: its folder must hold the files (a clear error otherwise, nothing else is
    tried: the user said where the data is). Then the first of ``preset.idx_dirs`` that holds them.
    """
    tried = []
    if preset.idx_env_var is not None:
        explicit = os.environ.get(preset.idx_env_var)
        if explicit:
            folder = Path(os.path.expanduser(explicit))
            if not is_idx_folder(folder):
                raise FileNotFoundError(
                    f"{preset.idx_env_var}={explicit} holds no IDX files of {preset.name} (looked in {folder.absolute()} "
                    f"and its raw/ subfolder). {preset.install_hint}"
                )
            return folder, [f"${preset.idx_env_var}={explicit}"]
        tried.append(f"${preset.idx_env_var} (not set)")
    for candidate in preset.idx_dirs:
        folder = Path(os.path.expanduser(candidate))
        tried.append(str(folder.absolute()) if not folder.is_absolute() else str(folder))
        if is_idx_folder(folder):
            return folder, tried
    return None, tried


def local_preset_folder(name: str) -> Path | None:
    """The folder holding preset ``name``'s IDX files on this machine (its environment variable's folder, else the
    first of its local folders, e.g. the Debian package's ``/usr/share/datasets/fashion-mnist``), or ``None`` when
    none holds them or the preset has no local files. Never reads the network; never raises for a missing folder
    (an environment variable that names a folder without the files still raises, as loading would)."""
    preset = find_preset(name)
    if preset is None or not preset.idx_files:
        return None
    return _preset_idx_folder(preset)[0]


def _load_source(
    name: str,
    config_name: str | None,
    cache_dir: str | None,
    *,
    split_seed: int = 0,
    validation_fraction: float | None = None,
    single_split: bool = False,
    split: str | None = None,
) -> RawSource:
    """Resolve ``name`` (see the module docstring for the order) and load it.

    ``single_split`` restricts a Hub load to ``split`` (``None``: :func:`_default_eval_split`) and downloads
    nothing else, a local parquet or image folder to that split's files, and an IDX load to that split's files;
    other local data and the embedded preset are loaded whole (they are already on disk). ``validation_fraction``
    (falsy: the preset's) and ``split_seed`` only shape the embedded digits' split.

    Raises:
        FileNotFoundError: ``name`` looks like a path that does not exist; a preset's environment variable names a
            folder without its files; an IDX split with one of its two files.
        DatasetUnavailableError: the Hub could not give the data set (the message says where local copies of an
            IDX preset were looked for, and how to install them).
    """
    preset = find_preset(name)
    local_path = os.path.expanduser(name)
    if preset is not None and preset.hub_id is None:  # embedded
        fraction = validation_fraction or preset.validation_fraction
        raw = load_digits_dataset(seed=split_seed, validation_fraction=fraction)
        return RawSource(raw, f"preset:{preset.name}", preset, images_verified=True)
    note = ""
    if preset is not None and preset.idx_files:
        folder, tried = _preset_idx_folder(preset)
        if folder is not None:
            splits = [split] if single_split and split in ("train", "test") else None
            raw = load_idx_folder(folder, splits=splits, class_names=preset.class_names)
            logger.info("Reading %s from the IDX files in %s", preset.name, folder)
            return RawSource(raw, f"preset:{preset.name}", preset, location=str(folder), images_verified=True)
        note = (f"No local IDX files of {preset.name} in: {', '.join(tried)}. {preset.install_hint}\n"
                "Falling back to the Hugging Face Hub failed too. ")
    if preset is None and os.path.exists(local_path):
        raw, kind = _load_local(local_path, cache_dir, split=split, single_split=single_split)
        return RawSource(raw, f"local:{kind}:{local_path}", preset, location=local_path,
                         images_verified=kind == "idx")
    if preset is None and _looks_like_path(name):
        raise _missing_path_error(name)
    if preset is None:
        note = f"There is no local file or folder {name!r} (relative to {os.getcwd()}), so it was taken as a Hub id. "
    hub_id = preset.hub_id if preset is not None else name
    config = config_name or (preset.config_name if preset is not None else None)
    # Without a network, datasets retries for ~25 s before failing: ask the Hub once, and go offline (the cache still
    # works; anything else fails at once) when it does not answer.
    unreachable = check_hub_or_go_offline()
    if unreachable is not None:
        note += f"The Hub cannot be used: {unreachable}. "
    if single_split:
        split, loaded = _load_hub_split(hub_id, config, split, cache_dir, note)
        raw = datasets.DatasetDict({split: loaded})
    else:
        raw = _load_hub(hub_id, config, cache_dir, note)
    return RawSource(raw, f"preset:{preset.name}" if preset is not None else f"hub:{hub_id}", preset)
