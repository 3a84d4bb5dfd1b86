"""Cost of the attack core, measured in one run on one model and batch.

Prints:
  1. the cost of one PGD step relative to one forward + input-gradient backward (target <= 1.1x): the marginal
     per-step time ``(T(PGD-k) - T(PGD-0)) / k`` and the amortised ``T(PGD-k) / k``;
  2. PGD-k throughput relative to torchattacks' PGD (same model, batch, eps, step, steps; target >= 1.0x);
  3. PGD-40 (Adam, best iterate) per-step cost, for reference.

Launch (CPU):   python benchmarks/benchmark_attacks.py
        (GPU):  python benchmarks/benchmark_attacks.py --device cuda --batch_size 128 --hidden_size 384 --layers 12 --bf16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from hf_advsoup.attacks import AttackConfig, Normalization, attack
from hf_advsoup.configuration_advsoup import AdvSoupViTConfig
from hf_advsoup.modeling_advsoup import AdvSoupViTForImageClassification


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_interleaved(fns: dict, device: torch.device, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each function, measured round-robin so that load drift hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


class _PixelSpace(nn.Module):
    """The soup model in robust mode as a function of [0, 1] images (what torchattacks expects)."""

    def __init__(self, model: nn.Module, normalization: Normalization):
        super().__init__()
        self.model = model
        self.normalization = normalization

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalization.to_model(images), beta=0.0).logits


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--patch_size", type=int, default=4)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="k of PGD-k")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--bf16", action="store_true", help="run under torch.autocast(bfloat16)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = AdvSoupViTConfig(hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                              num_attention_heads=max(args.hidden_size // 64, 1), intermediate_size=4 * args.hidden_size,
                              image_size=args.image_size, patch_size=args.patch_size, num_labels=10)
    model = AdvSoupViTForImageClassification(config).to(device).eval()
    normalization = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    pixel_values = normalization.to_model(images)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    eps, step = 4 / 255, 1 / 255

    def forward_backward() -> None:
        # The floor of one PGD step: one forward and one backward to the input only (weights frozen).
        for p in model.parameters():
            p.requires_grad_(False)
        x = pixel_values.clone().requires_grad_(True)
        with autocast:
            loss = F.cross_entropy(model(x, beta=0.0).logits.float(), labels)
        torch.autograd.grad(loss, x)
        for p in model.parameters():
            p.requires_grad_(True)

    def ours(steps: int, name: str = "pgd"):
        if name == "pgd40":
            cfg = AttackConfig.from_preset("pgd40", steps=steps)
        else:
            cfg = AttackConfig(name="pgd", epsilon=eps, step_size=step, steps=steps, random_start=True)
        generator = torch.Generator(device=device).manual_seed(0)

        def run() -> None:
            with autocast:
                attack(model, pixel_values, labels, cfg, normalization=normalization, forward_kwargs={"beta": 0.0},
                       generator=generator)
        return run

    k = args.steps
    fns = {"fb": forward_backward, "pgd0": ours(0), "pgdk": ours(k), "pgd40": ours(40, "pgd40")}
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
        print("torchattacks not installed: skipping the throughput comparison "
              "(pip install --no-deps torchattacks==3.5.1)")
    if torchattacks is not None:
        pixel_model = _PixelSpace(model, normalization).eval()
        reference = torchattacks.PGD(pixel_model, eps=eps, alpha=step, steps=k, random_start=True)

        def theirs() -> None:
            with autocast:
                reference(images, labels)

        fns["torchattacks"] = theirs
    t = _time_interleaved(fns, device, args.repeats)
    t_fb, t_0, t_k, t_40 = t["fb"], t["pgd0"], t["pgdk"], t["pgd40"]
    results = {
        "forward_backward_ms": 1e3 * t_fb,
        "pgd_step_marginal_ratio": (t_k - t_0) / k / t_fb,
        "pgd_step_amortised_ratio": t_k / k / t_fb,
        "pgd40_step_amortised_ratio": t_40 / 41 / t_fb,
    }
    print(f"device={device} model=AdvSoupViT(hidden={args.hidden_size}, layers={args.layers}, "
          f"{args.image_size}px/patch {args.patch_size}) batch={args.batch_size} bf16={args.bf16} "
          f"threads={torch.get_num_threads()} repeats={args.repeats} (medians, interleaved)")
    print(f"forward + input-grad backward:        {1e3 * t_fb:9.2f} ms")
    print(f"PGD-{k} total:                        {1e3 * t_k:9.2f} ms  (PGD-0, random start only: {1e3 * t_0:.2f} ms)")
    print(f"one PGD step / (fwd + input bwd):     {results['pgd_step_marginal_ratio']:9.3f}x marginal, "
          f"{results['pgd_step_amortised_ratio']:.3f}x amortised   (target <= 1.1x)")
    print(f"one PGD-40 step (Adam, best iterate): {results['pgd40_step_amortised_ratio']:9.3f}x (total / 41 forwards)")
    if torchattacks is not None:
        t_ref = t["torchattacks"]
        results["torchattacks_pgd_ms"] = 1e3 * t_ref
        results["throughput_vs_torchattacks"] = t_ref / t_k
        print(f"torchattacks PGD-{k}:                 {1e3 * t_ref:9.2f} ms")
        print(f"PGD-{k} throughput vs torchattacks:   {results['throughput_vs_torchattacks']:9.3f}x   "
              "(target >= 1.0x)")
    return results


if __name__ == "__main__":
    main()
