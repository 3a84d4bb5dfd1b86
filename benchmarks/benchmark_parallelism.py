#!/usr/bin/env python
"""How to use every core of a CPU machine for co-training: one process with all threads, one single-threaded
process per core (independent jobs side by side), or DDP with one single-threaded process per core.

    python benchmarks/benchmark_parallelism.py scripts/configs/fashion_mnist_flagship.yaml --max_steps 40
    python benchmarks/benchmark_parallelism.py scripts/configs/fashion_mnist_tiny.yaml --max_steps 10 --cores 2

Each arrangement runs ``scripts/cotrain.py`` on the recipe for ``--max_steps`` optimizer steps (no evaluation, no
checkpoints, no soup table) and reports the images per second of the whole machine, from the Trainer's own
``train_runtime`` (which leaves out start-up and data loading before the first step):

- **threads**: one process, ``--cores`` torch threads, batch B;
- **jobs**: ``--cores`` processes at once, one thread each, batch B each (e.g. a co-training run and a baseline
  trained side by side): the machine's rate is the sum of theirs;
- **ddp**: ``accelerate launch --multi_gpu --use_cpu`` with ``--cores`` processes of one thread and batch B each
  (global batch ``cores x B``), gloo all-reduce.

All three run in this one invocation, one after the other, so the machine's load is comparable; the load average is
printed. The fastest arrangement is the one the flagship recipe (docs/flagship.md) uses.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

COTRAIN = Path(__file__).resolve().parents[1] / "scripts" / "cotrain.py"
QUIET = ["--eval_strategy", "no", "--save_strategy", "no", "--soup_table", "false", "--logging_strategy", "no",
         "--disable_tqdm", "true", "--report_to", "none", "--log_level", "warning"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="A recipe file of scripts/cotrain.py (YAML or JSON).")
    parser.add_argument("--max_steps", type=int, default=40, help="Optimizer steps per process (default 40).")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="Cores to use (default: all).")
    parser.add_argument("--batch_size", type=int, default=None, help="Per-process batch (default: the recipe's).")
    parser.add_argument("--arrangements", nargs="+", default=["threads", "jobs", "ddp"],
                        choices=["threads", "jobs", "ddp"], help="Which arrangements to time (default: all three).")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.recipe):
        parser.error(f"recipe {args.recipe} does not exist")
    if args.max_steps < 2 or args.cores < 1:
        parser.error("--max_steps must be >= 2 and --cores >= 1")
    return args


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(args: argparse.Namespace, output_dir: str, launcher: list[str] | None = None) -> list[str]:
    flags = [args.recipe, "--output_dir", output_dir, "--overwrite_output_dir", "--max_steps", str(args.max_steps),
             *QUIET]
    if args.batch_size:
        flags += ["--per_device_train_batch_size", str(args.batch_size)]
    return [*(launcher or [sys.executable]), str(COTRAIN), *flags]


def _rate(output_dir: str) -> float:
    """Images per second of a finished run, from the Trainer's ``train_results.json``."""
    metrics = json.loads((Path(output_dir) / "train_results.json").read_text())
    return float(metrics["train_samples_per_second"])


def _run(commands: list[list[str]], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for command in commands]
    for process, command in zip(processes, commands):
        output, _ = process.communicate()
        if process.returncode != 0:
            sys.exit(f"error: {' '.join(command)} failed:\n{output[-3000:]}")


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse(argv)
    rates: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        if "threads" in args.arrangements:
            out = os.path.join(tmp, "threads")
            _run([_command(args, out)], threads=args.cores)
            rates["threads"] = _rate(out)
        if "jobs" in args.arrangements:
            outs = [os.path.join(tmp, f"job{i}") for i in range(args.cores)]
            _run([_command(args, out) for out in outs], threads=1)
            rates["jobs"] = sum(_rate(out) for out in outs)
        if "ddp" in args.arrangements and args.cores > 1:
            out = os.path.join(tmp, "ddp")
            launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                        str(args.cores), "--num_machines", "1", "--main_process_port", str(_free_port()),
                        "--mixed_precision", "no", "--dynamo_backend", "no"]
            _run([_command(args, out, launcher) + ["--use_cpu", "true"]], threads=1)
            # the Trainer reports the global rate (all processes' images)
            rates["ddp"] = _rate(out)
    load_after = os.getloadavg()[0]
    best = max(rates, key=rates.get)
    print(f"recipe {args.recipe}; {args.cores} cores; {args.max_steps} steps per process; load average "
          f"{load_before:.1f} before, {load_after:.1f} after")
    for name, rate in rates.items():
        print(f"{name:8s}: {rate:8.1f} images/s on the machine ({rate / rates[best]:.2f}x the best)")
    print(f"fastest: {best}")
    return rates


if __name__ == "__main__":
    main()
