"""End-to-end tests of scripts/cotrain.py: a few steps on the embedded digits give a model that loads with
``from_pretrained(dir, beta=0.5)`` and runs in ``pipeline``; recipe files parse; bad data fails or continues as
documented."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import cotrain  # noqa: E402

TINY = [
    "--hidden_size", "16", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "32",
    "--image_size", "8", "--patch_size", "4", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size",
    "32", "--max_steps", "3", "--eval_strategy", "no", "--save_strategy", "no", "--robust_eval_samples", "16",
    "--eval_attack_steps", "2", "--max_eval_samples", "32", "--dataloader_pin_memory", "False",
    "--disable_tqdm", "True", "--soup_table", "false",
]


def test_embedded_digits_end_to_end_gives_a_loadable_model(tmp_path):
    out = tmp_path / "digits"
    metrics = cotrain.main(["--output_dir", str(out), *TINY])
    for key in ("eval_clean_accuracy", "eval_robust_accuracy", "eval_robust_mode_clean_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["eval_robust_eval_samples"] == 16
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()
    run_args = json.loads((out / "run_args.json").read_text())
    assert run_args["training_args"]["alpha"] == 0.5 and run_args["model_args"]["adapter"] == "cls_token"

    model = AutoModelForImageClassification.from_pretrained(out, beta=0.5)
    assert model.config.beta == 0.5 and model.config.adapter == "cls_token" and model.config.num_labels == 10
    assert model.config.id2label[3] == "3"
    classifier = pipeline("image-classification", model=str(out))
    digit = Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8), mode="L")
    predictions = classifier(digit.convert("RGB"))
    assert len(predictions) == 5 and predictions[0]["label"] in {str(i) for i in range(10)}


def test_recipe_files_parse_and_digits_recipe_equals_embedded_defaults(tmp_path):
    configs = [ROOT / "scripts" / "configs" / name
               for name in ("vit_b16_imagenet.yaml", "vit_s_cifar10.yaml", "digits_tiny.yaml")]
    parsed = {}
    for path in configs:
        # bf16 recipes are for GPUs; --use_cpu keeps the parse on this machine.
        parsed[path.name] = cotrain.parse_arguments([str(path), "--output_dir", str(tmp_path), "--use_cpu"])
    model, data, aug, train = parsed["vit_b16_imagenet.yaml"]
    assert (model.hidden_size, model.num_hidden_layers, model.patch_size, model.drop_path_rate) == (768, 12, 16, 0.1)
    assert train.global_train_batch_size == 512  # per process; x 8 GPUs = 4096, the paper's batch
    assert train.learning_rate == pytest.approx(1e-4 * 512 / 256)
    assert (aug.randaugment_num_layers, aug.randaugment_magnitude, aug.randaugment_prob) == (2, 9.0, 0.5)
    assert train.alpha == 0.4 and train.warmup_epochs == 20 and train.ema_decay == 0.9999
    model, *_ = parsed["vit_s_cifar10.yaml"]
    assert (model.patch_size, model.patch_stride, model.hidden_size) == (4, 2, 384)

    embedded = cotrain.parse_arguments(["--output_dir", str(tmp_path), "--use_cpu"])
    for from_file, default in zip(parsed["digits_tiny.yaml"], embedded):
        assert dataclasses.asdict(from_file) == dataclasses.asdict(default)


def test_main_job_is_fashion_mnist_when_installed_and_digits_otherwise(tmp_path, monkeypatch):
    import hf_advsoup.data

    recipe = cotrain.parse_arguments([str(ROOT / "scripts" / "configs" / "fashion_mnist_tiny.yaml"), "--output_dir",
                                      str(tmp_path)])
    monkeypatch.setattr(hf_advsoup.data, "local_preset_folder", lambda name: tmp_path / "fashion-mnist")
    embedded = cotrain.parse_arguments(["--output_dir", str(tmp_path)])
    for from_file, default in zip(recipe, embedded):
        assert dataclasses.asdict(from_file) == dataclasses.asdict(default)
    model, data, _, train = embedded
    assert data.dataset_name == "fashion_mnist" and model.pooling == "cls" and train.alpha == 0.6
    assert train.soup_table and train.soup_table_attack == "apgd-ce" and train.soup_table_epsilon() == 0.1
    # An explicit other data set keeps the digits run's settings, installed or not.
    _, data, _, train = cotrain.parse_arguments(["--output_dir", str(tmp_path), "--dataset_name", "digits"])
    assert data.dataset_name == "digits" and train.alpha == 0.5 and train.num_train_epochs == 30
    # Not installed: the digits run, with its soup table too.
    monkeypatch.setattr(hf_advsoup.data, "local_preset_folder", lambda name: None)
    _, data, _, train = cotrain.parse_arguments(["--output_dir", str(tmp_path)])
    assert data.dataset_name == "digits" and train.soup_table and abs(train.soup_table_epsilon() - 8 / 255) < 1e-9


def test_run_ends_with_the_soup_table(tmp_path, capsys):
    pytest.importorskip("pyautoattack")
    out = tmp_path / "digits"
    metrics = cotrain.main(["--output_dir", str(out), *TINY, "--soup_table", "true",
                            "--soup_table_robust_samples", "8"])
    printed = capsys.readouterr().out
    assert "| beta | mode | clean accuracy | robust accuracy |" in printed
    assert "AutoAttack (apgd-ce)" in printed and "on the first 8" in printed
    assert (out / "soup_table.md").read_text().strip() in printed
    for beta in ("1", "0.5", "0"):
        assert 0.0 <= metrics[f"soup_table_clean_beta{beta}"] <= 1.0
        assert 0.0 <= metrics[f"soup_table_robust_beta{beta}"] <= metrics[f"soup_table_clean_beta{beta}"] + 1e-9
    # The table measures the saved (EMA) model: clean mode's clean accuracy is the run's own evaluation of clean mode
    # on the same 32 validation digits, and the saved model gives the same table.
    assert metrics["soup_table_clean_beta1"] == pytest.approx(metrics["eval_clean_accuracy"])
    from hf_advsoup.attacks import Normalization
    from hf_advsoup.soup_table import soup_table

    saved = AutoModelForImageClassification.from_pretrained(out)
    data = cotrain.load_image_dataset(cotrain.parse_arguments(["--output_dir", str(out), *TINY])[1])
    processor = cotrain.AutoImageProcessor.from_pretrained(out)
    cotrain.set_image_transforms(data, processor, cotrain.parse_arguments(["--output_dir", str(out), *TINY])[1])
    batch = cotrain.collate_fn([data["validation"][i] for i in range(len(data["validation"]))])
    again = soup_table(saved, (batch["pixel_values"], batch["labels"]), normalization=Normalization.from_processor(
        processor), epsilon=8 / 255, robust_examples=8, progress=False)
    assert again.clean == {b: metrics[f"soup_table_clean_beta{b:g}"] for b in (1.0, 0.5, 0.0)}


def test_recipe_with_unknown_key_is_rejected(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("alpha: 0.5\nalhpa: 0.4\n")
    with pytest.raises(ValueError, match="Unknown keys in .*alhpa"):
        cotrain.parse_arguments([str(recipe), "--output_dir", str(tmp_path)])


def _image_folder(root: Path, corrupt: bool) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(12):
            pixels = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    if corrupt:
        (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return root


def test_corrupt_image_is_skipped_and_training_continues(tmp_path, caplog):
    data = _image_folder(tmp_path / "images", corrupt=True)
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        metrics = cotrain.main(["--output_dir", str(out), "--dataset_name", str(data), "--validation_fraction", "0.25",
                                *TINY])
    assert "corrupt images removed: {'train': 1" in caplog.text  # counted by the loader, never trained on
    assert np.isfinite(metrics["eval_loss"])
    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.num_labels == 2 and set(model.config.id2label.values()) == {"a", "b"}


def test_unknown_label_column_fails_before_training(tmp_path):
    data = _image_folder(tmp_path / "images", corrupt=False)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="nope"):
        cotrain.main(["--output_dir", str(out), "--dataset_name", str(data), "--label_column", "nope", *TINY])
    assert not (out / "model.safetensors").exists()


def test_starts_from_a_vanilla_vit_checkpoint_with_its_image_size(tmp_path, caplog):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    vanilla = ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                  intermediate_size=32, image_size=12, patch_size=4, num_labels=3))
    vanilla.save_pretrained(tmp_path / "vit")
    tiny = [arg for arg in TINY]
    del tiny[tiny.index("--image_size"):tiny.index("--image_size") + 2]
    with caplog.at_level("WARNING", logger="cotrain"):
        cotrain.main(["--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(tmp_path / "vit"),
                      "--pooling", "cls", *tiny, "--patch_size", "2"])
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    assert model.config.image_size == 12 and model.config.num_labels == 10 and model.config.patch_size == 4
    assert "ignoring --patch_size 2" in caplog.text


# ------------------------------------------------------------------------------------------------------ output folder
def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_dir_of_another_run_is_refused_resumed_or_overwritten(tmp_path):
    out = tmp_path / "run"
    cotrain.main(["--output_dir", str(out), *TINY, "--save_strategy", "steps", "--save_steps", "3"])
    before = _files(out)
    assert "run_args.json" in before and "checkpoint-3/model.safetensors" in before

    # A new run in the same folder is refused, naming what is there and the two ways out.
    with pytest.raises(FileExistsError, match=r"holds another run: run_args\.json, config\.json, "
                       r"model\.safetensors, trainer_state\.json, checkpoint-3 \(12 entries in all\)"
                       r".*--overwrite_output_dir.*--resume_from_checkpoint"):
        cotrain.main(["--output_dir", str(out), *TINY, "--alpha", "1"])
    # A relaunch that fails at the start (the checkpoint does not fit --hidden_size 32) changes nothing either.
    with pytest.raises(RuntimeError, match="size mismatch"):
        cotrain.main(["--output_dir", str(out), *TINY, "--hidden_size", "32", "--resume_from_checkpoint", "latest"])
    assert _files(out) == before

    # --resume_from_checkpoint True (the documented spelling of "the latest checkpoint") continues the run.
    cotrain.main(["--output_dir", str(out), *TINY, "--resume_from_checkpoint", "True", "--max_steps", "4"])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4

    # --overwrite_output_dir replaces the run, the old checkpoints included.
    cotrain.main(["--output_dir", str(out), *TINY, "--alpha", "1", "--overwrite_output_dir"])
    assert json.loads((out / "run_args.json").read_text())["training_args"]["alpha"] == 1.0
    assert not (out / "checkpoint-3").exists()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds no checkpoint-N folder.*Start without"):
        cotrain.main(["--output_dir", str(tmp_path / "new"), *TINY, "--resume_from_checkpoint", "latest"])
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------------------ checkpoints
def _library_checkpoint(path: Path) -> Path:
    """A trained-looking checkpoint of this library that differs from every command-line default: layer-norm
    adapters (with distinct adversarial copies), classification-token pooling, stochastic depth 0.1."""
    from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification

    torch.manual_seed(0)
    config = AdvSoupViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                              image_size=8, patch_size=4, num_labels=10, adapter="layernorm", pooling="cls",
                              drop_path_rate=0.1, id2label={i: str(i) for i in range(10)})
    model = AdvSoupViTForImageClassification(config)
    with torch.no_grad():
        for param in model.adversarial_adapter_parameters().values():
            param.add_(torch.randn_like(param) * 0.3)
    model.save_pretrained(path)
    return path


def test_checkpoint_of_this_library_keeps_its_architecture(tmp_path, caplog):
    from hf_advsoup import AdvSoupViTForImageClassification

    ckpt = _library_checkpoint(tmp_path / "ckpt")
    # Built as main() builds it: the checkpoint's weights and logits, unchanged (before, the command-line defaults
    # made it a cls_token / mean-pooling / drop-path-0 model that dropped the trained adversarial adapters).
    model_args = cotrain.parse_arguments(["--output_dir", str(tmp_path / "x"), "--model_name_or_path", str(ckpt)])[0]
    cotrain.keep_checkpoint_architecture(model_args)
    model = cotrain.build_model(model_args, 10, model_args.image_size, {i: str(i) for i in range(10)}).eval()
    reference = AdvSoupViTForImageClassification.from_pretrained(ckpt).eval()
    assert (model.config.adapter, model.config.pooling, model.config.drop_path_rate) == ("layernorm", "cls", 0.1)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for beta in (0.0, 0.5, 1.0):
        torch.testing.assert_close(model(x, beta=beta).logits, reference(x, beta=beta).logits, rtol=0, atol=0)
    # A recipe's values (here digits_tiny.yaml: cls_token, mean, 0.0) do not override the checkpoint either.
    recipe_args = cotrain.parse_arguments([str(ROOT / "scripts" / "configs" / "digits_tiny.yaml"), "--output_dir",
                                           str(tmp_path / "x"), "--model_name_or_path", str(ckpt)])[0]
    cotrain.keep_checkpoint_architecture(recipe_args)
    assert (recipe_args.adapter, recipe_args.pooling, recipe_args.drop_path_rate) == ("layernorm", "cls", 0.1)

    # Through main(): the saved model and run_args.json keep it; an explicit flag changes it, and says so.
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="cotrain"):
        cotrain.main(["--output_dir", str(out), "--model_name_or_path", str(ckpt), *TINY, "--pooling", "mean"])
    saved = AutoModelForImageClassification.from_pretrained(out)
    assert (saved.config.adapter, saved.config.pooling, saved.config.drop_path_rate) == ("layernorm", "mean", 0.1)
    assert "--pooling mean changes the checkpoint" in caplog.text and "pooling: cls -> mean" in caplog.text
    recorded = json.loads((out / "run_args.json").read_text())["model_args"]
    assert (recorded["adapter"], recorded["pooling"], recorded["drop_path_rate"]) == ("layernorm", "mean", 0.1)
    assert recorded["set_on_command_line"] == ["pooling", "image_size", "patch_size", "hidden_size",
                                               "num_hidden_layers", "num_attention_heads", "intermediate_size"]


def test_explicit_adapter_flag_converts_a_checkpoint_of_this_library(tmp_path, caplog):
    """--adapter on a checkpoint of another adapter type converts it deliberately: shared weights and the clean
    copies are kept, the new adversarial copies start as the clean ones (loading it as is would be refused)."""
    ckpt = _library_checkpoint(tmp_path / "ckpt")  # a layernorm-adapter model
    model_args = cotrain.parse_arguments(["--output_dir", str(tmp_path / "x"), "--model_name_or_path", str(ckpt),
                                          "--adapter", "cls_token"])[0]
    with caplog.at_level("WARNING", logger="cotrain"):
        cotrain.keep_checkpoint_architecture(model_args)
    assert "adapter: layernorm -> cls_token" in caplog.text
    model = cotrain.build_model(model_args, 10, model_args.image_size, {i: str(i) for i in range(10)}).eval()
    source = AutoModelForImageClassification.from_pretrained(ckpt).eval()
    assert model.config.adapter == "cls_token"
    assert torch.equal(model.vit.embeddings.adversarial_cls_token, source.vit.embeddings.cls_token)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # both modes of the converted model are the source's clean mode
        for beta in (0.0, 1.0):
            torch.testing.assert_close(model(x, beta=beta).logits, source(x, beta=1.0).logits, rtol=0, atol=1e-6)


def test_truncated_checkpoint_names_the_file(tmp_path):
    from hf_advsoup.trainer import CorruptCheckpointError

    ckpt = _library_checkpoint(tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match=r"ckpt/model\.safetensors is truncated or corrupt"):
        cotrain.main(["--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(ckpt), *TINY])
    assert not (tmp_path / "out" / "run_args.json").exists()


# ------------------------------------------------------------------------------------------ geometry of other data
GEOMETRY_FREE = [arg for i, arg in enumerate(TINY) if arg not in ("--image_size", "--patch_size")
                 and TINY[i - 1] not in ("--image_size", "--patch_size")]


def _sized_folder(root: Path, size: tuple[int, int], odd: tuple[int, int] | None = None) -> Path:
    rng = np.random.default_rng(0)
    for label in ("coat", "bag"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            shape = odd if (odd is not None and i == 0) else size
            pixels = (rng.random((shape[1], shape[0])) * 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / label / f"{i}.png")
    return root


def test_a_folder_without_recipe_gets_its_geometry_from_its_images(tmp_path, caplog):
    """The user's own folder of 28x28 images: image size 28 (not 224), patch 4 (49 tokens, not 3,136), and the run's
    first line says so, with the reasons."""
    data = _sized_folder(tmp_path / "images", (28, 28), odd=(40, 30))
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="cotrain"):
        cotrain.main(["--output_dir", str(out), "--dataset_name", str(data), "--validation_fraction", "0.25",
                      *GEOMETRY_FREE, "--max_steps", "1"])
    config = json.loads((out / "config.json").read_text())
    assert (config["image_size"], config["patch_size"]) == (28, 4)
    recorded = json.loads((out / "run_args.json").read_text())["model_args"]
    assert (recorded["image_size"], recorded["patch_size"]) == (28, 4)  # what was trained, not None
    first = [r.getMessage() for r in caplog.records if r.name == "cotrain"][0]
    assert first.startswith("No recipe file: running the digits run's settings on " + str(data))
    assert "image size 28 px (28x28 is the most common size: 14 of 15 sampled training images, 2 sizes" in first
    assert "patch 4 px (the largest of 4, 8, 16 px that leaves at least 8 patches per side" in first
    assert "49 tokens per image" in first and "a training step is estimated at" in first


def test_geometry_rules():
    from hf_advsoup.geometry import choose_patch_size, infer_image_size, num_tokens

    assert [choose_patch_size(size)[0] for size in (8, 16, 28, 32, 63, 64, 127, 128, 224)] == [4, 4, 4, 4, 4, 8, 8,
                                                                                                16, 16]
    assert num_tokens(224, choose_patch_size(224)[0]) == 196 and num_tokens(32, 4, 2) == 225
    import datasets as hf_datasets

    def folder_of(*sizes):
        images = [Image.new("RGB", size) for size in sizes]
        return hf_datasets.Dataset.from_dict({"image": images}, features=hf_datasets.Features(
            {"image": hf_datasets.Image()}))

    assert infer_image_size(folder_of((640, 480), (640, 480), (300, 300)))[0] == 224  # capped, shorter side
    size, reason = infer_image_size(folder_of((8, 8)))
    assert size == 16 and "upscaled" in reason


def test_a_step_that_would_take_minutes_is_refused_before_training(tmp_path):
    """224-px images cut into 4-px patches (3,136 tokens; the old default for non-preset data) are timed before
    training and refused above --max_step_seconds; far too many tokens are refused without timing."""
    out = tmp_path / "run"
    args = ["--output_dir", str(out), *GEOMETRY_FREE]
    with pytest.raises(ValueError, match=r"Image size 224 px \(--image_size\), patch 4 px \(--patch_size\): 3,136 tokens per "
                       r"image: a training step is estimated at .* more than --max_step_seconds 0\.5\. Nothing was "
                       r"trained\. Give a smaller --image_size or a larger --patch_size"):
        cotrain.main([*args, "--image_size", "224", "--patch_size", "4", "--max_step_seconds", "0.5"])
    with pytest.raises(ValueError, match="65,536 tokens per image.*far too many for a CPU"):
        cotrain.main([*args, "--image_size", "512", "--patch_size", "2"])
    assert not out.exists()


def test_the_step_estimate_changes_nothing():
    from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification
    from hf_advsoup.geometry import estimate_step_seconds

    model = AdvSoupViTForImageClassification(AdvSoupViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=8, patch_size=4,
        num_labels=3, drop_path_rate=0.1)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    estimate = estimate_step_seconds(model, 8, images=16, passes=4)
    assert estimate.seconds > 0 and estimate.probe_batch > 1 and estimate.images == 16
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------- output, splits, reproducibility
def test_output_dir_that_is_a_file_is_refused_before_anything_is_loaded(tmp_path, monkeypatch):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    monkeypatch.setattr(cotrain, "load_image_dataset", lambda *a: pytest.fail("data loaded before the check"))
    with pytest.raises(FileExistsError, match=r"results\.txt is a file, not a folder\. Nothing was changed\. Choose "
                       r"another --output_dir\."):
        cotrain.main(["--output_dir", str(target), *TINY])
    assert target.read_text() == "keep me"


def _metrics_without_timings(metrics):
    return {k: v for k, v in metrics.items() if not k.endswith(("runtime", "per_second"))}


def test_same_machine_same_threads_same_run_bit_for_bit(tmp_path):
    """What the README promises: a run repeated on the same machine with the same thread count gives the same
    weights and numbers (across machines or thread counts, float sums differ: docs/cotraining.md)."""
    first = cotrain.main(["--output_dir", str(tmp_path / "a"), *TINY])
    second = cotrain.main(["--output_dir", str(tmp_path / "b"), *TINY])
    assert _metrics_without_timings(first) == _metrics_without_timings(second)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_the_soup_table_names_its_command_and_the_last_line_names_its_split(tmp_path, capsys):
    """soup_table.md ends with the evaluate_soups.py command that recomputes it (same images, batch, seed, threads):
    run, it gives the same numbers; the run's last line names the validation split it reports."""
    import shlex

    sys.modules.pop("evaluate_soups", None)
    import evaluate_soups

    out = tmp_path / "digits"
    metrics = cotrain.main(["--output_dir", str(out), *TINY, "--soup_table", "true", "--soup_table_attack", "pgd2",
                            "--soup_table_robust_samples", "20", "--per_device_eval_batch_size", "8"])
    printed = capsys.readouterr().out
    last = printed.strip().splitlines()[-1]
    assert last.startswith(f"Saved to {out}. Validation split (32 images): clean accuracy (clean mode) ")
    assert "robust accuracy (robust mode, PGD-2 (Adam) linf eps=8/255) " in last and "on its first 16." in last
    text = (out / "soup_table.md").read_text()
    command = text.split("same images, batch, seed and threads): ")[1].strip()
    words = shlex.split(command)
    assert words[:3] == ["OMP_NUM_THREADS=1", "python", "scripts/evaluate_soups.py"]
    assert words[words.index("--batch_size") + 1] == "8" and words[words.index("--datasets") + 1] == "digits:validation"
    result = evaluate_soups.main([*words[3:-2], "--output_dir", str(tmp_path / "again"), "--progress", "false"])
    for metric in ("clean", "robust"):
        again = result.curve("digits", "soup", f"{metric}_accuracy")
        assert again == {beta: metrics[f"soup_table_{metric}_beta{beta:g}"] for beta in (1.0, 0.5, 0.0)}


def test_missing_pyautoattack_stops_the_run_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # `import pyautoattack` raises ImportError
    with pytest.raises(ImportError, match=r"soup table's attack 'apgd-ce' runs through pyautoattack, which is not "
                       r"installed: pip install --no-deps pyautoattack==0\.2\.0.*--soup_table_attack report"):
        cotrain.main(["--output_dir", str(tmp_path / "run"), *TINY, "--soup_table", "true"])
    assert not (tmp_path / "run").exists()
    cotrain.parse_arguments(["--output_dir", str(tmp_path / "run"), "--soup_table_attack", "report"])  # no extra


def test_ctrl_c_during_training_ends_with_how_to_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C after the first checkpoint: no traceback, one line saying how to continue, and that command resumes."""
    from hf_advsoup.cli import run

    out = tmp_path / "run"
    argv = ["--output_dir", str(out), *TINY, "--save_strategy", "steps", "--save_steps", "1"]

    def interrupt_at_step_2(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cotrain.RunStartCallback, "on_step_end", interrupt_at_step_2, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run(cotrain.main, argv)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.splitlines()[-1] == (
        f"interrupted: training stopped; its latest checkpoint is {out}/checkpoint-1. To continue the run, give the "
        f"same command with --resume_from_checkpoint latest (and the same --output_dir {out}).")
    monkeypatch.undo()
    cotrain.main([*argv, "--resume_from_checkpoint", "latest"])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
