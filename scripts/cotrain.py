#!/usr/bin/env python
"""Adversarial co-training of a dual-adapter ViT (Rebuffi et al., ICLR 2023): nominal, adversarial, fully shared
and dual-adapter runs all use this script (``--alpha``, ``--adapter``).

Launch::

    # The embedded default: a tiny dual-token ViT on scikit-learn's digits, offline, on a CPU, in a few minutes.
    python scripts/cotrain.py --output_dir runs/digits

    # A recipe file (YAML or JSON; every field of the argument classes below), with command-line overrides.
    python scripts/cotrain.py scripts/configs/vit_s_cifar10.yaml --output_dir runs/cifar10 --alpha 0.4

    # More hardware: accelerate (one GPU, several GPUs, FSDP; see scripts/accelerate/ and docs/cotraining.md).
    accelerate launch --config_file scripts/accelerate/multi_gpu.yaml scripts/cotrain.py \
        scripts/configs/vit_b16_imagenet.yaml --output_dir runs/imagenet

Arguments come from four dataclasses parsed by :class:`~transformers.HfArgumentParser`: :class:`ModelArguments`
(below), :class:`hf_advsoup.data.DataArguments`, :class:`hf_advsoup.augmentation.AugmentationArguments` and
:class:`hf_advsoup.training_args.CoTrainingArguments`. With no recipe file, the defaults are the tiny digits run
(:data:`EMBEDDED_DEFAULTS`); a recipe file replaces them, and command-line flags override both.

The saved model (EMA weights, image processor, remote code) loads with
``AutoModelForImageClassification.from_pretrained(output_dir, beta=0.5)`` and works in
``pipeline("image-classification", model=output_dir)``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import transformers
from transformers import AutoConfig, AutoImageProcessor, HfArgumentParser, ViTImageProcessorPil, set_seed

from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification
from hf_advsoup.augmentation import AugmentationArguments, BatchAugmenter
from hf_advsoup.configuration_advsoup import ADAPTER_TYPES, POOLING_TYPES
from hf_advsoup.data import DataArguments, collate_fn, find_preset, load_image_dataset, set_image_transforms
from hf_advsoup.trainer import CoTrainer
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
            "ours); the adversarial adapter starts as a copy of the clean one. Default: random initialisation."
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
        default=None, metadata={"help": "Input size in pixels (square). Default: the data set preset's (digits: 16)."}
    )
    patch_size: int = field(default=4, metadata={"help": "Patch size in pixels. Paper: 16 (ImageNet), 4 (32x32)."})
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
}


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, AugmentationArguments, CoTrainingArguments))


def parse_arguments(argv: list[str] | None = None):
    """``[recipe.yaml|recipe.json] [--flag value ...]`` -> the four argument dataclasses.

    The recipe's values become the parser's defaults (so flags override them); unknown recipe keys are errors.
    Without a recipe, :data:`EMBEDDED_DEFAULTS` are the defaults.
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
        defaults = EMBEDDED_DEFAULTS
    parser.set_defaults(**defaults)
    # output_dir is required by the dataclass only when nothing gives it.
    return parser.parse_args_into_dataclasses(args=argv)


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


def build_model(model_args: ModelArguments, num_labels: int, image_size: int, id2label: dict[int, str]):
    label2id = {name: i for i, name in id2label.items()}
    common = dict(
        num_labels=num_labels, id2label=id2label, label2id=label2id, adapter=model_args.adapter,
        pooling=model_args.pooling, drop_path_rate=model_args.drop_path_rate,
    )
    if model_args.model_name_or_path is not None:
        model = AdvSoupViTForImageClassification.from_pretrained(
            model_args.model_name_or_path, ignore_mismatched_sizes=True, **common
        )
        shape_flags = ("patch_size", "patch_stride", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "intermediate_size")
        defaults = {f.name: f.default for f in fields(ModelArguments)}
        ignored = [name for name in shape_flags
                   if getattr(model_args, name) != defaults[name]
                   and getattr(model_args, name) != getattr(model.config, name, None)]
        if ignored:
            logger.warning("The architecture comes from %s; ignoring %s.", model_args.model_name_or_path,
                           ", ".join(f"--{name} {getattr(model_args, name)}" for name in ignored))
        return model
    config = AdvSoupViTConfig(
        image_size=image_size, patch_size=model_args.patch_size, patch_stride=model_args.patch_stride,
        hidden_size=model_args.hidden_size, num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads, intermediate_size=model_args.intermediate_size,
        **common,
    )
    return AdvSoupViTForImageClassification(config)


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


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run co-training; return the final evaluation metrics (EMA weights)."""
    model_args, data_args, aug_args, training_args = parse_arguments(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=training_args.get_process_log_level()
    )
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    dataset = load_image_dataset(data_args)
    labels = dataset["train"].features["label"]
    id2label = {i: name for i, name in enumerate(labels.names)}
    preset = find_preset(data_args.dataset_name)  # a preset name or a preset's Hub id
    if model_args.model_name_or_path is not None and model_args.image_size is None:
        # A checkpoint's positional embedding fixes its input size.
        image_size = AutoConfig.from_pretrained(model_args.model_name_or_path).image_size
    else:
        image_size = model_args.image_size or (preset.image_size if preset is not None else 224)
    processor = build_image_processor(model_args, image_size)
    model = build_model(model_args, labels.num_classes, image_size, id2label)
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
    )
    if trainer.is_world_process_zero():
        save_run_arguments(training_args.output_dir, model_args, data_args, aug_args, training_args)
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
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
    if trainer.is_world_process_zero():
        print(
            f"Saved to {training_args.output_dir}: clean accuracy (clean mode) "
            f"{metrics.get('eval_clean_accuracy', float('nan')):.4f}, robust accuracy (robust mode, "
            f"{trainer.eval_attack.label if trainer.eval_attack else 'no attack'}) "
            f"{metrics.get('eval_robust_accuracy', float('nan')):.4f}"
        )
    return metrics


if __name__ == "__main__":
    main()
