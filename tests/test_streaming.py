"""Streaming training data (``--streaming``): a local parquet data set written by the test (4 training files, one
validation file) read as ``datasets.IterableDataset``, shuffled with a buffer, split across processes with
``split_dataset_by_node``, transformed like the map-style path, endless, and resumed from the position a checkpoint
recorded (exactly, without a shuffle buffer; with one, no example of the pass is read twice).

The end-to-end runs train through ``scripts/cotrain.py`` with 1 process (in this process) and 2 processes
(``accelerate launch``, marked ``distributed``); each checks that the stream, not a loaded copy, was trained on.
"""

import hashlib
import json
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hf_advsoup.data import DataArguments, StreamingTrainSet, load_streaming_dataset, set_image_transforms
from launching import ROOT, TINY, accelerate_launch, free_port, logged_losses, reports

sys.path.insert(0, str(ROOT / "scripts"))
import cotrain  # noqa: E402

TRAIN, VALIDATION, SHARDS, CLASSES = 64, 16, 4, 4


@pytest.fixture(scope="module")
def parquet_folder(tmp_path_factory):
    """``train-0000{0..3}-of-00004.parquet`` (64 images 8x8, 4 classes) and ``validation-00000-of-00001.parquet``
    (16): every image distinct, its class visible in its colour."""
    folder = tmp_path_factory.mktemp("parquet")
    features = datasets.Features({"img": datasets.Image(),
                                  "fine_label": datasets.ClassLabel(names=["a", "b", "c", "d"])})
    rng = np.random.default_rng(0)
    for split, count, files in (("train", TRAIN, SHARDS), ("validation", VALIDATION, 1)):
        rows = []
        for index in range(count):
            label = index % CLASSES
            pixels = rng.integers(0, 96, (8, 8, 3), dtype=np.uint8)
            pixels[..., label % 3] += np.uint8(120 + 40 * (label // 3))
            rows.append({"img": Image.fromarray(pixels), "fine_label": label})
        ds = datasets.Dataset.from_list(rows, features=features)
        for shard in range(files):
            ds.shard(files, shard, contiguous=True).to_parquet(
                str(folder / f"{split}-{shard:05d}-of-{files:05d}.parquet"))
    return folder


def stream(folder, buffer: int, seed: int = 0) -> StreamingTrainSet:
    data_args = DataArguments(dataset_name=str(folder), streaming=True, shuffle_buffer_size=buffer,
                              random_resized_crop=True, horizontal_flip=True)
    loaded = load_streaming_dataset(data_args, seed=seed)
    set_image_transforms(loaded, (8, (0.5,) * 3, (0.5,) * 3), data_args)
    return loaded


def key(pixel_values: torch.Tensor) -> str:
    return hashlib.sha1(pixel_values.numpy().tobytes()).hexdigest()


def raw_pass(part: StreamingTrainSet) -> list[bytes]:
    """The image bytes of one pass over ``part``'s stream (before transforms)."""
    return [example["image"]["bytes"] for example in part._stream]


# ---------------------------------------------------------------------------------------------------- the data layer
def test_streaming_layout_columns_classes_and_evaluation_split(parquet_folder):
    loaded = stream(parquet_folder, buffer=8)
    train = loaded["train"]
    assert isinstance(train, StreamingTrainSet) and train.source.n_shards == SHARDS
    assert train.features["label"].names == ["a", "b", "c", "d"]  # the source's img/fine_label, detected
    assert isinstance(loaded["validation"], datasets.Dataset) and len(loaded["validation"]) == VALIDATION
    assert loaded["validation"].features["label"].names == ["a", "b", "c", "d"]
    assert loaded.report.splits == {"train": "train[streaming]", "validation": "validation"}
    example = next(iter(train))
    assert example["pixel_values"].shape == (3, 8, 8) and example["pixel_values"].dtype == torch.float32
    assert example["labels"] in range(CLASSES)
    assert example["pixel_values"].min() >= -1 and example["pixel_values"].max() <= 1  # normalised with 0.5/0.5


@pytest.mark.parametrize("kind", ["imagefolder", "save_to_disk"])
def test_image_folders_and_save_to_disk_folders_stream_too(parquet_folder, tmp_path, kind):
    source = datasets.load_dataset("parquet", data_dir=str(parquet_folder))
    folder = tmp_path / kind
    if kind == "imagefolder":
        for split, ds in source.items():
            for index, row in enumerate(ds):
                path = folder / split / ds.features["fine_label"].names[row["fine_label"]] / f"{index}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                row["img"].save(path)
    else:
        source.save_to_disk(str(folder))
    loaded = stream(folder, buffer=4)
    train = loaded["train"]
    assert train.features["label"].names == ["a", "b", "c", "d"] and len(loaded["validation"]) == VALIDATION
    assert loaded.report.source.startswith(f"local:{kind}:")
    assert len(raw_pass(train)) == TRAIN  # one pass reads every training image once
    example = next(iter(train))
    assert example["pixel_values"].shape == (3, 8, 8) and example["labels"] in range(CLASSES)


@pytest.mark.parametrize("world_size, strategy", [(2, "shards"), (3, "examples")])
def test_processes_read_disjoint_parts_that_make_up_the_data(parquet_folder, world_size, strategy):
    train = stream(parquet_folder, buffer=8)["train"]
    parts = [train.for_process(rank, world_size) for rank in range(world_size)]
    assert {part.split_strategy for part in parts} == {strategy}
    seen = [raw_pass(part) for part in parts]
    flat = [image for images in seen for image in images]
    assert len(flat) == len(set(flat)) == TRAIN  # disjoint, and nothing left out
    assert all(images for images in seen)


def test_shuffled_with_the_seed_reshuffled_every_pass(parquet_folder):
    first, again, other = (stream(parquet_folder, buffer=8, seed=seed)["train"] for seed in (0, 0, 1))
    order = raw_pass(first)
    assert order == raw_pass(again)  # the same seed: the same order (every process agrees on the shards)
    assert order != raw_pass(other)
    assert sorted(order) == sorted(raw_pass(other))
    first._stream = first._shuffled(1)  # the next pass
    assert raw_pass(first) != order and sorted(raw_pass(first)) == sorted(order)


def test_the_stream_is_endless_and_its_crops_follow_seed_pass_and_image(parquet_folder):
    train = stream(parquet_folder, buffer=0)["train"]
    examples = iter(train)
    first_pass = [next(examples) for _ in range(TRAIN)]
    second_pass = [next(examples) for _ in range(TRAIN)]  # no StopIteration: pass after pass
    assert train.pass_index == 1
    assert {key(e["pixel_values"]) for e in first_pass} != {key(e["pixel_values"]) for e in second_pass}
    again = iter(stream(parquet_folder, buffer=0)["train"])
    assert [key(next(again)["pixel_values"]) for _ in range(TRAIN)] == [key(e["pixel_values"]) for e in first_pass]


def batches(loader_iterator, count):
    return [next(loader_iterator) for _ in range(count)]


def test_resume_continues_where_it_stopped_exactly_without_a_buffer(parquet_folder):
    """A loader over the stream, stopped after 5 batches of 10 (in the first pass), its state saved; a new stream
    loading that state gives the uninterrupted run's next batches, across the end of the pass (crops included)."""
    def loader(train):
        return torch.utils.data.DataLoader(train, batch_size=10, collate_fn=cotrain.collate_fn)

    def keys(batch_list):
        return [key(x) for batch in batch_list for x in batch["pixel_values"]]

    expected = batches(iter(loader(stream(parquet_folder, 0)["train"])), 12)  # the first pass, most of the second
    interrupted = stream(parquet_folder, 0)["train"]
    before = batches(iter(loader(interrupted)), 5)
    state = json.loads(json.dumps(interrupted.state_dict()))  # plain data, as a checkpoint holds it
    resumed = stream(parquet_folder, 0)["train"]
    resumed.load_state_dict(state)
    after = batches(iter(loader(resumed)), 7)
    assert keys(before) == keys(expected[:5])
    assert keys(after) == keys(expected[5:])
    assert torch.equal(torch.cat([b["labels"] for b in after]), torch.cat([b["labels"] for b in expected[5:]]))


def test_resume_with_a_shuffle_buffer_is_approximate(parquet_folder):
    """With a buffer, datasets restores the position but not the buffer's examples: the resumed pass goes on from
    about where it stopped, a few examples near the checkpoint read twice or skipped (at most a buffer's worth)."""
    buffer = 8
    interrupted = stream(parquet_folder, buffer)["train"]
    examples = interrupted._stream
    before = [example["image"]["bytes"] for _, example in zip(range(15), examples)]
    resumed = stream(parquet_folder, buffer)["train"]
    resumed.load_state_dict(interrupted.state_dict())
    after = raw_pass(resumed)  # the rest of the pass
    everything = set(raw_pass(stream(parquet_folder, buffer)["train"]))
    twice, skipped = set(before) & set(after), everything - set(before) - set(after)
    assert len(after) > TRAIN - 15 - 2 * buffer  # it went on, not from the start
    assert len(twice) <= buffer and len(skipped) <= buffer, (len(twice), len(skipped))


def test_resume_with_loader_workers_through_torchdata(parquet_folder):
    stateful = pytest.importorskip("torchdata.stateful_dataloader")

    def loader(train):
        return stateful.StatefulDataLoader(train, batch_size=8, num_workers=2, collate_fn=cotrain.collate_fn)

    expected = batches(iter(loader(stream(parquet_folder, 0)["train"])), 10)
    first = loader(stream(parquet_folder, 0)["train"])
    before = batches(iter(first), 4)
    state = first.state_dict()
    second = loader(stream(parquet_folder, 0)["train"])
    second.load_state_dict(state)
    after = batches(iter(second), 6)
    assert [key(x) for b in before + after for x in b["pixel_values"]] == \
        [key(x) for b in expected for x in b["pixel_values"]]


def test_streaming_refuses_what_it_cannot_do(parquet_folder, tmp_path):
    with pytest.raises(ValueError, match="--max_train_samples does not apply to --streaming"):
        load_streaming_dataset(DataArguments(dataset_name=str(parquet_folder), streaming=True, max_train_samples=8))
    with pytest.raises(ValueError, match="digits is embedded"):
        load_streaming_dataset(DataArguments(dataset_name="digits", streaming=True))
    only_train = tmp_path / "only-train"
    only_train.mkdir()
    for path in parquet_folder.glob("train-*.parquet"):
        (only_train / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="needs a validation split"):
        load_streaming_dataset(DataArguments(dataset_name=str(only_train), streaming=True))
    base = ["--output_dir", str(tmp_path / "x"), "--dataset_name", str(parquet_folder), "--streaming", "true"]
    with pytest.raises(ValueError, match="--streaming needs --max_steps"):
        cotrain.main(base)
    with pytest.raises(ValueError, match="--eval_strategy epoch"):
        cotrain.main([*base, "--max_steps", "2", "--eval_strategy", "epoch"])


# ---------------------------------------------------------------------------------------------------- end to end
def without(flags: list[str], name: str) -> list[str]:
    index = flags.index(name)
    return flags[:index] + flags[index + 2:]


def streaming_run(folder, *extra: str) -> list[str]:
    # A stream has no --max_train_samples (its length is --max_steps); the rest is the tiny run of the other tests.
    return [*without(TINY, "--max_train_samples"), "--dataset_name", str(folder), "--streaming", "true",
            "--shuffle_buffer_size", "0", "--random_resized_crop", "true", "--horizontal_flip", "true",
            "--save_strategy", "steps", "--save_steps", "3", "--soup_table", "false", *extra]


def test_streaming_cotrain_one_process_resumes_exactly(parquet_folder, tmp_path):
    run = streaming_run(parquet_folder, "--max_steps", "6", "--per_device_train_batch_size", "16")
    full = tmp_path / "full"
    metrics = cotrain.main(["--output_dir", str(full), *run])
    assert metrics["eval_robust_eval_samples"] == VALIDATION
    checkpoint = full / "checkpoint-3"
    # Trained on the stream: the checkpoint holds its position (a loaded copy would have none), 48 of 64 images in.
    state = torch.load(checkpoint / "stream_state-0-of-1.pt", weights_only=True)
    assert state["dataset"]["rank"] == 0 and state["dataset"]["world_size"] == 1
    assert state["dataset"]["pass"] == 0
    assert json.loads((full / "run_args.json").read_text())["data_args"]["streaming"] is True

    resumed = tmp_path / "resumed"
    cotrain.main(["--output_dir", str(resumed), *run, "--resume_from_checkpoint", str(checkpoint)])
    losses, expected = logged_losses(resumed), logged_losses(full)
    assert sorted(losses) == list(range(1, 7)) and losses == expected  # steps 4-6 (a second pass) alike
    weights, reference = load_file(str(resumed / "model.safetensors")), load_file(str(full / "model.safetensors"))
    for name in reference:
        torch.testing.assert_close(weights[name], reference[name], rtol=0, atol=0, msg=name)


def test_streaming_resume_without_a_recorded_position_replays_exactly(parquet_folder, tmp_path):
    """A checkpoint without the stream's position (e.g. written with loader workers and no torchdata): the resumed
    run reads the stream again from its start and skips the trained batches, which is exact even with a shuffle
    buffer (the same seeds give the same stream)."""
    run = streaming_run(parquet_folder, "--max_steps", "6", "--per_device_train_batch_size", "16",
                        "--shuffle_buffer_size", "8")
    full = tmp_path / "full"
    cotrain.main(["--output_dir", str(full), *run])
    checkpoint = full / "checkpoint-3"
    (checkpoint / "stream_state-0-of-1.pt").unlink()
    resumed = tmp_path / "resumed"
    cotrain.main(["--output_dir", str(resumed), *run, "--resume_from_checkpoint", str(checkpoint)])
    assert logged_losses(resumed) == logged_losses(full)
    weights, reference = load_file(str(resumed / "model.safetensors")), load_file(str(full / "model.safetensors"))
    for name in reference:
        torch.testing.assert_close(weights[name], reference[name], rtol=0, atol=0, msg=name)


@pytest.mark.distributed
def test_streaming_two_processes_split_the_stream_and_resume(parquet_folder, tmp_path):
    """2 CPU processes (DDP, gloo): each reads its half of the shards; a checkpoint at step 2 records both positions
    and a new launch resumes to the uninterrupted run's losses and weights."""
    run = streaming_run(parquet_folder, "--max_steps", "4", "--per_device_train_batch_size", "8",
                        "--save_steps", "2")
    launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]
    full, report = tmp_path / "full", tmp_path / "report"
    accelerate_launch([*launch, "--main_process_port", str(free_port())], ["--output_dir", str(full), *run], report)
    ranks = reports(report)
    assert [r["stream"]["rank"] for r in ranks] == [0, 1]
    assert all(r["num_processes"] == 2 and r["stream"]["world_size"] == 2 for r in ranks)
    assert all(r["stream"]["split_strategy"] == "shards" and r["stream"]["n_shards"] == SHARDS for r in ranks)
    checkpoint = full / "checkpoint-2"
    states = [torch.load(checkpoint / f"stream_state-{rank}-of-2.pt", weights_only=True) for rank in (0, 1)]
    assert [s["dataset"]["rank"] for s in states] == [0, 1]

    resumed = tmp_path / "resumed"
    accelerate_launch([*launch, "--main_process_port", str(free_port())],
                      ["--output_dir", str(resumed), *run, "--resume_from_checkpoint", str(checkpoint)],
                      tmp_path / "report-resumed")
    assert logged_losses(resumed) == logged_losses(full)
    weights, reference = load_file(str(resumed / "model.safetensors")), load_file(str(full / "model.safetensors"))
    for name in reference:
        torch.testing.assert_close(weights[name], reference[name], rtol=0, atol=1e-7, msg=name)
