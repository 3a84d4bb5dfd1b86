"""Strength and cost of the evaluation attacks on a trained model, against AutoAttack's APGD-CE + APGD-T.

For each attack: robust accuracy on the same examples (the first ``--num_examples`` of the split, clean-correct ones
attacked), its difference to the reference (AutoAttack's APGD-CE + APGD-T through ``pyautoattack``; negative = the
attack is stronger), the examples the reference breaks that the attack misses, wall time and forward passes per
attacked example. This is the measurement behind the choice of the ``report`` preset (docs/attacks.md).

Launch (a co-trained model in robust mode, l_inf 0.1, the first 1000 test images, one thread)::

    python benchmarks/benchmark_attack_strength.py --model_name_or_path runs/fm --dataset runs/fmnist \\
        --split test --epsilon 0.1 --num_examples 1000 --beta 0 --threads 1

``--attacks`` picks rows by name (default: all of :data:`ATTACKS`); ``reference`` is always run first.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hf_advsoup.attacks import AttackConfig, Normalization
from hf_advsoup.data import build_transforms, collate_fn, load_eval_split
from hf_advsoup.evaluation import evaluate_robustness


def _aa(attacks: list[str], **overrides) -> AttackConfig:
    return AttackConfig.from_preset("autoattack", autoattack_version="custom", autoattack_attacks=attacks,
                                    **overrides)


#: name -> builder(epsilon) of the rows compared.
ATTACKS = {
    "reference": lambda eps: _aa(["apgd-ce", "apgd-t"], epsilon=eps),
    "pgd40": lambda eps: AttackConfig.from_preset("pgd40", epsilon=eps),
    "pgd20": lambda eps: AttackConfig.from_preset("pgd40", epsilon=eps, steps=20),
    "pgd40_margin": lambda eps: AttackConfig.from_preset("pgd40", epsilon=eps, loss="margin"),
    "pgd40_mt1": lambda eps: AttackConfig.from_preset("pgd40", epsilon=eps, target_classes=1),
    "pgd40_mt3": lambda eps: AttackConfig.from_preset("pgd40", epsilon=eps, target_classes=3),
    "pgd40_mt5": lambda eps: AttackConfig.from_preset("pgd40", epsilon=eps, target_classes=5),
    "pgd20_mt3": lambda eps: AttackConfig.from_preset("pgd40", epsilon=eps, steps=20, target_classes=3),
    "pgd40_mt9": lambda eps: AttackConfig.from_preset("pgd40", epsilon=eps, target_classes=9),
    "report": lambda eps: AttackConfig.from_preset("report", epsilon=eps),
    "apgd_ce": lambda eps: _aa(["apgd-ce"], epsilon=eps),
    "apgd_t": lambda eps: _aa(["apgd-t"], epsilon=eps),
}


def load_examples(model_path: str, dataset: str, split: str | None, num_examples: int):
    """The first ``num_examples`` of ``split``, through the model's own eval transform: ``(pixel_values, labels)``."""
    processor = AutoImageProcessor.from_pretrained(model_path)
    data = load_eval_split(dataset, split, verify_images=False)
    data = data.select(range(min(num_examples, len(data))))
    data.set_transform(build_transforms(processor, train=False))
    batch = collate_fn([data[i] for i in range(len(data))])
    return batch["pixel_values"], batch["labels"], Normalization.from_processor(processor)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--dataset", required=True, help="anything hf_advsoup.data.load_eval_split accepts")
    parser.add_argument("--split", default=None)
    parser.add_argument("--epsilon", default="0.1", help="l_inf radius in [0, 1] pixel units ('8/255' or 0.1)")
    parser.add_argument("--num_examples", type=int, default=1000)
    parser.add_argument("--beta", type=float, default=0.0, help="soup weight attacked (0 = robust mode)")
    parser.add_argument("--attacks", nargs="+", default=[name for name in ATTACKS if name != "reference"],
                        choices=[name for name in ATTACKS if name != "reference"])
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = AutoModelForImageClassification.from_pretrained(args.model_name_or_path).eval()
    pixel_values, labels, normalization = load_examples(args.model_name_or_path, args.dataset, args.split,
                                                        args.num_examples)
    rows, reference = [], None
    for name in ["reference"] + list(args.attacks):
        config = ATTACKS[name](args.epsilon)
        start = time.perf_counter()
        result = evaluate_robustness(model, pixel_values, labels, [config], normalization=normalization,
                                     forward_kwargs={"beta": args.beta}, batch_size=args.batch_size, seed=args.seed,
                                     show_progress=False)
        seconds = time.perf_counter() - start
        correct = result.worst_case_correct
        if reference is None:
            reference = correct
        rows.append({
            "name": name, "label": config.label, "robust_accuracy": result.robust_accuracy,
            "clean_accuracy": result.clean_accuracy, "seconds": seconds,
            "missed": int((correct & ~reference).sum()),
            "passes": result.attacks[0]["forward_passes_per_example"],
        })
        print(f"{name}: {100 * result.robust_accuracy:.2f}% in {seconds:.1f} s", flush=True)

    ref = rows[0]["robust_accuracy"]
    print(f"\n{args.model_name_or_path}, beta {args.beta:g}, {len(labels)} examples, clean "
          f"{100 * rows[0]['clean_accuracy']:.2f}%, l_inf eps {args.epsilon}, threads "
          f"{torch.get_num_threads()}\n")
    print("| attack | robust accuracy (%) | vs. APGD-CE + APGD-T (points) | examples it misses | time (s) | "
          "forward passes / attacked example |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['label']} | {100 * row['robust_accuracy']:.2f} | {100 * (row['robust_accuracy'] - ref):+.2f} "
              f"| {row['missed']} | {row['seconds']:.1f} | {row['passes']:.1f} |")
    return rows


if __name__ == "__main__":
    main()
