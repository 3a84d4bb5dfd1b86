"""Tests of hf_advsoup.data: loading, schema detection, RGB conversion, presets, transforms, collation.

Every data set is built in process or in tmp_path; nothing touches the network (Hub loads are monkeypatched).
"""

from __future__ import annotations

import io
import logging

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_advsoup import data as data_module
from hf_advsoup.data import (
    DATASET_PRESETS,
    DataArguments,
    DatasetUnavailableError,
    build_transforms,
    collate_fn,
    detect_columns,
    load_digits_dataset,
    load_eval_split,
    load_image_dataset,
    set_image_transforms,
    to_rgb,
)

SIZE_MEAN_STD = (16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(to_rgb(image))


def _image_dataset(num: int = 12, num_classes: int = 3, image_column: str = "image", label_column: str = "label",
                   seed: int = 0, class_label: bool = True) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (10, 8, 3), dtype=np.uint8)) for _ in range(num)]
    labels = [i % num_classes for i in range(num)]
    label_feature = (
        datasets.ClassLabel(names=[f"c{i}" for i in range(num_classes)]) if class_label else datasets.Value("int64")
    )
    features = datasets.Features({image_column: datasets.Image(), label_column: label_feature})
    return datasets.Dataset.from_dict({image_column: images, label_column: labels}, features=features)


# ---------------------------------------------------------------------------------------------------------------
# to_rgb
# ---------------------------------------------------------------------------------------------------------------
def test_to_rgb_grayscale_and_binary():
    gray = Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8), mode="L")
    out = _rgb_array(gray)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert (out[..., 0] == np.array([[0, 100], [200, 255]])).all() and (out[..., 0] == out[..., 2]).all()
    binary = gray.convert("1")
    assert to_rgb(binary).mode == "RGB"


def test_to_rgb_alpha_composites_on_white():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black: must become white, not black
    out = _rgb_array(rgba)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)
    half = _rgb_array(Image.new("LA", (1, 1), (0, 128)))
    assert 120 <= half[0, 0, 0] <= 135  # black at half opacity over white: mid gray
    palette = Image.new("P", (1, 1), 0)
    palette.putpalette([10, 20, 30] * 256)
    palette.info["transparency"] = 0
    assert tuple(_rgb_array(palette)[0, 0]) == (255, 255, 255)


def test_to_rgb_cmyk():
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    out = _rgb_array(cmyk)
    assert tuple(out[0, 0]) == (255, 0, 0)


def test_to_rgb_16bit_scales_instead_of_clipping():
    values = np.array([[0, 257 * 128], [65535, 257 * 10]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    out = _rgb_array(image)[..., 0]
    assert out.tolist() == [[0, 128], [255, 10]]
    # Pillow's own conversion would clip everything above 255 to white; ours keeps the ordering.
    as_int = Image.fromarray(values.astype(np.int32), mode="I")
    assert _rgb_array(as_int)[..., 0].tolist() == [[0, 128], [255, 10]]
    eight_bit_in_int = Image.fromarray(np.array([[0, 200]], dtype=np.int32), mode="I")
    assert _rgb_array(eight_bit_in_int)[..., 0].tolist() == [[0, 200]]


def test_to_rgb_float():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    assert _rgb_array(unit)[..., 0].tolist() == [[0, 128, 255]]
    wide = Image.fromarray(np.array([[-1.0, 1000.0]], dtype=np.float32), mode="F")
    assert _rgb_array(wide)[..., 0].tolist() == [[0, 255]]


# ---------------------------------------------------------------------------------------------------------------
# Embedded digits
# ---------------------------------------------------------------------------------------------------------------
def test_load_digits_dataset_is_deterministic_and_complete():
    first = load_digits_dataset(seed=0)
    assert set(first) == {"train", "validation"}
    assert len(first["train"]) + len(first["validation"]) == 1797
    assert len(first["validation"]) == 360
    assert first["train"].features["label"].names == [str(i) for i in range(10)]
    image = first["train"][0]["image"]
    assert image.mode == "L" and image.size == (8, 8)
    assert max(np.asarray(first["train"][i]["image"]).max() for i in range(20)) == 255
    again = load_digits_dataset(seed=0)
    assert first["validation"]["label"] == again["validation"]["label"]
    assert np.array_equal(np.asarray(first["validation"][5]["image"]), np.asarray(again["validation"][5]["image"]))
    other = load_digits_dataset(seed=1)
    assert first["validation"]["label"] != other["validation"]["label"]
    # Stratified: every class is in the validation split.
    assert set(first["validation"]["label"]) == set(range(10))


def test_default_arguments_load_digits_offline():
    dd = load_image_dataset(DataArguments())
    assert list(dd) == ["train", "validation"]
    assert dd["train"].column_names == ["image", "label"]
    assert dd.report.source == "preset:digits" and dd.report.total_corrupt_images == 0


# ---------------------------------------------------------------------------------------------------------------
# Bad data in an image folder
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def messy_folder(tmp_path):
    root = tmp_path / "messy"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir(parents=True)
    Image.fromarray(np.full((12, 10), 80, dtype=np.uint8), mode="L").save(root / "cat" / "gray.png")
    Image.new("RGBA", (9, 7), (255, 0, 0, 0)).save(root / "cat" / "rgba.png")
    Image.new("CMYK", (11, 11), (0, 255, 255, 0)).save(root / "dog" / "cmyk.jpg")
    Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)).save(root / "dog" / "deep.png")
    (root / "dog" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return root


def test_imagefolder_bad_data_is_converted_and_corrupt_files_counted(messy_folder, tmp_path, caplog):
    args = DataArguments(dataset_name=str(messy_folder), dataset_cache_dir=str(tmp_path / "cache"),
                         validation_fraction=0.25)
    with caplog.at_level(logging.WARNING, logger="hf_advsoup.data"):
        dd = load_image_dataset(args)
    assert dd.report.num_corrupt_images["train"] == 1
    assert any("corrupt.png" in path for path in dd.report.corrupt_examples)
    assert "corrupt" in caplog.text
    assert sum(len(split) for split in dd.values()) == 4  # 5 files, 1 corrupt
    assert dd["train"].features["label"].names == ["cat", "dog"]
    assert dd.report.splits["validation"].startswith("train[carved")
    set_image_transforms(dd, SIZE_MEAN_STD, args)
    for split in dd.values():
        for example in split:
            assert example["pixel_values"].shape == (3, 16, 16)
            assert torch.isfinite(example["pixel_values"]).all()
            assert example["pixel_values"].min() >= -1.0 and example["pixel_values"].max() <= 1.0


def test_corrupt_image_skipped_at_transform_time_when_not_verified(messy_folder, tmp_path, caplog):
    args = DataArguments(dataset_name=str(messy_folder), dataset_cache_dir=str(tmp_path / "cache"),
                         validation_fraction=0.25, verify_images=False)
    dd = load_image_dataset(args)
    assert sum(len(split) for split in dd.values()) == 5  # nothing removed up front
    set_image_transforms(dd, SIZE_MEAN_STD, args)
    examples = [example for split in dd.values() for example in split]
    with caplog.at_level(logging.WARNING, logger="hf_advsoup.data"):
        batch = collate_fn(examples)
    assert batch["pixel_values"].shape == (4, 3, 16, 16)  # the corrupt image never reaches a batch
    assert "Dropped 1 undecodable" in caplog.text
    with pytest.raises(RuntimeError, match="failed to decode"):
        collate_fn([{"pixel_values": None, "labels": 0}])


# ---------------------------------------------------------------------------------------------------------------
# Schema detection
# ---------------------------------------------------------------------------------------------------------------
def test_detect_columns_by_name_type_and_flag():
    feats = _image_dataset(image_column="picture", label_column="target").features
    assert detect_columns(feats) == ("picture", "target")
    typed = _image_dataset(image_column="photo", label_column="kind").features
    assert detect_columns(typed) == ("photo", "kind")  # lone Image / ClassLabel features
    assert detect_columns(typed, "photo", "kind") == ("photo", "kind")


def test_unknown_schema_error_lists_columns():
    ds = datasets.Dataset.from_dict({"photo": [1, 2], "kind": [0, 1], "extra": ["a", "b"]})
    with pytest.raises(ValueError, match=r"columns: photo .*kind .*extra") as err:
        detect_columns(ds.features)
    assert "--image_column" in str(err.value)
    feats = _image_dataset().features
    with pytest.raises(ValueError, match=r"'nope' \(--label_column\) is not in the data set; columns: image"):
        detect_columns(feats, label_column="nope")


def test_unknown_columns_through_load_image_dataset(tmp_path):
    ds = datasets.Dataset.from_dict({"photo": ["a.png"], "kind": [0]})
    ds.save_to_disk(str(tmp_path / "weird"))
    with pytest.raises(ValueError, match="photo"):
        load_image_dataset(DataArguments(dataset_name=str(tmp_path / "weird")))


# ---------------------------------------------------------------------------------------------------------------
# Local formats and label canonicalisation
# ---------------------------------------------------------------------------------------------------------------
def test_save_to_disk_with_splits_and_renamed_columns(tmp_path):
    dd = datasets.DatasetDict({
        "train": _image_dataset(12, image_column="img", label_column="fine_label", class_label=False),
        "validation": _image_dataset(6, image_column="img", label_column="fine_label", class_label=False, seed=1),
        "test": _image_dataset(6, image_column="img", label_column="fine_label", class_label=False, seed=2),
    })
    dd.save_to_disk(str(tmp_path / "disk"))
    out = load_image_dataset(DataArguments(dataset_name=str(tmp_path / "disk")))
    assert list(out) == ["train", "validation", "test"]
    assert [len(out[s]) for s in out] == [12, 6, 6]
    assert out["train"].column_names == ["image", "label"]
    label = out["validation"].features["label"]
    assert isinstance(label, datasets.ClassLabel) and label.names == ["0", "1", "2"]
    assert out.report.image_column == "img" and out.report.label_column == "fine_label"


def test_parquet_file_with_string_labels(tmp_path):
    ds = _image_dataset(10)
    ds = ds.cast_column("label", datasets.Value("int64"))
    ds = ds.map(lambda row: {"label": ["zebra", "ant", "moose"][row["label"]]})
    path = str(tmp_path / "data.parquet")
    ds.to_parquet(path)
    out = load_image_dataset(DataArguments(dataset_name=path, dataset_cache_dir=str(tmp_path / "cache"),
                                           validation_fraction=0.3))
    names = out["train"].features["label"].names
    assert names == ["ant", "moose", "zebra"]
    assert len(out["train"]) + len(out["validation"]) == 10
    first = out["train"][0]
    assert isinstance(first["image"], Image.Image)


def test_negative_labels_rejected(tmp_path):
    ds = _image_dataset(4, class_label=False).map(lambda row: {"label": -1})
    ds.save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(ValueError, match="must be >= 0"):
        load_image_dataset(DataArguments(dataset_name=str(tmp_path / "unlabelled")))


def test_missing_split_lists_available(tmp_path):
    _image_dataset(6).save_to_disk(str(tmp_path / "single"))
    with pytest.raises(ValueError, match="available splits: train"):
        load_image_dataset(DataArguments(dataset_name=str(tmp_path / "single"), eval_split="validation"))


def test_max_samples_and_zero_fraction_uses_test(tmp_path):
    dd = datasets.DatasetDict({"train": _image_dataset(12), "test": _image_dataset(9, seed=3)})
    dd.save_to_disk(str(tmp_path / "tt"))
    carved = load_image_dataset(DataArguments(dataset_name=str(tmp_path / "tt"), validation_fraction=0.25,
                                              max_train_samples=5, max_eval_samples=4))
    assert [len(carved[s]) for s in carved] == [5, 3, 4]  # train, carved validation (3 of 12), test
    paper = load_image_dataset(DataArguments(dataset_name=str(tmp_path / "tt"), validation_fraction=0.0))
    assert list(paper) == ["train", "validation"] and len(paper["train"]) == 12 and len(paper["validation"]) == 9
    assert paper.report.splits["validation"] == "test"


# ---------------------------------------------------------------------------------------------------------------
# Presets and the Hub (monkeypatched: never the network)
# ---------------------------------------------------------------------------------------------------------------
def _fake_hub(monkeypatch, splits: dict[str, datasets.Dataset]):
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return datasets.DatasetDict(splits)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_presets_cover_the_paper():
    assert set(DATASET_PRESETS) == {
        "imagenet-1k", "cifar10", "cifar100", "sun397", "resisc45", "dmlab", "mnist", "svhn", "digits", "fashion_mnist"
    }
    assert DATASET_PRESETS["cifar100"].label_column == "fine_label"
    assert DATASET_PRESETS["svhn"].config_name == "cropped_digits"
    assert all(p.transfer_image_size == 224 for p in DATASET_PRESETS.values())
    assert data_module.find_preset("UOFT-CS/cifar10") is DATASET_PRESETS["cifar10"]
    assert data_module.find_preset("someone/else") is None


def test_docs_say_which_sun397_split_the_preset_is_and_when_loading_scripts_went():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    assert "`tanganke/sun397` (50 images per class)" in text and "`dpdl-benchmark/sun397` has a larger" in text
    assert "50-images-per-class" in DATASET_PRESETS["sun397"].description
    assert "dropped loading scripts in 4.0" in text and "5.x has no loading scripts" not in text


def test_cifar100_preset_carves_validation_and_keeps_test(monkeypatch):
    def cifar100_like(num, seed):
        ds = _image_dataset(num, num_classes=4, image_column="img", label_column="fine_label", seed=seed)
        return ds.add_column("coarse_label", [0] * num)

    calls = _fake_hub(monkeypatch, {"train": cifar100_like(100, 0), "test": cifar100_like(20, 1)})
    dd = load_image_dataset(DataArguments(dataset_name="cifar100"))
    assert calls == [("uoft-cs/cifar100", None)]
    assert list(dd) == ["train", "validation", "test"]
    assert len(dd["validation"]) == 2 and len(dd["train"]) == 98  # preset fraction 0.02
    assert len(dd["test"]) == 20
    assert dd["train"].column_names == ["image", "label"]  # coarse_label dropped, fine_label renamed
    assert dd.report.splits == {"train": "train", "validation": "train[carved 0.02, seed 0]", "test": "test"}
    # Deterministic carve-out.
    again = load_image_dataset(DataArguments(dataset_name="uoft-cs/cifar100"))  # Hub id maps to the preset
    assert dd["validation"]["label"] == again["validation"]["label"]


def test_resisc45_and_svhn_presets_use_existing_splits_and_config(monkeypatch):
    calls = _fake_hub(monkeypatch, {"train": _image_dataset(9), "validation": _image_dataset(6, seed=1),
                                    "test": _image_dataset(3, seed=2)})
    dd = load_image_dataset(DataArguments(dataset_name="resisc45"))
    assert [len(dd[s]) for s in dd] == [9, 6, 3]
    assert calls[-1] == ("timm/resisc45", None)
    load_image_dataset(DataArguments(dataset_name="svhn", eval_split="validation"))
    assert calls[-1] == ("ufldl-stanford/svhn", "cropped_digits")


def test_hub_failure_gives_a_clear_offline_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'uoft-cs/cifar10' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetUnavailableError, match="HF_HUB_OFFLINE") as err:
        load_image_dataset(DataArguments(dataset_name="cifar10"))
    message = str(err.value)
    assert "local path" in message and "digits" in message and "uoft-cs/cifar10" in message
    assert isinstance(err.value, OSError)


# ---------------------------------------------------------------------------------------------------------------
# load_eval_split: one split, no train split needed, nothing else downloaded
# ---------------------------------------------------------------------------------------------------------------
def test_eval_split_of_a_test_only_local_dataset(tmp_path):
    test = _image_dataset(7, image_column="img", label_column="fine_label", class_label=False)
    datasets.DatasetDict({"test": test}).save_to_disk(str(tmp_path / "test_only"))
    with pytest.raises(ValueError, match="train_split"):  # the training loader cannot use it
        load_image_dataset(DataArguments(dataset_name=str(tmp_path / "test_only")))
    ds = load_eval_split(str(tmp_path / "test_only"))
    assert isinstance(ds, datasets.Dataset) and len(ds) == 7
    assert ds.column_names == ["image", "label"]
    assert isinstance(ds.features["image"], datasets.Image) and isinstance(ds[0]["image"], Image.Image)
    assert ds.features["label"].names == ["0", "1", "2"]  # plain ints -> "0".."N-1"
    assert ds.report.splits == {"test": "test"} and ds.report.label_column == "fine_label"
    assert len(load_eval_split(str(tmp_path / "test_only"), "test", max_samples=3)) == 3
    with pytest.raises(ValueError, match="available splits: test"):
        load_eval_split(str(tmp_path / "test_only"), "validation")


def test_eval_split_keeps_class_names_and_matches_load_image_dataset_subset(tmp_path):
    dd = datasets.DatasetDict({"train": _image_dataset(12), "validation": _image_dataset(9, seed=1),
                               "test": _image_dataset(8, seed=2)})
    dd.save_to_disk(str(tmp_path / "three"))
    ds = load_eval_split(str(tmp_path / "three"))  # default: test
    assert len(ds) == 8 and ds.features["label"].names == ["c0", "c1", "c2"]
    val = load_eval_split(str(tmp_path / "three"), "validation", max_samples=4, split_seed=3)
    full = load_image_dataset(DataArguments(dataset_name=str(tmp_path / "three"), max_eval_samples=4, split_seed=3))
    assert val["label"] == full["validation"]["label"]  # same seeded subset
    assert np.array_equal(np.asarray(val[0]["image"]), np.asarray(full["validation"][0]["image"]))


def test_eval_split_digits_default_is_load_image_datasets_validation():
    ds = load_eval_split("digits")
    reference = load_image_dataset(DataArguments())["validation"]
    assert len(ds) == len(reference) == 360
    assert ds["label"] == reference["label"]
    assert ds.features["label"] == reference.features["label"]
    for index in (0, 17, 359):
        assert np.array_equal(np.asarray(ds[index]["image"]), np.asarray(reference[index]["image"]))
    assert ds.report.source == "preset:digits" and ds.report.splits == {"validation": "validation"}
    other_seed = load_eval_split("digits", split_seed=1)
    assert other_seed["label"] != ds["label"]  # the split seed reaches the digits split


def test_eval_split_removes_and_counts_corrupt_images(messy_folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_advsoup.data"):
        ds = load_eval_split(str(messy_folder), cache_dir=str(tmp_path / "cache"))
    # An image folder without split folders is one split ("train" for datasets): evaluated whole.
    assert len(ds) == 4 and ds.report.num_corrupt_images == {"train": 1}
    assert any("corrupt.png" in path for path in ds.report.corrupt_examples) and "corrupt" in caplog.text
    assert ds.features["label"].names == ["cat", "dog"]
    lazy = load_eval_split(str(messy_folder), cache_dir=str(tmp_path / "cache"), verify_images=False)
    assert len(lazy) == 5 and lazy.report.num_corrupt_images == {"train": 0}  # skipped later, by the transform
    lazy.set_transform(build_transforms(SIZE_MEAN_STD, train=False))
    assert collate_fn(list(lazy))["pixel_values"].shape == (4, 3, 16, 16)


def _fake_hub_split(monkeypatch, files: dict[str, list[str]], data: datasets.Dataset):
    """Patch datasets' builder metadata and load_dataset; records every load_dataset call's arguments."""
    from types import SimpleNamespace

    calls = []

    def fake_builder(path, name=None, **kwargs):
        return SimpleNamespace(config=SimpleNamespace(data_files=files))

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append({"path": path, "name": name, **kwargs})
        assert "split" in kwargs, "a single-split load must name its split"
        return data

    monkeypatch.setattr(datasets, "load_dataset_builder", fake_builder)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_eval_split_requests_only_that_split_from_the_hub(monkeypatch):
    files = {"train": [f"hf://datasets/ILSVRC/imagenet-1k/data/train-{i}.parquet" for i in range(3)],
             "validation": ["hf://datasets/ILSVRC/imagenet-1k/data/validation-0.parquet"],
             "test": ["hf://datasets/ILSVRC/imagenet-1k/data/test-0.parquet"]}
    calls = _fake_hub_split(monkeypatch, files, _image_dataset(6))
    ds = load_eval_split("imagenet-1k", max_samples=5)  # ImageNet has no labelled test: default is validation
    assert calls == [{"path": "ILSVRC/imagenet-1k", "name": None, "split": "validation",
                      "data_files": {"validation": files["validation"]}, "cache_dir": None}]
    assert len(ds) == 5 and ds.report.splits == {"validation": "validation"}
    load_eval_split("someone/imagenet-r", "test", dataset_config_name="v2")
    assert calls[-1]["path"] == "someone/imagenet-r" and calls[-1]["name"] == "v2"
    assert calls[-1]["split"] == "test" and calls[-1]["data_files"] == {"test": files["test"]}
    load_eval_split("someone/imagenet-r")  # a plain Hub id defaults to test
    assert calls[-1]["split"] == "test"
    with pytest.raises(ValueError, match="available splits: train, validation, test"):
        load_eval_split("someone/imagenet-r", "val")
    assert len(calls) == 3  # the unknown split failed before any download


def test_eval_split_of_a_preset_without_validation_carves_like_load_image_dataset(monkeypatch):
    train, test = _image_dataset(100, num_classes=4, image_column="img"), _image_dataset(20, image_column="img")
    files = {"train": ["train.parquet"], "test": ["test.parquet"]}
    calls = _fake_hub_split(monkeypatch, files, train)
    val = load_eval_split("cifar10", "validation")
    assert calls[-1]["split"] == "train" and calls[-1]["data_files"] == {"train": ["train.parquet"]}
    _fake_hub(monkeypatch, {"train": train, "test": test})
    reference = load_image_dataset(DataArguments(dataset_name="cifar10"))["validation"]
    assert len(val) == 2 and val["label"] == reference["label"]
    assert val.report.splits == {"validation": "train[carved 0.02, seed 0]"}


def test_eval_split_offline_hub_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'ILSVRC/imagenet-1k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset_builder", offline)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetUnavailableError, match="HF_HUB_OFFLINE") as err:
        load_eval_split("imagenet-1k")
    assert "ILSVRC/imagenet-1k" in str(err.value) and "local path" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# Transforms and collation
# ---------------------------------------------------------------------------------------------------------------
def test_eval_transform_resizes_without_keeping_aspect_and_normalises():
    transform = build_transforms(SIZE_MEAN_STD, train=False)
    white = Image.new("RGB", (40, 10), (255, 255, 255))
    out = transform({"image": [white], "label": [3]})
    assert out["labels"] == [3]
    pixels = out["pixel_values"][0]
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
    assert torch.allclose(pixels, torch.ones_like(pixels))  # (1 - 0.5) / 0.5


def test_transform_uses_image_processor_geometry():
    from transformers import ViTImageProcessorPil

    processor = ViTImageProcessorPil(size={"height": 12, "width": 20}, image_mean=[0.2, 0.3, 0.4],
                                     image_std=[0.1, 0.2, 0.3])
    transform = build_transforms(processor, train=False)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 25, 3), dtype=np.uint8))
    ours = transform({"image": [image], "label": [0]})["pixel_values"][0]
    assert ours.shape == (3, 12, 20)
    reference = processor(image, return_tensors="pt")["pixel_values"][0]
    assert (ours - reference).abs().max() < 0.05  # same resize/normalisation up to resampling rounding


def test_train_transform_random_but_seeded():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    transform = build_transforms(SIZE_MEAN_STD, train=True)
    torch.manual_seed(0)
    a = torch.stack(transform({"image": [image] * 4, "label": [0] * 4})["pixel_values"])
    torch.manual_seed(0)
    b = torch.stack(transform({"image": [image] * 4, "label": [0] * 4})["pixel_values"])
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])  # different crops within a batch
    eval_view = build_transforms(SIZE_MEAN_STD, train=False)({"image": [image], "label": [0]})["pixel_values"][0]
    assert not torch.allclose(a[0], eval_view)


def test_flip_only_transform_is_resize_or_its_mirror():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (10, 14, 3), dtype=np.uint8))
    reference = build_transforms(SIZE_MEAN_STD, train=False)({"image": [image], "label": [0]})["pixel_values"][0]
    transform = build_transforms(SIZE_MEAN_STD, train=True, random_resized_crop=False, hflip=True)
    torch.manual_seed(0)
    outputs = transform({"image": [image] * 16, "label": [0] * 16})["pixel_values"]
    flipped = [torch.equal(out, reference.flip(-1)) for out in outputs]
    same = [torch.equal(out, reference) for out in outputs]
    assert all(f or s for f, s in zip(flipped, same))
    assert any(flipped) and any(same)


def test_collate_through_dataloader_with_mixed_sizes():
    ds = datasets.Dataset.from_dict(
        {"image": [Image.new("L", (5 + i, 9), i * 20) for i in range(6)], "label": [0, 1, 2, 0, 1, 2]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)}),
    )
    ds.set_transform(build_transforms(SIZE_MEAN_STD, train=True))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_fn)
    batches = list(loader)
    assert batches[0]["pixel_values"].shape == (4, 3, 16, 16)
    assert batches[0]["labels"].dtype == torch.long and batches[0]["labels"].tolist() == [0, 1, 2, 0]
    assert batches[1]["pixel_values"].shape == (2, 3, 16, 16)


def test_data_arguments_parse_next_to_training_arguments():
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((DataArguments, TrainingArguments))
    data_args, _ = parser.parse_args_into_dataclasses(
        ["--dataset_name", "cifar10", "--validation_fraction", "0.1", "--output_dir", "/tmp/unused",
         "--horizontal_flip", "false"]
    )
    assert data_args.dataset_name == "cifar10" and data_args.validation_fraction == 0.1
    assert data_args.horizontal_flip is False
    with pytest.raises(ValueError, match="validation_fraction"):
        DataArguments(validation_fraction=1.0)


def test_decode_accepts_bytes_dicts():
    buffer = io.BytesIO()
    Image.new("RGB", (3, 3), (1, 2, 3)).save(buffer, format="PNG")
    image = data_module.images._decode({"bytes": buffer.getvalue(), "path": None})
    assert image.getpixel((0, 0)) == (1, 2, 3)


def test_trainer_consumes_transformed_dataset(tmp_path):
    """The contract with the Trainer: set_transform data + collate_fn + remove_unused_columns=False."""
    from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

    args = DataArguments(max_train_samples=16, max_eval_samples=8)
    dd = set_image_transforms(load_image_dataset(args), SIZE_MEAN_STD, args)
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32, num_labels=10))
    before = model.classifier.weight.detach().clone()
    training_args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=2,
                                      remove_unused_columns=False, report_to=[], use_cpu=True, save_strategy="no",
                                      learning_rate=1e-2)
    trainer = Trainer(model=model, args=training_args, train_dataset=dd["train"], eval_dataset=dd["validation"],
                      data_collator=collate_fn)
    trainer.train()
    assert not torch.equal(model.classifier.weight, before)
    assert np.isfinite(trainer.evaluate()["eval_loss"])


def test_unlabelled_examples_collate_without_labels():
    transform = build_transforms(SIZE_MEAN_STD, train=False)
    out = transform({"image": [Image.new("RGB", (5, 5))] * 2})
    assert "labels" not in out
    batch = collate_fn([{"pixel_values": p} for p in out["pixel_values"]])
    assert set(batch) == {"pixel_values"} and batch["pixel_values"].shape == (2, 3, 16, 16)


# ---------------------------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST, KMNIST layout) and the MNIST-like presets
# ---------------------------------------------------------------------------------------------------------------
def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path, array: np.ndarray, magic: int, gz: bool) -> None:
    import gzip

    content = _idx_bytes(array, magic)
    path.write_bytes(gzip.compress(content) if gz else content)


def _idx_folder(folder, num_train=20, num_test=10, rows=5, cols=7, num_classes=3, gz_train=True, gz_test=False,
                seed=0):
    """Release-named IDX files: train gzipped, t10k raw (by default); non-square images so rows/cols can't swap."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, count, gz in (("train", num_train, gz_train), ("t10k", num_test, gz_test)):
        images = rng.integers(0, 256, (count, rows, cols), dtype=np.uint8)
        labels = (np.arange(count) % num_classes).astype(np.uint8)
        suffix = ".gz" if gz else ""
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, 2051, gz)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 2049, gz)
        arrays[prefix] = (images, labels)
    return arrays


def test_idx_folder_gzipped_and_raw_loads_pixel_exact(tmp_path):
    arrays = _idx_folder(tmp_path / "idx")
    dd = load_image_dataset(DataArguments(dataset_name=str(tmp_path / "idx"), validation_fraction=0.25))
    assert [len(dd[s]) for s in dd] == [15, 5, 10]  # train (20 - 5 carved), validation, test (t10k)
    assert dd.report.source == f"local:idx:{tmp_path / 'idx'}" and dd.report.total_corrupt_images == 0
    assert dd.report.splits == {"train": "train", "test": "test", "validation": "train[carved 0.25, seed 0]"}
    assert dd["train"].features["label"].names == ["0", "1", "2"]
    test = dd["test"]
    for index in (0, 9):
        image = test[index]["image"]
        assert image.mode == "L" and image.size == (7, 5)  # PIL: (width, height) = (cols, rows)
        assert np.array_equal(np.asarray(image), arrays["t10k"][0][index])
    assert test["label"] == arrays["t10k"][1].tolist()
    # The transforms take them like any grayscale image.
    set_image_transforms(dd, SIZE_MEAN_STD, DataArguments())
    assert dd["train"][0]["pixel_values"].shape == (3, 16, 16)


def test_idx_torchvision_raw_layout_and_single_split(tmp_path):
    arrays = _idx_folder(tmp_path / "FashionMNIST" / "raw", gz_train=False, gz_test=True)
    ds = load_eval_split(str(tmp_path / "FashionMNIST"))  # the folder holding raw/
    assert len(ds) == 10 and ds.report.splits == {"test": "test"}
    assert np.array_equal(np.asarray(ds[3]["image"]), arrays["t10k"][0][3])
    # Only t10k files: evaluation works, training says which split is missing.
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (only_test / name).write_bytes((tmp_path / "FashionMNIST" / "raw" / name).read_bytes())
    assert len(load_eval_split(str(only_test))) == 10
    with pytest.raises(ValueError, match="Split 'train'.*available splits: test"):
        load_image_dataset(DataArguments(dataset_name=str(only_test)))


def test_idx_errors_name_the_file_and_the_problem(tmp_path):
    import gzip

    from hf_advsoup.data.idx import IdxFormatError, read_idx

    def broken(name, mutate):
        folder = tmp_path / name
        _idx_folder(folder, gz_train=False, gz_test=False)
        mutate(folder)
        return str(folder)

    def truncate(folder):  # a cut download
        path = folder / "train-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-10])

    with pytest.raises(IdxFormatError, match=r"train-images-idx3-ubyte: truncated: 690 bytes .* expected 700 .*20 x 5 x 7"):
        load_image_dataset(DataArguments(dataset_name=broken("truncated", truncate)))

    def truncate_gz(folder):
        path = folder / "t10k-images-idx3-ubyte"
        (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(path.read_bytes())[:-30])
        path.unlink()

    with pytest.raises(IdxFormatError, match=r"t10k-images-idx3-ubyte.gz: the gzip stream is truncated"):
        load_eval_split(broken("truncated_gz", truncate_gz), "test")

    def swap(folder):  # labels where the images belong
        images, labels = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
        content = images.read_bytes()
        images.write_bytes(labels.read_bytes())
        labels.write_bytes(content)

    with pytest.raises(IdxFormatError, match=r"train-images-idx3-ubyte: magic number 2049 .* expected 2051"):
        load_image_dataset(DataArguments(dataset_name=broken("swapped", swap)))

    def mismatch(folder):
        _write_idx(folder / "train-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8), 2049, gz=False)

    with pytest.raises(IdxFormatError, match=r"holds 20 images but train-labels-idx1-ubyte holds 19 labels"):
        load_image_dataset(DataArguments(dataset_name=broken("mismatch", mismatch)))

    def lose_labels(folder):
        (folder / "t10k-labels-idx1-ubyte").unlink()

    with pytest.raises(FileNotFoundError, match=r"has t10k-images-idx3-ubyte but not t10k-labels-idx1-ubyte"):
        load_image_dataset(DataArguments(dataset_name=broken("missing", lose_labels)))

    trailing = tmp_path / "trailing"
    trailing.write_bytes(_idx_bytes(np.zeros(3, dtype=np.uint8), 2049) + b"\0")
    with pytest.raises(IdxFormatError, match="1 unexpected bytes"):
        read_idx(trailing, 2049)
    floats = tmp_path / "floats"
    floats.write_bytes(b"\0\0\x0d\x02" + (2).to_bytes(4, "big") * 2 + np.arange(4, dtype=">f4").tobytes())
    assert read_idx(floats).tolist() == [[0.0, 1.0], [2.0, 3.0]]  # read_idx itself takes any IDX type


def _with_preset(monkeypatch, name, **changes):
    import dataclasses

    monkeypatch.setitem(DATASET_PRESETS, name, dataclasses.replace(DATASET_PRESETS[name], **changes))


def test_fashion_mnist_preset_resolution_order(tmp_path, monkeypatch):
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert list(DATASET_PRESETS["fashion_mnist"].class_names) == names
    assert DATASET_PRESETS["fashion_mnist"].idx_dirs[-1] == "/usr/share/datasets/fashion-mnist"  # Debian package
    local = tmp_path / "local_copy"
    _idx_folder(local, num_classes=10, num_train=40, num_test=20)
    _with_preset(monkeypatch, "fashion_mnist", idx_dirs=(str(tmp_path / "absent"), str(local)))
    monkeypatch.delenv("HF_ADVSOUP_FASHION_MNIST_DIR", raising=False)

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub must not be asked when local files exist")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.setattr(datasets, "load_dataset_builder", no_hub)
    # 1. a folder in idx_dirs: the test split is t10k, named with the preset's classes.
    test = load_eval_split("fashion_mnist")
    assert len(test) == 20 and test.features["label"].names == names and test.report.location == str(local)
    dd = load_image_dataset(DataArguments(dataset_name="fashion_mnist"))
    assert [len(dd[s]) for s in dd] == [36, 4, 20]  # the preset's 10% of train carved out as validation
    # 2. the environment variable wins over idx_dirs, and must hold the files.
    explicit = tmp_path / "explicit"
    _idx_folder(explicit, num_classes=10, num_train=30, num_test=11)
    monkeypatch.setenv("HF_ADVSOUP_FASHION_MNIST_DIR", str(explicit))
    assert len(load_eval_split("fashion_mnist")) == 11
    monkeypatch.setenv("HF_ADVSOUP_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match=r"HF_ADVSOUP_FASHION_MNIST_DIR=.*absent holds no IDX files.*apt-get"):
        load_eval_split("fashion_mnist")


def test_fashion_mnist_preset_falls_back_to_the_hub_and_says_how_to_install(tmp_path, monkeypatch):
    _with_preset(monkeypatch, "fashion_mnist", idx_dirs=(str(tmp_path / "absent"),))
    monkeypatch.delenv("HF_ADVSOUP_FASHION_MNIST_DIR", raising=False)
    hub_names = ["T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]

    def hub_split(n, seed):
        ds = _image_dataset(n, num_classes=10, seed=seed)
        return ds.cast_column("label", datasets.ClassLabel(names=hub_names))

    calls = _fake_hub(monkeypatch, {"train": hub_split(40, 0), "test": hub_split(10, 1)})
    dd = load_image_dataset(DataArguments(dataset_name="fashion_mnist"))
    assert calls == [("zalando-datasets/fashion_mnist", None)]
    assert dd["test"].features["label"].names[0] == "T-shirt/top"  # the Hub's names replaced by the preset's

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'zalando-datasets/fashion_mnist' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetUnavailableError) as err:
        load_image_dataset(DataArguments(dataset_name="fashion_mnist"))
    message = str(err.value)
    assert "No local IDX files of fashion_mnist in: $HF_ADVSOUP_FASHION_MNIST_DIR (not set)" in message
    assert str(tmp_path / "absent") in message
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in message and "OfflineModeIsEnabled" in message


def test_validation_carve_out_is_datasets_stratified_split_only_faster():
    ds = _image_dataset(60, num_classes=4)
    from hf_advsoup.data.schema import _carve_validation

    for fraction, seed in ((0.2, 0), (0.1, 3), (0.05, 1)):  # 0.05 of 60 < 4 classes: not stratified
        stratify = "label" if round(fraction * 60) >= 4 else None
        reference = ds.train_test_split(test_size=fraction, seed=seed, stratify_by_column=stratify)
        train, validation = _carve_validation(ds, fraction, seed)
        assert train["label"] == reference["train"]["label"]
        assert validation["label"] == reference["test"]["label"]
        assert np.array_equal(np.asarray(validation[0]["image"]), np.asarray(reference["test"][0]["image"]))


def test_sixty_thousand_idx_images_load_in_seconds(tmp_path):
    import time

    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8), 2051, False)
    _write_idx(folder / "train-labels-idx1-ubyte", (np.arange(60000) % 10).astype(np.uint8), 2049, False)
    start = time.perf_counter()
    dd = load_image_dataset(DataArguments(dataset_name=str(folder)))  # verify_images is on: skipped, built here
    elapsed = time.perf_counter() - start
    assert [len(dd[s]) for s in dd] == [54000, 6000]
    assert np.bincount(np.asarray(dd["validation"].with_format("numpy")[:]["label"])).tolist() == [600] * 10
    # ~1 s on one CPU thread; row-by-row label reads or per-image PNG encoding took 30 s and more.
    assert elapsed < 15, f"loading 60,000 IDX images took {elapsed:.1f} s"


# ---------------------------------------------------------------------------------------------------------------
# Errors for a one-class folder, null labels, missing local paths
# ---------------------------------------------------------------------------------------------------------------
def test_one_class_folder_is_refused_for_training_and_evaluated_as_that_class(tmp_path):
    root = tmp_path / "one"
    (root / "cat").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (6, 6), (i, 0, 0)).save(root / "cat" / f"{i}.png")
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError, match=r"has 1 class \('cat'\): training a classifier needs at least 2"):
        load_image_dataset(DataArguments(dataset_name=str(root), dataset_cache_dir=cache))
    ds = load_eval_split(str(root), cache_dir=cache)  # e.g. one class of a model's: matched by name later
    assert len(ds) == 3 and ds.features["label"].names == ["cat"]


def test_null_labels_are_a_clear_error(tmp_path):
    ds = _image_dataset(6).cast_column("label", datasets.Value("int64"))
    ds = ds.map(lambda row, i: {"target": None if i in (1, 4) else ["ant", "bee"][row["label"] % 2]},
                with_indices=True, remove_columns=["label"])
    path = str(tmp_path / "nulls.parquet")
    ds.to_parquet(path)
    with pytest.raises(ValueError, match=r"label column 'target' has 2 empty \(null\) value\(s\) in split 'train' "
                                         r"\(of 6 rows; e.g. rows 1, 4\)"):
        load_image_dataset(DataArguments(dataset_name=path, dataset_cache_dir=str(tmp_path / "cache")))


def test_missing_local_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch, caplog):
    def no_hub(*args, **kwargs):
        raise AssertionError("a path must not be looked up on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.setattr(datasets, "load_dataset_builder", no_hub)
    monkeypatch.chdir(tmp_path)
    for name in (str(tmp_path / "nope" / "data"), "./nope", "~/surely/not/here", "data/train/x.parquet"):
        with pytest.raises(FileNotFoundError, match="No such file or folder"):
            load_image_dataset(DataArguments(dataset_name=name))
        with pytest.raises(FileNotFoundError, match="No such file or folder"):
            load_eval_split(name)

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetUnavailableError, match="There is no local file or folder 'someone/data'"):
        load_image_dataset(DataArguments(dataset_name="someone/data"))  # a Hub id shape: tried, and said so


# ---------------------------------------------------------------------------------------------------------------
# The saved image processor prepares images like the transforms (colour, evaluation crop)
# ---------------------------------------------------------------------------------------------------------------
def test_saved_processor_composites_transparency_like_training(tmp_path):
    import sys
    from pathlib import Path

    from transformers import ViTImageProcessorPil, pipeline

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_soup import make_soup_model

    bar = np.zeros((64, 64, 4), dtype=np.uint8)  # a white bar on a transparent (stored: black) background
    bar[24:40, 8:56] = 255
    rgba = Image.fromarray(bar, mode="RGBA")
    # What cotrain does: a fresh processor, aligned by set_image_transforms, saved by the Trainer.
    processor = ViTImageProcessorPil(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    dd = datasets.DatasetDict({"train": _image_dataset(4), "validation": _image_dataset(2)})
    set_image_transforms(dd, processor, DataArguments())
    model = make_soup_model(0, image_size=64, patch_size=8)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    classifier = pipeline("image-classification", model=str(tmp_path / "model"))

    inference = classifier.image_processor(rgba, return_tensors="pt")["pixel_values"][0]
    evaluation = build_transforms(processor, train=False)({"image": [rgba]})["pixel_values"][0]
    training = build_transforms(processor, train=True, random_resized_crop=False, hflip=False)({"image": [rgba]})
    assert torch.equal(inference, evaluation) and torch.equal(inference, training["pixel_values"][0])
    assert torch.equal(inference, torch.ones_like(inference))  # white on white: nothing of the black left
    # transformers' pipeline flattens PIL images with convert("RGB") before its processor (alpha lost); an array
    # reaches the processor whole, which then composites like training.
    with torch.no_grad():
        expected = model(evaluation[None]).logits.softmax(-1)[0]
    top = classifier(bar, top_k=1)[0]
    assert top["score"] == pytest.approx(expected.max().item(), abs=1e-5)
    # hf_advsoup's pipeline keeps the transparency of PIL images and image files until it composites it on white.
    from hf_advsoup.pipelines import soup_pipeline

    rgba.save(tmp_path / "bar.png")
    ours = soup_pipeline(str(tmp_path / "model"), beta=1.0)
    for given in (rgba, str(tmp_path / "bar.png")):
        assert ours(given, top_k=1)[0]["score"] == pytest.approx(expected.max().item(), abs=1e-5)
    with torch.no_grad():  # the stock pipeline's flattening (alpha dropped: a white bar on black) predicts otherwise
        flattened = model(build_transforms(processor, train=False)({"image": [rgba.convert("RGB")]})["pixel_values"][0][None]).logits
    assert classifier(rgba, top_k=1)[0]["score"] == pytest.approx(flattened.softmax(-1).max().item(), abs=1e-5)
    assert not torch.allclose(flattened.softmax(-1)[0], expected, atol=1e-3)


def test_eval_crop_rule_and_processor_alignment():
    from transformers import ViTImageProcessorPil

    from hf_advsoup.data.processor import default_eval_crop_pct

    assert default_eval_crop_pct(224) == 0.875 and default_eval_crop_pct(32) == 1.0
    assert default_eval_crop_pct(224, random_resized_crop=False) == 1.0  # transfer: resize, no crop
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    photo[:, :20] = photo[:, -20:] = 0  # black side bands: a centre crop removes them, a plain resize keeps them
    photo[:, 20:-20] = np.maximum(photo[:, 20:-20], 60)
    image = Image.fromarray(photo)

    def aligned(size, **data_flags):
        processor = ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                         image_std=[0.5] * 3)
        dd = datasets.DatasetDict({"train": _image_dataset(2), "validation": _image_dataset(2)})
        set_image_transforms(dd, processor, DataArguments(**data_flags))
        return processor, dd["validation"].with_transform(build_transforms(processor, train=False))

    # ImageNet size: resize the shorter side to 256, centre-crop 224 (MAE/DeiT), in the processor too.
    processor, _ = aligned(224)
    assert processor.do_center_crop and processor.size == {"shortest_edge": 256}
    assert processor.crop_size == {"height": 224, "width": 224} and processor.do_convert_rgb
    ours = build_transforms(processor, train=False)({"image": [image]})["pixel_values"][0]
    theirs = processor(image, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == (3, 224, 224) and torch.equal(ours, theirs)
    assert ours[:, :, :2].min() > -0.6  # the black bands were cropped away
    # Small images, or --eval_crop_pct 1: a plain resize, recorded as do_center_crop=False.
    for size, flags in ((32, {}), (224, {"eval_crop_pct": 1.0})):
        processor, _ = aligned(size, **flags)
        assert processor.do_center_crop is False and processor.size == {"height": size, "width": size}
        plain = build_transforms(processor, train=False)({"image": [image]})["pixel_values"][0]
        assert torch.equal(plain, processor(image, return_tensors="pt")["pixel_values"][0])
        assert plain[:, :, 0].max() < -0.99  # the band is still there: black is (0 - 0.5) / 0.5 = -1
    # A processor that records nothing (older checkpoints) follows the rule; an explicit crop_pct wins.
    undecided = ViTImageProcessorPil(size={"height": 224, "width": 224})
    assert build_transforms(undecided, train=False).eval_resize == 256
    assert build_transforms((16, (0.5,) * 3, (0.5,) * 3), train=False).eval_resize is None
    assert build_transforms((16, (0.5,) * 3, (0.5,) * 3), train=False, crop_pct=0.5).eval_resize == 32
    with pytest.raises(ValueError, match="eval_crop_pct"):
        DataArguments(eval_crop_pct=1.5)
