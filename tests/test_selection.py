"""The soup selector (beta="auto"): its adaptive evaluation breaks a selector that is trivially fooled, its training
changes the selector only, and the scripts that train and evaluate it work from the command line's entry points.

The adaptive-evaluation tests use a hand-built model with known margins (a 1-patch ViT whose block is the identity):

- robust mode (``beta = 0``) classifies by ``mean(left half) - mean(right half)`` (+-0.4 on the data): an l_inf
  attack moves it by at most ``2 eps``, so at ``eps = 0.1`` robust mode is provably robust;
- clean mode (``beta = 1``) adds ``10 * (x[0, 0, 0] - x[0, 0, 1])`` (0 on the data): it is correct on clean images and
  broken by any attack that pulls those two pixels apart;
- the selector reads only the image's mean brightness (``beta = sigmoid(100 * (brightness - 0.63))``; the images
  have brightness 0.55 to 0.6, so they get robust mode). The robust-mode attack leaves the brightness unchanged, so
  transferred it looks harmless; an attack that knows the selector brightens the image by ``eps`` to get clean mode.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from tiny_soup import images, make_soup_model
from torch import nn
from torch.utils.data import Dataset

from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification
from hf_advsoup.attacks import Normalization
from hf_advsoup.intervals import unpack_flags
from hf_advsoup.selection import (
    AutoEvaluationArguments,
    AutoSoupClassifier,
    SelectorTrainer,
    SelectorTrainingArguments,
    adaptive_attacks,
    cotraining_attack_settings,
    evaluate_auto_soup,
    selector_metrics,
)

ROOT = Path(__file__).resolve().parents[1]
SELECTOR_THRESHOLD = 0.63


class BrightnessSelector(nn.Module):
    """A selector that reads nothing but the mean brightness (channel 4 of the toy model's embeddings)."""

    def forward(self, hidden_states, attention_mask=None):
        return 100.0 * (hidden_states[:, 1:, 4].mean(1) - SELECTOR_THRESHOLD)


def known_margin_model(selector_mode: str = "soft") -> AdvSoupViTForImageClassification:
    config = AdvSoupViTConfig(hidden_size=6, num_hidden_layers=1, num_attention_heads=1, intermediate_size=4,
                              image_size=8, patch_size=8, num_labels=4, adapter="patch_embed", selector_layers=0,
                              selector_mode=selector_mode)
    model = AdvSoupViTForImageClassification(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()  # the block adds nothing (zero output projections): it is the identity
        model.vit.layernorm.weight.fill_(1.0)
        robust = torch.zeros(6, 3, 8, 8)
        robust[0, :, :, :4], robust[0, :, :, 4:] = 1 / 96, -1 / 96  # mean(left) - mean(right)
        robust[4] = 1 / 192  # mean brightness
        clean = robust.clone()
        clean[0, 0, 0, 0], clean[0, 0, 0, 1] = 1 / 96 + 10.0, 1 / 96 - 10.0
        for weights in (robust, clean):
            weights[1], weights[5] = -weights[0], -weights[4]
        projection = model.vit.embeddings.patch_embeddings.projection
        projection.weight.copy_(clean)
        projection.adversarial_weight.copy_(robust)
        bias = torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 0.0])  # constant channels keep the LayerNorm smooth in a
        projection.bias.copy_(bias)
        projection.adversarial_bias.copy_(bias)
        model.classifier.weight[0, 0], model.classifier.weight[1, 0] = -5.0, 5.0
        model.classifier.bias[2:] = -20.0  # two classes no image has (AutoAttack's targeted loss needs 4)
    model.vit.selector = BrightnessSelector()
    return model


def known_margin_data(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    brightness = 0.55 + 0.05 * torch.rand(n, generator=generator)
    sign = (2 * labels - 1).float().view(n, 1, 1, 1)
    pixels = brightness.view(n, 1, 1, 1).repeat(1, 3, 8, 8)
    pixels[..., :4] += 0.2 * sign
    pixels[..., 4:] -= 0.2 * sign
    return pixels, labels


def cheap_arguments(**overrides) -> AutoEvaluationArguments:
    values = dict(auto_attack="pgd40", auto_clean_push=[1.0], auto_autoattack=False)
    return AutoEvaluationArguments(**{**values, **overrides})


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_a_brightness_selector_looks_robust_to_transfer_and_is_broken_by_adaptive_attacks(mode):
    model = known_margin_model(mode)
    pixels, labels = known_margin_data()
    result = evaluate_auto_soup(model, (pixels, labels), cheap_arguments(), normalization=Normalization(),
                                epsilon=0.1, fixed_betas=[0.0, 1.0], progress=False)
    auto, robust_mode, clean_mode = result.results
    assert auto.clean_accuracy == 1.0 and auto.mean_beta["clean"] < 0.05
    # What a non-adaptive evaluation would report: the selector keeps attacked images in robust mode.
    assert auto.attack_accuracies["transfer"] == 1.0 and auto.mean_beta["transfer"] < 0.05
    # The attack that pushes the selector toward clean mode brightens the images, gets clean mode and breaks it.
    assert auto.attack_accuracies["toward_clean_1"] == 0.0 and auto.mean_beta["toward_clean_1"] > 0.5
    assert auto.robust_accuracy == 0.0
    # The fixed soups: robust mode is provably robust at this radius, clean mode is not.
    assert robust_mode.robust_accuracy == 1.0 and clean_mode.robust_accuracy == 0.0
    comparison = result.comparison()
    assert comparison["most_robust_fixed_at_auto_clean"]["beta"] == 0.0 and 0.0 in comparison["dominating_fixed"]
    for r in result.results:  # the worst case never exceeds any single attack, per example
        for correct in r.attack_correct.values():
            assert not (r.worst_case_correct & ~correct).any()
        assert r.robust_accuracy <= min(r.attack_accuracies.values())
    assert set(robust_mode.attack_correct) == {"transfer", "end_to_end"}  # (c) needs a selector
    assert "toward clean mode" in result.to_markdown()


def test_autoattack_attacks_the_whole_selected_model():
    pytest.importorskip("pyautoattack")
    model = known_margin_model()
    pixels, labels = known_margin_data(4)
    args = cheap_arguments(auto_clean_push=[], auto_autoattack=True, auto_autoattack_attacks=["apgd-ce"])
    assert [a.key for a in adaptive_attacks(args, epsilon=0.1)] == ["transfer", "end_to_end", "autoattack"]
    result = evaluate_auto_soup(model, (pixels, labels), args, normalization=Normalization(), epsilon=0.1,
                                attack_steps=5, progress=False)
    auto = result.auto
    assert auto.forward_passes["autoattack"] > 0  # AutoAttack queried the model through the selector
    assert auto.robust_accuracy <= auto.attack_accuracies["autoattack"]
    assert result.attacks[-1]["threat_model"]["config"]["autoattack_attacks"] == ["apgd-ce"]
    assert "(d) AutoAttack apgd-ce" in result.to_markdown()


def test_the_clean_push_keeps_predictions_and_adds_lambda_log_beta_to_the_margin():
    model = make_soup_model()
    model.add_selector(1, 8)
    x = images(6)
    with torch.no_grad():
        plain = AutoSoupClassifier(model)(x)
        pushed = AutoSoupClassifier(model, clean_push=3.0)(x)
        out = model(x, beta="auto")
    torch.testing.assert_close(plain, out.logits, rtol=0, atol=0)
    assert torch.equal(pushed.argmax(-1), plain.argmax(-1))
    top = plain.argmax(-1)

    def margin(logits):
        others = logits.scatter(1, top[:, None], float("-inf"))
        return others.amax(1) - logits.gather(1, top[:, None]).squeeze(1)

    expected = margin(plain) + 3.0 * torch.nn.functional.logsigmoid(out.selector_logits)
    torch.testing.assert_close(margin(pushed), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="soup selector"):
        AutoSoupClassifier(make_soup_model())


def test_adaptive_evaluation_arguments_are_checked():
    with pytest.raises(ValueError, match="finite and > 0"):
        AutoEvaluationArguments(auto_clean_push=[0.0])
    with pytest.raises(ValueError, match="AutoAttack is \\(d\\)"):
        AutoEvaluationArguments(auto_attack="autoattack")
    with pytest.raises(ValueError, match="Unknown AutoAttack attacks"):
        adaptive_attacks(AutoEvaluationArguments(auto_autoattack_attacks=["apgd-xx"]))
    with pytest.raises(ValueError, match="trained soup selector"):
        evaluate_auto_soup(make_soup_model(), (images(2), torch.zeros(2, dtype=torch.long)),
                           normalization=Normalization())


class _Images(Dataset):
    def __init__(self, n: int):
        pixels = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(3))
        self.pixels, self.labels = (pixels - 0.5) / 0.5, torch.arange(n) % 5

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def tiny_selector_trainer(tmp_path, **overrides) -> tuple[SelectorTrainer, dict[str, torch.Tensor]]:
    """A SelectorTrainer of a tiny soup model with a fresh selector (32 training, 16 evaluation images), and the
    model's parameters before training."""
    model = make_soup_model()
    model.add_selector(1, 16)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    values = dict(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=8, learning_rate=1e-2,
                  logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=0,
                  train_epsilon="0.1", dataloader_pin_memory=False)
    args = SelectorTrainingArguments(**{**values, **overrides})
    trainer = SelectorTrainer(model=model, args=args, train_dataset=_Images(32), eval_dataset=_Images(16),
                              normalization=Normalization((0.5,), (0.5,)))
    return trainer, before


def only_the_selector_changed(model, before) -> None:
    for name, param in model.named_parameters():
        if name.startswith("vit.selector."):
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]) and not param.requires_grad, name


def test_selector_training_decreases_the_loss_and_changes_only_the_selector(tmp_path):
    trainer, before = tiny_selector_trainer(tmp_path)
    model = trainer.model
    assert trainer.train_attack.epsilon == 0.1 and trainer.train_attack.steps == 2  # pgd2 at the given radius
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 16 and sum(losses[-4:]) < sum(losses[:4])
    only_the_selector_changed(model, before)
    metrics = trainer.evaluate()
    assert 0.5 < metrics["eval_detection_accuracy"] <= 1.0
    assert metrics["eval_mean_beta_clean"] > metrics["eval_mean_beta_attacked"]


def test_selector_trainer_needs_a_selector(tmp_path):
    args = SelectorTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="add_selector"):
        SelectorTrainer(model=make_soup_model(), args=args, normalization=Normalization())


def test_selector_metrics():
    from transformers.trainer_utils import EvalPrediction

    metrics = selector_metrics(EvalPrediction(predictions=(torch.tensor([2.0, -1.0]).numpy(),
                                                           torch.tensor([-3.0, -2.0]).numpy()), label_ids=None))
    assert metrics["clean_as_clean"] == 0.5 and metrics["attacked_as_robust"] == 1.0
    assert metrics["detection_accuracy"] == 0.75
    assert math.isclose(metrics["mean_beta_clean"], (1 / (1 + math.exp(-2)) + 1 / (1 + math.exp(1))) / 2)


def test_training_attack_defaults_to_the_cotraining_runs(tmp_path):
    (tmp_path / "run_args.json").write_text(json.dumps({"training_args": {
        "train_attack": "pgd5", "train_epsilon": "8/255", "train_attack_steps": None}}))
    settings = cotraining_attack_settings(tmp_path)
    args = SelectorTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none")
    config = args.train_attack_config(settings)
    assert config.steps == 5 and config.epsilon == pytest.approx(8 / 255)
    args = SelectorTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", train_epsilon="0.1",
                                     train_attack_steps=3)
    config = args.train_attack_config(settings)
    assert config.steps == 3 and config.epsilon == 0.1
    assert cotraining_attack_settings(tmp_path / "nowhere") is None
    assert SelectorTrainingArguments(output_dir=str(tmp_path), report_to="none").train_attack_config().steps == 2


def test_a_free_cotrained_model_gets_pgd2_at_its_radius(tmp_path, caplog):
    """--train_attack free is a co-training mode, not an attack preset: the selector trains against PGD-2 at the
    run's radius (and says so) instead of stopping with "Unknown attack preset 'free'"."""
    (tmp_path / "run_args.json").write_text(json.dumps({"training_args": {
        "train_attack": "free", "train_epsilon": "0.1", "train_attack_step_size": "0.1", "train_attack_norm": None,
        "train_attack_steps": None}}))
    args = SelectorTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none")
    with caplog.at_level("WARNING", logger="hf_advsoup.selection"):
        config = args.train_attack_config(cotraining_attack_settings(tmp_path))
    assert (config.name, config.steps, config.epsilon) == ("pgd", 2, 0.1)
    assert config.step_size == pytest.approx(0.1 * 2.5 / 4)  # PGD-2's step-to-radius ratio, not free's sign step
    assert "co-trained with --train_attack free" in caplog.text and "PGD-2 at the run's radius (0.1)" in caplog.text
    with pytest.raises(ValueError, match="free is a co-training mode"):
        SelectorTrainingArguments(output_dir=str(tmp_path / "o"), report_to="none",
                                  train_attack="free").train_attack_config()


# --------------------------------------------------------------------------------------------------- the scripts
COTRAIN_TINY = [
    "--hidden_size", "16", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "32",
    "--image_size", "8", "--patch_size", "4", "--per_device_train_batch_size", "16", "--max_steps", "2",
    "--eval_strategy", "no", "--save_strategy", "no", "--robust_eval_samples", "0", "--max_eval_samples", "16",
    "--dataloader_pin_memory", "False", "--disable_tqdm", "True", "--soup_table", "false",
]


@pytest.fixture(scope="module")
def cotrained(tmp_path_factory):
    """A few steps of scripts/cotrain.py on the embedded digits: a real co-training folder (run_args.json, processor,
    remote code)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import cotrain

    out = tmp_path_factory.mktemp("cotrained")
    cotrain.main(["--output_dir", str(out), "--overwrite_output_dir", "True", "--train_epsilon", "16/255",
                  *COTRAIN_TINY])
    return out


def test_train_selector_then_evaluate_auto_from_the_command_line(cotrained, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import evaluate_soups
    import train_selector
    from transformers import AutoModelForImageClassification

    out = tmp_path / "auto"
    common = ["--model_name_or_path", str(cotrained), "--max_train_samples", "32", "--max_eval_samples", "16",
              "--per_device_train_batch_size", "16", "--max_steps", "2", "--save_strategy", "no",
              "--report_to", "none", "--disable_tqdm", "True", "--dataloader_pin_memory", "False"]
    with pytest.raises(SystemExit, match="co-trained checkpoint itself"):
        train_selector.main([*common, "--output_dir", str(cotrained)])
    metrics = train_selector.main([*common, "--output_dir", str(out), "--selector_layers", "1"])
    assert 0.0 <= metrics["eval_detection_accuracy"] <= 1.0
    assert "Saved to" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="not empty.*Nothing was changed.*--overwrite_output_dir"):
        train_selector.main([*common, "--output_dir", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["selector_layers"] == 1 and config["selector_mode"] == "soft"
    model = AutoModelForImageClassification.from_pretrained(out, beta="auto")
    assert model.selector is not None and model.config.beta == "auto"

    soups = tmp_path / "soups"
    result = evaluate_soups.main([
        "--model_name_or_path", str(out), "--datasets", "digits:validation", "--attack", "none", "--betas", "0", "1",
        "--ensembles", "False", "--auto", "--auto_autoattack", "False", "--auto_clean_push", "1",
        "--max_robust_examples", "8", "--epsilon", "8/255", "--attack_steps", "2", "--progress", "False",
        "--plots", "False", "--output_dir", str(soups)])
    saved = json.loads((soups / "auto_results.json").read_text())
    assert [r["name"] for r in saved["results"]] == ["auto", "beta=0", "beta=1"]
    assert saved["num_examples"] == 8 and unpack_flags(saved["results"][0]["outcomes"]["clean"]).size == 8
    assert result.settings["auto"]["comparison"]["auto"]["clean_accuracy"] == saved["results"][0]["clean_accuracy"]
    assert "Per-image defences vs fixed soups" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no soup selector"):
        evaluate_soups.main(["--model_name_or_path", str(cotrained), "--datasets", "digits:validation", "--auto",
                             "--output_dir", str(tmp_path / "refused")])
