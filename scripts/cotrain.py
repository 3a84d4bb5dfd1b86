#!/usr/bin/env python
"""Adversarial co-training of a dual-adapter ViT (Rebuffi et al., ICLR 2023): nominal, adversarial, fully shared
and dual-adapter runs all use this script (``--alpha``, ``--adapter``).

Launch::

    # The main job: a tiny dual-token ViT, offline, on a CPU, in a few minutes, ending with a soup table. On
    # Fashion-MNIST when it is installed (apt-get install dataset-fashion-mnist), else on scikit-learn's digits.
    python scripts/cotrain.py --output_dir runs/main

    # A recipe file (YAML or JSON; every field of the argument classes below), with command-line overrides.
    python scripts/cotrain.py scripts/configs/vit_s_cifar10.yaml --output_dir runs/cifar10 --alpha 0.4

    # Stream the training split (a Hub id, a parquet or image folder) instead of loading it whole; --max_steps.
    python scripts/cotrain.py scripts/configs/vit_b16_imagenet.yaml --streaming --max_steps 93900 \
        --eval_strategy steps --eval_steps 313 --save_strategy steps --save_steps 313 --output_dir runs/in1k

    # More hardware: accelerate (one GPU, several GPUs, FSDP; see scripts/accelerate/ and docs/cotraining.md).
    accelerate launch --config_file scripts/accelerate/multi_gpu.yaml scripts/cotrain.py \
        scripts/configs/vit_b16_imagenet.yaml --output_dir runs/imagenet

Arguments come from four dataclasses parsed by :class:`~transformers.HfArgumentParser`: :class:`ModelArguments`
(below), :class:`hf_advsoup.data.DataArguments`, :class:`hf_advsoup.augmentation.AugmentationArguments` and
:class:`hf_advsoup.training_args.CoTrainingArguments`. With no recipe file, the defaults are one of two tiny runs
(:func:`embedded_defaults`): :data:`FASHION_MNIST_DEFAULTS` when Fashion-MNIST's files are on this machine and
``--dataset_name`` is not given (or is ``fashion_mnist``), else :data:`EMBEDDED_DEFAULTS` (digits); a recipe file
replaces them, and command-line flags override both. Both end by printing the soup table (``--soup_table``).

The saved model (EMA weights, image processor, remote code) loads with
``AutoModelForImageClassification.from_pretrained(output_dir, beta=0.5)`` and works in
``pipeline("image-classification", model=output_dir)``.

Data that is not a preset gets its image size from its images and a patch size from the image size
(:func:`choose_geometry`, :mod:`hf_advsoup.geometry`); the first log line says what runs, with the reasons. On a CPU,
a step estimated above ``--max_step_seconds`` is refused before training. A user error ends with one line ``error:
...`` (exit code 2), a Ctrl-C during training with how to resume (:mod:`hf_advsoup.cli`); the run ends with the soup
table, the ``evaluate_soups.py`` command that recomputes it, and the validation split's numbers, named as such.

``--output_dir`` is required. A folder that is not empty is refused unless ``--resume_from_checkpoint`` continues
the run in it (a checkpoint folder, or ``latest``) or ``--overwrite_output_dir`` replaces it; nothing is written
there (``run_args.json`` included) until training has started. With ``--model_name_or_path`` set to a model of
this library, the checkpoint's architecture (adapter, pooling, stochastic depth, shape) is kept unless a model flag
is given on the command line (then the change is logged); recipe values and built-in defaults do not override it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    HfArgumentParser,
    TrainerCallback,
    ViTImageProcessorPil,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification
from hf_advsoup.augmentation import AugmentationArguments, BatchAugmenter
from hf_advsoup.cli import Interrupted, run
from hf_advsoup.cli import check_output_dir as check_output_location
from hf_advsoup.configuration_advsoup import ADAPTER_TYPES, POOLING_TYPES
from hf_advsoup.data import (
    DataArguments,
    collate_fn,
    find_preset,
    load_image_dataset,
    load_streaming_dataset,
    set_image_transforms,
)
from hf_advsoup.hub_access import check_model_source
from hf_advsoup.trainer import CoTrainer, check_weight_files, resolve_checkpoint
from hf_advsoup.training_args import CoTrainingArguments

logger = logging.getLogger("cotrain")


@dataclass
class ModelArguments:
    """The model: a fresh dual-adapter ViT of the given shape, or one initialised from a checkpoint.

    Defaults: the tiny ViT of the embedded digits run (not in the paper). Paper: ViT-B/16 (hidden 768, 12 layers,
    12 heads, MLP 3072) on ImageNet; ViT-S (384, 12, 6, 1536) with patch 4, stride 2 on 32x32 images.
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Initialise from a checkpoint (a vanilla ViT such as google/vit-base-patch16-224-in21k, or one of "
            "ours). Its shape is kept (shape flags are ignored); a model of this library also keeps its adapter, "
            "pooling and drop_path_rate unless --adapter/--pooling/--drop_path_rate is given on the command line. "
            "From a vanilla ViT the adversarial adapter starts as a copy of the clean one. Default: random "
            "initialisation."
        },
    )
    adapter: str = field(
        default="cls_token",
        metadata={
            "help": f"Doubled parameters (Table 1): one of {', '.join(ADAPTER_TYPES)}. 'none' = fully shared "
            "co-training (loses all robustness in the paper). Paper default: cls_token."
        },
    )
    pooling: str = field(
        default="mean",
        metadata={"help": f"Head input: {' or '.join(POOLING_TYPES)} (mean of patch tokens = MAE head, the paper's)."},
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Input size in pixels (square). Default: the data set preset's (digits: 16); for other data, "
                  "the most common size of its training images, between 16 and 224 px (hf_advsoup.geometry)."},
    )
    patch_size: int | None = field(
        default=None,
        metadata={"help": "Patch size in pixels. Paper: 16 (ImageNet), 4 (32x32). Default: the largest of 4, 8, 16 "
                  "that leaves at least 8 patches per side (4 up to 63 px, 16 from 128 px; hf_advsoup.geometry)."},
    )
    patch_stride: int | None = field(
        default=None,
        metadata={"help": "Patch stride in pixels; None = patch_size. Paper: 2 with patch 4 on 32x32 images."},
    )
    hidden_size: int = field(default=64, metadata={"help": "Token width. Paper: 768 (ViT-B), 384 (ViT-S)."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Transformer blocks. Paper: 12."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads. Paper: 12 (B), 6 (S)."})
    intermediate_size: int = field(default=128, metadata={"help": "MLP width. Paper: 3072 (B), 1536 (S)."})
    drop_path_rate: float = field(
        default=0.0,
        metadata={"help": "Stochastic depth of the last block, linear in depth (unitless). Paper: 0.1."},
    )
    image_mean: float = field(default=0.5, metadata={"help": "Normalization mean (all channels), fresh models only."})
    image_std: float = field(default=0.5, metadata={"help": "Normalization std (all channels), fresh models only."})
    max_step_seconds: float = field(
        default=60.0,
        metadata={"help": "On a CPU, refuse before training a model and input geometry whose training step is "
                  "estimated (by timing one forward and backward here) to take longer than this, in seconds: a "
                  "224-px image cut into 4-px patches makes 3,136 tokens and minutes per step. 0 turns the check off."},
    )
    set_on_command_line: tuple[str, ...] = field(
        default=(),
        init=False,
        metadata={"help": "The architecture flags given on the command line (filled by parse_arguments): only "
                  "these may change the architecture of a --model_name_or_path checkpoint."},
    )


CHANGEABLE_FLAGS = ("adapter", "pooling", "drop_path_rate")
"""Architecture flags that a command-line value may change on a checkpoint of this library."""
SHAPE_FLAGS = ("image_size", "patch_size", "patch_stride", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size")
"""Architecture flags fixed by a checkpoint's weights: always taken from the checkpoint."""


#: Defaults of a run without a recipe file: the tiny CPU co-training on the embedded digits (equal to
#: scripts/configs/digits_tiny.yaml). About 3 minutes on 2 CPU cores.
EMBEDDED_DEFAULTS: dict[str, Any] = {
    # data: digits are not mirror-symmetric; mild crops only (the images are 8x8, upscaled to 16x16)
    "dataset_name": "digits",
    "horizontal_flip": False,
    "crop_min_scale": 0.6,
    # augmentation: the recipe's RandAugment/mixup/CutMix slow a 3-minute run down too much
    "randaugment_num_layers": 0,
    "mixup_alpha": 0.0,
    "cutmix_alpha": 0.0,
    # training
    "alpha": 0.5,
    "train_attack": "pgd2",
    "train_epsilon": "8/255",
    "eval_epsilon": "8/255",
    "eval_attack_steps": 10,
    "robust_eval_samples": 360,
    "num_train_epochs": 30,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 128,
    "base_learning_rate": 1e-2,
    "warmup_epochs": 1,
    "weight_decay": 0.05,
    "ema_decay": 0.99,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "logging_steps": 10,
    "report_to": "none",
    "seed": 0,
    "dataloader_num_workers": 0,
    "soup_table": True,
}

#: Defaults of a run without a recipe file when Fashion-MNIST is installed (equal to
#: scripts/configs/fashion_mnist_tiny.yaml): the main job, a visible clean-vs-robust trade-off in a few minutes on
#: 2 CPU cores.
FASHION_MNIST_DEFAULTS: dict[str, Any] = {
    **EMBEDDED_DEFAULTS,  # the digits run's optimizer, schedule, EMA, strategies and monitoring attack, then:
    # model: 2 blocks, class-token pooling (the two tokens feed the head directly), 16x16 px, patch 4
    "pooling": "cls",
    "image_size": 16,
    "num_hidden_layers": 2,
    # data: a seeded subset of 16,000 training images; whole images (no crops or flips at 16 px)
    "dataset_name": "fashion_mnist",
    "max_train_samples": 16000,
    "random_resized_crop": False,
    # training: l_inf 0.1, alpha 0.6, 3 epochs of batch 32
    "alpha": 0.6,
    "train_epsilon": "0.1",
    "eval_epsilon": "0.1",
    "robust_eval_samples": 200,
    "patch_size": 4,  # (the default rule gives 4 at 16 px too; fixed here as in the recipe)
    "soup_table_attack": "apgd-ce",
    "soup_table_robust_samples": 500,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 256,
    "logging_steps": 50,
}


def embedded_defaults(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """The defaults of a run without a recipe file, and why: Fashion-MNIST's tiny run when ``--dataset_name`` is
    absent (or ``fashion_mnist``) and the data set's IDX files are on this machine, else the digits run."""
    from hf_advsoup.data import local_preset_folder

    without_help = [arg for arg in argv if arg not in ("-h", "--help")]  # the help is printed by the real parse
    dataset = _command_line_values(without_help, ("dataset_name",)).get("dataset_name")
    if dataset in (None, "fashion_mnist"):
        folder = local_preset_folder("fashion_mnist")
        if folder is not None:
            return f"the Fashion-MNIST main job (files in {folder})", FASHION_MNIST_DEFAULTS
        if dataset is None:
            return ("the digits run (Fashion-MNIST is not installed: `apt-get install dataset-fashion-mnist` makes "
                    "the main job the Fashion-MNIST run, whose soups show the trade-off)"), EMBEDDED_DEFAULTS
    return "the digits run's settings", EMBEDDED_DEFAULTS


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, AugmentationArguments, CoTrainingArguments))


def parse_arguments(argv: list[str] | None = None):
    """``[recipe.yaml|recipe.json] [--flag value ...]`` -> the four argument dataclasses.

    The recipe's values become the parser's defaults (so flags override them); unknown recipe keys are errors.
    Without a recipe, :func:`embedded_defaults` chooses the defaults.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        path, argv = argv[0], argv[1:]
        with open(path, encoding="utf-8") as handle:
            if path.endswith(".json"):
                recipe = json.load(handle)
            else:
                import yaml

                recipe = yaml.safe_load(handle) or {}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise ValueError(f"Unknown keys in {path}: {unknown}. Run `python scripts/cotrain.py --help` for the "
                             "valid ones.")
        defaults = recipe
    else:
        _, defaults = embedded_defaults(argv)
    parser.set_defaults(**defaults)
    if defaults.get("output_dir") is None:
        # TrainingArguments would quietly write into ./trainer_output.
        action = next(action for action in parser._actions if action.dest == "output_dir")
        action.required = True
        action.help = "Where the run writes its model, checkpoints and run_args.json (required: here or in the recipe)."
    groups = parser.parse_args_into_dataclasses(args=argv)
    groups[0].set_on_command_line = _given_on_command_line(argv, CHANGEABLE_FLAGS + SHAPE_FLAGS)
    return groups


def _command_line_values(argv: list[str], names: tuple[str, ...]) -> dict[str, Any]:
    """``{name: value}`` of the ``names`` whose flag appears in ``argv`` (abbreviations included), found by parsing
    ``argv`` with a marker as every default."""
    marker = object()
    parser = build_parser()
    parser.set_defaults(**{name: marker for name in names})
    namespace, _ = parser.parse_known_args(argv)
    return {name: getattr(namespace, name) for name in names if getattr(namespace, name) is not marker}


def _given_on_command_line(argv: list[str], names: tuple[str, ...]) -> tuple[str, ...]:
    """The ``names`` whose flag appears in ``argv`` (abbreviations included)."""
    return tuple(_command_line_values(argv, names))


def build_image_processor(model_args: ModelArguments, image_size: int):
    """The checkpoint's processor, or a PIL one (works without torchvision) at ``image_size`` for fresh models and
    for checkpoints saved without one (with ``--image_mean``/``--image_std``).

    ``set_image_transforms`` then aligns it with the transforms (``do_convert_rgb=True``: transparency composited
    on white as in training; the evaluation crop), since this is the processor saved with the model."""
    if model_args.model_name_or_path is not None:
        try:
            return AutoImageProcessor.from_pretrained(model_args.model_name_or_path)
        except OSError:
            logger.warning(
                "%s has no image processor; using mean %g and std %g (--image_mean/--image_std): check that they "
                "match how the checkpoint was trained.", model_args.model_name_or_path, model_args.image_mean,
                model_args.image_std,
            )
    return ViTImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[model_args.image_mean] * 3,
        image_std=[model_args.image_std] * 3,
        do_convert_rgb=True,  # like the training transforms: transparency composited on white, not dropped
    )


def keep_checkpoint_architecture(model_args: ModelArguments) -> None:
    """With ``--model_name_or_path``, set ``model_args`` to the architecture that will be trained (in place).

    The shape (:data:`SHAPE_FLAGS`) always comes from the checkpoint (its weights fix it); a different value given
    on the command line is reported as ignored. For a checkpoint of this library, ``adapter``, ``pooling`` and
    ``drop_path_rate`` also come from the checkpoint unless given on the command line, in which case the change is
    logged; recipe values and built-in defaults never change them. A vanilla ViT checkpoint has none of the three:
    they come from the flags (recipe or defaults included).
    """
    path = model_args.model_name_or_path
    if path is None:
        return
    config = AutoConfig.from_pretrained(path)
    given = set(model_args.set_on_command_line)
    ignored = []
    for name in SHAPE_FLAGS:
        value = getattr(config, name, None)
        requested = getattr(model_args, name)
        if name == "patch_stride":  # None means "equal to patch_size"
            same = (requested or config.patch_size) == (value or config.patch_size)
        else:
            same = requested == value
        if name in given and not same:
            ignored.append(f"--{name} {requested}")
        setattr(model_args, name, value)
    if ignored:
        logger.warning("The architecture comes from %s; ignoring %s.", path, ", ".join(ignored))
    if config.model_type != AdvSoupViTConfig.model_type:
        return
    for name in CHANGEABLE_FLAGS:
        value, requested = getattr(config, name), getattr(model_args, name)
        if requested == value:
            continue
        if name in given:
            consequence = (
                " Its adversarial adapter weights are not used: the new adversarial adapter starts as a copy of the "
                "clean one." if name == "adapter" else ""
            )
            logger.warning("--%s %s changes the checkpoint %s (%s: %s -> %s).%s", name, requested, path, name, value,
                           requested, consequence)
        else:
            logger.info("Keeping the checkpoint's %s=%s (not the recipe/default %s; give --%s to change it).", name,
                        value, requested, name)
            setattr(model_args, name, value)


def build_model(model_args: ModelArguments, num_labels: int, image_size: int, id2label: dict[int, str]):
    """A fresh model from ``model_args``, or the ``--model_name_or_path`` checkpoint with ``adapter``, ``pooling``,
    ``drop_path_rate`` as in ``model_args`` (see :func:`keep_checkpoint_architecture`) and a new head when the label
    count differs."""
    label2id = {name: i for i, name in id2label.items()}
    common = dict(
        num_labels=num_labels, id2label=id2label, label2id=label2id, adapter=model_args.adapter,
        pooling=model_args.pooling, drop_path_rate=model_args.drop_path_rate,
    )
    if model_args.model_name_or_path is not None:
        path = model_args.model_name_or_path
        check_weight_files(path)
        saved = AutoConfig.from_pretrained(path)
        # A checkpoint of this library loads with its own adapter (its weights must match it); an explicit --adapter
        # then converts it (keep_checkpoint_architecture has logged that change).
        own = saved.adapter if saved.model_type == AdvSoupViTConfig.model_type else model_args.adapter
        model = AdvSoupViTForImageClassification.from_pretrained(
            path, ignore_mismatched_sizes=True, **{**common, "adapter": own}
        )
        return model if own == model_args.adapter else model.convert_adapter(model_args.adapter)
    config = AdvSoupViTConfig(
        image_size=image_size, patch_size=model_args.patch_size, patch_stride=model_args.patch_stride,
        hidden_size=model_args.hidden_size, num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads, intermediate_size=model_args.intermediate_size,
        **common,
    )
    return AdvSoupViTForImageClassification(config)


def check_output_dir(training_args: CoTrainingArguments, resuming: bool) -> list[str]:
    """Refuse an ``--output_dir`` that cannot be written (:func:`hf_advsoup.cli.check_output_dir`: a file, below a
    file, not writable) or that is not empty (hidden files aside), unless the run resumes or
    ``--overwrite_output_dir`` is set; return the previous run's ``checkpoint-N`` folders that an overwrite must
    delete once training has started (left in place, checkpoint rotation and ``--resume_from_checkpoint latest``
    would mix them with the new run's).

    Raises:
        OutputLocationError: a ``FileExistsError`` naming the folder, what it holds, and the flags that allow it.
    """
    folder = training_args.output_dir
    entries = check_output_location(
        folder, must_be_empty=not (resuming or training_args.overwrite_output_dir),
        ways_out=("--overwrite_output_dir to replace it with a new run",
                  "--resume_from_checkpoint latest (or a checkpoint folder) to continue the run in it"),
    )
    if not entries or resuming:
        return []
    checkpoints = [os.path.join(folder, name) for name in entries
                   if re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", name) and os.path.isdir(os.path.join(folder, name))]
    logger.warning("--overwrite_output_dir: %s holds %d entries; the new run replaces them and deletes %d "
                   "checkpoint folder(s) once training starts.", folder, len(entries), len(checkpoints))
    return checkpoints


class RunStartCallback(TrainerCallback):
    """At the start of training (the model, the data, the trainer and any resumed checkpoint loaded), deletes the
    previous run's checkpoints (``--overwrite_output_dir``) and writes ``run_args.json``: a start that fails leaves
    ``--output_dir`` as it was."""

    def __init__(self, groups: tuple, stale_checkpoints: list[str]):
        self.groups = groups
        self.stale_checkpoints = stale_checkpoints

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        for folder in self.stale_checkpoints:
            logger.info("Deleting %s of the previous run (--overwrite_output_dir).", folder)
            shutil.rmtree(folder, ignore_errors=True)
        save_run_arguments(args.output_dir, *self.groups)


def check_streaming_arguments(training_args: CoTrainingArguments) -> None:
    """``--streaming`` runs are counted in steps: the stream is read pass after pass without end (every process
    always has a batch), so the run needs ``--max_steps`` and nothing can happen "every epoch"."""
    if training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps: a stream has no length to count epochs in (ImageNet-1k's 300 "
                         "epochs at a batch of 4096: --max_steps 93900).")
    per_epoch = [f"--{name} epoch" for name in ("eval_strategy", "save_strategy", "logging_strategy")
                 if str(getattr(training_args, name)).split(".")[-1].lower() == "epoch"]
    if per_epoch:
        raise ValueError(f"--streaming reads the data without epochs, so {', '.join(per_epoch)} would never happen: "
                         "use steps (e.g. --eval_strategy steps --eval_steps 313 --save_strategy steps --save_steps 313, "
                         "one ImageNet-1k epoch at a batch of 4096).")


def save_run_arguments(output_dir: str, *groups) -> str:
    """Write every argument group of the run to ``output_dir/run_args.json`` (read by ``scripts/push_to_hub.py`` for
    the model card's training details; unlike ``training_args.bin`` it is plain JSON)."""
    os.makedirs(output_dir, exist_ok=True)
    names = ("model_args", "data_args", "augmentation_args", "training_args")
    payload = {
        name: (group.to_dict() if hasattr(group, "to_dict") else asdict(group)) for name, group in zip(names, groups)
    }
    path = os.path.join(output_dir, "run_args.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
    return path


def settings_source(argv: list[str]) -> str | None:
    """Where the run's defaults come from when no recipe file is given (:func:`embedded_defaults`' reason), else
    ``None``."""
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        return None
    return embedded_defaults(argv)[0]


def choose_geometry(model_args: ModelArguments, train_split, preset) -> tuple[str, bool]:
    """Set ``model_args.image_size`` and ``patch_size`` to what will be trained (in place; recorded in run_args.json)
    and return ``(description with the reasons, whether any of it was inferred from the data)``.

    Given values (command line or recipe) and a checkpoint's are kept; a preset gives its image size; other data gives
    the most common size of its images (:func:`hf_advsoup.geometry.infer_image_size`); the patch size follows the
    image size (:func:`hf_advsoup.geometry.choose_patch_size`).
    """
    from hf_advsoup.geometry import choose_patch_size, infer_image_size, num_tokens

    inferred = False
    if model_args.model_name_or_path is not None:  # keep_checkpoint_architecture took both from the checkpoint
        size_reason = patch_reason = f"from the checkpoint {model_args.model_name_or_path}"
    else:
        given = set(model_args.set_on_command_line)
        if model_args.image_size is not None:
            size_reason = "--image_size" if "image_size" in given else "the recipe's"
        elif preset is not None:
            model_args.image_size, size_reason = preset.image_size, f"the {preset.name} preset's"
        else:
            model_args.image_size, size_reason = infer_image_size(train_split)
            inferred = True
        if model_args.patch_size is not None:
            patch_reason = "--patch_size" if "patch_size" in given else "the recipe's"
        else:
            model_args.patch_size, patch_reason = choose_patch_size(model_args.image_size)
            inferred = True
    size, patch, stride = model_args.image_size, model_args.patch_size, model_args.patch_stride
    tokens = num_tokens(size, patch, stride)
    text = (f"image size {size} px ({size_reason}), patch {patch} px"
            + (f" with stride {stride}" if stride and stride != patch else "")
            + f" ({patch_reason}): {tokens:,} tokens per image")
    return text, inferred


def passes_per_step(training_args: CoTrainingArguments) -> float:
    """Forward-and-backward passes of one per-device batch in one optimizer step: the attack's steps on the batch and
    the training pass on clean + adversarial images (2 batches); nominal training (alpha=1): 1; free co-training: 2
    (one replay: [clean, clean + delta]). Times gradient accumulation."""
    if training_args.alpha >= 1.0:
        passes = 1.0
    elif training_args.free_training:
        passes = 2.0
    else:
        passes = training_args.train_attack_config().steps + 2.0
    return passes * training_args.gradient_accumulation_steps


def check_step_cost(model, model_args: ModelArguments, training_args: CoTrainingArguments, geometry: str):
    """On a CPU, time one forward and backward of ``model`` and refuse (``ValueError``) a training step estimated
    above ``--max_step_seconds``, before anything is trained; return the :class:`~hf_advsoup.geometry.StepEstimate`
    (``None`` when not measured: another device, or the check turned off)."""
    from hf_advsoup.geometry import estimate_step_seconds, num_tokens

    limit = model_args.max_step_seconds
    if limit <= 0 or training_args.device.type != "cpu":
        return None
    tokens = num_tokens(model_args.image_size, model_args.patch_size, model_args.patch_stride)
    fix = ("Nothing was trained. Give a smaller --image_size or a larger --patch_size (or --patch_stride), or raise "
           "--max_step_seconds (0 turns this check off).")
    if tokens > 16384:  # even timing one image would take long
        raise ValueError(f"The model would read {tokens:,} tokens per image ({geometry}): far too many for a CPU. "
                         + fix)
    estimate = estimate_step_seconds(model, model_args.image_size, images=training_args.per_device_train_batch_size,
                                     passes=passes_per_step(training_args), limit=limit)
    if estimate.seconds > limit:
        raise ValueError(f"{geometry[0].upper()}{geometry[1:]}: {estimate.describe()}, more than --max_step_seconds "
                         f"{limit:g}. " + fix)
    return estimate


def resume_hint(output_dir: str) -> str:
    """What to do after an interrupted training: resume from the latest checkpoint, or start again."""
    try:
        checkpoint = resolve_checkpoint("latest", output_dir)
    except (FileNotFoundError, OSError):
        checkpoint = None
    if checkpoint is not None:
        return (f"training stopped; its latest checkpoint is {checkpoint}. To continue the run, give the same command "
                f"with --resume_from_checkpoint latest (and the same --output_dir {output_dir}).")
    if os.path.isdir(output_dir) and any(not name.startswith(".") for name in os.listdir(output_dir)):
        return (f"training stopped before its first checkpoint, so there is nothing to resume: give the same command "
                f"with --overwrite_output_dir to start again in {output_dir} (checkpoints: --save_strategy, "
                "--save_steps).")
    return "training stopped before anything was written: give the same command again."


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run co-training; return the final evaluation metrics (EMA weights)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, aug_args, training_args = parse_arguments(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=training_args.get_process_log_level()
    )
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    # Fail before loading anything: an output folder that cannot be written, a bad checkpoint value, an occupied
    # output folder, a model that is not there.
    check_output_location(training_args.output_dir)
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    stale_checkpoints = check_output_dir(training_args, resuming=checkpoint is not None)
    check_model_source(model_args.model_name_or_path)
    if checkpoint is not None:
        logger.warning("Resuming from %s (step %s of the interrupted run).", checkpoint, checkpoint.rsplit("-", 1)[-1])
    keep_checkpoint_architecture(model_args)
    set_seed(training_args.seed)

    if data_args.streaming:
        check_streaming_arguments(training_args)
        data_seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
        dataset = load_streaming_dataset(data_args, seed=data_seed)
    else:
        dataset = load_image_dataset(data_args)
    labels = dataset["train"].features["label"]
    id2label = {i: name for i, name in enumerate(labels.names)}
    preset = find_preset(data_args.dataset_name)  # a preset name or a preset's Hub id
    geometry, inferred = choose_geometry(model_args, dataset["train"], preset)
    processor = build_image_processor(model_args, model_args.image_size)
    model = build_model(model_args, labels.num_classes, model_args.image_size, id2label)
    estimate = check_step_cost(model, model_args, training_args, geometry)
    chosen = geometry + (f"; {estimate.describe()}" if estimate is not None else "")
    source = settings_source(argv)
    if source is not None:  # the first line of a run without a recipe says what it runs
        logger.warning("No recipe file: running %s on %s; %s.", source, data_args.dataset_name, chosen)
    else:
        logger.log(logging.WARNING if inferred else logging.INFO, "Geometry: %s.", chosen)
    set_image_transforms(dataset, processor, data_args)

    augmenter = None
    if aug_args.randaugment_enabled or aug_args.mixing_enabled:
        augmenter = BatchAugmenter(aug_args)
    logger.info(
        "Co-training %s (adapter=%s, %.2fM parameters) on %s: alpha=%g, attack %s, augmentation %s",
        type(model).__name__, model.config.adapter, model.num_parameters() / 1e6, data_args.dataset_name,
        training_args.alpha, training_args.train_attack if training_args.alpha < 1 else "none (alpha=1)",
        augmenter or "none",
    )
    trainer = CoTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset["validation"],
        data_collator=collate_fn,
        processing_class=processor,
        batch_augmenter=augmenter,
        callbacks=[RunStartCallback((model_args, data_args, aug_args, training_args), stale_checkpoints)],
    )
    try:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
    except KeyboardInterrupt as interrupt:
        raise Interrupted(resume_hint(training_args.output_dir)) from interrupt
    trainer.save_model()  # EMA weights + image processor + remote code
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if "test" in dataset:
        # The split the paper reports on, where the validation split was carved out of train.
        test_metrics = trainer.evaluate(dataset["test"], metric_key_prefix="test")
        trainer.log_metrics("test", test_metrics)
        trainer.save_metrics("test", test_metrics)
        metrics.update(test_metrics)
    table = None
    # Under FSDP every process runs the table's forwards and attacks on the same images (each one gathers the
    # sharded weights with the others); the main process prints and writes it.
    if training_args.soup_table and (trainer.is_world_process_zero() or trainer.is_fsdp_enabled):
        split = "test" if "test" in dataset else "validation"
        command, why_not = soup_table_command(data_args, training_args, split, getattr(dataset, "report", None))
        table = print_soup_table(trainer, dataset[split], split, training_args, command, why_not)
    if trainer.is_world_process_zero():
        print(final_line(training_args.output_dir, metrics, len(dataset["validation"]), trainer.eval_attack,
                         table.dataset if table is not None else None))
    if table is not None:
        metrics.update({f"soup_table_{kind}_beta{beta:g}": value
                        for kind, curve in (("clean", table.clean), ("robust", table.robust))
                        for beta, value in curve.items()})
    return metrics


def final_line(output_dir: str, metrics: dict, num_validation: int, eval_attack, table_split: str | None) -> str:
    """The run's last line: where the model is, and the final evaluation with its split named (the validation split,
    which monitored training; the soup table above it may be on the test split)."""
    text = (f"Saved to {output_dir}. Validation split ({num_validation:,} images): clean accuracy (clean mode) "
            f"{metrics.get('eval_clean_accuracy', float('nan')):.4f}")
    if eval_attack is not None and "eval_robust_accuracy" in metrics:
        samples = metrics.get("eval_robust_eval_samples")
        text += (f", robust accuracy (robust mode, {eval_attack.label}) {metrics['eval_robust_accuracy']:.4f}"
                 + (f" on its first {int(samples):,}" if samples else ""))
    text += "."
    if table_split is not None and table_split != "validation":
        text += f" The soup table above is on the {table_split} split."
    return text


def soup_table_command(data_args: DataArguments, training_args: CoTrainingArguments, split: str,
                       report=None) -> tuple[str | None, str]:
    """``(command, "")``: the ``scripts/evaluate_soups.py`` command that recomputes the soup table from the saved
    model with the same images, batch size, seed, attack and thread count (so the same numbers: the attacks' random
    starts are drawn batch by batch, and float sums depend on the thread count); or ``(None, why not)`` when the
    table's images cannot be selected by that script (data options it does not have, a split carved out of a local
    data set's training images)."""
    import shlex

    import torch

    from hf_advsoup.soup_table import resolve_table_attack

    options = {"--dataset_config_name": data_args.dataset_config_name, "--train_split": data_args.train_split,
               "--eval_split": data_args.eval_split, "--test_split": data_args.test_split,
               "--image_column": data_args.image_column, "--label_column": data_args.label_column,
               "--validation_fraction": data_args.validation_fraction}
    unsupported = [flag for flag, value in options.items() if value is not None]
    if data_args.split_seed != 0:
        unsupported.append("--split_seed")
    if unsupported:
        return None, f"the run used {', '.join(unsupported)}, which scripts/evaluate_soups.py does not have"
    source_split = (report.splits.get(split, split) if report is not None else split)
    if find_preset(data_args.dataset_name) is None and source_split != split:
        return None, (f"the {split} split is {source_split} of {data_args.dataset_name}, which scripts/evaluate_soups.py "
                      "cannot select")
    preset, subset = resolve_table_attack(training_args.soup_table_attack)
    output_dir = training_args.output_dir
    words = [f"OMP_NUM_THREADS={torch.get_num_threads()}", "python", "scripts/evaluate_soups.py",
             "--model_name_or_path", output_dir, "--datasets", f"{data_args.dataset_name}:{split}",
             "--betas", "1", "0.5", "0", "--ensembles", "false", "--attack", preset]
    if subset:
        words += ["--autoattack_attacks", *subset]
    words += ["--epsilon", repr(training_args.soup_table_epsilon()),
              "--max_robust_examples", str(training_args.soup_table_robust_samples),
              "--batch_size", str(training_args.per_device_eval_batch_size), "--seed", "0"]
    if data_args.max_eval_samples is not None:
        words += ["--max_eval_samples_per_dataset", str(data_args.max_eval_samples)]
    if data_args.verify_images:
        words += ["--verify_images", "true"]
    words += ["--plots", "false", "--output_dir", os.path.join(output_dir, "soups")]
    return " ".join(shlex.quote(word) if i > 0 else word for i, word in enumerate(words)), ""


def print_soup_table(trainer: CoTrainer, data, split: str, training_args: CoTrainingArguments,
                     command: str | None = None, why_not: str = ""):
    """Evaluate the saved model's soups at beta 1, 0.5, 0 (:mod:`hf_advsoup.soup_table`), print the table and write
    it to ``soup_table.md`` in the output folder (the main process; under FSDP every process must call this), with
    ``command``: how to recompute it from the saved model, or ``why_not`` (:func:`soup_table_command`)."""
    from torch.utils.data import DataLoader

    from hf_advsoup.attacks import Normalization
    from hf_advsoup.soup_table import soup_table

    loader = DataLoader(data, batch_size=training_args.per_device_eval_batch_size, shuffle=False,
                        collate_fn=collate_fn)
    logger.info("Soup table: clean accuracy on %d %s images, robust accuracy under %s on the first %d.", len(data),
                split, training_args.soup_table_attack, min(len(data), training_args.soup_table_robust_samples))
    with trainer.ema_weights():  # the saved model's weights
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        table = soup_table(
            model, loader, normalization=Normalization.from_processor(trainer.processing_class),
            epsilon=training_args.soup_table_epsilon(), attack=training_args.soup_table_attack,
            robust_examples=training_args.soup_table_robust_samples,
            batch_size=training_args.per_device_eval_batch_size, dataset=split, progress=not training_args.disable_tqdm,
        )
        model.train(was_training)
    text = table.to_text()
    if command is not None:
        text += f"\n\nThe same table from the saved model (same images, batch, seed and threads): {command}"
    elif why_not:
        text += f"\n\nNo scripts/evaluate_soups.py command recomputes this table exactly: {why_not}."
    if trainer.is_world_process_zero():
        print("\n" + text + "\n")
        with open(os.path.join(training_args.output_dir, "soup_table.md"), "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return table


if __name__ == "__main__":
    run(main)
