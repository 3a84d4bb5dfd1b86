"""The baseline of Table 9: soups of *all* weights of two independently trained networks (nominal and adversarial)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..configuration_advsoup import validate_beta
from ..intervals import pack_flags
from .data import EvalData, _autocast, _EvalMode, _restricted, iter_batches
from .records import SoupRecord
from .sweeps import robust_accuracy
from .threat_model import threat_model_of


def floating_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached clones of the floating-point tensors of ``model.state_dict()`` (the endpoints of a weight soup)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


@torch.no_grad()
def interpolate_weights_(
    model: nn.Module, nominal: Mapping[str, torch.Tensor], adversarial: Mapping[str, torch.Tensor], beta: float
) -> nn.Module:
    """Set every floating-point tensor of ``model`` to ``beta * nominal + (1 - beta) * adversarial``, in place.

    The soup of two independently trained networks (Table 9, all weights interpolated): ``beta=1`` is exactly the
    nominal network, ``beta=0`` exactly the adversarial one. No copy of the model is made: each tensor is written
    in place from the two endpoint state dicts (which must have the same keys and shapes as ``model``).
    """
    beta = validate_beta(beta)
    state = model.state_dict()
    missing = sorted((set(nominal) ^ set(adversarial)) | (set(nominal) - set(state)))
    if missing:
        raise ValueError(f"The two networks do not have the same architecture: {len(missing)} tensors differ, e.g. "
                         f"{missing[:3]}.")
    for name, target in state.items():
        if not target.is_floating_point():
            continue
        if name not in nominal:
            raise ValueError(f"Tensor {name!r} of the model is missing from the endpoint state dicts.")
        a, b = nominal[name], adversarial[name]
        if a.shape != target.shape or b.shape != target.shape:
            raise ValueError(f"Shape mismatch for {name!r}: model {tuple(target.shape)}, nominal {tuple(a.shape)}, "
                             f"adversarial {tuple(b.shape)}: the two networks must share one architecture.")
        if beta == 1.0:
            target.copy_(a)
        elif beta == 0.0:
            target.copy_(b)
        else:
            target.copy_(a).mul_(beta).add_(b.to(device=target.device, dtype=target.dtype), alpha=1.0 - beta)
    return model


def independent_soup_sweep(
    nominal_model: nn.Module,
    adversarial_model: nn.Module,
    datasets: Mapping[str, EvalData],
    betas: Sequence[float],
    *,
    attack_config=None,
    attack_name: str | None = None,
    normalization=None,
    robust_datasets: Sequence[str] = (),
    batch_size: int = 64,
    max_eval_examples: int | None = None,
    max_robust_examples: int | None = None,
    seed: int = 0,
    bf16: bool = False,
    progress: bool = True,
    class_indices: Mapping[str, Sequence[int]] | None = None,
) -> list[SoupRecord]:
    """The baseline of Table 9: soups ``beta * nominal + (1 - beta) * adversarial`` of *all* weights of two
    independently trained networks of the same architecture (e.g. two ``ViTForImageClassification``).

    ``nominal_model`` is used as the one working model: its weights are overwritten at each ``beta`` (keep your own
    copy if you need it afterwards; at the end it holds the nominal weights again). Memory: the working model plus
    the two endpoint state dicts; ``adversarial_model`` is only read. Models are called without ``beta``.
    ``class_indices``: as for :func:`evaluate_soups`.
    """
    nominal = floating_state_dict(nominal_model)
    adversarial = {k: v.detach() for k, v in adversarial_model.state_dict().items() if v.is_floating_point()}
    model = nominal_model
    records: list[SoupRecord] = []
    try:
        for beta in tqdm([validate_beta(b) for b in betas], desc="two-network soups", disable=not progress,
                         unit="beta"):
            interpolate_weights_(model, nominal, adversarial, beta)
            for name, data in _restricted(model, datasets, class_indices):
                flags = []
                with _EvalMode(model), torch.no_grad():
                    for x, y in iter_batches(data, batch_size, max_eval_examples):
                        x, y = x.to(model.device), y.to(model.device)
                        with _autocast(model.device, bf16):
                            flags.append((model(pixel_values=x).logits.argmax(-1) == y).cpu())
                correct = torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)
                total = int(correct.numel())
                records.append(SoupRecord(name, "independent_soup", beta, "clean_accuracy",
                                          int(correct.sum()) / max(total, 1), total, total, 1,
                                          outcomes=pack_flags(correct)))
                if attack_config is not None and name in robust_datasets:
                    accuracy, n, passes, outcomes = robust_accuracy(
                        model, data, attack_config, normalization=normalization, batch_size=batch_size,
                        max_examples=max_robust_examples, seed=seed, bf16=bf16,
                    )
                    records.append(SoupRecord(name, "independent_soup", beta, "robust_accuracy", accuracy, n, passes,
                                              1, threat_model=threat_model_of(attack_config, attack_name),
                                              outcomes=outcomes))
    finally:
        interpolate_weights_(model, nominal, adversarial, 1.0)
    return records


__all__ = [
    "floating_state_dict",
    "independent_soup_sweep",
    "interpolate_weights_",
]
