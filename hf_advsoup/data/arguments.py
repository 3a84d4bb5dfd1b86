"""``DataArguments`` (the data flags of every script), the loading report and the unavailable-data error."""

from __future__ import annotations

from dataclasses import dataclass, field

from .presets import DATASET_PRESETS
from .schema import IMAGE_COLUMN_CANDIDATES, LABEL_COLUMN_CANDIDATES

__all__ = ["DataArguments"]


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
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the training split (datasets' IterableDataset: a Hub id, a parquet or image folder, a "
            "save_to_disk folder) instead of loading it whole: shuffled with a buffer, split across processes, read "
            "pass after pass; the run's length is --max_steps (required). Validation and test are loaded one split "
            "each. Resuming restores each process's position (hf_advsoup.data.streaming)."
        },
    )
    shuffle_buffer_size: int = field(
        default=10_000,
        metadata={
            "help": "--streaming: examples in the shuffle buffer of each process (and loader worker), on top of a "
            "shuffled shard order; 0 shuffles the shards only (then a resumed run repeats the uninterrupted one "
            "exactly; with a buffer, the examples in it at the checkpoint are skipped for that pass). ImageNet-size "
            "JPEGs take about 110 KB each in the buffer."
        },
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
    eval_crop_pct: float | None = field(
        default=None,
        metadata={
            "help": "Evaluation: resize the shorter side to size / eval_crop_pct, then centre-crop the model's size "
            "(ImageNet protocol: 0.875, 256 -> 224); 1 resizes to the model's size directly. Default: 0.875 when the "
            "model's input is >= 128 px and training uses random resized crops, else 1. The saved image processor "
            "is set to match."
        },
    )

    def __post_init__(self) -> None:
        if self.validation_fraction is not None and not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}.")
        if self.shuffle_buffer_size < 0:
            raise ValueError(f"shuffle_buffer_size must be >= 0, got {self.shuffle_buffer_size}.")
        if not 0.0 < self.crop_min_scale <= 1.0:
            raise ValueError(f"crop_min_scale must be in (0, 1], got {self.crop_min_scale}.")
        if self.eval_crop_pct is not None and not 0.0 < self.eval_crop_pct <= 1.0:
            raise ValueError(f"eval_crop_pct is the kept fraction, in (0, 1], got {self.eval_crop_pct} (ImageNet: "
                             "0.875).")
