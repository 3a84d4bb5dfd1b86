"""Multi-node, executed: two "machines" on localhost, each its own ``accelerate launch --num_machines 2
--machine_rank 0|1 --main_process_ip 127.0.0.1`` with one CPU process (gloo), co-train as one run of two processes and
give the same losses and weights as one process with the same global batch.

A cluster runs the same command on every node with its own ``--machine_rank`` (docs/cotraining.md, "Several
machines"). Checked that it did not fall back to two independent runs: both processes report a world of 2, ranks 0
and 1 on machines 0 and 1 (each the local process 0 of its machine), and the run went through 2 x 8 images a step.

SLOW (~30-40 s on 2 busy cores). Deselect with ``-m "not distributed"``.
"""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from launching import ROOT, TINY, launch_machines, logged_losses, reports

sys.path.insert(0, str(ROOT / "scripts"))
import cotrain  # noqa: E402

pytestmark = pytest.mark.distributed

STEPS = 3
RUN = [*TINY, "--max_steps", str(STEPS), "--save_strategy", "no", "--soup_table", "false"]


def test_two_machines_on_localhost_match_one_process(tmp_path):
    one = tmp_path / "one"
    cotrain.main(["--output_dir", str(one), "--per_device_train_batch_size", "16", *RUN])

    two, report = tmp_path / "two", tmp_path / "report"
    # Each "machine" runs one process (--num_processes is the total over the machines); DDP with gloo.
    launch = ["--multi_gpu", "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch_machines(2, launch, ["--output_dir", str(two), "--per_device_train_batch_size", "8", *RUN], report)

    ranks = reports(report)
    assert [(r["process_index"], r["node_rank"], r["local_process_index"]) for r in ranks] == [(0, 0, 0), (1, 1, 0)]
    assert all(r["num_processes"] == 2 and r["distributed_type"] == "MULTI_CPU" for r in ranks)
    state = json.loads((two / "trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(STEPS * 16 / 96)  # two independent runs would say STEPS x 8

    losses, reference = logged_losses(two), logged_losses(one)
    assert sorted(losses) == sorted(reference) == list(range(1, STEPS + 1))
    for step in reference:
        torch.testing.assert_close(torch.tensor(losses[step]), torch.tensor(reference[step]), rtol=1e-5, atol=1e-6)
    weights, expected = load_file(str(two / "model.safetensors")), load_file(str(one / "model.safetensors"))
    assert weights.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(weights[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    # The run trained: the classifier moved from its (seeded) initial weights by far more than the tolerance.
    from transformers import set_seed

    set_seed(0)
    init = cotrain.build_model(cotrain.parse_arguments(["--output_dir", "x", *TINY])[0], 10, 8,
                               {i: str(i) for i in range(10)})
    assert (expected["classifier.weight"] - init.classifier.weight.detach()).abs().max() > 1e-3
