#!/usr/bin/env python
"""Train the soup selector of a co-trained model (``beta="auto"``), with every co-trained weight frozen.

Launch::

    # After `python scripts/cotrain.py scripts/configs/digits_tiny.yaml --output_dir runs/digits`: a selector that reads the tokens after 1 block in
    # robust mode, trained on the same data, against the co-training run's own training attack (run_args.json).
    python scripts/train_selector.py --model_name_or_path runs/digits --output_dir runs/digits-auto

    # Fashion-MNIST, 10k training images, another attack radius, 2 blocks read.
    python scripts/train_selector.py --model_name_or_path runs/fmnist --dataset_name fashion_mnist \\
        --max_train_samples 10000 --train_epsilon 0.1 --selector_layers 2 --output_dir runs/fmnist-auto

The selector (:class:`hf_advsoup.modeling_advsoup.AdvSoupSelector`) learns, with ``--objective detection`` (the
default), to give clean images ``beta = 1`` and training-attack images ``beta = 0``, the attack running on robust
mode as in co-training (preset, radius and steps from the checkpoint's ``run_args.json`` unless given here); with
``--objective composite`` it is trained against the system it defends (adaptive smoothing's objective): each batch is
attacked end to end through the selector and the loss is the final prediction's cross-entropy on the clean and the
attacked images (``--composite_robust_weight``, ``--composite_clean_push``; docs/selection.md). Training is :class:`hf_advsoup.selection.SelectorTrainer` (a
``Trainer``: every ``TrainingArguments`` flag works, e.g. ``--num_train_epochs``, ``--learning_rate``,
``--eval_strategy epoch``). A checkpoint that already has a selector gets a new one.

``--output_dir`` (required, not the checkpoint's own folder; a folder that is not empty is refused unless
``--overwrite_output_dir``) receives the whole model with its selector, its image processor and remote code: it
loads with ``AutoModelForImageClassification.from_pretrained(output_dir, beta="auto")`` and in
``pipeline("image-classification", model=output_dir, model_kwargs={"beta": "auto"})``. Evaluate it against adaptive
attacks with ``python scripts/evaluate_soups.py --model_name_or_path output_dir --auto`` (docs/selection.md).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import torch
import transformers
from transformers import AutoImageProcessor, HfArgumentParser, set_seed

from hf_advsoup import AdvSoupViTForImageClassification
from hf_advsoup.cli import check_output_dir, run
from hf_advsoup.configuration_advsoup import SELECTOR_MODES
from hf_advsoup.data import (
    DataArguments,
    collate_fn,
    load_image_dataset,
    set_image_transforms,
)
from hf_advsoup.data.labels import match_class_names
from hf_advsoup.hub_access import check_model_source
from hf_advsoup.selection import (
    SelectorTrainer,
    SelectorTrainingArguments,
    cotraining_attack_settings,
)

logger = logging.getLogger("train_selector")


@dataclass
class SelectorArguments:
    """The co-trained model and the selector to give it."""

    model_name_or_path: str = field(metadata={"help": "The co-trained AdvSoupViT checkpoint (folder or Hub id)."})
    selector_layers: int = field(
        default=1,
        metadata={"help": "Blocks run in robust mode before the selector reads the tokens (0: the embeddings). A "
                  "selected soup costs (L + selector_layers) / L forwards for L blocks; keep it <= 0.3 L for <= 1.3x."},
    )
    selector_hidden_size: int = field(default=64, metadata={"help": "Width of the selector's hidden layer."})
    selector_mode: str = field(
        default="soft",
        metadata={"help": f"How the score becomes beta at inference: {' or '.join(SELECTOR_MODES)} (soft: "
                  "sigmoid(score), what the attacks differentiate; hard: 1 if score > 0 else 0)."},
    )


class _RemapLabels:
    """``collate_fn`` whose labels are the model's class indices (the data set orders its classes otherwise)."""

    def __init__(self, class_indices: list[int]):
        self.index = torch.tensor(class_indices, dtype=torch.long)

    def __call__(self, examples):
        batch = collate_fn(examples)
        if "labels" in batch:
            batch["labels"] = self.index[batch["labels"]]
        return batch


def parse_arguments(argv: list[str] | None = None):
    """``--flag value ...`` -> ``(SelectorArguments, DataArguments, SelectorTrainingArguments)``."""
    parser = HfArgumentParser((SelectorArguments, DataArguments, SelectorTrainingArguments))
    # TrainingArguments would quietly write into ./trainer_output.
    action = next(action for action in parser._actions if action.dest == "output_dir")
    action.required = True
    action.help = "Where the model with its trained selector is saved (required; not the co-trained checkpoint's folder)."
    return parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train and save the selector; return the final evaluation metrics (detection on the validation split)."""
    selector_args, data_args, training_args = parse_arguments(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=training_args.get_process_log_level())
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    output_dir, source = os.path.abspath(training_args.output_dir), selector_args.model_name_or_path
    if os.path.isdir(source) and os.path.abspath(source) == output_dir:
        raise SystemExit(f"--output_dir {training_args.output_dir} is the co-trained checkpoint itself: choose "
                         "another folder (the co-trained model is kept as it is).")
    # Before anything is loaded: the output folder, the model, the attack the selector trains against.
    check_output_dir(training_args.output_dir, must_be_empty=not training_args.overwrite_output_dir,
                     ways_out=("--overwrite_output_dir to write into it",))
    check_model_source(source)
    train_attack = training_args.train_attack_config(cotraining_attack_settings(source))
    set_seed(training_args.seed)

    model = AdvSoupViTForImageClassification.from_pretrained(source)
    if model.selector is not None:
        logger.info("%s already has a selector: it is replaced by a new one.", source)
    model.add_selector(selector_args.selector_layers, selector_args.selector_hidden_size, selector_args.selector_mode)
    processor = AutoImageProcessor.from_pretrained(source)

    dataset = load_image_dataset(data_args)
    names = dataset["train"].features["label"].names
    class_indices = match_class_names(names, model.config.id2label, dataset=f"data set {data_args.dataset_name!r}")
    collator = collate_fn if class_indices == list(range(len(class_indices))) else _RemapLabels(class_indices)
    set_image_transforms(dataset, processor, data_args)
    layers = model.config.num_hidden_layers
    logger.info("Training a selector on %s: reads %d of %d blocks (a selected soup costs %.2fx one forward), mode "
                "%s; robust-mode examples from %s.", data_args.dataset_name, selector_args.selector_layers, layers,
                (layers + selector_args.selector_layers) / layers, selector_args.selector_mode, train_attack.label)
    trainer = SelectorTrainer(
        model=model, args=training_args, train_attack=train_attack, train_dataset=dataset["train"],
        eval_dataset=dataset["validation"], data_collator=collator, processing_class=processor,
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # the whole model with its selector, the image processor, remote code
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        if training_args.objective == "composite":
            found = (f"the selected model classifies {metrics['eval_auto_clean_accuracy']:.4f} of the validation "
                     f"images right, and {metrics['eval_auto_attacked_accuracy']:.4f} of them attacked end to end "
                     f"({train_attack.label}, through the selector)")
        else:
            found = (f"on the validation split the selector gives clean images beta > 0.5 for "
                     f"{metrics['eval_clean_as_clean']:.4f} of them and {train_attack.label} images beta < 0.5 for "
                     f"{metrics['eval_attacked_as_robust']:.4f}")
        print(f"Saved to {training_args.output_dir}: {found}. Evaluate it against adaptive attacks: python "
              f"scripts/evaluate_soups.py --model_name_or_path {training_args.output_dir} --auto ...")
    return metrics


if __name__ == "__main__":
    run(main)
