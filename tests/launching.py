"""Launching ``scripts/cotrain.py`` in several processes for the distributed tests, the way a user does: ``accelerate
launch`` run by the interpreter that runs the tests (``python -m accelerate.commands.launch``; an ``accelerate`` found
on PATH may belong to another Python), with ``tests/launch_child.py`` standing in for ``scripts/cotrain.py`` so that
each process reports what it really ran (:func:`reports`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "launch_child.py"

TINY = [
    "--hidden_size", "16", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "32",
    "--image_size", "8", "--patch_size", "4", "--max_train_samples", "96", "--max_eval_samples", "32",
    "--per_device_eval_batch_size", "16", "--random_resized_crop", "False", "--horizontal_flip", "False",
    "--train_attack_random_start", "False", "--eval_strategy", "no", "--robust_eval_samples", "32",
    "--eval_attack_steps", "2", "--ema_decay", "0.9", "--dataloader_pin_memory", "False", "--disable_tqdm", "True",
    "--use_cpu", "--dataset_name", "digits", "--logging_steps", "1", "--warmup_epochs", "0",
    "--base_learning_rate", "0.05",
]
"""A tiny co-training run on the embedded digits whose result does not depend on how the batch is split: no random
start in the training attack (each image's perturbation depends only on the image), no crops or flips, no batch
augmentation, no dropout; no warm-up and a large learning rate, so that a few steps move every weight well beyond
the comparisons' tolerances. Add ``--max_steps``, ``--per_device_train_batch_size``, the save strategy and the soup
table."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_env(report_dir: Path | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if report_dir is not None:
        env["HF_ADVSOUP_LAUNCH_REPORT"] = str(report_dir)
    env.update(extra)
    return env


def accelerate_launch(launch_args: list[str], script_args: list[str], report_dir: Path | None,
                      timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -m accelerate.commands.launch LAUNCH_ARGS tests/launch_child.py SCRIPT_ARGS``; raises with the end of
    the output when it fails."""
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, str(CHILD), *script_args]
    result = subprocess.run(command, cwd=ROOT, env=launch_env(report_dir, **env), capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)}\nexit {result.returncode}\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def launch_machines(machines: int, launch_args: list[str], script_args: list[str], report_dir: Path,
                    timeout: int = 300, **env: str) -> list[subprocess.CompletedProcess]:
    """``machines`` "machines" on localhost, one ``accelerate launch`` each (``--num_machines machines
    --machine_rank r --main_process_ip 127.0.0.1`` and a free port), run at the same time, as on a cluster where each
    node runs the same command with its own rank; raises with the end of the output of any that failed."""
    port = str(free_port())
    commands = [[sys.executable, "-m", "accelerate.commands.launch", *launch_args, "--num_machines", str(machines),
                 "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                 str(CHILD), *script_args] for rank in range(machines)]
    processes = [subprocess.Popen(command, cwd=ROOT, env=launch_env(report_dir, **env), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for command in commands]
    results = []
    try:
        for command, process in zip(commands, processes):
            stdout, stderr = process.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for result in results:
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(result.args)}\nexit {result.returncode}\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-6000:]}")
    return results


def reports(report_dir: Path) -> list[dict]:
    """The per-process reports of ``tests/launch_child.py``, by process index."""
    found = sorted(report_dir.glob("rank*.json"), key=lambda path: int(path.stem[4:]))
    return [json.loads(path.read_text()) for path in found]


def logged_losses(output_dir: Path) -> dict[int, float]:
    """``{step: loss}`` of a run's ``trainer_state.json`` (logged every step with ``--logging_steps 1``)."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return {log["step"]: log["loss"] for log in history if "loss" in log}
