"""Tests of transfer learning (appendix C, Table 6): baked soups, strategies, new heads, LoRA, the sweep table.

Tiny seeded models (hidden 32, 2 layers, 16x16 images) and tiny in-process data sets in each Table 6 preset's
schema; nothing touches the network.
"""

import copy
import json
import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_advsoup import AdvSoupViTForImageClassification
from hf_advsoup.transfer import (
    CLS_TOKEN,
    PAPER_RECIPE,
    TABLE6_DATASETS,
    TransferArguments,
    TransferInfo,
    TransferResult,
    apply_strategy,
    bake_soup,
    build_model_card,
    load_source_model,
    load_transfer_model,
    parse_token_init,
    prepare_transfer_model,
    replace_head,
    results_table,
    save_transfer_model,
    trainable_parameter_names,
    write_results_table,
)
from tiny_soup import images
from tiny_soup import make_soup_model as make_source

LABELS3 = {0: "cat", 1: "dog", 2: "bird"}


@pytest.fixture
def source_dir(tmp_path):
    path = tmp_path / "source"
    make_source().save_pretrained(path)
    return str(path)


def sgd_steps(model, steps=3, lr=0.5, num_labels=3):
    """A few plain SGD steps on random data; returns the model."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    model.train()
    for step in range(steps):
        x = images(8, seed=10 + step)
        y = torch.arange(8) % num_labels
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def changed(before: dict, after: dict) -> set:
    return {k for k in before if not torch.equal(before[k], after[k])}


# --------------------------------------------------------------------------------------------------- token init
def test_parse_token_init():
    assert parse_token_init("robust") == ("Robust mode", 0.0)
    assert parse_token_init("Clean") == ("Clean mode", 1.0)
    assert parse_token_init("0.25") == ("β = 0.25", 0.25)
    assert parse_token_init(0.75) == ("β = 0.75", 0.75)
    assert parse_token_init("beta=0") == ("Robust mode", 0.0)
    with pytest.raises(ValueError, match="'robust'.*'clean'"):
        parse_token_init("adversarial")
    with pytest.raises(ValueError, match="finite"):
        parse_token_init("nan")
    with pytest.raises(ValueError, match="strategy"):
        TransferArguments(model_name_or_path="x", strategy="everything")


@pytest.mark.parametrize("adapter", ["cls_token", "layernorm", "pos_embed"])
def test_baked_soup_predicts_like_source_soup(adapter):
    source = make_source(adapter=adapter)
    x = images()
    # The modes really differ, so the checks below would fail for a wrong beta.
    assert not torch.allclose(source(x, beta=0.0).logits, source(x, beta=1.0).logits, atol=1e-3)
    for beta in (0.0, 0.25, 1.0):
        baked = bake_soup(source, beta)
        assert baked.config.adapter == "none" and baked.adversarial_adapter_parameters() == {}
        torch.testing.assert_close(baked(x).logits, source(x, beta=beta).logits, rtol=0, atol=1e-5)


def test_load_source_model_bakes_from_a_saved_checkpoint(source_dir):
    source = AdvSoupViTForImageClassification.from_pretrained(source_dir).eval()
    x = images()
    baked = load_source_model(source_dir, 0.5).eval()
    torch.testing.assert_close(baked(x).logits, source(x, beta=0.5).logits, rtol=0, atol=1e-5)
    expected = 0.5 * source.vit.embeddings.cls_token + 0.5 * source.vit.embeddings.adversarial_cls_token
    torch.testing.assert_close(baked.vit.embeddings.cls_token, expected)


def test_truncated_source_checkpoint_names_the_file(source_dir):
    from hf_advsoup.trainer import CorruptCheckpointError

    weights = os.path.join(source_dir, "model.safetensors")
    with open(weights, "rb") as handle:
        data = handle.read()
    with open(weights, "wb") as handle:
        handle.write(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match=r"source/model\.safetensors is truncated or corrupt"):
        load_source_model(source_dir, 0.5)


def test_single_copy_source_is_kept_and_warns(caplog):
    baked = bake_soup(make_source(), 0.5)
    with caplog.at_level("WARNING"):
        same = bake_soup(baked, 0.0)
    assert same is baked and "no effect" in caplog.text


# ------------------------------------------------------------------------------------------------------- head
def test_new_head_for_a_different_label_count():
    model = replace_head(bake_soup(make_source(), 0.0), LABELS3)
    assert model.classifier.out_features == 3 and model.config.num_labels == 3
    assert model.config.id2label == LABELS3 and model.config.label2id == {"cat": 0, "dog": 1, "bird": 2}
    assert model(images()).logits.shape == (4, 3)
    # ViT's classifier init, not garbage from empty_like.
    assert 0.01 < model.classifier.weight.std().item() < 0.03 and torch.all(model.classifier.bias == 0)


def test_keep_head_with_mismatched_labels_is_a_clear_error():
    with pytest.raises(ValueError, match="source classifier has 5 labels and the target data set has 3"):
        replace_head(bake_soup(make_source(), 0.0), LABELS3, keep_head=True)


def test_keep_head_with_matching_labels_keeps_weights_but_default_reinitialises():
    model = bake_soup(make_source(), 0.0)
    weight = model.classifier.weight.detach().clone()
    labels5 = {i: f"c{i}" for i in range(5)}
    kept = replace_head(copy.deepcopy(model), labels5, keep_head=True)
    assert torch.equal(kept.classifier.weight, weight) and kept.config.id2label == labels5
    fresh = replace_head(copy.deepcopy(model), labels5)
    assert not torch.equal(fresh.classifier.weight, weight)


# ------------------------------------------------------------------------------------------------- strategies
EXPECTED = {
    "head": {"classifier.weight", "classifier.bias"},
    "head+token": {"classifier.weight", "classifier.bias", CLS_TOKEN},
}


@pytest.mark.parametrize("strategy", ["head", "head+token", "all"])
@pytest.mark.parametrize("adapter", ["cls_token", "layernorm"])
def test_each_strategy_changes_only_its_parameters(strategy, adapter):
    args = TransferArguments(model_name_or_path="unused", token_init="0.5", strategy=strategy)
    model = prepare_transfer_model(args, LABELS3, model=make_source(adapter=adapter))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    expected = EXPECTED.get(strategy, set(before))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    sgd_steps(model)
    after = dict(model.named_parameters())
    assert changed(before, after) == expected  # everything named changed, nothing else did


def test_lora_trains_only_lora_and_head():
    args = TransferArguments(model_name_or_path="unused", token_init="robust", strategy="lora", lora_r=2)
    model = prepare_transfer_model(args, LABELS3, model=make_source())
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n or ".modules_to_save." in n) for n in trainable)
    assert {n.split(".")[-4] for n in trainable if "lora_" in n} == {"q_proj", "v_proj"}
    assert not any(CLS_TOKEN in n for n in trainable)  # the token stays frozen under LoRA (see docs)
    sgd_steps(model, steps=4)
    assert changed(before, dict(model.named_parameters())) == trainable


def test_every_strategy_says_what_it_trains_lora_included(caplog):
    counts = {}
    for strategy in ("head", "lora"):
        args = TransferArguments(model_name_or_path="unused", token_init="robust", strategy=strategy, lora_r=2)
        with caplog.at_level("INFO", logger="hf_advsoup.transfer"):
            caplog.clear()
            model = prepare_transfer_model(args, LABELS3, model=make_source())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        counts[strategy] = f"Strategy {strategy!r} trains {trainable} of {total} parameters"
        assert counts[strategy] in caplog.text
    assert "(LoRA rank 2 on q_proj, v_proj, and the classifier)" in caplog.text


def test_apply_strategy_refuses_a_dual_adapter_model():
    with pytest.raises(ValueError, match="bake the soup first"):
        apply_strategy(make_source(), "head")
    with pytest.raises(ValueError, match="valid options"):
        trainable_parameter_names(bake_soup(make_source(), 0.0), "token")


# ----------------------------------------------------------------------------------------------------- saving
def test_lora_saves_reloads_and_merges_to_identical_logits(source_dir, tmp_path):
    args = TransferArguments(model_name_or_path=source_dir, token_init="0.25", strategy="lora", lora_r=2)
    model = prepare_transfer_model(args, LABELS3)
    sgd_steps(model, steps=3)
    x = images()
    reference = model(pixel_values=x).logits.detach()
    info = TransferInfo(source=source_dir, token_init="0.25", beta=0.25, strategy="lora", dataset="tiny",
                        num_labels=3, id2label=LABELS3)
    out = tmp_path / "lora"
    save_transfer_model(model, out, info, merge_lora=True)
    files = set(os.listdir(out))
    assert {"adapter_model.safetensors", "adapter_config.json", "transfer_config.json", "README.md"} <= files
    # The LoRA update is not a no-op (the reloaded model must actually carry the adapter).
    base = replace_head(load_source_model(source_dir, 0.25), LABELS3).eval()
    assert not torch.allclose(base(x).logits, reference, atol=1e-4)
    reloaded = load_transfer_model(out).eval()
    torch.testing.assert_close(reloaded(pixel_values=x).logits, reference, rtol=0, atol=1e-5)
    merged = load_transfer_model(out, merge=True).eval()
    assert type(merged) is AdvSoupViTForImageClassification
    torch.testing.assert_close(merged(x).logits, reference, rtol=0, atol=1e-5)
    saved_merged = AdvSoupViTForImageClassification.from_pretrained(out / "merged").eval()
    torch.testing.assert_close(saved_merged(x).logits, reference, rtol=0, atol=1e-5)
    assert saved_merged.config.id2label == LABELS3
    # The trained PeftModel is still usable after merging a copy.
    torch.testing.assert_close(model(pixel_values=x).logits, reference)


def test_saved_model_has_its_card(source_dir, tmp_path):
    args = TransferArguments(model_name_or_path=source_dir, token_init="0.75", strategy="head+token")
    model = prepare_transfer_model(args, LABELS3)
    info = TransferInfo(source=source_dir, token_init="0.75", beta=0.75, strategy="head+token",
                        dataset="uoft-cs/cifar10", num_labels=3, id2label=LABELS3, source_adapter="cls_token",
                        metrics={"test_clean_accuracy": 0.5, "eval_clean_accuracy": 0.6})
    save_transfer_model(model, tmp_path / "m", info)
    card = (tmp_path / "m" / "README.md").read_text()
    for text in (source_dir, "β = 0.75", "beta = 0.75", "head+token", "Fine-tune head + cls token",
                 "uoft-cs/cifar10", "test_clean_accuracy", "value: 0.5"):
        assert text in card, text
    assert TransferInfo.load(tmp_path / "m") == info
    x = images()
    torch.testing.assert_close(load_transfer_model(tmp_path / "m").eval()(x).logits, model.eval()(x).logits)
    assert "library_name: transformers" in str(build_model_card(info))


# ----------------------------------------------------------------------------------------------------- table
def test_results_table_layout_and_average(tmp_path):
    columns = [parse_token_init(t)[0] for t in ("robust", "0.5", "clean")]
    rng = np.random.default_rng(0)
    results = [
        TransferResult(dataset=d, strategy=s, column=c, accuracy=float(rng.uniform(0.4, 1.0)))
        for d in TABLE6_DATASETS for s in ("head", "head+token", "all") for c in columns
    ]
    md_path, json_path = write_results_table(results, tmp_path)
    markdown = open(md_path).read()
    data = json.load(open(json_path))
    lines = markdown.strip().splitlines()
    assert lines[0] == "| Setup | Robust mode | β = 0.5 | Clean mode |"
    # header + rule + (5 data sets + AVERAGE) x (group line + 3 strategies)
    assert len(lines) == 2 + 6 * 4 and "—" not in markdown
    assert "| **AVERAGE** |" in markdown and "| Fine-tune head + cls token |" in markdown
    mean = np.mean([r.accuracy for r in results if r.strategy == "all" and r.column == "Clean mode"])
    assert data["average"]["all"]["Clean mode"] == pytest.approx(mean)
    assert f"{100 * mean:.2f}%" in lines[-1]
    # A missing run shows as a dash and leaves its average empty rather than averaging fewer data sets.
    markdown, data = results_table(results[1:])
    assert markdown.count("—") == 2 and data["average"]["head"]["Robust mode"] is None


def test_recipe_matches_appendix_c():
    d = PAPER_RECIPE.training_defaults()
    assert (d["optim"], d["optim_args"], d["per_device_train_batch_size"], d["max_grad_norm"]) == (
        "sgd", "momentum=0.9", 512, 1.0)
    assert (d["weight_decay"], d["label_smoothing_factor"], d["max_steps"], d["learning_rate"]) == (
        0.0, 0.1, 10_000, 0.01)
    assert (d["warmup_steps"], d["lr_scheduler_type"], d["ema_decay"], d["alpha"]) == (500, "cosine", 0.999, 1.0)
    assert PAPER_RECIPE.data_defaults() == {"random_resized_crop": False, "horizontal_flip": True}


# ------------------------------------------------------------------------------------------ training end to end
def tiny_preset_dataset(path, preset_name, num_classes=3, n_train=24, n_eval=6, seed=0):
    """A tiny DatasetDict in the Hub schema of a Table 6 preset (its column names and splits), saved to disk."""
    from hf_advsoup.data import DATASET_PRESETS

    preset = DATASET_PRESETS[preset_name]
    rng = np.random.default_rng(seed)
    names = [f"{preset_name}_class{i}" for i in range(num_classes)]
    features = datasets.Features({preset.image_column: datasets.Image(),
                                  preset.label_column: datasets.ClassLabel(names=names)})

    def split(n):
        # Non-square images: the transform must resize them to the model's square size (no aspect ratio kept).
        images_ = [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict(
            {preset.image_column: images_, preset.label_column: [i % num_classes for i in range(n)]},
            features=features)

    splits = {preset.train_split: split(n_train), preset.test_split: split(n_eval)}
    if preset.eval_split is not None:
        splits[preset.eval_split] = split(n_eval)
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return str(path)


TRAIN_FLAGS = [
    "--max_steps", "2", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    "--warmup_steps", "0", "--learning_rate", "0.05", "--save_strategy", "no", "--report_to", "none",
    "--use_cpu", "true", "--disable_tqdm", "true", "--seed", "0",
]


def run_script(argv):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "transfer.py")
    spec = importlib.util.spec_from_file_location("transfer_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.mark.parametrize("strategy", ["head+token", "lora"])
def test_script_fine_tunes_only_the_strategy_parameters(source_dir, tmp_path, strategy):
    data = tiny_preset_dataset(tmp_path / "cifar100", "cifar100")
    out = tmp_path / "run"
    info = run_script([
        "--model_name_or_path", source_dir, "--dataset_name", data, "--image_column", "img",
        "--label_column", "fine_label", "--validation_fraction", "0.25", "--token_init", "0.5",
        "--strategy", strategy, "--lora_r", "2", "--merge_lora", "true", "--output_dir", str(out), *TRAIN_FLAGS,
    ])
    # Labels come from the data set; both validation (carved from train) and test were evaluated.
    assert info.id2label == {i: f"cifar100_class{i}" for i in range(3)}
    assert {"eval_clean_accuracy", "test_clean_accuracy"} <= set(info.metrics)
    assert info.recipe["optim_args"] == "momentum=0.9" and info.recipe["random_resized_crop"] is False
    folder = out / "merged" if strategy == "lora" else out
    trained = AdvSoupViTForImageClassification.from_pretrained(folder)
    baked = load_source_model(source_dir, 0.5)
    assert trained.config.id2label == info.id2label and trained.config.num_labels == 3
    before = {k: v for k, v in baked.state_dict().items() if not k.startswith("classifier.")}
    after = trained.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    if strategy == "head+token":
        assert moved == {CLS_TOKEN}
    else:  # merged LoRA: only the attention projections that carry LoRA changed
        assert moved and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in moved)
    card = (out / "README.md").read_text()
    assert source_dir in card and "β = 0.5" in card and strategy in card
    assert (out / "preprocessor_config.json").exists()


def test_sweep_writes_a_complete_table(source_dir, tmp_path):
    paths = [f"{name}={tiny_preset_dataset(tmp_path / name, name, seed=i)}"
             for i, name in enumerate(("cifar10", "resisc45"))]
    # A single-copy baseline column (as Table 6's nominally pre-trained model).
    baseline = tmp_path / "baseline"
    bake_soup(make_source(seed=3), 1.0).save_pretrained(baseline)
    out = tmp_path / "sweep"
    results = run_script([
        "--sweep", "true", "--model_name_or_path", source_dir, "--datasets", "cifar10", "resisc45",
        "--dataset_paths", *paths, "--strategies", "head", "--token_inits", "robust",
        "--baselines", f"Nominal={baseline}", "--validation_fraction", "0.25", "--output_dir", str(out),
        *TRAIN_FLAGS, "--max_steps", "1",
    ])
    assert len(results) == 2 * 1 * 2 and all(r.accuracy is not None for r in results)
    markdown = (out / "transfer_table.md").read_text()
    data = json.loads((out / "transfer_table.json").read_text())
    lines = markdown.strip().splitlines()
    assert lines[0] == "| Setup | Nominal | Robust mode |"
    assert "—" not in markdown and len(lines) == 2 + 3 * 2  # (2 data sets + AVERAGE) x (title + 1 strategy)
    assert "**CIFAR-10**" in markdown and "**RESISC-45**" in markdown and "**AVERAGE**" in markdown
    for column in ("Nominal", "Robust mode"):
        expected = np.mean([data["accuracy"][d]["head"][column] for d in ("cifar10", "resisc45")])
        assert data["average"]["head"][column] == pytest.approx(expected)
        assert f"{100 * expected:.2f}%" in lines[-1]
    # A rerun reuses the finished runs instead of training again.
    weights = out / "resisc45" / "head" / "Robust_mode" / "model.safetensors"
    mtime = os.path.getmtime(weights)
    rerun = run_script(["--sweep", "true", "--model_name_or_path", source_dir, "--datasets", "resisc45",
                        "--dataset_paths", paths[1], "--strategies", "head", "--token_inits", "robust",
                        "--output_dir", str(out), *TRAIN_FLAGS])
    assert rerun[0].accuracy == data["accuracy"]["resisc45"]["head"]["Robust mode"]
    assert os.path.getmtime(weights) == mtime


def load_script_module():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "transfer.py")
    spec = importlib.util.spec_from_file_location("transfer_script_parse", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_defaults_and_overrides_from_cli_and_yaml(tmp_path):
    script = load_script_module()
    transfer_args, sweep_args, data_args, training_args = script.parse_args(
        ["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--learning_rate", "0.003", "--use_cpu", "true"])
    assert training_args.learning_rate == 0.003  # overridden
    assert (training_args.max_steps, training_args.warmup_steps, training_args.ema_decay) == (10_000, 500, 0.999)
    assert (training_args.optim_args, training_args.alpha, data_args.random_resized_crop) == ("momentum=0.9", 1.0, False)
    assert sweep_args.sweep is False and transfer_args.strategy == "all"
    configs = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "configs")
    _, sweep_args, _, training_args = script.parse_args([os.path.join(configs, "transfer_tiny.yaml")])
    assert training_args.max_steps == 20 and training_args.optim_args == "momentum=0.9"  # YAML + recipe
    _, sweep_args, _, training_args = script.parse_args(
        [os.path.join(configs, "transfer_table6.yaml"), "--use_cpu", "true", "--max_steps", "7"])
    assert sweep_args.sweep and sweep_args.datasets == list(TABLE6_DATASETS)
    assert sweep_args.token_inits == ["robust", "0.25", "0.5", "0.75", "clean"] and training_args.max_steps == 7
    with pytest.raises(ValueError, match="Unknown configuration keys"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("learning_rat: 0.1\n")
        script.parse_args([str(bad)])


@pytest.mark.parametrize("name", TABLE6_DATASETS)
def test_every_table6_preset_schema_loads(tmp_path, name):
    from hf_advsoup.data import DataArguments, load_image_dataset
    from hf_advsoup.transfer import labels_from_dataset, preset_data_arguments

    path = tiny_preset_dataset(tmp_path / name, name, n_train=12, n_eval=3)
    args = preset_data_arguments(DataArguments(validation_fraction=0.25, verify_images=False), name, path)
    ds = load_image_dataset(args)
    assert set(ds) == {"train", "validation", "test"} and ds["train"].column_names == ["image", "label"]
    assert labels_from_dataset(ds["train"]) == {i: f"{name}_class{i}" for i in range(3)}
    # A validation split is carved out of train only where the data set has none.
    carved = name in ("cifar10", "cifar100", "sun397")
    assert len(ds["train"]) == (9 if carved else 12) and len(ds["validation"]) == 3
