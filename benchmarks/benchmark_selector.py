"""Which features should the soup selector read? Detection accuracy of candidate heads on a co-trained model.

    python benchmarks/benchmark_selector.py --model_name_or_path runs/fmnist --dataset_name fashion_mnist \
        --train_images 4000 --eval_images 1000 --layers 0 1 2

For each ``k`` in ``--layers``, the robust-mode tokens after ``k`` blocks (``model.vit.selector_inputs``) of clean
images and of their training-attack versions (the co-training run's attack, through robust mode, as
``SelectorTrainer`` makes them) are computed once; candidate heads are then fitted on these cached tokens (target 1
clean, 0 attacked; AdamW, ``--epochs`` over them) and their detection accuracy on the evaluation images is printed,
next to the forward cost ``(L + k) / L`` of ``beta="auto"``. The heads:

- ``stats``: LayerNorm, then the classification token and the per-channel mean and standard deviation over the patch
  tokens, then an MLP;
- ``tokens-mean``: a per-token LayerNorm + Linear + GELU, averaged over the patches, then a linear score;
- ``tokens-mean-max``: the same with the mean and the maximum over the patches (``AdvSoupSelector``, the library's).

A design measurement on cached features (this is not how a selector is trained: ``scripts/train_selector.py`` attacks
every batch afresh through the Trainer).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoImageProcessor

from hf_advsoup import AdvSoupViTForImageClassification
from hf_advsoup.attacks import Normalization, attack
from hf_advsoup.data import DataArguments, collate_fn, load_image_dataset, set_image_transforms
from hf_advsoup.modeling_advsoup import AdvSoupSelector
from hf_advsoup.selection import SelectorTrainingArguments, cotraining_attack_settings


class StatsHead(nn.Module):
    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.norm, self.proj, self.score = nn.LayerNorm(hidden), nn.Linear(3 * hidden, width), nn.Linear(width, 1)

    def forward(self, tokens):
        tokens = self.norm(tokens)
        patches = tokens[:, 1:]
        mean = patches.mean(1)
        std = (patches - mean[:, None]).square().mean(1).add(1e-6).sqrt()
        return self.score(F.gelu(self.proj(torch.cat([tokens[:, 0], mean, std], -1)))).squeeze(-1)


class MeanHead(nn.Module):
    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.norm, self.proj, self.score = nn.LayerNorm(hidden), nn.Linear(hidden, width), nn.Linear(width, 1)

    def forward(self, tokens):
        return self.score(F.gelu(self.proj(self.norm(tokens[:, 1:]))).mean(1)).squeeze(-1)


def cached_tokens(model, dataset, layers, attack_config, normalization, batch_size=250):
    """``{k: (num_images, 2, tokens, hidden)}``: clean and attacked tokens after ``k`` robust-mode blocks."""
    generator = torch.Generator().manual_seed(0)
    parts = {k: [] for k in layers}
    for start in range(0, len(dataset), batch_size):
        batch = collate_fn([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        clean, labels = batch["pixel_values"], batch["labels"]
        attacked = attack(model, clean, labels, attack_config, normalization=normalization,
                          forward_kwargs={"beta": 0.0}, generator=generator)
        with torch.no_grad():
            for k in layers:
                parts[k].append(torch.stack([model.vit.selector_inputs(clean, k),
                                             model.vit.selector_inputs(attacked, k)], dim=1))
    return {k: torch.cat(v) for k, v in parts.items()}


def fit_and_score(head, train, evaluation, epochs, lr, batch_size=256):
    inputs, targets = train.flatten(0, 1), torch.tensor([1.0, 0.0]).repeat(train.shape[0])
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(epochs):
        order = torch.randperm(inputs.shape[0])
        for start in range(0, inputs.shape[0], batch_size):
            index = order[start:start + batch_size]
            loss = F.binary_cross_entropy_with_logits(head(inputs[index]), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        scores = head(evaluation.flatten(0, 1)).view(-1, 2)
    clean, attacked = float((scores[:, 0] > 0).float().mean()), float((scores[:, 1] < 0).float().mean())
    return (clean + attacked) / 2, clean, attacked


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--dataset_name", default="fashion_mnist")
    parser.add_argument("--train_images", type=int, default=4000)
    parser.add_argument("--eval_images", type=int, default=1000)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=64, help="selector_hidden_size")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    model = AdvSoupViTForImageClassification.from_pretrained(args.model_name_or_path).eval()
    processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    normalization = Normalization.from_processor(processor)
    attack_config = SelectorTrainingArguments(output_dir="unused", report_to="none").train_attack_config(
        cotraining_attack_settings(args.model_name_or_path))
    data_args = DataArguments(dataset_name=args.dataset_name, max_train_samples=args.train_images,
                              max_eval_samples=args.eval_images, horizontal_flip=False)
    data = load_image_dataset(data_args)
    set_image_transforms(data, processor, data_args)
    train = cached_tokens(model, data["train"], args.layers, attack_config, normalization)
    evaluation = cached_tokens(model, data["validation"], args.layers, attack_config, normalization)

    config, layers = model.config, model.config.num_hidden_layers
    head_config = copy.deepcopy(config)
    head_config.selector_hidden_size = args.width
    heads = {
        "stats": lambda: StatsHead(config.hidden_size, args.width),
        "tokens-mean": lambda: MeanHead(config.hidden_size, args.width),
        "tokens-mean-max": lambda: AdvSoupSelector(head_config),
    }
    print(f"{args.model_name_or_path}: {attack_config.label} images vs clean, {args.train_images} training and "
          f"{args.eval_images} evaluation images, {args.epochs} epochs on cached tokens")
    print("| k | cost (L + k) / L | head | detection | clean as clean | attacked as robust |")
    print("|---|---|---|---|---|---|")
    for k in args.layers:
        for name, make in heads.items():
            torch.manual_seed(0)
            start = time.perf_counter()
            accuracy, clean, attacked = fit_and_score(make(), train[k], evaluation[k], args.epochs, args.lr)
            print(f"| {k} | {(layers + k) / layers:.2f}x | {name} | {100 * accuracy:.1f}% | {100 * clean:.1f}% | "
                  f"{100 * attacked:.1f}% |  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
