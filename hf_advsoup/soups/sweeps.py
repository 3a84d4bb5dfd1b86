"""Sweeps over beta: clean accuracy of soups, ensembles and landscape cells reading the data once, and robust
accuracy of each soup, ensemble or landscape cell under one attack."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..configuration_advsoup import validate_beta
from ..intervals import pack_flags
from ..modeling_advsoup import AdvSoupViTForImageClassification
from .data import EvalData, ForwardCounter, _autocast, _EvalMode, collect_examples, iter_batches
from .ensembles import SoupEnsemble, ensemble_probabilities
from .records import COMPUTE, SoupRecord
from .threat_model import threat_model_of


@torch.no_grad()
def clean_sweep(
    model: AdvSoupViTForImageClassification,
    data: EvalData,
    betas: Sequence[float],
    *,
    ensemble_betas: Sequence[float] = (),
    landscape: Sequence[tuple[float, float]] = (),
    dataset_name: str = "eval",
    batch_size: int = 64,
    max_examples: int | None = None,
    bf16: bool = False,
    progress: bool = True,
) -> list[SoupRecord]:
    """Clean accuracy of soups, ensembles and landscape cells, reading ``data`` once.

    Each batch goes through one forward per soup ``beta`` and per landscape cell ``(beta1, beta2)``; the ensembles
    reuse the clean-mode (``beta=1``) and robust-mode (``beta=0``) logits, computed once per batch. So the default
    11-point sweep with ensembles costs 11 forwards per image. The model is put in eval mode for the sweep and
    restored; no weight is copied.
    """
    betas = [validate_beta(b) for b in betas]
    ensemble_betas = [validate_beta(b) for b in ensemble_betas]
    for b in ensemble_betas:
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"An ensemble needs 0 <= beta <= 1 (a probability average), got beta={b}.")
    landscape = [(validate_beta(b1), validate_beta(b2)) for b1, b2 in landscape]
    soup_betas = list(dict.fromkeys(betas + ([1.0, 0.0] if ensemble_betas else [])))
    correct_soup: dict[float, list[torch.Tensor]] = {b: [] for b in soup_betas}
    correct_ens: dict[float, list[torch.Tensor]] = {b: [] for b in ensemble_betas}
    correct_land: dict[tuple[float, float], list[torch.Tensor]] = {cell: [] for cell in landscape}
    total = 0
    device = model.device
    with _EvalMode(model):
        batches = tqdm(
            iter_batches(data, batch_size, max_examples), desc=f"clean sweep [{dataset_name}]", disable=not progress,
            unit="batch",
        )
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = {}
            with _autocast(device, bf16):
                for b in soup_betas:
                    logits[b] = model(pixel_values=x, beta=b).logits.float()
                    correct_soup[b].append((logits[b].argmax(-1) == y).cpu())
                for b in ensemble_betas:
                    probs = ensemble_probabilities(logits[1.0], logits[0.0], b)
                    correct_ens[b].append((probs.argmax(-1) == y).cpu())
                for b1, b2 in landscape:
                    pred = model(pixel_values=x, beta=b1, beta2=b2).logits.argmax(-1)
                    correct_land[(b1, b2)].append((pred == y).cpu())
            total += y.shape[0]
    if total == 0:
        raise ValueError(f"The evaluation data set {dataset_name!r} is empty.")
    def record(family: str, beta: float, flags: list[torch.Tensor], compute: int, **extra: Any) -> SoupRecord:
        correct = torch.cat(flags)
        return SoupRecord(dataset_name, family, beta, "clean_accuracy", int(correct.sum()) / total, total,
                          compute * total, compute, outcomes=pack_flags(correct), **extra)

    records = [record("soup", b, correct_soup[b], 1) for b in betas]
    records += [record("ensemble", b, correct_ens[b], 2) for b in ensemble_betas]
    records += [record("landscape", b1, correct_land[(b1, b2)], 1, beta2=b2) for b1, b2 in landscape]
    return records


def robust_accuracy(
    module: nn.Module,
    data: EvalData,
    attack_config,
    *,
    normalization,
    forward_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    max_examples: int | None = None,
    seed: int = 0,
    bf16: bool = False,
    progress: bool = False,
) -> tuple[float, int, int, str]:
    """Robust accuracy of ``module(x, **forward_kwargs)`` against one attack, with the project's evaluation
    (:func:`hf_advsoup.evaluation.evaluate_robustness`: misclassified clean examples count as non-robust).

    Returns ``(accuracy, num_examples, forward_passes, outcomes)``, where ``forward_passes`` counts every
    single-image forward of the network (clean pass, attack iterations, final evaluation; an ensemble counts two per
    call) and ``outcomes`` packs the per-image results (:func:`hf_advsoup.intervals.pack_flags`).
    """
    from ..evaluation import evaluate_robustness

    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        inputs, labels = data
    else:
        inputs, labels = data, None
    network = module.model if isinstance(module, SoupEnsemble) else module
    device = network.device
    with ForwardCounter(network) as counter, _autocast(device, bf16):
        result = evaluate_robustness(
            module, inputs, labels, [attack_config], normalization=normalization,
            forward_kwargs=forward_kwargs, batch_size=batch_size, seed=seed, max_examples=max_examples,
            show_progress=progress,
        )
    return result.robust_accuracy, result.num_examples, counter.count, pack_flags(result.worst_case_correct)


def robust_sweep(
    model: AdvSoupViTForImageClassification,
    data: EvalData,
    betas: Sequence[float],
    attack_config,
    *,
    normalization,
    family: str = "soup",
    landscape: Sequence[tuple[float, float]] = (),
    dataset_name: str = "eval",
    attack_name: str | None = None,
    batch_size: int = 64,
    max_examples: int | None = None,
    seed: int = 0,
    bf16: bool = False,
    progress: bool = True,
) -> list[SoupRecord]:
    """Robust accuracy at each ``beta`` (``family="soup"``: attack the soup; ``"ensemble"``: attack the ensemble
    end to end through :class:`SoupEnsemble`) and at each landscape cell ``(beta1, beta2)``.

    Each setting is attacked with the same seed, so the random starts are the same across betas. When
    ``max_examples`` is set, those examples are gathered once (CPU tensors) and reused for every setting.
    """
    if family not in ("soup", "ensemble"):
        raise ValueError(f"family must be 'soup' or 'ensemble' here, got {family!r}.")
    if max_examples is not None:
        data = collect_examples(data, max_examples, batch_size)
    threat = threat_model_of(attack_config, attack_name)
    settings: list[tuple[str, float, float | None]] = [(family, validate_beta(b), None) for b in betas]
    settings += [("landscape", validate_beta(b1), validate_beta(b2)) for b1, b2 in landscape]
    records = []
    bar = tqdm(settings, desc=f"{threat['attack']} [{dataset_name}]", disable=not progress, unit="model")
    for kind, beta, beta2 in bar:
        bar.set_postfix(family=kind, beta=beta, **({"beta2": beta2} if beta2 is not None else {}))
        if kind == "ensemble":
            module, kwargs = SoupEnsemble(model, beta), {}
        else:
            module, kwargs = model, {"beta": beta, **({"beta2": beta2} if beta2 is not None else {})}
        accuracy, n, passes, outcomes = robust_accuracy(
            module, data, attack_config, normalization=normalization, forward_kwargs=kwargs, batch_size=batch_size,
            seed=seed, bf16=bf16,
        )
        records.append(SoupRecord(dataset_name, kind, beta, "robust_accuracy", accuracy, n, passes, COMPUTE[kind],
                                  beta2=beta2, threat_model=threat, outcomes=outcomes))
    return records


__all__ = [
    "clean_sweep",
    "robust_accuracy",
    "robust_sweep",
]
