"""Streaming training data (``--streaming``): train on a data set read as it is needed, never downloaded or converted
whole (ImageNet-1k is about 150 GB).

:func:`load_streaming_dataset` returns the same layout as :func:`~hf_advsoup.data.load_image_dataset` with a
:class:`StreamingTrainSet` as ``train``: a Hub id, a local parquet folder (or file), an image folder or a
``save_to_disk`` folder read through ``datasets``' :class:`~datasets.IterableDataset`; ``validation`` (and ``test``) are
ordinary ``datasets.Dataset`` s loaded one split at a time (:func:`~hf_advsoup.data.load_eval_split`: for a Hub id or a
local folder, only that split's files are read), since evaluation needs a fixed, finite set.

:class:`StreamingTrainSet` is what each training process iterates:

- **split across processes** by :meth:`StreamingTrainSet.for_process` (``datasets.distributed.split_dataset_by_node``):
  whole shards per process when their number is a multiple of the processes' (each reads only its files), else
  every process reads the stream and keeps one example in ``world_size``; loader workers then share out the
  process's shards (a worker without one reads nothing: use at most as many workers as shards per process);
- **shuffled with a buffer**, after the split: ``IterableDataset.shuffle(seed, buffer_size)``: the order of the
  process's shards and, within a buffer of ``shuffle_buffer_size`` examples fed by one shard at a time, of the
  examples; reshuffled every pass (a seed drawn from the run's, ``data_seed`` else ``seed``, and the pass);
- **endless**: pass after pass (each process counts its own), so every process has a batch at every step and the
  run's length is ``max_steps``;
- **the same transforms** as the map-style path (:class:`~hf_advsoup.data.ImageClassificationTransform`: random
  resized crop and flip drawn from ``(seed, pass, image)``; the batch augmentation runs in the trainer as always);
- **resumable**: :meth:`StreamingTrainSet.state_dict` is ``datasets``' ``IterableDataset.state_dict`` (the shard and
  the position in it, the pass). :class:`~hf_advsoup.training.CoTrainer` saves it per process in every checkpoint and
  restores it (through torchdata's ``StatefulDataLoader`` with loader workers). What is exact: the position (no
  example of the pass is repeated, the next ones are read) and the crops and flips; with ``shuffle_buffer_size=0``
  (shard order shuffled, no example buffer) the resumed run sees exactly the batches of the uninterrupted one. With a
  buffer, the examples in it when the checkpoint was written (up to ``shuffle_buffer_size`` per process and worker)
  are not seen in that pass and the order after the resume differs (``datasets`` refills the buffer with new data).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import numpy as np
import torch

from .arguments import DataArguments
from .loading import load_eval_split
from .presets import find_preset
from .schema import VALIDATION_SPLIT_CANDIDATES, DataReport, detect_columns
from .sources import _HUB_ERRORS, _hub_unavailable, _looks_like_path, _missing_path_error

logger = logging.getLogger(__name__)

__all__ = ["StreamingTrainSet", "load_streaming_dataset"]


class StreamingTrainSet(torch.utils.data.IterableDataset):
    """The training stream of one process (see the module docstring): ``{"pixel_values": (3, H, W), "labels": int}``
    examples, endlessly, once a transform is set (:meth:`set_transform`, as ``Dataset.set_transform``).

    Args:
        stream: a ``datasets.IterableDataset`` with the canonical ``image`` (undecoded: ``{"bytes", "path"}``) and
            ``label`` (``ClassLabel``) columns, unshuffled.
        seed: the shuffling seed (the same on every process).
        shuffle_buffer_size: examples in the shuffle buffer; 0 shuffles the shards only.
        num_examples: the stream's size when its metadata says (for epoch-based schedules), else ``None``.
        description: where the data comes from, for logs.
    """

    def __init__(self, stream: datasets.IterableDataset, *, seed: int, shuffle_buffer_size: int,
                 num_examples: int | None = None, description: str = "stream", rank: int = 0, world_size: int = 1):
        super().__init__()
        if shuffle_buffer_size < 0:
            raise ValueError(f"shuffle_buffer_size must be >= 0, got {shuffle_buffer_size}.")
        self.source = stream
        self.seed = int(seed)
        self.shuffle_buffer_size = int(shuffle_buffer_size)
        self.num_examples = num_examples
        self.description = description
        self.rank, self.world_size = rank, world_size
        self.features = stream.features
        self.transform: Callable | None = None
        part = stream
        if world_size > 1:
            from datasets.distributed import split_dataset_by_node

            part = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        self._part = part
        self._pass = 0
        self._stream = self._shuffled(0)
        self._resumed = False

    def _shuffled(self, pass_index: int) -> datasets.IterableDataset:
        """Pass ``pass_index`` of this process's part: split first, then shuffled (the order of its shards and its
        examples in a buffer) with a seed drawn from ``(seed, pass)``.

        Each pass is a new shuffle rather than ``set_epoch``: ``datasets`` keeps the epoch in a tensor shared with
        the loader workers, so a worker finishing its pass would move the others' epoch while they read. One input
        shard at a time feeds the buffer: datasets 5.x's default of up to 10 (``CyclingMultiSourcesExamplesIterable``)
        cannot restore loader workers' positions (IndexError in ``StatefulDataLoader.load_state_dict``, datasets 5.2
        with torchdata 0.11)."""
        seed = int(np.random.SeedSequence([self.seed, pass_index]).generate_state(1)[0])
        return self._part.shuffle(seed=seed, buffer_size=max(self.shuffle_buffer_size, 1), max_buffer_input_shards=1)

    # ------------------------------------------------------------------ configuration
    def set_transform(self, transform: Callable | None) -> None:
        """The per-example transform (``Dataset.set_transform``'s batch interface: ``{"image": [...], "label":
        [...]}`` -> ``{"pixel_values": [...], "labels": [...]}``); its ``set_epoch(pass, seed)`` is called at the
        start of every pass when it has one."""
        self.transform = transform

    def for_process(self, rank: int, world_size: int) -> StreamingTrainSet:
        """This process's part of the stream (``split_dataset_by_node``), with the same transform and seed."""
        if world_size <= 1:
            return self
        part = StreamingTrainSet(self.source, seed=self.seed, shuffle_buffer_size=self.shuffle_buffer_size,
                                 num_examples=self.num_examples, description=self.description, rank=rank,
                                 world_size=world_size)
        part.transform = self.transform
        return part

    @property
    def num_shards(self) -> int:
        """Shards (files) this process reads; loader workers share them out (a worker without one reads nothing)."""
        if self.split_strategy == "shards":
            return self.source.n_shards // self.world_size
        return self.source.n_shards

    @property
    def split_strategy(self) -> str:
        """How :meth:`for_process` split the stream: ``"shards"`` (whole files per process), ``"examples"`` (one
        example in ``world_size``) or ``"none"`` (one process)."""
        if self.world_size <= 1:
            return "none"
        return "shards" if self.source.n_shards % self.world_size == 0 else "examples"

    def describe(self) -> dict[str, Any]:
        return {"description": self.description, "rank": self.rank, "world_size": self.world_size,
                "n_shards": self.source.n_shards, "process_shards": self.num_shards,
                "split_strategy": self.split_strategy, "seed": self.seed,
                "shuffle_buffer_size": self.shuffle_buffer_size, "pass": self.pass_index}

    # ------------------------------------------------------------------ state
    @property
    def pass_index(self) -> int:
        """The pass over (this process's, or loader worker's, part of) the data the stream is in, from 0."""
        return self._pass

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is: the pass and ``datasets``' state of it (the shard and the position in it)."""
        return {"pass": self._pass, "stream": self._stream.state_dict(), "rank": self.rank,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (of the same process of the same number of processes) at the next iteration."""
        if (state.get("rank"), state.get("world_size")) != (self.rank, self.world_size):
            raise ValueError(f"The stream state is of process {state.get('rank')} of {state.get('world_size')}, "
                             f"this is process {self.rank} of {self.world_size}: resume with the same number of "
                             "processes.")
        self._pass = int(state["pass"])
        self._stream = self._shuffled(self._pass)
        self._stream.load_state_dict(state["stream"])
        self._resumed = True

    # ------------------------------------------------------------------ iteration
    def _examples(self) -> Iterator[dict[str, Any]]:
        while True:
            resumed, self._resumed = self._resumed, False
            if hasattr(self.transform, "set_epoch"):
                self.transform.set_epoch(self.pass_index, self.seed)
            count = 0
            for example in self._stream:
                count += 1
                yield example
            if count == 0 and not resumed:
                if torch.utils.data.get_worker_info() is not None:
                    return  # a loader worker that was given no shard: the other workers read the data
                raise ValueError(f"The training stream ({self.description}) of process {self.rank} of "
                                 f"{self.world_size} is empty.")
            self._pass += 1
            self._stream = self._shuffled(self._pass)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.transform is None:
            raise RuntimeError("StreamingTrainSet has no transform: set_image_transforms (or set_transform) first.")
        for example in self._examples():
            out = self.transform({"image": [example["image"]], "label": [example["label"]]})
            yield {"pixel_values": out["pixel_values"][0], "labels": out["labels"][0]}


# ---------------------------------------------------------------------------------------------- loading
def _open_stream(name: str, config_name: str | None, cache_dir: str | None) -> tuple[datasets.IterableDatasetDict, str]:
    """Every split of ``name`` as ``IterableDataset`` s (nothing is downloaded or read yet) and the source's name."""
    preset = find_preset(name)
    local = os.path.expanduser(name)
    if preset is not None and preset.hub_id is None:
        raise ValueError(f"--streaming: {preset.name} is embedded in the package ({preset.name} has nothing to "
                         "stream); drop --streaming.")
    if preset is None and os.path.exists(local):
        if os.path.isfile(local):
            if not local.endswith(".parquet"):
                raise ValueError(f"--streaming reads parquet files, image folders, save_to_disk folders and Hub ids, "
                                 f"not {local!r}.")
            return datasets.load_dataset("parquet", data_files={"train": local}, streaming=True,
                                         cache_dir=cache_dir), f"local:parquet:{local}"
        if os.path.exists(os.path.join(local, "dataset_dict.json")) or os.path.exists(
                os.path.join(local, "state.json")):
            loaded = datasets.load_from_disk(local)
            splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
            # Arrow files on disk: shards for the processes and loader workers to share out.
            return datasets.IterableDatasetDict({
                split: ds.to_iterable_dataset(num_shards=max(1, min(64, len(ds))))
                for split, ds in splits.items()}), f"local:save_to_disk:{local}"
        has_parquet = any(n.endswith(".parquet") for _, _, files in os.walk(local) for n in files)
        builder = "parquet" if has_parquet else "imagefolder"
        return datasets.load_dataset(builder, data_dir=local, streaming=True, cache_dir=cache_dir), \
            f"local:{builder}:{local}"
    if preset is None and _looks_like_path(name):
        raise _missing_path_error(name)
    if preset is not None and preset.idx_files:
        logger.warning("--streaming %s: streaming from the Hub (%s), not the local IDX files.", preset.name,
                       preset.hub_id)
    hub_id = preset.hub_id if preset is not None else name
    config = config_name or (preset.config_name if preset is not None else None)
    try:
        return datasets.load_dataset(hub_id, config, streaming=True, cache_dir=cache_dir), (
            f"preset:{preset.name}" if preset is not None else f"hub:{hub_id}")
    except _HUB_ERRORS as error:
        raise _hub_unavailable(hub_id, config, error) from error


def _declared_size(stream: datasets.IterableDataset, split: str) -> int | None:
    """The examples of ``split`` without reading it: the metadata's count (Hub data sets with split sizes), else the
    row counts in the footers of local parquet files; ``None`` when neither says."""
    info = getattr(stream, "info", None)
    split_info = (info.splits or {}).get(split) if info is not None and info.splits else None
    if getattr(split_info, "num_examples", None):
        return int(split_info.num_examples)
    files = [file for file in _data_files(stream) if isinstance(file, str)]
    if files and all(file.endswith(".parquet") and os.path.isfile(file) for file in files):
        import pyarrow.parquet as pq

        return sum(pq.read_metadata(file).num_rows for file in files)
    return None


def _data_files(stream: datasets.IterableDataset) -> list:
    """The files a stream reads (``gen_kwargs`` of its source: a list of files, or a list of lists)."""
    kwargs = getattr(getattr(stream, "_ex_iterable", None), "kwargs", None) or {}
    files = kwargs.get("files") or []
    return [f for item in files for f in (item if isinstance(item, (list, tuple)) else [item])]


def _align_labels(ds: datasets.Dataset, names: list[str], split: str) -> datasets.Dataset:
    """``ds`` (an evaluation split) with the training stream's class names and indices."""
    own = list(ds.features["label"].names)
    if own == names:
        return ds
    unknown = sorted(set(own) - set(names))
    if unknown:
        raise ValueError(f"Split {split!r} has classes the training stream does not: {unknown[:5]}.")
    mapping = {name: index for index, name in enumerate(names)}
    return ds.align_labels_with_mapping(mapping, "label").cast_column("label", datasets.ClassLabel(names=names))


def load_streaming_dataset(data_args: DataArguments, seed: int = 0) -> datasets.DatasetDict:
    """``train`` as a :class:`StreamingTrainSet` of ``data_args.dataset_name`` (shuffled with ``seed`` and
    ``data_args.shuffle_buffer_size``), ``validation`` and ``test`` as ``datasets.Dataset`` s (one split read each).

    The training split needs a ``ClassLabel`` label column (its class names are the model's); ``validation`` must be
    a split of the source (``--eval_split``, the preset's, or ``validation/valid/val/dev``), or the test split with
    ``--validation_fraction 0``: a carve-out of a stream would need the whole training split.

    Raises:
        ValueError: the embedded digits, ``--max_train_samples`` (a stream is bounded by ``--max_steps``), a label
            column without class names, no validation split.
    """
    if data_args.max_train_samples is not None:
        raise ValueError("--max_train_samples does not apply to --streaming: a stream has no size; bound the run with "
                         "--max_steps.")
    preset = find_preset(data_args.dataset_name)
    streams, source = _open_stream(data_args.dataset_name, data_args.dataset_config_name,
                                   data_args.dataset_cache_dir)
    available = list(streams)
    train_split = data_args.train_split or (preset.train_split if preset is not None else "train")
    if train_split not in streams:
        raise ValueError(f"Split {train_split!r} (--train_split) not found; available splits: {', '.join(available)}.")
    stream = streams[train_split]
    if stream.features is None:
        raise ValueError(f"--streaming: {data_args.dataset_name} does not declare its columns; stream a parquet or "
                         "image folder, or a Hub data set with features.")
    image_column, label_column = detect_columns(
        stream.features, data_args.image_column or (preset.image_column if preset else None),
        data_args.label_column or (preset.label_column if preset else None))
    stream = stream.select_columns([image_column, label_column]).rename_columns(
        {k: v for k, v in ((image_column, "image"), (label_column, "label")) if k != v})
    label = stream.features["label"]
    if preset is not None and preset.class_names is not None:
        label = datasets.ClassLabel(names=list(preset.class_names))
        stream = stream.cast_column("label", label)
    if not isinstance(label, datasets.ClassLabel):
        raise ValueError(f"--streaming needs class names: the label column {label_column!r} is {label}, not a "
                         "ClassLabel (a stream cannot be read whole to find its classes). Stream a data set whose "
                         "features name the classes (image folders and Hub data sets with ClassLabel do).")
    # Images stay encoded in the stream: the transform decodes them (and keys its crops on their bytes).
    stream = stream.cast_column("image", datasets.Image(decode=False))
    names = list(label.names)

    # Evaluation splits: one split each, read whole (only that split's files).
    eval_split = data_args.eval_split or (preset.eval_split if preset is not None else None) or next(
        (s for s in VALIDATION_SPLIT_CANDIDATES if s in streams and s != train_split), None)
    test_split = None if (data_args.test_split or "").lower() == "none" else (
        data_args.test_split or (preset.test_split if preset is not None else None)
        or ("test" if "test" in streams else None))
    if eval_split is None and data_args.validation_fraction == 0 and test_split in streams:
        eval_split, test_split = test_split, None
    if eval_split is None or eval_split not in streams:
        raise ValueError(f"--streaming needs a validation split of {data_args.dataset_name} (available splits: "
                         f"{', '.join(available)}): name it with --eval_split, or use --validation_fraction 0 to "
                         "evaluate on the test split; a carve-out of a stream would need the whole training split.")
    report = DataReport(source=source, image_column=image_column, label_column=label_column,
                        location=data_args.dataset_name if source.startswith("local:") else None)
    report.splits["train"] = f"{train_split}[streaming]"
    splits: dict[str, Any] = {}
    for canonical, split in (("validation", eval_split), ("test", test_split)):
        if split is None or split not in streams or split in (train_split,) or (canonical == "test" and
                                                                                  split == eval_split):
            continue
        ds = load_eval_split(
            data_args.dataset_name, split, dataset_config_name=data_args.dataset_config_name,
            image_column=data_args.image_column, label_column=data_args.label_column,
            max_samples=data_args.max_eval_samples, verify_images=data_args.verify_images,
            split_seed=data_args.split_seed, cache_dir=data_args.dataset_cache_dir,
            num_proc=data_args.preprocessing_num_workers)
        splits[canonical] = _align_labels(ds, names, split)
        report.splits[canonical] = split
        report.num_corrupt_images[canonical] = ds.report.num_corrupt_images.get(split, 0)

    num_examples = _declared_size(streams[train_split], train_split)
    train = StreamingTrainSet(stream, seed=seed, shuffle_buffer_size=data_args.shuffle_buffer_size,
                              num_examples=num_examples, description=f"{source} {train_split}")
    result = datasets.DatasetDict({"train": train, **splits})  # type: ignore[dict-item]
    result.report = report  # type: ignore[attr-defined]
    logger.info("Streaming %s: train split %r (%d shards, shuffle buffer %d, seed %d), %d classes; evaluation %s.",
                source, train_split, stream.n_shards, data_args.shuffle_buffer_size, seed, len(names),
                {k: len(v) for k, v in splits.items()})
    return result
