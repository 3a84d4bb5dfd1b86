#!/usr/bin/env python
"""Fine-tune a co-trained model on a new data set (appendix C / Table 6 of Rebuffi et al., ICLR 2023).

One transfer (token from robust mode, all weights, CIFAR-10, the paper's recipe):

    python scripts/transfer.py --model_name_or_path runs/cotrain --dataset_name cifar10 \
        --token_init robust --strategy all --output_dir runs/transfer/cifar10

The sweep of Table 6 (strategies x token inits x data sets; writes <output_dir>/transfer_table.md and .json):

    python scripts/transfer.py --sweep --model_name_or_path runs/cotrain --output_dir runs/table6 \
        --datasets cifar10 cifar100 sun397 resisc45 dmlab --strategies head head+token all \
        --token_inits robust 0.25 0.5 0.75 clean --baselines Nominal=runs/nominal Adversarial=runs/adv

The defaults are the paper's recipe (:data:`hf_advsoup.transfer.PAPER_RECIPE`: SGD momentum 0.9, batch 512,
clipping 1, no weight decay, label smoothing 0.1, 10k steps, lr 0.01 with 500 warm-up steps then cosine, plain
resize to the model's size, random horizontal flip, EMA 0.999); every value can be overridden on the command line
(``--max_steps 2000 --learning_rate 0.003``) or in a YAML file given first (``python scripts/transfer.py
scripts/configs/transfer_table6.yaml --bf16 true``; flags after it win). The batch size is per device: divide 512 by the number of devices (times
gradient accumulation) to keep the paper's global batch. Multi-GPU: ``accelerate launch scripts/transfer.py ...``.
"""

from __future__ import annotations

import logging
import sys

import yaml
from transformers import HfArgumentParser

from hf_advsoup.cli import check_output_dir, run
from hf_advsoup.data import DataArguments
from hf_advsoup.hub_access import check_model_source
from hf_advsoup.training_args import CoTrainingArguments
from hf_advsoup.transfer import (
    PAPER_RECIPE,
    SweepArguments,
    TransferArguments,
    headline_metric,
    run_sweep,
    run_transfer,
)

logger = logging.getLogger("transfer")

SCRIPT_DEFAULTS = {
    # Not part of the paper's recipe: evaluation batch as large as the training batch (evaluation is cheap), and
    # the transfer data of Table 6 defaults to CIFAR-10 rather than the data module's offline digits.
    "per_device_eval_batch_size": 512,
    "dataset_name": "cifar10",
}


def defaults() -> dict:
    """Parser defaults: the paper's recipe (training and data sides) plus :data:`SCRIPT_DEFAULTS`."""
    return {**PAPER_RECIPE.training_defaults(), **PAPER_RECIPE.data_defaults(), **SCRIPT_DEFAULTS}


def parse_args(argv: list[str] | None = None):
    """``(TransferArguments, SweepArguments, DataArguments, CoTrainingArguments)`` from the command line.

    Precedence: command-line flags > a YAML file given as the first argument > the paper's recipe
    (:func:`defaults`) > the argument classes' own defaults. Unknown YAML keys are an error.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser((TransferArguments, SweepArguments, DataArguments, CoTrainingArguments))
    values = defaults()
    if argv and argv[0].endswith((".yaml", ".yml")):
        with open(argv.pop(0)) as f:
            values.update(yaml.safe_load(f) or {})
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown configuration keys {unknown}; see `python scripts/transfer.py --help`.")
    parser.set_defaults(**values)
    if values.get("output_dir") is None:
        # TrainingArguments would quietly write into ./trainer_output.
        action = next(action for action in parser._actions if action.dest == "output_dir")
        action.required = True
        action.help = "Where the transfer (or the sweep's runs and table) is written (required: here or in the YAML)."
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None):
    """Run one transfer, or the sweep with ``--sweep``; returns the :class:`TransferInfo` or the sweep results."""
    transfer_args, sweep_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    if transfer_args.model_name_or_path is None:
        raise SystemExit("--model_name_or_path is required (a co-trained checkpoint folder or Hub id).")
    # Before anything is loaded: the output folder (a sweep reuses the finished runs in its folder; one transfer
    # needs a new or empty one) and the models.
    check_output_dir(training_args.output_dir,
                     must_be_empty=not (sweep_args.sweep or training_args.overwrite_output_dir),
                     ways_out=("--overwrite_output_dir to write the new transfer into it",))
    check_model_source(transfer_args.model_name_or_path)
    if sweep_args.sweep:
        for item in sweep_args.baselines or []:
            check_model_source(item.split("=", 1)[-1], flag="--baselines")
    if sweep_args.sweep:
        results, (md_path, json_path) = run_sweep(sweep_args, transfer_args, data_args, training_args)
        if training_args.should_log:
            print(open(md_path).read())
            print(f"Table written to {md_path} and {json_path}.")
        return results
    info = run_transfer(transfer_args, data_args, training_args)
    name, value = headline_metric(info.metrics or {})
    if training_args.should_log:
        print(f"{info.dataset} | from {info.source} ({info.token_init}, beta={info.beta:g}) | {info.strategy} | "
              f"{name} = {value}")
        print(f"Saved to {training_args.output_dir}.")
    return info


if __name__ == "__main__":
    run(main)
