"""Checks of evaluate_robustness: per-example results, worst case, costs, inputs, and that the evaluated setting
(``forward_kwargs``) is the one attacked."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_advsoup.attacks import AttackConfig, Normalization
from hf_advsoup.evaluation import RobustnessResult, evaluate_robustness

HALF = Normalization(mean=(0.5,), std=(0.5,))


class SoupLike(nn.Module):
    """Two linear heads mixed by ``beta``; records the betas it is called with."""

    def __init__(self):
        super().__init__()
        self.clean = nn.Linear(64, 10)
        self.robust = nn.Linear(64, 10)
        self.calls: list[float] = []

    def forward(self, pixel_values, beta=1.0):
        self.calls.append(beta)
        x = pixel_values.flatten(1)
        return beta * self.clean(x) + (1 - beta) * self.robust(x)


@pytest.fixture(scope="module")
def trained():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    data = sklearn_datasets.load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(data.target)
    inputs = HALF.to_model(images)
    torch.manual_seed(0)
    model = SoupLike()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(300):
        index = torch.randint(0, 1400, (128,))
        beta = float(step % 2)  # both heads learn the task
        loss = F.cross_entropy(model(inputs[index], beta=beta), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model, inputs[1400:1600], labels[1400:1600]


def test_per_example_results_and_worst_case(trained):
    model, inputs, labels = trained
    attacks = [AttackConfig.from_preset("pgd2", epsilon="8/255"), AttackConfig.from_preset("fast_at", epsilon="16/255"),
               AttackConfig.from_preset("pgd40", epsilon="16/255", steps=10)]
    result = evaluate_robustness(model, inputs, labels, attacks, normalization=HALF, forward_kwargs={"beta": 0.0},
                                 batch_size=64, show_progress=False)
    assert isinstance(result, RobustnessResult) and result.num_examples == 200
    with torch.no_grad():
        clean = model(inputs, beta=0.0).argmax(-1) == labels
    assert torch.equal(result.clean_correct, clean)
    assert result.clean_accuracy == pytest.approx(clean.float().mean().item())
    assert list(result.attack_correct) == [a.label for a in attacks]
    expected_worst = clean.clone()
    for correct in result.attack_correct.values():
        assert correct.shape == (200,) and correct.dtype == torch.bool
        assert not (correct & ~clean).any()  # misclassified clean examples are never robust
        expected_worst &= correct
    assert torch.equal(result.worst_case_correct, expected_worst)
    assert result.robust_accuracy <= min(result.attack_accuracies.values())
    assert result.robust_accuracy < result.clean_accuracy - 0.1  # the attacks did something
    assert [info["accuracy"] for info in result.attacks] == list(result.attack_accuracies.values())


def test_forward_kwargs_reach_every_forward(trained):
    model, inputs, labels = trained
    model.calls.clear()
    evaluate_robustness(model, inputs[:32], labels[:32], [AttackConfig()], normalization=HALF,
                        forward_kwargs={"beta": 0.25}, show_progress=False)
    assert model.calls and set(model.calls) == {0.25}
    robust = evaluate_robustness(model, inputs, labels, [AttackConfig.from_preset("pgd2", epsilon="16/255")],
                                 normalization=HALF, forward_kwargs={"beta": 0.0}, show_progress=False)
    clean = evaluate_robustness(model, inputs, labels, [AttackConfig.from_preset("pgd2", epsilon="16/255")],
                                normalization=HALF, forward_kwargs={"beta": 1.0}, show_progress=False)
    assert not torch.equal(robust.clean_correct, clean.clean_correct) or not torch.equal(
        robust.worst_case_correct, clean.worst_case_correct)
    assert robust.forward_kwargs == {"beta": 0.0}


def test_forward_passes_are_counted(trained):
    model, inputs, labels = trained
    attacks = [AttackConfig.from_preset("pgd2"), AttackConfig.from_preset("pgd40"),
               AttackConfig.from_preset("pgd2", restarts=2)]
    result = evaluate_robustness(model, inputs[:50], labels[:50], attacks, normalization=HALF, show_progress=False)
    passes = [info["forward_passes_per_example"] for info in result.attacks]
    # PGD-2: 2 steps; PGD-40: 40 steps + 1 forward for the last iterate; 2 restarts x (2 steps + last iterate).
    assert passes == [2.0, 41.0, 6.0]
    assert result.attacks[0]["epsilon_str"] == "4/255" and result.attacks[1]["steps"] == 40


def test_tensor_and_dataloader_inputs_agree(trained):
    model, inputs, labels = trained
    attacks = [AttackConfig.from_preset("pgd2", epsilon="16/255")]
    from_tensor = evaluate_robustness(model, inputs, labels, attacks, normalization=HALF, batch_size=50, seed=3,
                                      show_progress=False)
    dicts = [{"pixel_values": inputs[i:i + 50], "labels": labels[i:i + 50]} for i in range(0, 200, 50)]
    from_dicts = evaluate_robustness(model, dicts, None, attacks, normalization=HALF, seed=3, show_progress=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, labels), batch_size=50)
    from_loader = evaluate_robustness(model, loader, None, attacks, normalization=HALF, seed=3, show_progress=False)
    for other in (from_dicts, from_loader):
        assert torch.equal(from_tensor.clean_correct, other.clean_correct)
        assert torch.equal(from_tensor.worst_case_correct, other.worst_case_correct)
    limited = evaluate_robustness(model, loader, None, attacks, normalization=HALF, seed=3, max_examples=70,
                                  show_progress=False)
    assert limited.num_examples == 70
    again = evaluate_robustness(model, inputs, labels, attacks, normalization=HALF, batch_size=50, seed=3,
                                show_progress=False)
    assert torch.equal(again.worst_case_correct, from_tensor.worst_case_correct)  # reproducible given the seed


def test_bad_inputs_get_clear_errors(trained):
    model, inputs, labels = trained
    with pytest.raises(ValueError, match="labels"):
        evaluate_robustness(model, inputs, None, [AttackConfig()], normalization=HALF, show_progress=False)
    with pytest.raises(ValueError, match="labels=None"):
        evaluate_robustness(model, [(inputs, labels)], labels, [AttackConfig()], normalization=HALF,
                            show_progress=False)
    with pytest.raises(KeyError, match="pixel_values"):
        evaluate_robustness(model, [{"image": inputs}], None, [AttackConfig()], normalization=HALF,
                            show_progress=False)
    with pytest.raises(TypeError, match="AttackConfig"):
        evaluate_robustness(model, inputs, labels, ["pgd40"], normalization=HALF, show_progress=False)


def test_report_is_json_ready_and_labels_are_unique(trained):
    model, inputs, labels = trained
    attacks = [AttackConfig.from_preset("pgd2"), AttackConfig.from_preset("pgd2", steps=3),
               AttackConfig.from_preset("pgd2", steps=3)]
    result = evaluate_robustness(model, inputs[:40], labels[:40], attacks, normalization=HALF,
                                 forward_kwargs={"beta": torch.tensor(0.5)}, show_progress=False)
    assert list(result.attack_correct) == ["PGD-2 linf eps=4/255", "PGD-3 linf eps=4/255", "PGD-3 linf eps=4/255 #2"]
    payload = json.loads(json.dumps(result.to_dict(per_example=True)))
    assert payload["num_examples"] == 40 and len(payload["worst_case_correct"]) == 40
    assert payload["attacks"][1]["config"]["steps"] == 3
    table = result.format_table()
    assert "PGD-3 linf eps=4/255 #2" in table and "worst case" in table


def test_report_names_the_attack_as_run(trained):
    """A PGD-40 cut to 20 steps (monitoring) is reported as PGD-20 with the decay points it used (10 and 15)."""
    model, inputs, labels = trained
    result = evaluate_robustness(model, inputs[:30], labels[:30], [AttackConfig.from_preset("pgd40", steps=20)],
                                 normalization=HALF, show_progress=False)
    info = result.attacks[0]
    assert info["label"] == "PGD-20 (Adam) linf eps=4/255" and info["attack_name"] == "PGD-20 (Adam)"
    assert info["steps"] == 20 and info["lr_decay_steps"] == [10, 15]
    assert "decayed 10x at steps 10 and 15" in info["description"]
    assert info["forward_passes_per_example"] == 21.0
    assert "PGD-20 (Adam)" in result.format_table() and "PGD-40" not in result.format_table()


def test_report_preset_is_no_weaker_than_pgd40_per_example(trained):
    model, inputs, labels = trained
    pgd40, report = (
        evaluate_robustness(model, inputs, labels, [AttackConfig.from_preset(name, epsilon="16/255")],
                            normalization=HALF, forward_kwargs={"beta": 0.0}, seed=0, show_progress=False)
        for name in ("pgd40", "report")
    )
    # Same seed: the report's first stage is PGD-40 itself, and its targeted stage only adds successes.
    assert not (report.worst_case_correct & ~pgd40.worst_case_correct).any()
    assert report.robust_accuracy < pgd40.robust_accuracy < report.clean_accuracy
    info = report.attacks[0]
    assert info["target_classes"] == 9 and "MultiTargeted" in info["description"]
    # The targeted runs go to the survivors only, and stop at an example's first success: below 10 x PGD-40's cost.
    survivors = pgd40.robust_accuracy / pgd40.clean_accuracy
    assert 41 < info["forward_passes_per_example"] < 42 + 9 * 41 * survivors


def test_model_state_is_restored_and_probability_outputs_warn(trained, caplog):
    model, inputs, labels = trained
    model.train()

    class Probabilities(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values, beta=1.0):
            return self.inner(pixel_values, beta=beta).softmax(-1)

    with caplog.at_level(logging.WARNING, logger="hf_advsoup.evaluation"):
        evaluate_robustness(Probabilities(model), inputs[:20], labels[:20], [AttackConfig()], normalization=HALF,
                            show_progress=False)
    assert "probabilities" in caplog.text
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_autoattack_in_evaluation(trained):
    pytest.importorskip("pyautoattack")
    model, inputs, labels = trained
    attacks = [AttackConfig.from_preset("pgd40", epsilon="16/255"),
               AttackConfig.from_preset("autoattack", epsilon="16/255", autoattack_version="custom",
                                        autoattack_attacks=["apgd-ce", "apgd-t"])]
    result = evaluate_robustness(model, inputs[:24], labels[:24], attacks, normalization=HALF,
                                 forward_kwargs={"beta": 0.0}, show_progress=False)
    aa = result.attacks[1]
    assert aa["steps"] is None and aa["forward_passes_per_example"] > 100
    assert result.robust_accuracy < result.clean_accuracy
