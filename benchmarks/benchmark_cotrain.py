#!/usr/bin/env python
"""Cost of a co-training step relative to a nominal step, and input-pipeline vs training throughput.

    python benchmarks/benchmark_cotrain.py            # CPU here; a GPU (bf16 autocast) when one is available
    python benchmarks/benchmark_cotrain.py --batch_size 32 --repeats 5
    python benchmarks/benchmark_cotrain.py --threads 1 --batch_size 8 --hidden_size 32 --layers 1 --repeats 2  # smoke

All ratios printed come from one run of this script on one machine:

- **Step time**: a co-training step (``alpha=0.5``, PGD-2: 2 attack forward+backward passes on ``B`` images in
  eval mode, then one forward+backward on ``2B`` images, then AdamW) and a free co-training step (``alpha=0.5``,
  ``train_attack="free"``: one forward+backward on ``[clean, clean + delta]``, ``2B`` images, then the
  perturbation's sign step and AdamW) over a nominal step (``alpha=1``: one forward+backward on ``B`` images, then
  AdamW), same model and batch. Targets (issues): PGD-2 <= 3.5x on CPU (the FLOP count predicts ~3.33x: a nominal
  step ~3 forward-equivalents, co-training ~6 + 2 per attack step); free <= 2.3x (FLOPs: 2x).
  Steps alternate between the three modes and the medians are compared, so drifting machine load hits all alike.
- **Peak memory**: on GPU, ``torch.cuda.max_memory_allocated`` during a step; on CPU, the growth of the process's
  peak resident set (``ru_maxrss``) over its value before the first step, each mode in a fresh subprocess (peak
  RSS never goes down in a process). Target: <= 2.2x.
- **Throughput** (images/s): the per-example input pipeline (decode, random resized crop, flip, normalize,
  collate; ``num_workers=0``), the batch augmenter (RandAugment + mixup/CutMix) and co-training, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification
from hf_advsoup.attacks import Normalization
from hf_advsoup.augmentation import AugmentationArguments, BatchAugmenter
from hf_advsoup.trainer import CoTrainer
from hf_advsoup.training_args import CoTrainingArguments

NORM = Normalization(mean=(0.5,), std=(0.5,))
MODES = {
    "nominal": dict(alpha=1.0),
    "cotrain": dict(alpha=0.5, train_attack="pgd2"),
    "free": dict(alpha=0.5, train_attack="free"),
}
"""The timed modes: nominal training, PGD-2 co-training, free co-training (4 replays, the default)."""


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=64, help="Clean images per step (B).")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--hidden_size", type=int, default=192)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=7, help="Timed steps per mode (medians are reported).")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    parser.add_argument("--_memory_mode", choices=list(MODES), help=argparse.SUPPRESS)
    return parser.parse_args()


def build_trainer(args: argparse.Namespace, mode: str, output_dir: str) -> CoTrainer:
    torch.manual_seed(0)
    config = AdvSoupViTConfig(
        hidden_size=args.hidden_size, num_hidden_layers=args.layers, num_attention_heads=3,
        intermediate_size=4 * args.hidden_size, image_size=args.image_size, patch_size=4, num_labels=10,
    )
    model = AdvSoupViTForImageClassification(config)
    cuda = torch.cuda.is_available()
    training_args = CoTrainingArguments(
        output_dir=output_dir, ema_decay=0.0, report_to=[], use_cpu=not cuda, bf16=cuda, **MODES[mode],
        eval_attack=None, per_device_train_batch_size=args.batch_size, disable_tqdm=True,
    )
    trainer = CoTrainer(model=model, args=training_args, normalization=NORM)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    # Trainer.train would prepare (and, with bf16, autocast-wrap) the model; do the same for the bare steps here.
    trainer.model_wrapped = trainer.accelerator.prepare_model(trainer.model)
    return trainer


def make_batch(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images01 = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.randint(0, 10, (args.batch_size,), generator=generator)
    return {"pixel_values": NORM.to_model(images01).to(device), "labels": labels.to(device)}


def step(trainer: CoTrainer, batch: dict[str, torch.Tensor]) -> None:
    trainer.training_step(trainer.model_wrapped, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.state.global_step += 1  # free co-training tells a minibatch's replays apart by the step
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_rss_kib() -> int:
    """Peak resident set of this process in KiB: ``VmHWM`` (per address space, so it starts afresh in a child
    process; ``ru_maxrss`` may inherit the parent's peak across exec on Linux), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure_memory(args: argparse.Namespace) -> float:
    """Peak memory growth of 3 steps in MiB (GPU: allocator peak; CPU: peak RSS growth)."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args, args._memory_mode, tmp)
        batch = make_batch(args, trainer.args.device)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            for _ in range(3):
                step(trainer, batch)
            return (torch.cuda.max_memory_allocated() - before) / 2**20
        # Create the optimizer state first, on a 2-image batch (negligible activations), so that it counts in
        # neither mode's growth; peak RSS never decreases, so the full-size steps must come after the baseline.
        step(trainer, {key: value[:2] for key, value in batch.items()})
        if trainer.args.free_training:
            # The 2-image step began a free minibatch whose replays would re-use its 2 images: start the full-size
            # steps on a minibatch of their own (replay 0 of the next block).
            replays = trainer.args.free_replays
            trainer.state.global_step = -(-trainer.state.global_step // replays) * replays
        before = peak_rss_kib()
        for _ in range(3):
            step(trainer, batch)
        return (peak_rss_kib() - before) / 1024


def memory_in_subprocess(mode: str) -> float:
    command = [sys.executable, os.path.abspath(__file__), "--_memory_mode", mode] + [
        a for a in sys.argv[1:] if not a.startswith("--_memory_mode")
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(json.loads(output.strip().splitlines()[-1])["peak_mib"])


def input_pipeline_throughput(args: argparse.Namespace) -> tuple[float, float]:
    """(images/s of the per-example pipeline on digits at ``image_size``, images/s of the batch augmenter)."""
    from torch.utils.data import DataLoader
    from transformers import ViTImageProcessorPil

    from hf_advsoup.data import DataArguments, collate_fn, load_image_dataset, set_image_transforms

    data_args = DataArguments(dataset_name="digits")
    dataset = load_image_dataset(data_args)
    processor = ViTImageProcessorPil(size={"height": args.image_size, "width": args.image_size},
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
    set_image_transforms(dataset, processor, data_args)
    loader = DataLoader(dataset["train"], batch_size=args.batch_size, shuffle=True, collate_fn=collate_fn)
    batches, start = [], time.perf_counter()
    for batch in loader:
        batches.append(batch)
        if len(batches) == 10:
            break
    pipeline_rate = sum(b["labels"].shape[0] for b in batches) / (time.perf_counter() - start)
    augmenter = BatchAugmenter(AugmentationArguments())
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for batch in batches:
        augmenter(NORM.to_pixels(batch["pixel_values"]), batch["labels"], 10, generator)
    augment_rate = sum(b["labels"].shape[0] for b in batches) / (time.perf_counter() - start)
    return pipeline_rate, augment_rate


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory_mode:
        print(json.dumps({"peak_mib": measure_memory(args)}))
        return
    # Memory first, while this (parent) process is still small.
    memory = {mode: memory_in_subprocess(mode) for mode in MODES}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {mode: build_trainer(args, mode, tmp) for mode in MODES}
        batch = make_batch(args, trainers["nominal"].args.device)
        for trainer in trainers.values():  # warm-up (allocator, kernels, optimizer state)
            step(trainer, batch)
            step(trainer, batch)
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for name, trainer in trainers.items():
                start = time.perf_counter()
                step(trainer, batch)
                times[name].append(time.perf_counter() - start)
    load_after = os.getloadavg()
    t = {mode: statistics.median(values) for mode, values in times.items()}
    pipeline_rate, augment_rate = input_pipeline_throughput(args)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; ViT hidden {args.hidden_size}, {args.layers} layers, {args.image_size}x{args.image_size}"
          f" images, patch 4, batch {args.batch_size}; medians of {args.repeats} interleaved steps; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"nominal step (alpha=1)            : {t['nominal'] * 1e3:8.1f} ms")
    print(f"co-training step (alpha=0.5,PGD-2): {t['cotrain'] * 1e3:8.1f} ms")
    print(f"free co-training step (alpha=0.5) : {t['free'] * 1e3:8.1f} ms")
    print(f"step time ratio PGD-2/nominal     : {t['cotrain'] / t['nominal']:8.2f}x  (target <= 3.5x on CPU, "
          "FLOPs ~3.33x)")
    print(f"step time ratio free/nominal      : {t['free'] / t['nominal']:8.2f}x  (target <= 2.3x, FLOPs ~2x)")
    print(f"peak memory nominal/PGD-2/free    : {memory['nominal']:8.1f} / {memory['cotrain']:.1f} / "
          f"{memory['free']:.1f} MiB")
    print(f"peak memory ratio PGD-2 / free    : {memory['cotrain'] / max(memory['nominal'], 1e-9):8.2f}x / "
          f"{memory['free'] / max(memory['nominal'], 1e-9):.2f}x  (target <= 2.2x)")
    print(f"input pipeline (decode+crop+norm) : {pipeline_rate:8.0f} images/s (1 process, num_workers=0)")
    print(f"batch augmenter (RandAug+mix)     : {augment_rate:8.0f} images/s")
    print(f"throughput nominal/PGD-2/free     : {args.batch_size / t['nominal']:8.0f} / "
          f"{args.batch_size / t['cotrain']:.0f} / {args.batch_size / t['free']:.0f} images/s")


if __name__ == "__main__":
    main()
