"""The flagship pipeline (hf_advsoup.flagship, scripts/flagship.py) end to end at a minuscule scale on Fashion-MNIST-
shaped IDX files written by the test: the folder laid out as a Hub repository, results.json whose every accuracy is
a count of the per-image outcomes it stores, the model loading through the Auto API, a second invocation reusing every
job and a larger request running only the new chunks; an interrupted training that resumes from its checkpoint; the
refusals before any work. And the committed flagship folder itself, where Fashion-MNIST is installed."""

import gzip
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_advsoup.flagship import FlagshipArguments, get_flagship_preset, run_flagship
from hf_advsoup.intervals import unpack_flags
from hf_advsoup.study import jobs as study_jobs

ROOT = Path(__file__).resolve().parents[1]
NAMED = ("clean_mode", "soup_0.5", "robust_mode", "nominal", "adversarial")
REQUIRED = ("clean_accuracy", "clean_accuracy_interval_95", "robust_accuracy", "robust_accuracy_interval_95",
            "attack", "epsilon", "num_examples")


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def fake_fashion_mnist(folder: Path, train: int = 200, test: int = 48) -> Path:
    """Zalando's four file names with 28x28 images whose brightness pattern depends on the class (learnable)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 60, (count, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label:2 * label + 6, :] += 180
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
    return folder


@pytest.fixture
def fashion_files(tmp_path, monkeypatch):
    folder = fake_fashion_mnist(tmp_path / "fashion")
    monkeypatch.setenv("HF_ADVSOUP_FASHION_MNIST_DIR", str(folder))
    return folder


def _args(tmp_path, **changes):
    values = dict(quick=True, work_dir=str(tmp_path / "work"), output_dir=str(tmp_path / "card"), jobs=1)
    values.update(changes)
    return FlagshipArguments(**values)


def test_flagship_end_to_end_writes_a_hub_folder_of_counted_results(tmp_path, fashion_files):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForImageClassification

    preset = get_flagship_preset("fashion-mnist-flagship", quick=True)
    results = run_flagship(_args(tmp_path), preset)
    card = tmp_path / "card"
    for name in ("README.md", "config.json", "model.safetensors", "preprocessor_config.json", "results.json",
                 "accuracy_vs_beta.png", "tradeoff.png", "training_curves.png", "modeling_advsoup.py"):
        assert (card / name).is_file(), name
    saved = json.loads((card / "results.json").read_text())
    assert saved["systems"].keys() >= set(NAMED)
    for key in NAMED:
        entry = saved["systems"][key]
        assert all(field in entry for field in REQUIRED), key
        assert entry["epsilon"] == pytest.approx(0.1) and entry["attack"]["version"]
        # every accuracy is a count of the per-image outcomes stored beside it
        clean = unpack_flags(saved["per_example"][key]["clean"])
        assert entry["clean_accuracy"] == clean.sum() / clean.size and entry["clean_num_examples"] == 48
        headline = "autoattack" if "autoattack" in saved["per_example"][key] else "report"
        robust = unpack_flags(saved["per_example"][key][headline])
        assert entry["robust_accuracy"] == robust.sum() / robust.size and entry["num_examples"] == robust.size
        low, high = entry["clean_accuracy_interval_95"]
        assert low <= entry["clean_accuracy"] <= high
    assert saved["systems"]["robust_mode"]["num_examples"] == 8  # AutoAttack on the first 8
    assert saved["systems"]["nominal"]["num_examples"] == 16  # report only, on the first 16
    # AA+MT is the per-image worst case of the two attacks on their common images
    both = unpack_flags(saved["per_example"]["robust_mode"]["autoattack+report"])
    aa = unpack_flags(saved["per_example"]["robust_mode"]["autoattack"])
    report = unpack_flags(saved["per_example"]["robust_mode"]["report"])[:8]
    assert np.array_equal(both, aa & report)
    # comparisons: exact fractions of the stored outcomes; verdicts from the interval
    first = next(c for c in saved["comparisons"] if c["key"] == "clean_mode_vs_nominal")
    a = unpack_flags(saved["per_example"]["clean_mode"]["clean"]).astype(int)
    b = unpack_flags(saved["per_example"]["nominal"]["clean"]).astype(int)
    assert Fraction(first["difference_exact"]) == Fraction(int((a - b).sum()), a.size)
    assert first["verdict"] in ("reproduced", "not reproduced", "unresolved")

    # the per-image defences: auto (composite selector), the mixtures chosen on validation, every soup, an ensemble
    defences = json.loads((card / "auto_results.json").read_text())
    names = [r["name"] for r in defences["results"]]
    assert names[0] == "auto_composite" and {"soup_1", "soup_0.5", "soup_0", "ensemble_0.5"} <= set(names)
    for r in defences["results"]:
        assert r["num_examples"] == 8 and "worst_case_robust_accuracy" in r
        worst = unpack_flags(r["outcomes"]["worst_case"])
        assert r["worst_case_robust_accuracy"] == worst.sum() / worst.size
        for key in r["attacks"]:  # the worst case is the AND over the system's attacks
            assert not (worst & ~unpack_flags(r["outcomes"][key])).any()
    soup = next(r for r in defences["results"] if r["name"] == "soup_0")
    assert set(soup["attacks"]) == {"transfer", "end_to_end"}  # end to end: the main evaluation's report
    assert np.array_equal(unpack_flags(soup["outcomes"]["end_to_end"]),
                          unpack_flags(saved["per_example"]["robust_mode"]["report"])[:8])
    auto = defences["results"][0]
    assert {"transfer", "end_to_end", "toward_clean_1", "toward_clean_10", "autoattack"} <= set(auto["attacks"])
    assert defences["comparison"]["against_the_curve"] and "Per-image defences" in (card / "README.md").read_text()

    metadata = ModelCard.load(card / "README.md").data
    assert metadata.pipeline_tag == "image-classification" and len(metadata.eval_results) >= 6
    assert "Quick mode" in (card / "README.md").read_text()

    model = AutoModelForImageClassification.from_pretrained(str(card), beta=0.5).eval()
    run = AutoModelForImageClassification.from_pretrained(str(tmp_path / "work" / "runs" / "cotrained")).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x).logits, run(x, beta=0.5).logits)

    # Run again: every job is reused. Ask for more AutoAttack images: only the new chunks run.
    again = run_flagship(_args(tmp_path), preset)
    assert again["systems"]["robust_mode"]["robust_accuracy"] == results["systems"]["robust_mode"]["robust_accuracy"]
    log = tmp_path / "work" / "logs"
    before = {p.name for p in log.iterdir()}
    more = run_flagship(_args(tmp_path, autoattack_examples=16), preset)
    new = {p.name for p in log.iterdir()} - before
    assert new == {f"autoattack__{k}__00008-00016.log" for k in ("clean_mode", "soup_0.5", "robust_mode",
                                                                  "adversarial")}
    assert more["systems"]["robust_mode"]["num_examples"] == 16

    # The card renders again from results.json alone.
    readme = (card / "README.md").read_text()
    (card / "README.md").unlink()
    run_flagship(_args(tmp_path, stage="report_only"), preset)
    assert (card / "README.md").read_text() == readme


def test_an_interrupted_training_job_continues_from_its_checkpoint(tmp_path, monkeypatch, caplog):
    """A resumable training job stopped after its first checkpoint continues there (the folder is kept), and ends
    with the weights of an uninterrupted run; a job whose inputs changed starts afresh."""
    from safetensors.torch import load_file

    from hf_advsoup.trainer import EMACallback

    def job(folder, epochs="2"):
        argv = ["--output_dir", str(folder), "--dataset_name", "digits", "--hidden_size", "16", "--num_hidden_layers",
                "1", "--num_attention_heads", "2", "--intermediate_size", "32", "--num_train_epochs", epochs,
                "--max_train_samples", "96", "--max_eval_samples", "32", "--robust_eval_samples", "8",
                "--eval_attack_steps", "1", "--per_device_train_batch_size", "32", "--save_strategy", "epoch",
                "--eval_strategy", "no", "--soup_table", "false", "--disable_tqdm", "true", "--seed", "3"]
        return study_jobs.Job("train/x", "train", {"cotrain_script": str(ROOT / "scripts" / "cotrain.py"),
                                                    "argv": argv}, str(folder), resumable=True)

    study_jobs.run_jobs([job(tmp_path / "whole")], workers=1, log_dir=tmp_path / "logs")
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))

    original = EMACallback.on_save

    def save_then_stop(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)  # the checkpoint is complete, its EMA included
        raise KeyboardInterrupt("simulated interruption after the first checkpoint")

    folder = tmp_path / "interrupted"
    monkeypatch.setattr(EMACallback, "on_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        study_jobs.run_jobs([job(folder)], workers=1, log_dir=tmp_path / "logs")
    monkeypatch.setattr(EMACallback, "on_save", original)
    assert [p.name for p in folder.iterdir() if p.name.startswith("checkpoint-")] == ["checkpoint-3"]
    assert not (folder / "model.safetensors").exists()

    with caplog.at_level("WARNING", logger="cotrain"):
        records = study_jobs.run_jobs([job(folder)], workers=1, log_dir=tmp_path / "logs")
    assert not records["train/x"]["reused"]
    assert f"Resuming from {folder / 'checkpoint-3'} (step 3 of the interrupted run)" in caplog.text
    resumed = load_file(str(folder / "model.safetensors"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)

    # The same folder with other inputs (3 epochs): not resumed, started again in an empty folder.
    monkeypatch.setattr(EMACallback, "on_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        study_jobs.run_jobs([job(folder, epochs="3")], workers=1, log_dir=tmp_path / "logs")
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-3"]
    assert not (folder / "model.safetensors").exists()


def test_the_flagship_refuses_a_bad_setup_before_any_work(tmp_path, fashion_files, monkeypatch):
    preset = get_flagship_preset("fashion-mnist-flagship", quick=True)
    blocker = tmp_path / "card"
    blocker.write_text("a file")
    with pytest.raises(FileExistsError, match="--output_dir .* is a file"):
        run_flagship(_args(tmp_path), preset)
    assert not (tmp_path / "work").exists()
    blocker.unlink()
    import builtins

    real_import = builtins.__import__

    def no_autoattack(name, *args, **kwargs):
        if name == "pyautoattack":
            raise ImportError("no pyautoattack")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_autoattack)
    with pytest.raises(ImportError, match="pip install --no-deps pyautoattack"):
        run_flagship(_args(tmp_path), preset)
    assert not (tmp_path / "work").exists()
    with pytest.raises(ValueError, match="--jobs"):
        FlagshipArguments(jobs=0)
    with pytest.raises(ValueError, match="--autoattack_examples"):
        FlagshipArguments(autoattack_examples=0)


def test_fewer_report_images_shrink_the_default_defence_images_but_not_an_explicit_request():
    from hf_advsoup.flagship.engine import Flagship

    preset = get_flagship_preset("fashion-mnist-flagship")
    assert preset.defence_examples > 300
    shrunk = Flagship(preset, FlagshipArguments(report_examples=300, defences=False)).preset
    assert (shrunk.report_examples, shrunk.defence_examples) == (300, 300)
    kept = Flagship(preset, FlagshipArguments(report_examples=3000, defence_examples=250)).preset
    assert (kept.report_examples, kept.defence_examples) == (3000, 250)
    with pytest.raises(ValueError, match="defence_examples must be at most report_examples"):
        Flagship(preset, FlagshipArguments(report_examples=300, defence_examples=400))
    with pytest.raises(ValueError, match="--defence_examples"):
        FlagshipArguments(defence_examples=0)


FLAGSHIP_FOLDER = ROOT / "model_cards" / "fashion-mnist-flagship"


def test_the_committed_flagship_model_matches_its_results():
    """The published folder loads offline through the Auto API and classifies the first 500 test images as its
    results.json says (its per-image outcomes; at most one image may differ on another CPU's float rounding)."""
    if not (FLAGSHIP_FOLDER / "model.safetensors").is_file():
        pytest.skip("the flagship model is not in this checkout")
    if _fashion_mnist_folder() is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hf_advsoup.flagship.tasks import load_test_tensors

    saved = json.loads((FLAGSHIP_FOLDER / "results.json").read_text())
    model = AutoModelForImageClassification.from_pretrained(str(FLAGSHIP_FOLDER), beta=1.0).eval()
    processor = AutoImageProcessor.from_pretrained(str(FLAGSHIP_FOLDER))
    x, y, split = load_test_tensors("fashion_mnist", processor, 0, 500)
    assert split == "test"
    with torch.no_grad():
        right = (model(pixel_values=x).logits.argmax(-1) == y).numpy()
    expected = unpack_flags(saved["per_example"]["clean_mode"]["clean"])[:500]
    assert int((right != expected).sum()) <= 1
    assert abs(int(right.sum()) - int(expected.sum())) <= 1


def _fashion_mnist_folder():
    from hf_advsoup.data.sources import _preset_idx_folder, find_preset

    try:
        return _preset_idx_folder(find_preset("fashion_mnist"))[0]
    except FileNotFoundError:
        return None


def test_the_card_lists_a_runs_changes_to_its_recipe_without_the_bookkeeping_flags():
    from hf_advsoup.flagship.card import _recipe_changes

    argv = ["--alpha", "0", "--num_train_epochs", "5.57", "--output_dir", "runs/flagship/x/runs/adversarial", "--seed",
            "0", "--disable_tqdm", "true", "--soup_table", "false"]
    assert _recipe_changes(argv) == ["--alpha", "0", "--num_train_epochs", "5.57"]
    assert _recipe_changes(["--output_dir", "/tmp/run", "--seed", "0"]) == []
