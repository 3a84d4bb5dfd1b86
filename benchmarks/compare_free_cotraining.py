#!/usr/bin/env python
"""Free co-training vs PGD-2 co-training on Fashion-MNIST: accuracy at equal epochs and at equal training time.

    OMP_NUM_THREADS=1 python benchmarks/compare_free_cotraining.py --output_dir runs/free_vs_pgd2
    python benchmarks/compare_free_cotraining.py --output_dir runs/free_vs_pgd2 --table   # the table again

Each run is ``scripts/cotrain.py``'s ``main()`` with the same small recipe (``RECIPE``: a tiny dual-token ViT at
16x16 px, a seeded subset of the Fashion-MNIST training images, l_inf eps 0.1) and one training attack:

- ``pgd2``: PGD-2 co-training (2 steps of 0.0625 = 2.5 * eps / 4, random start), ``--epochs`` epochs;
- ``free``: free co-training, 4 replays, sign step = eps, ``free_start=carry``, the same epochs (so the same
  number of optimizer steps);
- ``free_zero``: the same with ``free_start=zero`` (each minibatch's perturbation starts at zero);
- ``free_time``: free co-training for ``epochs x (PGD-2 training time / free training time)`` epochs, i.e. the
  training time of ``pgd2`` (computed from the two runs above, measured in this process: CPU seconds of training,
  since the machine is shared and wall-clock time depends on other jobs);
- ``free2_time``: the same time budget with 2 replays per minibatch (twice the passes over the data, half the
  perturbation steps per minibatch);
- ``free_half_time``: the same time budget, 4 replays, sign step eps / 2 (0.05) instead of eps.

Every trained model (EMA weights, as saved) is then evaluated on the same Fashion-MNIST test images: clean-mode
(``beta=1``) clean accuracy on all 10,000, and robust-mode (``beta=0``) robust accuracy on the first
``--robust_samples`` (500) under PGD-40 (the paper's: Adam, step 0.1 decayed at 20 and 30, best iterate, random
start, seeded) and under APGD-CE (``pyautoattack``, AutoAttack's custom version with APGD-CE alone: 100
iterations, 5 restarts). Results go to ``<output_dir>/results.jsonl`` (one line per run) and a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

RECIPE = [
    "--dataset_name", "fashion_mnist", "--image_size", "16", "--patch_size", "4", "--hidden_size", "64",
    "--num_hidden_layers", "4", "--num_attention_heads", "4", "--intermediate_size", "128",
    "--random_resized_crop", "false", "--horizontal_flip", "true", "--verify_images", "false",
    "--train_epsilon", "0.1", "--eval_epsilon", "0.1", "--robust_eval_samples", "0", "--eval_strategy", "no",
    "--save_strategy", "no", "--logging_steps", "50", "--per_device_train_batch_size", "64",
    "--base_learning_rate", "1e-2", "--warmup_epochs", "1", "--weight_decay", "0.05", "--ema_decay", "0.99",
    "--alpha", "0.5", "--disable_tqdm", "true", "--report_to", "none",
]
"""The shared recipe: ``scripts/cotrain.py``'s embedded digits defaults (lr, warm-up, EMA, weight decay) on
Fashion-MNIST at 16x16 px, no random crops (28 px clothing images lose too much at 16 px), flips on, eps 0.1."""

RUNS = {
    "pgd2": ["--train_attack", "pgd2"],
    "free": ["--train_attack", "free", "--free_replays", "4", "--free_start", "carry"],
    "free_zero": ["--train_attack", "free", "--free_replays", "4", "--free_start", "zero"],
    "free_time": ["--train_attack", "free", "--free_replays", "4", "--free_start", "carry"],
    "free2_time": ["--train_attack", "free", "--free_replays", "2", "--free_start", "carry"],
    "free_half_time": ["--train_attack", "free", "--free_replays", "4", "--free_start", "carry",
                       "--train_attack_step_size", "0.05"],
}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="Folder of the runs and results.jsonl.")
    parser.add_argument("--epochs", type=float, default=4.0, help="Epochs of pgd2, free and free_zero.")
    parser.add_argument("--train_samples", type=int, default=12000, help="Seeded subset of the training images.")
    parser.add_argument("--robust_samples", type=int, default=500, help="Test images attacked (the first ones).")
    parser.add_argument("--runs", default="pgd2,free,free_zero,free_time", help="Comma-separated runs, in order.")
    parser.add_argument("--seed", type=int, default=0,
                        help="Training seed (model initialisation, data order, attack randomness). Runs of another "
                        "seed than 0 are named <run>_s<seed>; the training subset stays the same.")
    parser.add_argument("--table", action="store_true", help="Only print the table of results.jsonl.")
    return parser.parse_args()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_cotrain():
    spec = importlib.util.spec_from_file_location("cotrain", ROOT / "scripts" / "cotrain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cotrain"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class TrainClock:
    """A TrainerCallback measuring the training loop alone: wall-clock and CPU seconds of this process."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.start = (time.perf_counter(), cpu_seconds(), os.getloadavg()[0])

            def on_train_end(self, args, state, control, **kwargs):
                wall, cpu, load = clock.start
                clock.result = {"train_wall_s": time.perf_counter() - wall, "train_cpu_s": cpu_seconds() - cpu,
                                "steps": state.global_step, "load_start": load, "load_end": os.getloadavg()[0]}

        self.callback = Callback()
        self.result: dict = {}


def train(cotrain, name: str, argv: list[str]) -> dict:
    """Run ``cotrain.main(argv)`` with a :class:`TrainClock` attached to its trainer."""
    from hf_advsoup import trainer as trainer_module

    clock = TrainClock()
    original = trainer_module.CoTrainer.__init__

    def init_with_clock(self, *args, **kwargs):
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [clock.callback]
        original(self, *args, **kwargs)

    cotrain.CoTrainer.__init__ = init_with_clock
    try:
        metrics = cotrain.main(argv)
    finally:
        cotrain.CoTrainer.__init__ = original
    return {"name": name, **clock.result, "test_clean_accuracy": metrics.get("test_clean_accuracy")}


def robust_accuracies(folder: str, robust_samples: int) -> dict:
    """Robust-mode accuracy under PGD-40 and APGD-CE on the first ``robust_samples`` test images, and clean-mode
    clean accuracy on the same images."""
    from torch.utils.data import DataLoader

    from hf_advsoup import AdvSoupViTForImageClassification
    from hf_advsoup.attacks import AttackConfig, Normalization, attack
    from hf_advsoup.data import DataArguments, collate_fn, load_image_dataset, set_image_transforms
    from hf_advsoup.trainer import step_generator
    from transformers import AutoImageProcessor

    model = AdvSoupViTForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    data_args = DataArguments(dataset_name="fashion_mnist", random_resized_crop=False, verify_images=False)
    dataset = load_image_dataset(data_args)
    test = dataset["test"].select(range(robust_samples))
    set_image_transforms({"test": test}, processor, data_args)
    batch = next(iter(DataLoader(test, batch_size=robust_samples, collate_fn=collate_fn)))
    x, y = batch["pixel_values"], batch["labels"]
    normalization = Normalization.from_processor(processor)
    results = {}
    with torch.no_grad():
        results["subset_clean_accuracy"] = (model(x, beta=1.0).logits.argmax(-1) == y).float().mean().item()
        results["subset_robust_mode_clean_accuracy"] = (model(x, beta=0.0).logits.argmax(-1) == y).float().mean().item()
    attacks = {
        "pgd40": AttackConfig.from_preset("pgd40", epsilon=0.1),
        "apgd_ce": AttackConfig.from_preset("autoattack", epsilon=0.1, autoattack_version="custom",
                                            autoattack_attacks=["apgd-ce"]),
    }
    for name, config in attacks.items():
        start = time.perf_counter()
        adversarial = attack(model, x, y, config, normalization=normalization, forward_kwargs={"beta": 0.0},
                             generator=step_generator(0, 0, 0, 0, x.device, stream=1))
        with torch.no_grad():
            correct = model(adversarial, beta=0.0).logits.argmax(-1) == y
        results[f"{name}_robust_accuracy"] = correct.float().mean().item()
        results[f"{name}_seconds"] = time.perf_counter() - start
    return results


def table(rows: list[dict]) -> str:
    n = rows[0].get("robust_samples", 500) if rows else 500
    lines = [
        "| run | epochs | optimizer steps | training CPU s | training wall s (load) | clean acc., clean mode "
        f"(10k test) | PGD-40 robust acc. ({n}) | APGD-CE robust acc. ({n}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['epochs']:g} | {row['steps']} | {row['train_cpu_s']:.0f} | "
            f"{row['train_wall_s']:.0f} ({row['load_start']:.1f}-{row['load_end']:.1f}) | "
            f"{100 * row['test_clean_accuracy']:.2f}% | {100 * row['pgd40_robust_accuracy']:.1f}% | "
            f"{100 * row['apgd_ce_robust_accuracy']:.1f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results_path = Path(args.output_dir) / "results.jsonl"
    if args.table:
        print(table([json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]))
        return
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    cotrain = load_cotrain()
    done = {}
    if results_path.exists():
        done = {row["name"]: row for row in map(json.loads, results_path.read_text().splitlines()) if row}
    suffix = f"_s{args.seed}" if args.seed else ""
    names = [name + suffix for name in args.runs.split(",")]
    for run, name in zip(args.runs.split(","), names):
        if name in done:
            continue
        epochs = args.epochs
        if run.endswith("_time"):
            pgd2, free = done["pgd2" + suffix], done["free" + suffix]
            epochs = round(args.epochs * pgd2["train_cpu_s"] / free["train_cpu_s"], 1)
        folder = str(Path(args.output_dir) / name)
        argv = [*RECIPE, *RUNS[run], "--num_train_epochs", str(epochs), "--max_train_samples",
                str(args.train_samples), "--seed", str(args.seed), "--output_dir", folder,
                "--overwrite_output_dir", "true"]
        row = {**train(cotrain, name, argv), "epochs": epochs, "robust_samples": args.robust_samples, "argv": argv}
        row.update(robust_accuracies(folder, args.robust_samples))
        done[name] = row
        with results_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "argv"}), flush=True)
    print(table([done[name] for name in names if name in done]))


if __name__ == "__main__":
    sys.exit(main())
