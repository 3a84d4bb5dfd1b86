"""Input-pipeline throughput (images/s): the embedded digits at small sizes, and ImageNet-size JPEG files at 224 px.

Measures the stages separately, so the trainer benchmark can print them next to training throughput:

* ``loader``: ``Dataset.set_transform`` (decode, RGB, random resized crop, flip, normalise) + ``collate_fn``
  through a ``torch.utils.data.DataLoader`` with ``--num_workers`` workers (the embedded digits);
* ``augment``: the batched :class:`~hf_advsoup.augmentation.BatchAugmenter` (RandAugment 2x9 p=0.5, MixUp/CutMix)
  on the batch's device (``cuda`` when available, else CPU);
* ``--jpeg N``: N JPEG files of ImageNet's photo sizes (333 to 640 px a side, quality 90), written by the benchmark,
  read back the way a loader worker does (``{"path": file}`` cells through
  :class:`~hf_advsoup.data.ImageClassificationTransform` at ``--jpeg_size``, 224 by default): images per second
  **per worker** (one process, one thread) for decode + random resized crop + flip + normalise, and for decoding
  alone; the share of crops for which PIL's JPEG draft mode (decoding at 1/2 scale) would keep at least the output
  size; the batched augmentation at the same size. With ``--step_images_per_s R`` (a co-training step's images/s,
  e.g. from ``benchmarks/gpu_check.py``) it prints the loader workers that step needs: ``ceil(R / per-worker rate)``.

Launch::

    python benchmarks/benchmark_data.py --image_size 32 --batch_size 128 --num_workers 0 2 --num_batches 20 \
        --num_threads 1
    python benchmarks/benchmark_data.py --jpeg 64 --batch_size 32 --num_batches 3 --num_threads 1 \
        --step_images_per_s 1000

Programmatic use: ``from benchmark_data import benchmark_input_pipeline, benchmark_jpeg_worker`` (with
``benchmarks/`` on ``sys.path``) return dicts of images/s.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from hf_advsoup.augmentation import AugmentationArguments, BatchAugmenter
from hf_advsoup.data import ImageClassificationTransform, build_transforms, collate_fn, load_digits_dataset

logger = logging.getLogger(__name__)

_MEAN = (0.5, 0.5, 0.5)
_STD = (0.5, 0.5, 0.5)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_loader(image_size: int, batch_size: int, num_workers: int, num_batches: int, seed: int = 0) -> float:
    """Images/s of transform + collate through a DataLoader (the first batch, i.e. worker start-up, excluded)."""
    dataset = load_digits_dataset(seed=seed)["train"]
    dataset.set_transform(build_transforms((image_size, _MEAN, _STD), train=True))
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers, collate_fn=collate_fn,
        generator=generator, drop_last=True, persistent_workers=num_workers > 0,
    )
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # cycle over epochs, workers kept alive
    next(batches)  # warm-up: worker start-up and first decode
    images, start = 0, time.perf_counter()
    for batch in itertools.islice(batches, num_batches):
        images += batch["pixel_values"].shape[0]
    return images / (time.perf_counter() - start)


def benchmark_augmenter(
    image_size: int, batch_size: int, num_batches: int, device: torch.device, seed: int = 0
) -> float:
    """Images/s of the batched augmenter on ``device`` (one warm-up batch excluded)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch_size,), generator=generator).to(device)
    augmenter = BatchAugmenter(AugmentationArguments(augmentation_seed=seed))
    augmenter(images, labels, 10)
    _sync(device)
    start = time.perf_counter()
    for _ in range(num_batches):
        augmenter(images, labels, 10)
    _sync(device)
    return batch_size * num_batches / (time.perf_counter() - start)


IMAGENET_SIZES = ((500, 375), (500, 333), (375, 500), (500, 400), (333, 500), (500, 500), (640, 480), (400, 300))
"""(width, height) of the JPEG files written by :func:`write_jpegs`: common ImageNet photo sizes."""


def write_jpegs(folder: str, count: int, seed: int = 0, quality: int = 90) -> list[str]:
    """``count`` JPEG files in ``folder`` (sizes cycling through :data:`IMAGENET_SIZES`): a smooth random scene plus
    noise, so that they compress like photos (about 60-110 KB each) rather than like noise or flat colour."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        width, height = IMAGENET_SIZES[index % len(IMAGENET_SIZES)]
        coarse = rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
        scene = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
        scene += rng.normal(0.0, 10.0, scene.shape)
        path = os.path.join(folder, f"{index:05d}.jpg")
        Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=quality)
        paths.append(path)
    return paths


def _rate(function, items, repeats: int) -> float:
    function(items[0])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        for item in items:
            function(item)
    return repeats * len(items) / (time.perf_counter() - start)


def draft_share(paths: list[str], size: int, seed: int = 0, draws: int = 20) -> float:
    """Fraction of random resized crops (scale 0.08-1) of the files whose box is at least twice ``size`` on both
    sides: the crops for which decoding at 1/2 scale (PIL's JPEG draft mode, DCT scaling) keeps full resolution."""
    transform = ImageClassificationTransform((size, size), (0.5,) * 3, (0.5,) * 3, train=True)
    generator = torch.Generator().manual_seed(seed)
    hits = total = 0
    for path in paths:
        with Image.open(path) as image:
            width, height = image.size
        for _ in range(draws):
            left, top, right, bottom = transform._crop_box(width, height, generator)
            hits += (right - left) >= 2 * size and (bottom - top) >= 2 * size
            total += 1
    return hits / total


def benchmark_jpeg_worker(num_images: int = 64, image_size: int = 224, repeats: int = 2, seed: int = 0,
                          folder: str | None = None) -> dict[str, float]:
    """Images/s of ONE loader worker (this process, torch's current threads) on JPEG files written here: the
    training transform (decode, RGB, random resized crop to ``image_size``, flip, normalise) and decoding alone; plus
    :func:`draft_share`."""
    with tempfile.TemporaryDirectory() if folder is None else contextlib.nullcontext(folder) as directory:
        paths = write_jpegs(directory, num_images, seed=seed)
        sizes = [os.path.getsize(path) for path in paths]
        transform = ImageClassificationTransform((image_size, image_size), (0.5,) * 3, (0.5,) * 3, train=True)
        transform.set_epoch(0, seed)  # crops and flips drawn as in training (seeded per image)

        def train_example(path):
            return transform({"image": [{"path": path, "bytes": None}], "label": [0]})

        def decode(path):
            with Image.open(path) as image:
                return image.convert("RGB")

        return {
            "jpeg_kb": float(np.mean(sizes)) / 1024,
            "transform_images_per_s": _rate(train_example, paths, repeats),
            "decode_images_per_s": _rate(decode, paths, repeats),
            "draft_share": draft_share(paths, image_size, seed),
        }


def workers_needed(step_images_per_s: float, worker_images_per_s: float) -> int:
    """Loader workers that keep up with a step consuming ``step_images_per_s`` (each worker at
    ``worker_images_per_s``)."""
    return max(1, math.ceil(step_images_per_s / worker_images_per_s))


def benchmark_input_pipeline(
    image_size: int = 32,
    batch_size: int = 128,
    num_workers: int | tuple[int, ...] = 0,
    num_batches: int = 20,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Both measurements; keys ``loader_images_per_s[workers=N]`` and ``augment_images_per_s[<device>]``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    results: dict[str, float] = {}
    for workers in (num_workers,) if isinstance(num_workers, int) else num_workers:
        throughput = benchmark_loader(image_size, batch_size, workers, num_batches)
        results[f"loader_images_per_s[workers={workers}]"] = throughput
    results[f"augment_images_per_s[{device.type}]"] = benchmark_augmenter(image_size, batch_size, num_batches, device)
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=32, help="Square output size in pixels (default 32).")
    parser.add_argument("--batch_size", type=int, default=128, help="Images per batch (default 128).")
    parser.add_argument("--num_workers", type=int, nargs="+", default=[0], help="DataLoader worker counts to try.")
    parser.add_argument("--num_batches", type=int, default=20, help="Timed batches per measurement (default 20).")
    parser.add_argument("--device", default=None, help="Augmenter device (default: cuda if available, else cpu).")
    parser.add_argument(
        "--num_threads", type=int, default=None,
        help="torch intra-op threads (default: torch's). On a shared, oversubscribed CPU, 1 avoids thread thrashing.",
    )
    parser.add_argument("--jpeg", type=int, default=0, metavar="N",
                        help="Also measure N ImageNet-size JPEG files written by the benchmark, per loader worker.")
    parser.add_argument("--jpeg_size", type=int, default=224, help="Output size of the JPEG measurement (224).")
    parser.add_argument("--step_images_per_s", type=float, default=None,
                        help="Images/s a co-training step consumes (e.g. gpu_check.py's PGD-2 row): print the loader "
                        "workers it needs at the measured per-worker rate.")
    args = parser.parse_args(argv)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU: {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), load average {load:.1f}")
    results: dict[str, float] = {}
    if args.jpeg:
        jpeg = benchmark_jpeg_worker(args.jpeg, args.jpeg_size)
        results.update({f"jpeg_{key}": value for key, value in jpeg.items()})
        augment = benchmark_augmenter(args.jpeg_size, args.batch_size, args.num_batches,
                                      torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
        results[f"jpeg_augment_images_per_s[{args.device or 'auto'}]"] = augment
        print(f"JPEG files ({args.jpeg}, mean {jpeg['jpeg_kb']:.0f} KB, {len(IMAGENET_SIZES)} ImageNet photo sizes) at "
              f"{args.jpeg_size} px, per loader worker (1 process):")
        print(f"  decode + random resized crop + flip + normalise: {jpeg['transform_images_per_s']:,.0f} images/s")
        print(f"  decode alone:                                    {jpeg['decode_images_per_s']:,.0f} images/s")
        print(f"  crops that JPEG draft mode (1/2 scale) could serve: {100 * jpeg['draft_share']:.1f}%")
        print(f"  batched RandAugment 2x9 + MixUp/CutMix (batch {args.batch_size}): {augment:,.0f} images/s")
        if args.step_images_per_s:
            workers = workers_needed(args.step_images_per_s, jpeg["transform_images_per_s"])
            results["workers_needed"] = workers
            print(f"  a step of {args.step_images_per_s:,.0f} images/s needs {workers} loader worker(s)")
    else:
        results = benchmark_input_pipeline(
            args.image_size, args.batch_size, tuple(args.num_workers), args.num_batches, args.device
        )
        for name, value in results.items():
            print(f"{name}: {value:,.0f} images/s (image_size={args.image_size}, batch_size={args.batch_size})")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
