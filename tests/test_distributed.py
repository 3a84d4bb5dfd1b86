"""Two CPU processes (gloo, ``accelerate launch``) give the same co-training (PGD-2 and free) as one process with the
same global batch.

SLOW (~30-60 s on 2 cores): it launches two Python processes. Deselect with ``-m "not distributed"``.

Everything random is made batch-split invariant so that the comparison is exact up to float rounding: no random
start in the training attack (each image's perturbation then depends only on the image), no random crops/flips,
no batch augmentation (mixup pairs images inside a process's batch), no dropout or stochastic depth.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import cotrain  # noqa: E402

pytestmark = pytest.mark.distributed

COMMON = [
    "--hidden_size", "16", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "32",
    "--image_size", "8", "--patch_size", "4", "--max_steps", "3", "--max_train_samples", "96",
    "--max_eval_samples", "32", "--per_device_eval_batch_size", "16", "--random_resized_crop", "False",
    "--horizontal_flip", "False", "--train_attack_random_start", "False", "--eval_strategy", "no",
    "--save_strategy", "no", "--robust_eval_samples", "32", "--eval_attack_steps", "2", "--ema_decay", "0.9",
    "--dataloader_pin_memory", "False", "--disable_tqdm", "True", "--use_cpu", "--dataset_name", "digits", "--soup_table", "false",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Free co-training: 2 replays per minibatch (3 steps = a minibatch replayed twice, then the next one), each image's
# perturbation starting from zero and moving by the sign of its own gradient, so it does not depend on the split.
FREE = ["--train_attack", "free", "--free_replays", "2", "--free_start", "zero", "--logging_steps", "1"]


@pytest.mark.parametrize("attack", ["pgd2", "free"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, attack):
    extra = FREE if attack == "free" else []
    single = cotrain.main(["--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "16", *COMMON,
                           *extra])

    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
        str(ROOT / "scripts" / "cotrain.py"), "--output_dir", str(tmp_path / "two"),
        "--per_device_train_batch_size", "8", *COMMON, *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    import json

    # Two processes of 8 images per step went through 3 x 16 images (two independent runs would report 3 x 8);
    # free co-training replays each minibatch twice, so its 3 steps cover 1.5 minibatches of 16.
    state = json.loads((tmp_path / "two" / "trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx((1.5 if attack == "free" else 3) * 16 / 96)
    if attack == "free":
        one_log = json.loads((tmp_path / "one" / "trainer_state.json").read_text())["log_history"]
        losses = [log["adversarial_loss"] for log in one_log if "adversarial_loss" in log]
        assert len(losses) == 3 and losses[0] != losses[1]  # the replay saw its updated perturbation

    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    from transformers import set_seed

    set_seed(0)
    init = cotrain.build_model(cotrain.parse_arguments(["--output_dir", "x", *COMMON])[0], 10, 8,
                               {i: str(i) for i in range(10)})
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    # The run trained (the comparison is not between two untouched initialisations).
    assert not torch.allclose(one["classifier.weight"], init.classifier.weight.detach())
    # Metrics gathered over both processes.
    metrics = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    assert metrics["eval_robust_eval_samples"] == single["eval_robust_eval_samples"] == 32
    assert metrics["eval_clean_accuracy"] == pytest.approx(single["eval_clean_accuracy"])
    # The monitoring attack's random start differs per process: allow a couple of images' difference.
    assert abs(metrics["eval_robust_accuracy"] - single["eval_robust_accuracy"]) <= 3 / 32
