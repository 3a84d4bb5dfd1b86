"""Robustness evaluation: per-example results of a list of attacks and their worst case, for one model setting.

The paper reports clean accuracy in clean mode and robust accuracy (PGD-40, AutoAttack) in robust mode (Tables 1,
2, 10), and both along a soup sweep over ``beta`` (Table 9, Figure 4). :func:`evaluate_robustness` evaluates one
setting, e.g. ``forward_kwargs={"beta": b}``: every attack goes through exactly the soup that is evaluated. An
ensemble is evaluated the same way by passing a module that returns log-probabilities as logits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .attacks import AttackConfig, Normalization, _unwrap, attack, attack_mode, format_epsilon, logits_of

logger = logging.getLogger(__name__)


class PerExampleAccuracies:
    """Accuracies of per-example outcomes: ``clean_correct``, ``attack_correct`` (``{attack: flags}``) and
    ``worst_case_correct`` (boolean tensors of shape ``(num_examples,)``), as fractions in [0, 1]. Shared by
    :class:`RobustnessResult` and :class:`hf_advsoup.selection.AutoSoupResult`."""

    clean_correct: torch.Tensor
    attack_correct: dict[str, torch.Tensor]
    worst_case_correct: torch.Tensor

    @property
    def clean_accuracy(self) -> float:
        return _mean(self.clean_correct)

    @property
    def robust_accuracy(self) -> float:
        """Worst-case accuracy over all attacks run (the number to report)."""
        return _mean(self.worst_case_correct)

    @property
    def attack_accuracies(self) -> dict[str, float]:
        return {label: _mean(correct) for label, correct in self.attack_correct.items()}


@dataclass
class RobustnessResult(PerExampleAccuracies):
    """Per-example outcome of :func:`evaluate_robustness` (boolean tensors of shape ``(num_examples,)`` on CPU).

    An example counts as robust to an attack when it is classified correctly on the clean input *and* on the
    attack's output (misclassified clean examples are not attacked). ``worst_case_correct`` is the example's
    outcome against the strongest of all attacks run, so it never increases when attacks are added.
    """

    num_examples: int
    clean_correct: torch.Tensor
    attack_correct: dict[str, torch.Tensor]
    worst_case_correct: torch.Tensor
    attacks: list[dict[str, Any]] = field(default_factory=list)
    forward_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, per_example: bool = False) -> dict[str, Any]:
        """JSON-ready summary (accuracies in [0, 1], attack settings); ``per_example`` adds the boolean lists."""
        out: dict[str, Any] = {
            "num_examples": self.num_examples,
            "forward_kwargs": {k: _jsonable(v) for k, v in self.forward_kwargs.items()},
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "attack_accuracies": self.attack_accuracies,
            "attacks": self.attacks,
        }
        if per_example:
            out["clean_correct"] = self.clean_correct.tolist()
            out["attack_correct"] = {k: v.tolist() for k, v in self.attack_correct.items()}
            out["worst_case_correct"] = self.worst_case_correct.tolist()
        return out

    def format_table(self) -> str:
        """Markdown table: one row per attack with its settings and accuracy, then clean and worst case."""
        lines = ["| attack | norm | eps | steps | restarts | forward passes / example | accuracy |",
                 "|---|---|---|---|---|---|---|",
                 f"| clean | - | 0 | 0 | - | 1 | {100 * self.clean_accuracy:.2f}% |"]
        for info in self.attacks:
            lines.append(
                f"| {info['label']} | {info['norm']} | {info['epsilon_str']} | {info['steps'] if info['steps'] is not None else '-'} "
                f"| {info['restarts']} "
                f"| {info['forward_passes_per_example']:.1f} | {100 * info['accuracy']:.2f}% |"
            )
        lines.append(f"| worst case | | | | | | {100 * self.robust_accuracy:.2f}% |")
        return "\n".join(lines)


def _mean(flags: torch.Tensor) -> float:
    """The fraction of true flags, from the count (a float32 mean is off in the 8th digit: 236/500 - 256/500 came
    out as -0.04000002)."""
    return int(flags.sum()) / flags.numel() if flags.numel() else float("nan")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


class _CountingModule(nn.Module):
    """Counts the examples (rows) that go through ``model`` so reports state the attack's real cost."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> Any:
        self.rows += pixel_values.shape[0]
        return self.model(pixel_values, **kwargs)


def _batches(data: torch.Tensor | Iterable, labels: torch.Tensor | None, batch_size: int):
    if isinstance(data, torch.Tensor):
        if labels is None or labels.shape[0] != data.shape[0]:
            raise ValueError("With a pixel_values tensor, pass labels of shape (num_examples,).")
        for start in range(0, data.shape[0], batch_size):
            yield data[start:start + batch_size], labels[start:start + batch_size]
        return
    if labels is not None:
        raise ValueError("With a dataloader, labels come from its batches; pass labels=None.")
    for batch in data:
        if isinstance(batch, Mapping):
            label_key = next((k for k in ("labels", "label") if k in batch), None)
            if "pixel_values" not in batch or label_key is None:
                raise KeyError(f"A batch dict needs 'pixel_values' and 'labels'; got keys {sorted(batch)}.")
            yield batch["pixel_values"], batch[label_key]
        elif isinstance(batch, Sequence) and len(batch) >= 2:
            yield batch[0], batch[1]
        else:
            raise TypeError(f"Cannot read a batch of type {type(batch).__name__}: use dicts with 'pixel_values' "
                            "and 'labels' or (pixel_values, labels) tuples.")


def evaluate_robustness(
    model: nn.Module,
    pixel_values_or_dataloader: torch.Tensor | Iterable,
    labels: torch.Tensor | None,
    attacks: Sequence[AttackConfig],
    *,
    normalization: Normalization,
    forward_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 128,
    generator: torch.Generator | None = None,
    seed: int = 0,
    max_examples: int | None = None,
    show_progress: bool = True,
) -> RobustnessResult:
    """Clean and adversarial accuracy of ``model(x, **forward_kwargs)`` against each attack, per example.

    Args:
        model: as for :func:`~hf_advsoup.attacks.attack` (returns logits or ``.logits``); attacked in eval mode,
            its modes and flags restored.
        pixel_values_or_dataloader: normalized ``pixel_values`` ``(N, C, H, W)``, or an iterable of batches (dicts
            with ``pixel_values`` and ``labels``, or ``(pixel_values, labels)`` tuples).
        labels: ``(N,)`` class indices with a tensor input; ``None`` with a dataloader.
        attacks: the attacks to run, each on every clean-correct example.
        normalization: the image processor's mean/std.
        forward_kwargs: e.g. ``{"beta": 0.0}`` (robust mode); the attacks go through the same setting.
        batch_size: examples per attack call for a tensor input (default 128).
        generator: randomness for all attacks; default ``torch.Generator`` seeded with ``seed`` (default 0) on the
            model's device, so results are reproducible.
        max_examples: stop after this many examples (default: all).
        show_progress: show a tqdm bar over batches.
    """
    model = _unwrap(model)
    forward_kwargs = dict(forward_kwargs or {})
    attacks = list(attacks)
    for config in attacks:
        if not isinstance(config, AttackConfig):
            raise TypeError(f"attacks must be AttackConfig instances, got {type(config).__name__}.")
    first_param = next(model.parameters(), None)
    device = first_param.device if first_param is not None else None
    if generator is None:
        gen_device = device if device is not None else torch.device("cpu")
        generator = torch.Generator(device=gen_device)
        generator.manual_seed(seed)

    labels_for_attacks = []
    seen: dict[str, int] = {}
    for config in attacks:
        label = config.label
        seen[label] = seen.get(label, 0) + 1
        labels_for_attacks.append(label if seen[label] == 1 else f"{label} #{seen[label]}")

    counter = _CountingModule(model)
    clean_parts: list[torch.Tensor] = []
    attack_parts: list[list[torch.Tensor]] = [[] for _ in attacks]
    rows = [0 for _ in attacks]
    attacked = [0 for _ in attacks]
    total = 0
    warned_probabilities = False
    data = pixel_values_or_dataloader
    num_batches = None
    if isinstance(data, torch.Tensor):
        num_batches = -(-data.shape[0] // batch_size)
    elif hasattr(data, "__len__"):
        num_batches = len(data)
    progress = tqdm(_batches(data, labels, batch_size), total=num_batches, disable=not show_progress,
                    desc="robustness", unit="batch")
    for pixel_values, batch_labels in progress:
        if max_examples is not None:
            if total >= max_examples:
                break
            pixel_values, batch_labels = pixel_values[: max_examples - total], batch_labels[: max_examples - total]
        if device is not None:
            pixel_values, batch_labels = pixel_values.to(device), batch_labels.to(device)
        batch_labels = batch_labels.long()
        total += pixel_values.shape[0]
        with attack_mode(counter), torch.no_grad():
            clean_logits = logits_of(counter(pixel_values, **forward_kwargs)).float()
        if not warned_probabilities and _looks_like_probabilities(clean_logits):
            logger.warning("The model output looks like probabilities (non-negative rows summing to 1). Attacks on "
                           "probabilities are weak (flat gradients): return logits or log-probabilities.")
            warned_probabilities = True
        clean = clean_logits.argmax(-1) == batch_labels
        clean_parts.append(clean.cpu())
        index = clean.nonzero().squeeze(1)
        for i, config in enumerate(attacks):
            correct = torch.zeros_like(clean)
            if index.numel():
                counter.rows = 0
                adversarial = attack(counter, pixel_values[index], batch_labels[index], config,
                                     normalization=normalization, forward_kwargs=forward_kwargs, generator=generator)
                rows[i] += counter.rows
                attacked[i] += index.numel()
                with attack_mode(counter), torch.no_grad():
                    adv_logits = logits_of(model(adversarial, **forward_kwargs))
                correct[index] = adv_logits.argmax(-1) == batch_labels[index]
            attack_parts[i].append(correct.cpu())
        if show_progress:
            progress.set_postfix(clean=f"{_mean(torch.cat(clean_parts)):.3f}")

    clean_correct = torch.cat(clean_parts) if clean_parts else torch.zeros(0, dtype=torch.bool)
    attack_correct = {
        label: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
        for label, parts in zip(labels_for_attacks, attack_parts)
    }
    worst = clean_correct.clone()
    for correct in attack_correct.values():
        worst &= correct
    settings = []
    for label, config, n_rows, n_attacked in zip(labels_for_attacks, attacks, rows, attacked):
        settings.append({
            "label": label,
            "name": config.name,
            "attack_name": config.short_name,
            "description": config.description,
            "norm": config.norm,
            "epsilon": config.epsilon,
            "epsilon_str": format_epsilon(config.epsilon, config.norm),
            "steps": config.steps if config.name != "autoattack" else None,
            "step_size": config.effective_step_size if config.name != "autoattack" else None,
            "restarts": config.restarts,
            "lr_decay_steps": config.effective_lr_decay_steps if config.name == "pgd40" else None,
            "target_classes": config.target_classes,
            "targeted": config.targeted,
            "loss": config.loss,
            "forward_passes_per_example": n_rows / n_attacked if n_attacked else 0.0,
            "accuracy": _mean(attack_correct[label]),
            "config": config.to_dict(),
        })
    result = RobustnessResult(
        num_examples=int(clean_correct.numel()),
        clean_correct=clean_correct,
        attack_correct=attack_correct,
        worst_case_correct=worst,
        attacks=settings,
        forward_kwargs=forward_kwargs,
    )
    logger.info("Robustness (%s, %d examples): clean %.2f%%, worst case %.2f%%; %s", forward_kwargs or "default",
                result.num_examples, 100 * result.clean_accuracy, 100 * result.robust_accuracy,
                ", ".join(f"{k}: {100 * v:.2f}%" for k, v in result.attack_accuracies.items()))
    return result


def _looks_like_probabilities(logits: torch.Tensor) -> bool:
    if logits.numel() == 0 or logits.dim() != 2:
        return False
    return bool((logits >= 0).all() and torch.allclose(logits.sum(-1), torch.ones_like(logits[:, 0]), atol=1e-3))


__all__ = ["RobustnessResult", "evaluate_robustness"]
