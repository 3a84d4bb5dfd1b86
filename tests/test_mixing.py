"""The mix family (two modes' probabilities mixed after MixedNUTS' transform of robust mode's logits), the composite
selector objective (trained against the system it defends), and the adaptive evaluation of several systems at once:
the transform as specified, the worst-case selection rule, a mixture that a transfer attack misses and an adaptive
attack breaks, and each defence placed against the fixed-soup curve with a paired interval."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_selection import (
    cheap_arguments,
    known_margin_data,
    known_margin_model,
    only_the_selector_changed,
    tiny_selector_trainer,
)
from tiny_soup import images, make_soup_model

from hf_advsoup.attacks import Normalization
from hf_advsoup.selection import (
    AutoEvaluationArguments,
    MixConfig,
    MixedModes,
    SelectorTrainingArguments,
    System,
    choose_mix,
    evaluate_systems,
    mix_probabilities,
    robust_logit_map,
    worst_case_correct,
)


def test_the_robust_logit_map_is_mixednuts_transform():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.0, 0.0, 3.0, -3.0]])
    config = MixConfig(scale=2.0, power=3.0, bias=-0.5, alpha=0.7)
    z = (logits - logits.mean(1, keepdim=True)) / logits.std(1, keepdim=True)  # unbiased, as MixedNUTS' normalize
    g = F.gelu(z - 0.5)
    torch.testing.assert_close(robust_logit_map(logits, config), 2.0 * g.abs() ** 3 * g.sign(), rtol=1e-5, atol=1e-6)
    clean = torch.tensor([[0.0, 5.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    mixed = mix_probabilities(clean, logits, config)
    torch.testing.assert_close(mixed.sum(1), torch.ones(2))
    expected = 0.3 * F.softmax(clean, 1) + 0.7 * F.softmax(robust_logit_map(logits, config), 1)
    torch.testing.assert_close(mixed, expected)
    # alpha 0 is clean mode alone, alpha 1 the transformed robust mode alone
    torch.testing.assert_close(mix_probabilities(clean, logits, MixConfig(alpha=0.0)), F.softmax(clean, 1))
    for bad in (dict(scale=0.0), dict(power=-1.0), dict(alpha=1.5), dict(bias=math.nan)):
        with pytest.raises(ValueError):
            MixConfig(**bad)


def test_the_worst_case_rule_assumes_clean_mode_fully_fooled():
    labels = torch.tensor([0, 0])
    confident = torch.tensor([[6.0, 0.0, 0.0], [1.0, 0.99, -2.0]])  # sure of class 0; barely class 0
    config = MixConfig(scale=4.0, power=1.0, bias=0.0, alpha=0.8)
    p = F.softmax(robust_logit_map(confident, config), 1)
    keeps = worst_case_correct(confident, labels, config)
    expected = 0.8 * (p[:, 0] - p[:, 1:].amax(1)) > 0.2
    assert torch.equal(keeps, expected) and keeps.tolist() == [True, False]
    # choose_mix: the most accurate configuration whose worst-case robust accuracy reaches each floor
    clean = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])  # clean mode right on the first image only
    robust_clean = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    chosen = choose_mix(clean, robust_clean, confident, labels, robust_floors=[0.5, 1.0],
                        grid=[MixConfig(4.0, 1.0, 0.0, 0.8), MixConfig(4.0, 1.0, 0.0, 0.3)])
    assert chosen[0]["config"]["alpha"] == 0.8 and chosen[0]["worst_case_robust_accuracy"] == 0.5
    assert chosen[1]["config"] is None and chosen[0]["scored"] == 2


def test_mixed_modes_is_two_forwards_differentiable_end_to_end():
    model = make_soup_model().eval()
    x = images(4)
    config = MixConfig(scale=1.5, power=2.0, bias=0.0, alpha=0.6)
    with torch.no_grad():
        clean, robust = model(x, beta=1.0).logits, model(x, beta=0.0).logits
        out = MixedModes(model, config)(x)
        pushed = MixedModes(model, config, clean_push=3.0)(x)
        surrogate = MixedModes(model, config, surrogate=True)(x)
    torch.testing.assert_close(out, mix_probabilities(clean, robust, config).log())
    assert torch.equal(pushed.argmax(-1), out.argmax(-1)) and not torch.equal(pushed, out)
    assert not torch.allclose(surrogate, out)
    x = x.clone().requires_grad_(True)
    MixedModes(model, config)(x).logsumexp(-1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_mixture_that_follows_clean_mode_is_broken_end_to_end_and_a_confident_one_is_not():
    """On the known-margin model (robust mode provably robust at eps 0.1, clean mode broken by any attack that pulls
    two pixels apart): a mixture weighted to clean mode survives the transferred attack and falls to the end-to-end
    one; a mixture weighted to robust mode keeps every image. The fixed-soup curve places both."""
    model = known_margin_model()
    pixels, labels = known_margin_data()
    weak, strong = MixConfig(1.0, 1.0, 0.0, 0.2), MixConfig(8.0, 1.0, 0.0, 0.95)
    systems = [System("mix", mix=weak), System("mix", mix=strong), System("soup", 0.0), System("soup", 1.0),
               System("ensemble", 0.5)]
    args = cheap_arguments(auto_mix=["1,1,0,0.2"])
    result = evaluate_systems(model, (pixels, labels), systems, args, normalization=Normalization(), epsilon=0.1,
                              progress=False)
    weak_r, strong_r, robust_mode, clean_mode, ensemble = result.results
    assert weak_r.clean_accuracy == 1.0 and weak_r.attack_accuracies["transfer"] == 1.0
    assert weak_r.robust_accuracy == 0.0  # end to end, the attack finds clean mode's weakness through the mixture
    assert strong_r.clean_accuracy == 1.0 and strong_r.robust_accuracy == 1.0
    assert set(weak_r.attack_correct) == {"transfer", "end_to_end", "toward_clean_1", "surrogate"}
    assert set(ensemble.attack_correct) == {"transfer", "end_to_end"} and ensemble.forwards == 2.0
    assert robust_mode.robust_accuracy == 1.0 and clean_mode.robust_accuracy == 0.0
    curve = {entry["name"]: entry for entry in result.comparison()["against_the_curve"]}
    # the weak mixture is matched by robust mode (as robust, as accurate): not above the curve
    assert curve[weak.name]["best_fixed"]["beta"] == 0.0 and curve[weak.name]["above_the_curve"] is False
    assert curve[strong.name]["clean_difference"]["difference"] == 0.0
    saved = result.to_dict(per_example=True)
    names = [r["name"] for r in saved["results"]]
    assert names == [weak.name, strong.name, "soup_0", "soup_1", "ensemble_0.5"]
    assert all("worst_case" in r["outcomes"] and r["num_examples"] == 16 for r in saved["results"])
    with pytest.raises(ValueError, match="four numbers"):
        AutoEvaluationArguments(auto_mix=["1,2"])


def test_composite_selector_training_attacks_through_the_selector_and_changes_only_it(tmp_path):
    trainer, before = tiny_selector_trainer(tmp_path, num_train_epochs=4, objective="composite",
                                            composite_robust_weight=2.0)
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    loss, parts = trainer.compute_loss(model, batch, return_outputs=True)
    assert loss.requires_grad and set(parts) == {"clean_right", "attacked_right", "clean_beta", "attacked_beta"}
    with torch.no_grad():  # the composite: CE of the clean images + 2 x CE of the attacked ones (recomputed)
        clean_ce = F.cross_entropy(model(batch["pixel_values"], beta="auto").logits, batch["labels"])
    assert float(loss) >= float(clean_ce) - 1e-4
    trainer.train()
    only_the_selector_changed(model, before)
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_auto_attacked_accuracy"] <= metrics["eval_auto_clean_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="objective"):
        SelectorTrainingArguments(output_dir=str(tmp_path), report_to="none", objective="detect")
