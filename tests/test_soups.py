"""Tests of soups in practice: beta sweeps, ensembles, the 2-D landscape, the two-network baseline, selection, the
result files, the plots and the evaluate_soups.py script (tiny seeded models, a handful of examples and steps)."""

import copy
import json
import sys
from pathlib import Path

import datasets
import numpy as np
from fractions import Fraction

import pytest
import torch
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification
from transformers.models.vit import ViTImageProcessorPil

from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification
from hf_advsoup.attacks import AttackConfig, Normalization
from hf_advsoup.evaluation import evaluate_robustness
from hf_advsoup.plots import plot_accuracy_vs_beta, plot_all, plot_landscape, plot_tradeoff
from hf_advsoup.soups import (
    DEFAULT_BETAS,
    ForwardCounter,
    SoupEnsemble,
    SoupEvaluation,
    SoupEvaluationArguments,
    SoupRecord,
    best_soup_by_mean_accuracy,
    clean_sweep,
    ensemble_probabilities,
    evaluate_soups,
    independent_soup_sweep,
    interpolate_weights_,
    most_robust_soup,
    robust_sweep,
)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16,
            patch_size=4, num_labels=5)
NORM = Normalization(mean=(0.5,), std=(0.5,))


def make_model(seed=0, **overrides) -> AdvSoupViTForImageClassification:
    torch.manual_seed(seed)
    model = AdvSoupViTForImageClassification(AdvSoupViTConfig(**{**TINY, **overrides})).eval()
    # The two copies start equal; random noise makes the modes differ (a constant would vanish in LayerNorm).
    with torch.no_grad():
        for param in model.adversarial_adapter_parameters().values():
            param.add_(torch.randn_like(param) * 2.0)
    return model


def make_data(model, n=24, seed=1):
    """Normalized inputs in [-1, 1] (mean = std = 0.5) and labels that clean mode gets right 2/3 of the time."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        y = model(x, beta=1.0).logits.argmax(-1)
    y[::3] = (y[::3] + 1) % TINY["num_labels"]
    return x, y


def accuracy(model, x, y, **kwargs):
    with torch.no_grad():
        return (model(x, **kwargs).logits.argmax(-1) == y).float().mean().item()


PGD2 = AttackConfig.from_preset("pgd2")


# --------------------------------------------------------------------------------------------------- clean sweeps
def test_clean_sweep_endpoints_are_clean_and_robust_modes_and_the_model_is_untouched():
    model = make_model()
    x, y = make_data(model)
    before = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    model.train()  # the sweep must evaluate in eval mode and give the mode back
    records = clean_sweep(model, (x, y), DEFAULT_BETAS, ensemble_betas=DEFAULT_BETAS, batch_size=7, progress=False)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    soup = {r.beta: r.value for r in records if r.family == "soup"}
    assert soup[1.0] == pytest.approx(accuracy(model, x, y, beta=1.0))
    assert soup[0.0] == pytest.approx(accuracy(model, x, y, beta=0.0))
    assert soup[0.3] == pytest.approx(accuracy(model, x, y, beta=0.3))
    # The modes differ on this data, or the test would not see a swapped endpoint.
    assert soup[1.0] != soup[0.0]
    ens = {r.beta: r.value for r in records if r.family == "ensemble"}
    assert ens[1.0] == soup[1.0] and ens[0.0] == soup[0.0]
    for k, v in model.state_dict().items():  # no copy, no change
        assert v.data_ptr() == before[k][0] and torch.equal(v, before[k][1])


def test_eleven_point_sweep_costs_eleven_forwards_per_image():
    model = make_model()
    x, y = make_data(model, n=10)
    with ForwardCounter(model) as counter:
        records = clean_sweep(model, (x, y), DEFAULT_BETAS, ensemble_betas=DEFAULT_BETAS, batch_size=4,
                              progress=False)
    # 11 soups; the 11 ensembles reuse the beta=1 and beta=0 logits.
    assert counter.count == 11 * 10
    assert {r.forward_passes for r in records if r.family == "soup"} == {10}
    assert {r.forward_passes for r in records if r.family == "ensemble"} == {20}


def test_ensemble_at_beta_is_the_probability_average():
    model = make_model()
    x, y = make_data(model)
    with torch.no_grad():
        p_clean = model(x, beta=1.0).logits.softmax(-1)
        p_robust = model(x, beta=0.0).logits.softmax(-1)
        for beta in (0.0, 0.3, 0.5, 1.0):
            average = beta * p_clean + (1 - beta) * p_robust
            assert torch.allclose(ensemble_probabilities(model(x, beta=1.0).logits, model(x, beta=0.0).logits, beta),
                                  average, atol=1e-6)
            # The attacked module returns log(average): the same classifier, end to end.
            assert torch.allclose(SoupEnsemble(model, beta)(x).logits.exp(), average, atol=1e-5)
    records = clean_sweep(model, (x, y), [], ensemble_betas=[0.5], progress=False)
    expected = ((0.5 * p_clean + 0.5 * p_robust).argmax(-1) == y).float().mean().item()
    assert records[0].family == "ensemble" and records[0].value == pytest.approx(expected)
    with pytest.raises(ValueError, match="0 <= beta <= 1"):
        SoupEnsemble(model, 1.05)


def test_landscape_diagonal_holds_the_soups():
    model = make_model()
    x, y = make_data(model)
    grid = [(b1, b2) for b1 in (0.0, 0.5, 1.0) for b2 in (0.0, 0.5, 1.0)]
    records = clean_sweep(model, (x, y), [0.0, 0.5, 1.0], landscape=grid, progress=False)
    soup = {r.beta: r.value for r in records if r.family == "soup"}
    cells = {(r.beta, r.beta2): r.value for r in records if r.family == "landscape"}
    assert len(cells) == 9
    for b in (0.0, 0.5, 1.0):
        assert cells[(b, 1.0 - b)] == soup[b]
    assert cells[(0.0, 0.0)] == pytest.approx(accuracy(model, x, y, beta=0.0, beta2=0.0))


# --------------------------------------------------------------------------------------------------- robust sweeps
def test_robust_sweep_endpoint_matches_robust_mode_and_ensemble_is_attacked_end_to_end():
    model = make_model()
    x, y = make_data(model, n=12)
    soups = robust_sweep(model, (x, y), [0.0, 1.0], PGD2, normalization=NORM, batch_size=6, progress=False)
    direct = evaluate_robustness(model, x, y, [PGD2], normalization=NORM, forward_kwargs={"beta": 0.0},
                                 batch_size=6, show_progress=False)
    robust = {r.beta: r for r in soups}
    assert robust[0.0].value == pytest.approx(direct.robust_accuracy)
    assert all(r.metric == "robust_accuracy" and r.num_examples == 12 for r in soups)
    assert robust[1.0].value <= accuracy(model, x, y, beta=1.0)
    ensembles = robust_sweep(model, (x, y), [0.0, 0.5], PGD2, normalization=NORM, family="ensemble",
                             batch_size=6, progress=False)
    ens = {r.beta: r for r in ensembles}
    # At beta=0 the ensemble is robust mode (log-softmax of the same logits: same attack, same result).
    assert ens[0.0].value == pytest.approx(robust[0.0].value)
    # Each ensemble forward is two network forwards, and the attack went through them.
    assert ens[0.5].forward_passes > 2 * 12 and ens[0.5].compute == 2
    assert ens[0.5].value <= clean_sweep(model, (x, y), [], ensemble_betas=[0.5], progress=False)[0].value


def test_zero_epsilon_robust_accuracy_equals_clean_accuracy_at_every_beta():
    model = make_model()
    x, y = make_data(model, n=12)
    args = SoupEvaluationArguments(betas=[0.0, 0.5, 1.0], attack="pgd2", epsilon=0.0, batch_size=6, progress=False)
    result = evaluate_soups(model, {"toy": (x, y)}, args, normalization=NORM)
    for family in ("soup", "ensemble"):
        robust, clean = result.curve("toy", family, "robust_accuracy"), result.curve("toy", family, "clean_accuracy")
        assert robust.keys() == clean.keys() and robust == pytest.approx(clean)


def test_evaluate_soups_json_carries_every_setting(tmp_path):
    model = make_model()
    x, y = make_data(model, n=12)
    args = SoupEvaluationArguments(betas=[0.0, 1.0], extrapolate_betas=[1.05], attack="pgd2", attack_steps=1,
                                   batch_size=6, max_robust_examples=8, landscape=True, landscape_betas=[0.0, 1.0],
                                   min_clean_accuracy=0.1, progress=False)
    result = evaluate_soups(model, {"a": (x, y), "b": (x[:6], y[:6])}, args, normalization=NORM)
    paths = result.save(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["settings"]["arguments"]["betas"] == [0.0, 1.0]
    assert data["settings"]["arguments"]["extrapolate_betas"] == [1.05]
    assert data["settings"]["threat_model"]["norm"] == "linf"
    assert data["settings"]["normalization"] == {"mean": [0.5], "std": [0.5]}
    rows = data["results"]
    robust = [r for r in rows if r["metric"] == "robust_accuracy"]
    assert robust and all(r["dataset"] == "a" for r in robust)  # only the first data set is attacked by default
    for r in robust:
        t = r["threat_model"]
        assert t["attack"] == "pgd2" and t["norm"] == "linf" and t["steps"] == 1
        assert t["epsilon"] == pytest.approx(4 / 255)
        assert r["num_examples"] == 8 and r["forward_passes"] > 0
    for r in rows:
        assert {"dataset", "family", "beta", "beta2", "metric", "value", "num_examples", "forward_passes",
                "compute"} <= set(r)
    # Extrapolated soups, no extrapolated ensembles; landscape clean and robust.
    assert any(r["beta"] == 1.05 and r["family"] == "soup" for r in rows)
    assert not any(r["beta"] == 1.05 and r["family"] == "ensemble" for r in rows)
    assert {r["metric"] for r in rows if r["family"] == "landscape"} == {"clean_accuracy", "robust_accuracy"}
    assert "most_robust_soup_with_min_clean_accuracy" in data["selection"]
    # Ensembles at the endpoints are the modes: their robust numbers come from the soups' attack (at twice the cost).
    soup_end = next(r for r in robust if r["family"] == "soup" and r["beta"] == 0.0)
    ens_end = next(r for r in robust if r["family"] == "ensemble" and r["beta"] == 0.0)
    assert ens_end["value"] == soup_end["value"] and ens_end["forward_passes"] == 2 * soup_end["forward_passes"]
    assert SoupEvaluation.load_json(paths["json"]).records == result.records
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("dataset,family,beta,beta2,metric,value") and len(csv_lines) == len(rows) + 1
    markdown = paths["markdown"].read_text()
    assert "| beta | soup clean | soup robust | ensemble clean | ensemble robust |" in markdown
    assert "| 1.05 |" in markdown


def test_every_number_names_the_attack_that_produced_it(tmp_path):
    """Robust numbers come from the `report` preset by default; a step override is named as run (PGD-2, not
    PGD-40) with its rescaled decay points, in the JSON, the CSV and the markdown."""
    assert SoupEvaluationArguments().attack == "report"
    model = make_model()
    x, y = make_data(model, n=8)
    args = SoupEvaluationArguments(betas=[0.0, 1.0], ensembles=False, attack="report", attack_steps=2,
                                   batch_size=8, progress=False)
    result = evaluate_soups(model, {"toy": (x, y)}, args, normalization=NORM)
    threat = result.settings["threat_model"]
    assert threat["attack"] == "report" and threat["name"] == "PGD-2 (Adam) + MT-9" and threat["steps"] == 2
    assert threat["lr_decay_steps"] == [1] and threat["target_classes"] == 9
    assert "MultiTargeted" in threat["description"] and "decayed 10x at step 1" in threat["description"]
    paths = result.save(tmp_path)
    markdown = paths["markdown"].read_text()
    assert "Robust accuracy: PGD-2 (Adam) + MT-9: 2 steps of Adam" in markdown and "PGD-40" not in markdown
    header = paths["csv"].read_text().splitlines()[0]
    assert header.endswith(",attack,steps,attack_name")
    robust_row = next(line for line in paths["csv"].read_text().splitlines() if "robust_accuracy" in line)
    assert robust_row.endswith(",report,2,PGD-2 (Adam) + MT-9")


def test_attack_overrides_are_named_and_validated():
    from hf_advsoup.soups import build_attack

    assert build_attack("report", target_classes=5, steps=20).short_name == "PGD-20 (Adam) + MT-5"
    assert build_attack("report", target_classes=0).short_name == "PGD-40 (Adam)"
    with pytest.raises(ValueError, match="target_classes"):  # at parse time, before any sweep
        SoupEvaluationArguments(attack="fast_at", attack_target_classes=3)


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="did you mean 0.8"):
        SoupEvaluationArguments(min_clean_accuracy=80)
    with pytest.raises(ValueError, match="finite"):
        SoupEvaluationArguments(betas=[0.0, float("nan")])
    with pytest.raises(ValueError, match="valid presets"):
        evaluate_soups(make_model(), {"t": make_data(make_model(), n=3)},
                       SoupEvaluationArguments(attack="pgd41", progress=False), normalization=NORM)
    with pytest.raises(ValueError, match="normalization"):
        evaluate_soups(make_model(), {"t": make_data(make_model(), n=3)}, SoupEvaluationArguments(progress=False))
    with pytest.raises(TypeError, match="AdvSoupViTForImageClassification"):
        evaluate_soups(ViTForImageClassification(ViTConfig(**TINY)), {"t": make_data(make_model(), n=3)})


def test_closing_table_with_apgd_ce_only_is_the_library_attack_at_each_beta():
    """The short soup table a training run ends with: betas 1, 0.5, 0, soups only, APGD-CE alone (pyautoattack's
    custom version), the same numbers as the library's AutoAttack wrapper gives beta by beta."""
    pytest.importorskip("pyautoattack")
    model = make_model()
    x, y = make_data(model, n=12)
    args = SoupEvaluationArguments(betas=[1.0, 0.5, 0.0], ensembles=False, attack="autoattack",
                                   autoattack_attacks=["APGD-CE"], epsilon="2/255", batch_size=12,
                                   max_robust_examples=8, progress=False)
    result = evaluate_soups(model, {"test": (x, y)}, args, normalization=NORM)
    robust = result.filter(metric="robust_accuracy")
    assert [(r.family, r.beta, r.num_examples) for r in robust] == [("soup", b, 8) for b in (0.0, 0.5, 1.0)]
    assert result.settings["threat_model"]["version"] == "custom"
    assert result.settings["threat_model"]["attacks"] == ["apgd-ce"]
    config = AttackConfig.from_preset("autoattack", epsilon="2/255", autoattack_version="custom",
                                      autoattack_attacks=["apgd-ce"])
    for record in robust:
        direct = evaluate_robustness(model, x[:8], y[:8], [config], normalization=NORM,
                                     forward_kwargs={"beta": record.beta}, batch_size=12, seed=0, show_progress=False)
        assert record.value == direct.robust_accuracy
    markdown = result.to_markdown()
    assert "| beta | soup clean | soup robust |" in markdown and "ensemble" not in markdown
    assert "AutoAttack (apgd-ce)" in markdown and "custom version (apgd-ce)" in markdown


def test_autoattack_subset_is_validated():
    with pytest.raises(ValueError, match="needs attack='autoattack'"):
        SoupEvaluationArguments(attack="pgd40", autoattack_attacks=["apgd-ce"])
    pytest.importorskip("pyautoattack")
    with pytest.raises(ValueError, match="Unknown AutoAttack attacks"):
        SoupEvaluationArguments(attack="autoattack", autoattack_attacks=["apgd-xx"])


# --------------------------------------------------------------------------------------------------- Table 9 baseline
def _vit(seed):
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**TINY)).eval()


def test_two_network_soup_interpolates_all_weights_in_place():
    nominal, adversarial = _vit(0), _vit(1)
    reference = copy.deepcopy(nominal)
    x, y = make_data(make_model(), n=12)
    records = independent_soup_sweep(nominal, adversarial, {"toy": (x, y)}, [0.0, 0.5, 1.0], progress=False)
    clean = {r.beta: r.value for r in records}
    assert clean[1.0] == pytest.approx(accuracy(reference, x, y))
    assert clean[0.0] == pytest.approx(accuracy(adversarial, x, y))
    # The working model holds the nominal weights again afterwards.
    for k, v in nominal.state_dict().items():
        assert torch.equal(v, reference.state_dict()[k])
    # Halfway: every floating-point tensor is the average (not only an adapter).
    a, b = reference.state_dict(), adversarial.state_dict()
    interpolate_weights_(nominal, a, b, 0.5)
    for k, v in nominal.state_dict().items():
        assert torch.allclose(v, 0.5 * a[k] + 0.5 * b[k], atol=1e-6)
    assert not torch.equal(nominal.state_dict()["vit.layers.0.mlp.fc1.weight"], a["vit.layers.0.mlp.fc1.weight"])
    other = ViTForImageClassification(ViTConfig(**{**TINY, "hidden_size": 16})).state_dict()
    with pytest.raises(ValueError, match="architecture|Shape mismatch"):
        interpolate_weights_(nominal, a, other, 0.5)


# --------------------------------------------------------------------------------------------------- selection
def _records(table, dataset="d", family="soup", metric="clean_accuracy"):
    return [SoupRecord(dataset, family, b, metric, v, 100, 100, 1) for b, v in table.items()]


def test_best_soup_by_mean_accuracy_over_datasets():
    records = (_records({0.0: 0.50, 0.5: 0.70, 1.0: 0.80}, "a")
               + _records({0.0: 0.60, 0.5: 0.65, 1.0: 0.40}, "b"))
    best = best_soup_by_mean_accuracy(records)
    assert best["beta"] == 0.5 and best["mean_accuracy"] == pytest.approx(0.675)
    assert best_soup_by_mean_accuracy(records, datasets=["a"])["beta"] == 1.0
    assert best_soup_by_mean_accuracy(records, family="ensemble") is None


def test_most_robust_soup_with_minimum_clean_accuracy():
    records = (_records({0.0: 0.70, 0.5: 0.78, 1.0: 0.84})
               + _records({0.0: 0.50, 0.5: 0.33, 1.0: 0.01}, metric="robust_accuracy"))
    assert most_robust_soup(records, 0.75)["beta"] == 0.5
    assert most_robust_soup(records, 0.60)["beta"] == 0.0
    none = most_robust_soup(records, 0.9)
    assert "message" in none and "84.00%" in none["message"]


# --------------------------------------------------------------------------------------------------- plots
def test_plots_are_written_and_non_empty(tmp_path):
    model = make_model()
    x, y = make_data(model, n=8)
    args = SoupEvaluationArguments(betas=[0.0, 0.5, 1.0], attack="pgd2", attack_steps=1, batch_size=8,
                                   landscape=True, landscape_betas=[0.0, 1.0], progress=False)
    result = evaluate_soups(model, {"toy": (x, y)}, args, normalization=NORM)
    paths = plot_all(result, tmp_path)
    assert set(paths) == {"accuracy_vs_beta", "tradeoff", "landscape"}
    for path in paths.values():
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    clean_only = SoupEvaluation(records=[r for r in result.records if r.metric == "clean_accuracy"])
    assert plot_accuracy_vs_beta(clean_only, tmp_path / "c.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="robust accuracy"):
        plot_tradeoff(clean_only, tmp_path / "t.png")
    with pytest.raises(ValueError, match="landscape"):
        plot_landscape(SoupEvaluation(records=_records({0.0: 0.5})), tmp_path / "l.png")


# --------------------------------------------------------------------------------------------------- script
def _save_checkpoint(path, seed=0):
    model = make_model(seed, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    model.save_pretrained(path)
    ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        path)
    return model


def _save_dataset(path, n=9, seed=0, splits=("train", "validation", "test"), num_classes=3):
    """A save_to_disk folder with the given splits (train: 6 examples, the others: n), 16x16 RGB images."""
    rng = np.random.default_rng(seed)
    names = ["a", "b", "c", "d", "e"][:num_classes]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})

    def split(k):
        images = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(k)]
        return datasets.Dataset.from_dict({"image": images, "label": [i % num_classes for i in range(k)]},
                                          features=features)

    datasets.DatasetDict({name: split(6 if name == "train" else n) for name in splits}).save_to_disk(str(path))
    return str(path)


@pytest.fixture
def evaluate_script(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    sys.modules.pop("evaluate_soups", None)
    import evaluate_soups

    return evaluate_soups


def test_script_writes_every_output(tmp_path, evaluate_script):
    _save_checkpoint(tmp_path / "ckpt")
    data = _save_dataset(tmp_path / "data")
    out = tmp_path / "out"
    result = evaluate_script.main([
        "--model_name_or_path", str(tmp_path / "ckpt"), "--output_dir", str(out),
        "--datasets", f"toy={data}:test", f"val={data}:validation", "--betas", "0", "0.5", "1",
        "--attack", "pgd2", "--attack_steps", "1", "--max_robust_examples", "6", "--batch_size", "4",
        "--landscape", "--landscape_betas", "0", "1", "--landscape_robust", "false", "--min_clean_accuracy", "0.2",
        "--progress", "false",
    ])
    assert {p.name for p in out.iterdir()} == {"soup_results.json", "soup_results.csv", "soup_results.md",
                                               "accuracy_vs_beta.png", "tradeoff.png", "landscape.png",
                                               "landscape_val.png"}
    data_json = json.loads((out / "soup_results.json").read_text())
    info = {d["name"]: d for d in data_json["settings"]["datasets_info"]}
    assert info["toy"]["split"] == "test" and info["val"]["split"] == "validation"
    assert info["toy"]["num_examples"] == 9
    assert result.curve("toy", "soup", "clean_accuracy").keys() == {0.0, 0.5, 1.0}
    assert {r.num_examples for r in result.filter(metric="robust_accuracy")} == {6}
    assert {r.num_examples for r in result.filter(metric="clean_accuracy")} == {9}
    assert not result.filter(family="landscape", metric="robust_accuracy")


def test_script_two_network_baseline_and_clean_only(tmp_path, evaluate_script):
    _save_checkpoint(tmp_path / "ckpt")
    for i, name in enumerate(("nominal", "adversarial")):
        torch.manual_seed(10 + i)
        ViTForImageClassification(ViTConfig(**{**TINY, "num_labels": 3})).save_pretrained(tmp_path / name)
    data = _save_dataset(tmp_path / "data")
    result = evaluate_script.main([
        "--model_name_or_path", str(tmp_path / "ckpt"), "--output_dir", str(tmp_path / "out"),
        "--datasets", f"{data}:test", "--betas", "0", "0.5", "1", "--attack", "none", "--plots", "false",
        "--independent_nominal_model", str(tmp_path / "nominal"),
        "--independent_adversarial_model", str(tmp_path / "adversarial"), "--progress", "false",
    ])
    baseline = result.filter(family="independent_soup")
    assert {r.beta for r in baseline} == {0.0, 0.5, 1.0} and {r.metric for r in baseline} == {"clean_accuracy"}
    assert not result.filter(metric="robust_accuracy")
    assert not list((tmp_path / "out").glob("*.png"))
    with pytest.raises(SystemExit, match="needs both"):
        evaluate_script.main(["--model_name_or_path", str(tmp_path / "ckpt"), "--output_dir", str(tmp_path / "o2"),
                              "--datasets", data, "--independent_nominal_model", str(tmp_path / "nominal")])


def test_parse_dataset_spec(evaluate_script):
    parse = evaluate_script.parse_dataset_spec
    assert parse("cifar10:test") == ("cifar10", "cifar10", "test")
    assert parse("r=/data/imagenet-r:validation") == ("r", "/data/imagenet-r", "validation")
    assert parse("uoft-cs/cifar10") == ("uoft-cs/cifar10", "uoft-cs/cifar10", None)


def test_script_evaluates_a_dataset_without_train_split(tmp_path, evaluate_script):
    model = _save_checkpoint(tmp_path / "ckpt")
    data = _save_dataset(tmp_path / "test_only", n=10, splits=("test",))
    result = evaluate_script.main([
        "--model_name_or_path", str(tmp_path / "ckpt"), "--output_dir", str(tmp_path / "out"),
        "--datasets", f"r={data}", "--betas", "0", "1", "--attack", "none", "--plots", "false",
        "--verify_images", "true", "--progress", "false",
    ])
    info = json.loads((tmp_path / "out" / "soup_results.json").read_text())["settings"]["datasets_info"][0]
    assert info["split"] == "test" and info["source_split"] == "test" and info["num_examples"] == 10
    assert info["num_corrupt_images_removed"] == 0 and info["origin"].startswith("local:save_to_disk:")
    # The numbers come from these images: clean mode on the same pixels, normalised with mean = std = 0.5.
    test = datasets.load_from_disk(data)["test"]
    x = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 for image in test["image"]])
    expected = accuracy(model.eval(), (x - 0.5) / 0.5, torch.tensor(test["label"]), beta=1.0)
    assert result.curve("r", "soup", "clean_accuracy")[1.0] == pytest.approx(expected)


def test_script_rejects_a_dataset_with_a_class_the_model_lacks(tmp_path, evaluate_script):
    _save_checkpoint(tmp_path / "ckpt")  # 3 labels: a, b, c
    data = _save_dataset(tmp_path / "four", n=8, splits=("validation",), num_classes=4)
    with pytest.raises(ValueError, match=r"1 of the 4 classes of data set .* are not classes of the model: 'd'"):
        evaluate_script.main(["--model_name_or_path", str(tmp_path / "ckpt"), "--output_dir", str(tmp_path / "o"),
                              "--datasets", f"{data}:validation", "--attack", "none", "--progress", "false"])


def test_soup_table_reads_the_trade_off_and_refuses_unknown_attacks():
    from hf_advsoup.soup_table import SoupTable, TradeOff, soup_table

    model = make_model()
    x, y = make_data(model, n=12)
    table = soup_table(model, (x, y), normalization=NORM, epsilon="2/255", attack="pgd2", robust_examples=6,
                       batch_size=12, progress=False)
    assert sorted(table.clean) == [0.0, 0.5, 1.0] and table.num_clean == 12 and table.num_robust == 6
    assert table.attack_name.startswith("PGD-2") and "on the first 6" in table.to_text()
    # counts and intervals: each cell is a count of the per-image outcomes, with its Wilson interval
    assert table.outcomes is not None and table.outcomes["robust"][0.0].size == 6
    right = int(table.outcomes["clean"][1.0].sum())
    assert table.clean[1.0] == right / 12 and f"{100 * right / 12:.1f}% [" in table.to_text()
    gain = table.trade_off
    assert gain.robust_gain_interval[0] <= gain.robust_gain <= gain.robust_gain_interval[1]
    made_up = SoupTable("test", {1.0: 0.82, 0.5: 0.80, 0.0: 0.74}, {1.0: 0.13, 0.5: 0.27, 0.0: 0.48}, "APGD-CE", 0.1,
                        10000, 500, table.evaluation)
    assert made_up.trade_off.shows_trade_off() and "Trade-off:" in made_up.to_text()
    assert made_up.trade_off.robust_gain == pytest.approx(0.35) and made_up.trade_off.clean_cost == pytest.approx(0.08)
    flat = SoupTable("test", {1.0: 0.975, 0.5: 0.975, 0.0: 0.975}, {1.0: 0.80, 0.5: 0.81, 0.0: 0.81}, "APGD-CE", 0.03,
                     360, 360, table.evaluation)
    assert not flat.trade_off.shows_trade_off() and "No clear trade-off" in flat.to_text()
    assert not TradeOff(Fraction(3, 10), Fraction(1, 20), halfway_between=False).shows_trade_off()
    # exactly on the boundary counts; an interval reaching below the threshold does not (beyond noise only)
    assert TradeOff(Fraction(15, 100), Fraction(2, 100), halfway_between=True).shows_trade_off()
    assert not TradeOff(Fraction(30, 100), Fraction(5, 100), True, robust_gain_interval=(Fraction(14, 100),
                                                                                       Fraction(46, 100))).shows_trade_off()
    with pytest.raises(ValueError, match="Unknown soup-table attack"):
        soup_table(model, (x, y), normalization=NORM, epsilon=0.1, attack="apgd-x")
    with pytest.raises(ValueError, match="robust_examples"):
        soup_table(model, (x, y), normalization=NORM, epsilon=0.1, robust_examples=0)
    from hf_advsoup.training_args import CoTrainingArguments

    with pytest.raises(ValueError, match="Unknown soup-table attack 'apgd-x'"):  # at parse time, before training
        CoTrainingArguments(output_dir="unused", soup_table=True, soup_table_attack="apgd-x")
    assert CoTrainingArguments(output_dir="unused", soup_table=True, soup_table_attack="apgd-ce+apgd-t").soup_table


def test_markdown_without_an_attack_has_no_robust_accuracy_heading():
    """--attack none: only clean numbers, so no empty "Robust accuracy:" line under the table."""
    clean_only = SoupEvaluation(records=_records({0.0: 0.5, 1.0: 0.75}))
    text = clean_only.to_markdown()
    assert "| 0 | 50.00 |" in text and "Robust accuracy" not in text
    attacked = SoupEvaluation(records=_records({0.0: 0.5, 1.0: 0.75}) + [
        SoupRecord("d", "soup", 0.0, "robust_accuracy", 0.25, 100, 100, 1,
                   threat_model={"norm": "linf", "epsilon": 0.1, "name": "PGD-2"})])
    assert "Robust accuracy: " in attacked.to_markdown()
