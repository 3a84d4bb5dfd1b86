"""The whole soup evaluation in one call (:func:`evaluate_soups`): sweeps on every data set, ensembles, the landscape,
the two-network baseline and the selections."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

from torch import nn

from ..modeling_advsoup import AdvSoupViTForImageClassification
from .arguments import SoupEvaluationArguments
from .choice import select_soups
from .data import EvalData, _restricted, collect_examples
from .records import COMPUTE, SoupEvaluation, SoupRecord
from .sweeps import clean_sweep, robust_sweep
from .threat_model import build_attack, threat_model_of
from .two_networks import independent_soup_sweep

logger = logging.getLogger(__name__)


def evaluate_soups(
    model: AdvSoupViTForImageClassification,
    datasets: Mapping[str, EvalData],
    args: SoupEvaluationArguments | None = None,
    *,
    normalization=None,
    independent_models: tuple[nn.Module, nn.Module] | None = None,
    class_indices: Mapping[str, Sequence[int]] | None = None,
) -> SoupEvaluation:
    """Clean and robust accuracy of soups and ensembles over a beta grid on one or more data sets, plus optionally
    the 2-D landscape (appendix D) and the two-network baseline (Table 9), and the selections of Table 3 and
    "the most robust soup with clean accuracy >= X".

    Args:
        model: a co-trained dual-adapter model (its weights are never modified or copied).
        datasets: ``{name: data}``, each :data:`EvalData`; the first one is attacked unless
            ``args.robust_datasets`` says otherwise.
        args: what to evaluate (:class:`SoupEvaluationArguments`; default: its defaults).
        normalization: :class:`hf_advsoup.attacks.Normalization` of the image processor; required for robust
            accuracy (attacks work in [0, 1] pixel space).
        independent_models: ``(nominal, adversarial)`` networks for the Table 9 baseline; ``nominal`` is used as
            the working model and overwritten during the sweep (restored at the end).
        class_indices: ``{name: model class of each label}`` for data sets whose labels are not the model's class
            indices (another order, or a subset such as ImageNet-R's 200 classes;
            :func:`hf_advsoup.data.labels.match_class_names`): their logits are restricted to those classes, in
            that order, for clean and robust accuracy alike (:func:`restrict_logits`). Default: none.

    Returns:
        A :class:`SoupEvaluation` whose ``settings`` record the arguments and threat models.
    """
    args = args or SoupEvaluationArguments()
    if not isinstance(model, AdvSoupViTForImageClassification):
        raise TypeError(
            f"evaluate_soups needs an AdvSoupViTForImageClassification (a co-trained dual-adapter model), got "
            f"{type(model).__name__}. For two independent networks use independent_soup_sweep."
        )
    if not datasets:
        raise ValueError("datasets is empty: pass at least one {name: data}.")
    class_indices = {name: list(map(int, indices)) for name, indices in (class_indices or {}).items()}
    unknown = [name for name in class_indices if name not in datasets]
    if unknown:
        raise ValueError(f"class_indices names {unknown}, which are not among the data sets: {', '.join(datasets)}.")
    for name, indices in class_indices.items():
        if not indices or min(indices) < 0 or max(indices) >= model.config.num_labels:
            raise ValueError(f"class_indices[{name!r}] must hold model classes in [0, {model.config.num_labels}), "
                             f"got {indices[:10]}.")
    if model.config.adapter == "none":
        logger.warning("The model has adapter='none' (a single copy): every beta gives the same network.")
    names = list(datasets)
    robust_names: list[str] = []
    attack_config = landscape_config = None
    if args.robust:
        if normalization is None:
            raise ValueError("Robust accuracy needs normalization=Normalization.from_processor(processor) "
                             "(or args.attack='none' for clean accuracy only).")
        if args.robust_datasets is None:
            robust_names = names[:1]
        elif [n.lower() for n in args.robust_datasets] == ["all"]:
            robust_names = names
        else:
            unknown = [n for n in args.robust_datasets if n not in datasets]
            if unknown:
                raise ValueError(f"robust_datasets {unknown} are not among the data sets: {', '.join(names)}.")
            robust_names = list(args.robust_datasets)
        attack_config = build_attack(args.attack, epsilon=args.epsilon, steps=args.attack_steps,
                                     target_classes=args.attack_target_classes,
                                     autoattack_attacks=args.autoattack_attacks)
        landscape_name = args.landscape_attack or args.attack
        if args.landscape and args.landscape_robust:
            same = args.landscape_attack is None
            landscape_config = build_attack(landscape_name, epsilon=args.epsilon,
                                            steps=args.attack_steps if same else None,
                                            target_classes=args.attack_target_classes if same else None,
                                            autoattack_attacks=args.autoattack_attacks if same else ())
    grid = [(b1, b2) for b1 in args.landscape_betas for b2 in args.landscape_betas] if args.landscape else []
    common = dict(batch_size=args.batch_size, bf16=args.bf16, progress=args.progress)

    records: list[SoupRecord] = []
    for name, data in _restricted(model, datasets, class_indices):
        records += clean_sweep(model, data, args.all_betas, ensemble_betas=args.ensemble_betas, landscape=grid,
                               dataset_name=name, max_examples=args.max_eval_examples, **common)
        if name not in robust_names:
            continue
        robust_data = data
        if args.max_robust_examples is not None:
            robust_data = collect_examples(data, args.max_robust_examples, args.batch_size)
        robust_common = dict(normalization=normalization, dataset_name=name, max_examples=None, seed=args.seed,
                             **common)
        records += robust_sweep(model, robust_data, args.all_betas, attack_config, attack_name=args.attack,
                                **robust_common)
        if args.ensemble_betas:
            records += _ensemble_endpoints(records, name, args.ensemble_betas)
            inner = [b for b in args.ensemble_betas if b not in (0.0, 1.0)]
            records += robust_sweep(model, robust_data, inner, attack_config, family="ensemble",
                                    attack_name=args.attack, **robust_common)
        if landscape_config is not None:
            records += robust_sweep(model, robust_data, [], landscape_config, landscape=grid,
                                    attack_name=args.landscape_attack or args.attack, **robust_common)

    if independent_models is not None:
        records += independent_soup_sweep(
            *independent_models, datasets, args.all_betas, attack_config=attack_config, attack_name=args.attack,
            normalization=normalization, robust_datasets=robust_names, batch_size=args.batch_size,
            max_eval_examples=args.max_eval_examples, max_robust_examples=args.max_robust_examples, seed=args.seed,
            bf16=args.bf16, progress=args.progress, class_indices=class_indices,
        )

    result = SoupEvaluation(records=records)
    result.settings = {
        "arguments": dataclasses.asdict(args),
        "datasets": names,
        "robust_datasets": robust_names,
        "threat_model": threat_model_of(attack_config, args.attack) if attack_config is not None else None,
        "landscape_threat_model": (
            threat_model_of(landscape_config, args.landscape_attack or args.attack) if landscape_config else None
        ),
        "normalization": dataclasses.asdict(normalization) if dataclasses.is_dataclass(normalization) else None,
        "model": {"adapter": model.config.adapter, "pooling": model.config.pooling,
                  "name_or_path": getattr(model.config, "_name_or_path", None)},
        "device": str(model.device),
        "class_indices": class_indices or None,
    }
    result.selection = select_soups(result, min_clean_accuracy=args.min_clean_accuracy)
    return result


def _ensemble_endpoints(records: Sequence[SoupRecord], dataset: str, ensemble_betas: Sequence[float]):
    """Robust accuracy of the ensembles at beta = 0 and 1 from the soups' (no second attack).

    At an endpoint the ensemble's output is ``log_softmax`` of one mode's logits: a per-example shift of the logits,
    which leaves the margin, cross-entropy and DLR losses (and so the attack and the prediction) unchanged. The
    forward passes are doubled: that is what the ensemble, which still runs both modes, would have cost.
    """
    out = []
    for r in records:
        if (r.dataset == dataset and r.family == "soup" and r.metric == "robust_accuracy" and r.beta2 is None
                and r.beta in (0.0, 1.0) and r.beta in ensemble_betas):
            out.append(dataclasses.replace(r, family="ensemble", forward_passes=2 * r.forward_passes,
                                           compute=COMPUTE["ensemble"]))
    return out


__all__ = [
    "evaluate_soups",
]
