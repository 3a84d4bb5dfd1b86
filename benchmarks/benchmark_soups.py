"""Cost of a clean-accuracy soup sweep: does an 11-point sweep cost about 11 single evaluations?

Three ways to get the clean accuracy of the 11 soups beta = 0, 0.1, ..., 1 on the same data, timed interleaved
(median of ``--repeats`` runs each):

* ``single``: one evaluation at one beta (the unit);
* ``sweep``: :func:`hf_advsoup.soups.clean_sweep` with the 11 soups and the 11 ensembles (reads the data once; the
  ensembles reuse the clean- and robust-mode logits);
* ``export_per_beta``: the naive way, ``model.export_soup(beta)`` (a copy of the backbone) and one evaluation per beta.

Forward passes are counted with :class:`hf_advsoup.soups.ForwardCounter`. Launch::

    python benchmarks/benchmark_soups.py --hidden_size 192 --num_layers 6 --num_examples 512 --num_threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification
from hf_advsoup.soups import DEFAULT_BETAS, ForwardCounter, clean_sweep


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _evaluate(model, x, y, batch_size, **kwargs) -> float:
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += int((model(x[i:i + batch_size], **kwargs).logits.argmax(-1) == y[i:i + batch_size]).sum())
    return correct / x.shape[0]


def benchmark(hidden_size: int, num_layers: int, image_size: int, num_examples: int, batch_size: int,
              repeats: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    config = AdvSoupViTConfig(hidden_size=hidden_size, num_hidden_layers=num_layers,
                              num_attention_heads=max(hidden_size // 64, 1), intermediate_size=4 * hidden_size,
                              image_size=image_size, patch_size=4, patch_stride=2, num_labels=10)
    model = AdvSoupViTForImageClassification(config).to(device).eval()
    x = torch.randn(num_examples, 3, image_size, image_size, device=device)
    y = torch.randint(0, 10, (num_examples,), device=device)
    betas = list(DEFAULT_BETAS)

    def single():
        _evaluate(model, x, y, batch_size, beta=0.5)

    def sweep():
        clean_sweep(model, (x, y), betas, ensemble_betas=betas, batch_size=batch_size, progress=False)

    def export_per_beta():
        for beta in betas:
            _evaluate(model.export_soup(beta), x, y, batch_size)

    runs = {"single": single, "sweep": sweep, "export_per_beta": export_per_beta}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, fn in runs.items():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    with ForwardCounter(model) as counter:
        sweep()
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "model": {"hidden_size": hidden_size, "num_layers": num_layers, "image_size": image_size},
        "num_examples": num_examples,
        "seconds": median,
        "sweep_over_single": median["sweep"] / median["single"],
        "export_per_beta_over_single": median["export_per_beta"] / median["single"],
        "sweep_forward_passes_per_image": counter.count / num_examples,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden_size", type=int, default=192)
    parser.add_argument("--num_layers", type=int, default=6)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--num_examples", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_threads", type=int, default=None, help="torch intra-op threads (CPU).")
    parser.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    args = parser.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = benchmark(args.hidden_size, args.num_layers, args.image_size, args.num_examples, args.batch_size,
                       args.repeats, device)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
