"""Forward cost of a soup vs a vanilla ViT of the same size (target: ratio within 5%).

    python benchmarks/benchmark_model.py                      # ViT-S/16 at 224, batch 8, CPU fp32
    python benchmarks/benchmark_model.py --size tiny --batch 64
    python benchmarks/benchmark_model.py --device cuda --dtype bfloat16 --batch 128
    python benchmarks/benchmark_model.py --size tiny --selector_layers 1   # beta="auto" reading 1 of 12 blocks

Both models share every weight; the soup model runs with a scalar `beta=0.5` (one forward, adapters mixed once per
call), with per-sample `beta` (the co-training forward), with `beta="auto"` (a selector reading the first
`--selector_layers` robust-mode blocks, then one forward at the selected per-sample soups: target at most 1.3x, expected
(L + k) / L) and, for reference, the two-pass ensemble. Timings are
interleaved (A, B, A, B, ...) within one run and the medians compared, so machine noise hits both sides alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification

SIZES = {
    "tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--patch_size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--adapter", default="cls_token")
    parser.add_argument("--selector_layers", type=int, default=2,
                        help="Blocks the beta='auto' selector reads in robust mode (default 2 of 12: 1.17x expected).")
    parser.add_argument("--num_hidden_layers", type=int, default=None, help="Override the size's number of blocks.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="autocast dtype")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    shape = dict(SIZES[args.size])
    if args.num_hidden_layers is not None:
        shape["num_hidden_layers"] = args.num_hidden_layers
    common = dict(**shape, image_size=args.image_size, patch_size=args.patch_size, num_labels=1000)
    torch.manual_seed(0)
    vanilla = ViTForImageClassification(ViTConfig(**common)).to(device).eval()
    soup = AdvSoupViTForImageClassification(AdvSoupViTConfig(**common, adapter=args.adapter, pooling="cls"))
    soup.load_state_dict(vanilla.state_dict(), strict=False)
    soup.add_selector(args.selector_layers)
    soup = soup.to(device).eval()
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    per_sample = torch.arange(args.batch, device=device) % 2 * 1.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    cases = {
        "vanilla ViT": lambda: vanilla(x),
        "soup beta=0.5": lambda: soup(x, beta=0.5),
        "soup per-sample beta": lambda: soup(x, beta=per_sample),
        f"soup beta=auto (k={args.selector_layers})": lambda: soup(x, beta="auto"),
        "ensemble (2 passes)": lambda: soup.ensemble_forward(x, beta=0.5),
    }
    times = {name: [] for name in cases}
    with torch.inference_mode(), autocast:
        for fn in cases.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in cases.items():
                times[name].append(timed(fn, device))
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["vanilla ViT"]
    print(
        f"ViT-{args.size} {args.image_size}px patch {args.patch_size}, batch {args.batch}, {device.type}, "
        f"{args.dtype}, adapter={args.adapter}, {args.repeats} interleaved repeats, torch {torch.__version__}"
    )
    for name, median in medians.items():
        print(f"  {name:<26} {median * 1e3:9.1f} ms   ratio to vanilla {median / base:5.3f}x")
    layers = shape["num_hidden_layers"]
    print(f"  beta=auto expected (L + k) / L = ({layers} + {args.selector_layers}) / {layers} = "
          f"{(layers + args.selector_layers) / layers:.3f}x")
    return {name: median / base for name, median in medians.items()}


if __name__ == "__main__":
    main()
