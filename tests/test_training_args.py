"""Tests of CoTrainingArguments: paper defaults, parsing from the command line / YAML / JSON, the linear scaling rule,
warm-up in epochs, attack construction and validation messages."""

import dataclasses
import json

import pytest
import yaml
from transformers import HfArgumentParser, TrainingArguments

from hf_advsoup.training_args import CoTrainingArguments

NEW_FIELDS = {f.name for f in dataclasses.fields(CoTrainingArguments)} - {
    f.name for f in dataclasses.fields(TrainingArguments)
}


def make(**kwargs):
    return CoTrainingArguments(output_dir="unused", use_cpu=True, report_to=[], **kwargs)


def test_paper_defaults():
    args = make()
    assert (args.adam_beta1, args.adam_beta2) == (0.9, 0.95)
    assert args.weight_decay == 0.3 and args.label_smoothing_factor == 0.1 and args.ema_decay == 0.9999
    assert str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)) == "cosine"
    assert args.alpha == 0.5 and args.train_attack == "pgd2" and args.remove_unused_columns is False
    config = args.train_attack_config()
    assert (config.name, config.norm, config.steps) == ("pgd", "linf", 2)
    assert config.epsilon == pytest.approx(4 / 255) and config.step_size == pytest.approx(2.5 / 255)
    assert args.eval_attack_config().name == "pgd40"


def test_every_new_field_has_help_with_substance():
    fields = {f.name: f for f in dataclasses.fields(CoTrainingArguments)}
    assert {"alpha", "train_attack", "train_epsilon", "eval_attack", "ema_decay", "base_learning_rate"} <= NEW_FIELDS
    for name in NEW_FIELDS | {"adam_beta2", "weight_decay", "label_smoothing_factor"}:
        text = fields[name].metadata.get("help", "")
        assert len(text) > 30, name
    for name in ("alpha", "train_epsilon", "ema_decay", "base_learning_rate", "warmup_epochs", "weight_decay"):
        assert "Paper" in fields[name].metadata["help"], name  # the paper's value is stated
    assert "pixel units" in fields["train_epsilon"].metadata["help"]


def test_parse_command_line_yaml_and_json(tmp_path):
    parser = HfArgumentParser(CoTrainingArguments)
    (cli,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--alpha", "0.4", "--train_epsilon", "8/255", "--train_attack_steps", "5",
         "--use_cpu", "--report_to", "none"]
    )
    assert cli.alpha == 0.4 and cli.train_attack_config().steps == 5
    # Overriding epsilon alone rescales the preset's step with it (2.5/255 at 4/255 -> 5/255 at 8/255).
    assert cli.train_attack_config().step_size == pytest.approx(5 / 255)
    values = {"output_dir": str(tmp_path), "alpha": 0.0, "train_attack": "pgd5", "ema_decay": 0.999,
              "use_cpu": True, "report_to": "none"}
    (tmp_path / "args.yaml").write_text(yaml.safe_dump(values))
    (tmp_path / "args.json").write_text(json.dumps(values))
    (from_yaml,) = parser.parse_yaml_file(str(tmp_path / "args.yaml"))
    (from_json,) = parser.parse_json_file(str(tmp_path / "args.json"))
    for args in (from_yaml, from_json):
        assert args.alpha == 0.0 and args.ema_decay == 0.999 and args.train_attack_config().steps == 5


def test_linear_scaling_rule_uses_global_batch():
    args = make(base_learning_rate=1e-4, per_device_train_batch_size=64, gradient_accumulation_steps=4)
    assert args.global_train_batch_size == 256
    assert args.learning_rate == pytest.approx(1e-4)
    args = make(base_learning_rate=2e-4, per_device_train_batch_size=512, gradient_accumulation_steps=2)
    assert args.learning_rate == pytest.approx(2e-4 * 1024 / 256)
    assert make(learning_rate=3e-3).learning_rate == 3e-3  # no base: learning_rate is used as given


def test_warmup_epochs_convert_to_steps():
    assert make(warmup_epochs=20).warmup_steps_for(num_update_steps_per_epoch=313, num_training_steps=93_900) == 6260
    assert make(warmup_steps=0.1).warmup_steps_for(313, 1000) == 100  # falls back to warmup_steps
    assert make(warmup_epochs=5).warmup_steps_for(10, 30) == 30  # never longer than the run


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(alpha=1.5), "alpha must be in \\[0, 1\\]"),
        (dict(ema_decay=1.0), "ema_decay must be in \\[0, 1\\)"),
        (dict(train_attack="pgd3"), "valid presets: pgd2"),
        (dict(train_epsilon="4"), "did you mean '4/255'"),
        (dict(eval_attack="nope"), "Unknown attack preset"),
        (dict(base_learning_rate=-1.0), "base_learning_rate must be > 0"),
        (dict(catastrophic_overfitting_drop=1.5), "catastrophic_overfitting_drop"),
        (dict(robust_eval_samples=-1), "robust_eval_samples must be >= 0"),
    ],
)
def test_invalid_values_have_clear_errors(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make(**kwargs)


def test_alpha_one_needs_no_valid_training_attack_and_monitoring_can_be_off():
    args = make(alpha=1.0, eval_attack=None)
    assert args.eval_attack_config() is None
    assert make(robust_eval_samples=0).eval_attack_config() is None
