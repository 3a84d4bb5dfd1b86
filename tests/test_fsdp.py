"""FSDP, executed: two CPU processes (gloo) co-train through the path a user takes, ``accelerate launch`` with the
repository's ``scripts/accelerate/fsdp.yaml`` (``--use_cpu``: accelerate enables FSDP on accelerators only, and
:func:`hf_advsoup.training.distributed.enable_fsdp_on_cpu` applies the launch's FSDP plugin on CPU processes).

Checked, for fp32 and for FSDP's bf16 mixed precision:

- the model really is sharded: the Trainer ran FSDP (``distributed_type`` FSDP on both processes), ``AdvSoupViTLayer``
  is an FSDP unit, every parameter is a ``DTensor`` whose shards over the two processes make up the whole, both
  classification tokens included (a run that fell back to plain data parallelism or two independent runs has none);
- the logged losses and the final (EMA) weights equal those of one process with the same global batch (fp32: to float
  rounding; bf16: the losses within 0.002 and the weights' update within 15% of the fp32 one-process run's), and both
  tokens moved;
- a checkpoint written at step 2 resumes, in a new launch, to the uninterrupted run's losses and weights: a sharded
  one (``SHARDED_STATE_DICT``: one ``.distcp`` file per process, no whole weights) in the fp32 run, ``fsdp.yaml``'s
  own ``FULL_STATE_DICT`` in the bf16 run;
- the saved model is whole: ``from_pretrained`` loads it, its remote code is the model's own (``auto_map`` names
  ``modeling_advsoup``, not FSDP's generated class), its soups and ``export_soup`` agree, the attack runs on it, and
  the soup table that ``scripts/cotrain.py`` computed on the sharded model (every process attacking the same images)
  equals the one-process run's.

SLOW (~1.5-2 min on 2 busy cores): 4 launches of 2 processes. Deselect with ``-m "not distributed"``.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launching import ROOT, TINY, accelerate_launch, free_port, logged_losses, reports

sys.path.insert(0, str(ROOT / "scripts"))
import cotrain  # noqa: E402

pytestmark = pytest.mark.distributed

STEPS = 4
RUN = [*TINY, "--max_steps", str(STEPS), "--soup_table", "true", "--soup_table_attack", "pgd40",
       "--soup_table_robust_samples", "16"]
FSDP_CONFIG = str(ROOT / "scripts" / "accelerate" / "fsdp.yaml")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, a batch of 16 (= 2 processes x 8), fp32."""
    out = tmp_path_factory.mktemp("one") / "run"
    cotrain.main(["--output_dir", str(out), "--per_device_train_batch_size", "16", "--save_strategy", "no", *RUN])
    return out


def fsdp_launch(tmp_path: Path, name: str, precision: str, state_dict_type: str,
                *extra: str) -> tuple[Path, list[dict]]:
    out, report = tmp_path / name, tmp_path / f"{name}-report"
    launch = ["--config_file", FSDP_CONFIG, "--num_processes", "2", "--num_machines", "1", "--main_process_port",
              str(free_port()), "--mixed_precision", precision, "--dynamo_backend", "no",
              "--fsdp_state_dict_type", state_dict_type]
    script = ["--output_dir", str(out), "--per_device_train_batch_size", "8", "--save_strategy", "steps",
              "--save_steps", "2", *RUN, *(["--bf16", "true"] if precision == "bf16" else []), *extra]
    accelerate_launch(launch, script, report)
    return out, reports(report)


def initial_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights every run starts from (seed 0), as saved (``save_pretrained``'s key names)."""
    from transformers import set_seed

    set_seed(0)
    model = cotrain.build_model(cotrain.parse_arguments(["--output_dir", "x", *TINY])[0], 10, 8,
                                {i: str(i) for i in range(10)})
    model.save_pretrained(folder)
    return load_file(str(folder / "model.safetensors"))


# fp32 with sharded checkpoints, bf16 with fsdp.yaml's own full ones: each checkpoint kind is resumed once.
@pytest.mark.parametrize("precision, state_dict_type", [("no", "SHARDED_STATE_DICT"), ("bf16", "FULL_STATE_DICT")])
def test_fsdp_on_two_cpu_processes(tmp_path, one_process, precision, state_dict_type):
    if precision == "bf16" and not torch.backends.mkldnn.is_available():
        pytest.skip("bf16 on this CPU: torch has no oneDNN here")
    bf16 = precision == "bf16"
    out, ranks = fsdp_launch(tmp_path, "fsdp", precision, state_dict_type)

    # ---- really sharded, on both processes
    assert [r["process_index"] for r in ranks] == [0, 1]
    for report in ranks:
        assert report["distributed_type"] == "FSDP" and report["is_fsdp_enabled"] and report["num_processes"] == 2
        sharding = report["sharding"]
        assert "FSDPAdvSoupViTLayer" in sharding["fsdp_units"], sharding["fsdp_units"]
        assert sharding["fsdp_units"][0] == "FSDPAdvSoupViTForImageClassification"  # the root unit
        assert sharding["dtensor"] == sharding["parameters"] > 0
        assert sharding["mp_param_dtype"] == ("torch.bfloat16" if bf16 else None)
        for token in ("vit.embeddings.cls_token", "vit.embeddings.adversarial_cls_token"):
            assert report["tokens"][token]["type"] == "DTensor" and report["tokens"][token]["placements"] == ["S(0)"]
    # Each process holds part of the weights, and the parts make up the whole (also for each token: FSDP2 shards
    # dim 0, which a (1, 1, d) token has one row of, so one process holds it and the other an empty shard).
    assert ranks[0]["sharding"]["numel"] == ranks[1]["sharding"]["numel"]
    assert sum(r["sharding"]["local_numel"] for r in ranks) == ranks[0]["sharding"]["numel"]
    assert all(r["sharding"]["local_numel"] < r["sharding"]["numel"] for r in ranks)
    for token in ("vit.embeddings.cls_token", "vit.embeddings.adversarial_cls_token"):
        rows = [r["tokens"][token]["local_shape"][0] for r in ranks]
        assert sum(rows) == ranks[0]["tokens"][token]["shape"][0] == 1
    # Two processes of 8 images per step went through STEPS x 16 images (two independent runs would say STEPS x 8).
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(STEPS * 16 / 96)

    # ---- the same training as one process with the same global batch
    losses, reference = logged_losses(out), logged_losses(one_process)
    assert sorted(losses) == sorted(reference) == list(range(1, STEPS + 1))
    tolerance = dict(rtol=0, atol=2e-3) if bf16 else dict(rtol=1e-5, atol=1e-6)
    for step in reference:
        torch.testing.assert_close(torch.tensor(losses[step]), torch.tensor(reference[step]), **tolerance)
    weights, one = load_file(str(out / "model.safetensors")), load_file(str(one_process / "model.safetensors"))
    init = initial_weights(tmp_path / "init")
    assert weights.keys() == one.keys() == init.keys()
    for name in one:
        assert weights[name].dtype == torch.float32, name  # fp32 master weights under bf16 too
        if not bf16:
            torch.testing.assert_close(weights[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    if bf16:
        # bf16 rounds every forward and gradient, and AdamW turns rounding noise on near-zero gradients into whole
        # steps (the key bias, whose gradient is zero in exact arithmetic, moves only in bf16): compare the whole
        # update instead of each weight. Measured: 0.05 of the update's norm after 4 steps.
        distance = sum(float((weights[n] - one[n]).pow(2).sum()) for n in one) ** 0.5
        update = sum(float((one[n] - init[n]).pow(2).sum()) for n in one) ** 0.5
        assert distance < 0.15 * update, (distance, update)
    for token in ("vit.embeddings.cls_token", "vit.embeddings.adversarial_cls_token"):
        moved = (weights[token] - init[token]).abs().max()
        assert moved > 1e-3, (token, float(moved))  # the tokens were updated (a step is about 3e-3 here)
    assert not torch.allclose(weights["vit.embeddings.cls_token"], weights["vit.embeddings.adversarial_cls_token"])

    # ---- a checkpoint, resumed in a new launch, continues the same run
    checkpoint = out / "checkpoint-2"
    if state_dict_type == "SHARDED_STATE_DICT":
        shards = sorted(path.name for path in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))
        assert len(shards) == 2, shards  # one file per process
        assert not (checkpoint / "model.safetensors").exists()  # no whole weights in a sharded checkpoint
    else:
        assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "model.safetensors").is_file()
    assert (checkpoint / "ema.safetensors").is_file()
    resumed, resumed_ranks = fsdp_launch(tmp_path, "resumed", precision, state_dict_type, "--resume_from_checkpoint",
                                         str(checkpoint))
    assert all(r["distributed_type"] == "FSDP" and r["global_step"] == STEPS for r in resumed_ranks)
    after = logged_losses(resumed)  # steps 1-2 come from the checkpoint's trainer_state.json, 3-4 were trained
    assert sorted(after) == list(range(1, STEPS + 1))
    for step in after:
        torch.testing.assert_close(torch.tensor(after[step]), torch.tensor(losses[step]), rtol=0, atol=1e-6)
    resumed_weights = load_file(str(resumed / "model.safetensors"))
    for name in weights:
        torch.testing.assert_close(resumed_weights[name], weights[name], rtol=0, atol=1e-6, msg=name)

    # ---- the saved model is whole: from_pretrained, remote code, soups, export_soup, the attack
    from hf_advsoup import AdvSoupViTForImageClassification
    from hf_advsoup.attacks import AttackConfig, Normalization, attack

    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_advsoup.AdvSoupViTForImageClassification"
    assert not list(out.glob("_fsdp*.py"))  # FSDP's sources are not copied as remote code
    assert (out / "modeling_advsoup.py").is_file()  # the model's own remote code (its loading: test_modeling.py)
    model = AdvSoupViTForImageClassification.from_pretrained(out).eval()
    norm = Normalization(mean=(0.5,) * 3, std=(0.5,) * 3)  # the processor's (cotrain.py's --image_mean/--image_std)
    x = norm.to_model(torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        soup = model(pixel_values=x, beta=0.5).logits
        torch.testing.assert_close(model.export_soup(beta=0.5).eval()(pixel_values=x).logits, soup,
                                   rtol=1e-4, atol=1e-5)
    y = model(pixel_values=x, beta=0.0).logits.argmax(-1)
    adversarial = attack(model, x, y, AttackConfig.from_preset("pgd2", epsilon=8 / 255), normalization=norm,
                         forward_kwargs={"beta": 0.0}, generator=torch.Generator().manual_seed(0))
    delta = norm.to_pixels(adversarial) - norm.to_pixels(x)
    assert 0 < delta.abs().max() <= 8 / 255 + 1e-6
    # The soup table computed on the sharded model (both processes attacking the same images) is the one-process
    # run's: the same weights give the same predictions.
    # (The table's last paragraph names the command that recomputes it, with each run's own output folder.)
    table, reference_table = ((folder / "soup_table.md").read_text().split("\n\nThe same table")[0]
                              for folder in (out, one_process))
    if bf16:
        assert table.splitlines()[0] == reference_table.splitlines()[0]  # computed under bf16: numbers may differ
    else:
        assert table == reference_table
