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
horizontal flips per example (:mod:`.transforms`) plus RandAugment/MixUp/CutMix per batch (augmentation.py); transfer
(appendix C) resizes to the model's size without keeping the aspect ratio and flips horizontally.
No torchvision: PIL, numpy and torch only.

Where things live (each module one concern):

* :mod:`.presets`: ``DatasetPreset`` and ``DATASET_PRESETS`` (Hub ids, columns, splits, image sizes, local IDX
  folders and class names of the MNIST-like presets).
* :mod:`.arguments`: ``DataArguments``, the data flags of every script.
* :mod:`.sources`: the embedded digits, local folders/files and the Hub, as raw splits; how a name is resolved.
* :mod:`.idx`: the IDX format of MNIST, Fashion-MNIST, KMNIST (reader, folder loader).
* :mod:`.schema`: column detection, the canonical ``image``/``label`` layout, corrupt-image removal, carve-outs.
* :mod:`.loading`: ``load_image_dataset`` and ``load_eval_split``, which put the above together.
* :mod:`.streaming`: ``load_streaming_dataset`` and ``StreamingTrainSet`` (``--streaming``: the training split read
  as a shuffled, per-process, resumable stream).
* :mod:`.labels`: matching an evaluation set's classes to a model's ``id2label`` by name.
* :mod:`.images`: any PIL mode to 8-bit RGB (``to_rgb``) and cell decoding.
* :mod:`.processor`: processor geometry, the evaluation crop rule, aligning the saved processor with the transforms.
* :mod:`.transforms`: per-example transforms for ``set_transform`` and the collator.
"""

from .arguments import DataArguments
from .idx import IdxFormatError, load_idx_folder, read_idx
from .images import to_rgb
from .labels import match_class_names
from .loading import load_eval_split, load_image_dataset
from .presets import DATASET_PRESETS, DatasetPreset, find_preset
from .processor import align_image_processor, default_eval_crop_pct
from .schema import DataReport, detect_columns
from .sources import DatasetUnavailableError, load_digits_dataset, local_preset_folder
from .streaming import StreamingTrainSet, load_streaming_dataset
from .transforms import ImageClassificationTransform, build_transforms, collate_fn, set_image_transforms

__all__ = [
    "DATASET_PRESETS",
    "DataArguments",
    "DataReport",
    "DatasetPreset",
    "DatasetUnavailableError",
    "IdxFormatError",
    "ImageClassificationTransform",
    "StreamingTrainSet",
    "align_image_processor",
    "build_transforms",
    "collate_fn",
    "default_eval_crop_pct",
    "detect_columns",
    "find_preset",
    "load_digits_dataset",
    "load_eval_split",
    "load_idx_folder",
    "load_image_dataset",
    "load_streaming_dataset",
    "local_preset_folder",
    "match_class_names",
    "read_idx",
    "set_image_transforms",
    "to_rgb",
]
