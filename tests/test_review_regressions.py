"""Regression tests for defects found in a review pass (each failed before its fix)."""

from pathlib import Path

import pytest
import torch
import yaml

from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification
from hf_advsoup.soups import describe_threat_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("eps", [1.0, 2.0, 4.0, 8.0])
def test_l2_epsilon_is_not_written_in_255ths(eps):
    # The paper's l_2 radii (1, 2, 4, 8) are not fractions of 255: "eps 255/255" would state the wrong units.
    text = describe_threat_model({"attack": "l2_pgd", "norm": "l2", "epsilon": eps, "steps": 2})
    assert "/255" not in text
    assert f"eps {eps:g}" in text
    linf = describe_threat_model({"attack": "pgd40", "norm": "linf", "epsilon": 4 / 255, "steps": 40})
    assert "eps 4/255" in linf


def test_fsdp_config_wraps_modules_whose_forward_runs():
    # FSDP2 all-gathers a wrapped module's parameters in a hook on that module's forward. The model runs its blocks
    # itself (per-sample adapters, stochastic depth) and never calls ViTLayer.forward, so wrapping ViTLayer leaves its
    # parameters sharded ("got mixed torch.Tensor and DTensor"). Every wrapped class must see its forward called.
    config = yaml.safe_load((ROOT / "scripts/accelerate/fsdp.yaml").read_text())
    names = config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")
    model = AdvSoupViTForImageClassification(AdvSoupViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16,
        patch_size=4, num_labels=3))
    calls = {name: 0 for name in names}
    wrapped = [m for m in model.modules() if type(m).__name__ in calls]
    assert {type(m).__name__ for m in wrapped} == set(names), "a class to wrap does not exist in the model"
    for module in wrapped:
        module.register_forward_hook(lambda m, args, out: calls.__setitem__(type(m).__name__, calls[type(m).__name__] + 1))
    model(torch.randn(2, 3, 16, 16), beta=torch.tensor([1.0, 0.0]))
    assert all(count > 0 for count in calls.values()), calls


def test_train_attack_help_names_only_real_presets():
    # The help is what users copy into --train_attack; a name there that is not a preset fails the run at parse time.
    import dataclasses
    import re

    from hf_advsoup.attacks import PRESETS
    from hf_advsoup.training_args import CoTrainingArguments

    help_text = next(f for f in dataclasses.fields(CoTrainingArguments) if f.name == "train_attack").metadata["help"]
    examples = re.search(r"e\.g\. ([^)]*)\)", help_text).group(1)
    names = re.findall(r"'([^']+)'", examples)
    assert names and all(name in PRESETS for name in names), names
