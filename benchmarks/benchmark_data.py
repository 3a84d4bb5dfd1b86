"""Input-pipeline throughput (images/s) on the embedded digits data set.

Measures two stages separately, so the trainer benchmark can print them next to training throughput:

* ``loader``: ``Dataset.set_transform`` (decode, RGB, random resized crop, flip, normalise) + ``collate_fn``
  through a ``torch.utils.data.DataLoader`` with ``--num_workers`` workers;
* ``augment``: the batched :class:`~hf_advsoup.augmentation.BatchAugmenter` (RandAugment 2x9 p=0.5, MixUp/CutMix)
  on the batch's device (``cuda`` when available, else CPU).

Launch::

    python benchmarks/benchmark_data.py --image_size 32 --batch_size 128 --num_workers 0 2 --num_batches 20 \
        --num_threads 1

Programmatic use: ``from benchmark_data import benchmark_input_pipeline`` (with ``benchmarks/`` on ``sys.path``)
returns a dict of images/s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time

import torch

from hf_advsoup.augmentation import AugmentationArguments, BatchAugmenter
from hf_advsoup.data import build_transforms, collate_fn, load_digits_dataset

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
    args = parser.parse_args(argv)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = benchmark_input_pipeline(
        args.image_size, args.batch_size, tuple(args.num_workers), args.num_batches, args.device
    )
    for name, value in results.items():
        print(f"{name}: {value:,.0f} images/s (image_size={args.image_size}, batch_size={args.batch_size})")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
