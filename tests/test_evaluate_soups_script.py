"""scripts/evaluate_soups.py on image folders: classes matched to the model's by name (integer names as numbers,
whatever order ``datasets`` gives the folders), subsets of the model's classes with restricted logits in clean and
robust evaluation, and clear errors for unknown classes and missing folders.

The images are labelled by the model itself (its clean-mode prediction, computed here through the same
normalisation), so a correct alignment gives exactly 100% clean accuracy at beta = 1, and any other gives less.
"""

from __future__ import annotations

import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.vit import ViTImageProcessorPil

from hf_advsoup.data.labels import class_name_key, match_class_names
from hf_advsoup.soups import restrict_logits
from tiny_soup import make_soup_model

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
NUM_LABELS = 12


@pytest.fixture
def evaluate_script(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))  # imagefolder's cache
    sys.modules.pop("evaluate_soups", None)
    import evaluate_soups

    return evaluate_soups


@pytest.fixture
def checkpoint(tmp_path):
    """A 12-class soup model whose classes are named "0".."11" (numeric order), saved with its processor, and
    its clean-mode logits on 400 random 16x16 images."""
    names = {i: str(i) for i in range(NUM_LABELS)}
    model = make_soup_model(0, num_labels=NUM_LABELS, id2label=names, label2id={v: k for k, v in names.items()})
    path = tmp_path / "ckpt"
    model.save_pretrained(path)
    ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        path)
    pixels = torch.randint(0, 256, (400, 16, 16, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        logits = model((pixels.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5, beta=1.0).logits
    return path, pixels.numpy(), logits


def _image_folder(root: Path, pixels: np.ndarray, labels: list[int], per_class: int = 2) -> dict[int, list[int]]:
    """``root/<label>/<i>.png`` for ``per_class`` images of each label value; returns {label: image indices}."""
    chosen: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        if len(chosen.setdefault(label, [])) < per_class:
            chosen[label].append(index)
            (root / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[index]).save(root / str(label) / f"{index}.png")
    return chosen


def _run(script, ckpt, out, spec, *extra):
    return script.main(["--model_name_or_path", str(ckpt), "--output_dir", str(out), "--datasets", spec,
                        "--betas", "0", "1", "--plots", "false", "--progress", "false", "--batch_size", "8", *extra])


def test_integer_class_folders_are_matched_by_number_not_string_order(tmp_path, checkpoint, evaluate_script):
    ckpt, pixels, logits = checkpoint
    predictions = logits.argmax(-1).tolist()
    chosen = _image_folder(tmp_path / "twelve", pixels, predictions)
    assert sorted(chosen) == list(range(NUM_LABELS))  # every class has images, "10" and "11" included
    result = _run(evaluate_script, ckpt, tmp_path / "out", f"v2={tmp_path / 'twelve'}", "--attack", "none")
    assert result.curve("v2", "soup", "clean_accuracy")[1.0] == 1.0
    # What matching by count alone measured: datasets orders the folders as strings, so label i is folder
    # sorted(str)[i], scored against the model's class i.
    string_order = sorted(str(c) for c in range(NUM_LABELS))
    by_count = np.mean([string_order.index(str(predictions[i])) == predictions[i]
                        for indices in chosen.values() for i in indices])
    assert by_count < 0.5
    info = result.settings["datasets_info"][0]
    assert info["num_classes"] == NUM_LABELS and info["class_indices"][:4] == [0, 1, 10, 11]


def test_subset_of_classes_restricts_logits_in_clean_and_robust_evaluation(tmp_path, checkpoint, evaluate_script,
                                                                            monkeypatch):
    ckpt, pixels, logits = checkpoint
    subset = [2, 10, 11]
    restricted = [subset[i] for i in logits[:, subset].argmax(-1).tolist()]
    chosen = _image_folder(tmp_path / "subset", pixels, restricted, per_class=3)
    assert sorted(chosen) == subset
    evaluated = [i for indices in chosen.values() for i in indices]
    assert any(logits[i].argmax().item() not in subset for i in evaluated)  # the restriction changes predictions

    import hf_advsoup.evaluation as evaluation

    widths = []
    real_attack = evaluation.attack

    def spy(model, pixel_values, labels, config, **kwargs):
        with torch.no_grad():
            widths.append(evaluation.logits_of(model(pixel_values, **kwargs["forward_kwargs"])).shape[-1])
        return real_attack(model, pixel_values, labels, config, **kwargs)

    monkeypatch.setattr(evaluation, "attack", spy)
    result = _run(evaluate_script, ckpt, tmp_path / "out", f"r={tmp_path / 'subset'}", "--attack", "pgd2",
                  "--attack_steps", "1", "--epsilon", "0", "--betas", "0", "0.5", "1")
    assert result.curve("r", "soup", "clean_accuracy")[1.0] == 1.0
    # epsilon 0: the attack changes nothing, so robust accuracy is clean accuracy, in the restricted class space.
    assert result.curve("r", "soup", "robust_accuracy")[1.0] == 1.0
    assert result.curve("r", "ensemble", "robust_accuracy")[0.5] == pytest.approx(
        result.curve("r", "ensemble", "clean_accuracy")[0.5])
    assert widths and set(widths) == {3}  # soups and the ensemble were attacked through the 3 restricted logits
    assert result.settings["class_indices"] == {"r": [10, 11, 2]}  # datasets' string order: "10", "11", "2"


def test_restrict_logits_reorders_and_is_removed_even_after_an_error():
    model = make_soup_model(0, num_labels=5)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        full = model(x, beta=1.0).logits
        with restrict_logits(model, [4, 1]):
            assert torch.equal(model(x, beta=1.0).logits, full[:, [4, 1]])
            ensemble = model.ensemble_forward(x, beta=0.5).logits  # each mode restricted, then averaged
            assert ensemble.shape == (2, 2) and torch.allclose(ensemble.exp().sum(-1), torch.ones(2))
        with pytest.raises(KeyError), restrict_logits(model, [0]):
            raise KeyError("boom")
        assert torch.equal(model(x, beta=1.0).logits, full) and not model._forward_hooks


def test_unknown_classes_and_missing_folders_are_clear_errors(tmp_path, checkpoint, evaluate_script):
    ckpt, pixels, logits = checkpoint
    _image_folder(tmp_path / "extra", pixels, [0, 0, 12, 12, 13, 13])
    with pytest.raises(ValueError, match=r"2 of the 3 classes of data set .* not classes of the model: '12', '13'"):
        _run(evaluate_script, ckpt, tmp_path / "out", str(tmp_path / "extra"), "--attack", "none")
    with pytest.raises(FileNotFoundError, match="No such file or folder.*does_not_exist"):
        _run(evaluate_script, ckpt, tmp_path / "out", str(tmp_path / "does_not_exist"), "--attack", "none")


def test_match_class_names_rules():
    names = {i: str(i) for i in range(12)}
    assert match_class_names(["0", "1", "10", "11", "2"], names) == [0, 1, 10, 11, 2]
    assert match_class_names([" 010 ", "3"], names) == [10, 3]  # integers compared as numbers
    assert match_class_names(["Cat", "dog"], {0: "dog", 1: "cat"}) == [1, 0]  # trimmed, case-insensitive
    assert class_name_key("T-shirt/top") == "t-shirt/top"
    unnamed = {i: f"LABEL_{i}" for i in range(3)}
    assert match_class_names(["2", "0"], unnamed) == [2, 0]  # a model without names: numbers are indices
    assert match_class_names(["a", "b", "c"], unnamed) == [0, 1, 2]  # label order, with a warning
    with pytest.raises(ValueError, match="without names"):
        match_class_names(["a", "b"], unnamed)
    with pytest.raises(ValueError, match="both the model's class 1"):
        match_class_names(["1", "01"], names)


def test_every_argument_is_checked_before_the_model_or_any_image_is_loaded(tmp_path, checkpoint, evaluate_script,
                                                                          monkeypatch):
    """An --output_dir that is a file used to fail after the whole evaluation (30 minutes with --auto); now it, the
    models, the Table 9 pair and the data set names fail before anything is loaded, in seconds."""
    ckpt, _, _ = checkpoint
    monkeypatch.setattr(evaluate_script.AutoModelForImageClassification, "from_pretrained",
                        lambda *a, **k: pytest.fail("the model was loaded before the arguments were checked"))
    monkeypatch.setattr(evaluate_script, "load_eval_split", lambda *a, **k: pytest.fail("data loaded"))
    target = tmp_path / "soups.md"
    target.write_text("keep me")
    with pytest.raises(FileExistsError, match=r"--output_dir .*soups\.md is a file, not a folder\. Nothing was "
                       r"changed\."):
        _run(evaluate_script, ckpt, target, "digits")
    with pytest.raises(FileNotFoundError, match="--model_name_or_path .*missing: no such folder"):
        _run(evaluate_script, tmp_path / "missing", tmp_path / "out", "digits")
    with pytest.raises(SystemExit, match="used twice"):
        _run(evaluate_script, ckpt, tmp_path / "out", "digits", "--datasets", "digits", "digits:validation")
    with pytest.raises(ValueError, match=r"--robust_datasets \['cifar'\] are not among the data sets"):
        _run(evaluate_script, ckpt, tmp_path / "out", "digits", "--robust_datasets", "cifar")
    assert target.read_text() == "keep me" and not (tmp_path / "out").exists()
