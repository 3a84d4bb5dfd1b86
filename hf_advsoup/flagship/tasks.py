"""What the flagship's evaluation jobs do: clean accuracy on the whole test split, and one attack on one chunk of it.

Each task returns per-image outcomes (packed with :func:`hf_advsoup.intervals.pack_flags`), so that every accuracy
of the card is a count of images and every comparison is paired over the same images. Training jobs are the
study's ``train`` task (``scripts/cotrain.py``'s ``main``), resumable from their checkpoints.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["attack", "choose_mix", "clean", "defend", "load_test_tensors"]

logger = logging.getLogger(__name__)


def _dataset(dataset_name: str):
    # where a preset is read from can change within one process (HF_ADVSOUP_FASHION_MNIST_DIR and the like), so the
    # cache is keyed by those settings too
    settings = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("HF_ADVSOUP_")))
    return _cached_dataset(dataset_name, settings)


@lru_cache(maxsize=2)
def _cached_dataset(dataset_name: str, settings: tuple[tuple[str, str], ...]):
    from ..data import DataArguments, load_image_dataset

    return load_image_dataset(DataArguments(dataset_name=dataset_name))


def _test_split(dataset_name: str):
    dataset = _dataset(dataset_name)
    split = "test" if "test" in dataset else "validation"
    return dataset[split], split


def load_test_tensors(dataset_name: str, processor, start: int = 0, stop: int | None = None,
                      split: str | None = None):
    """``(pixel_values, labels, split)``: images ``start:stop`` of the data set's test split (its validation split
    when it has no test split; or ``split``) through the evaluation transform of ``processor`` (what the model was
    validated with during training)."""
    from ..data import build_transforms, collate_fn

    if split is None:
        data, split = _test_split(dataset_name)
    else:
        data = _dataset(dataset_name)[split]
    stop = len(data) if stop is None else min(stop, len(data))
    if not 0 <= start < stop:
        raise ValueError(f"Images {start}:{stop} are outside the {len(data)} images of the {split} split.")
    chunk = data.select(range(start, stop)).with_transform(build_transforms(processor, train=False))
    batch = collate_fn([chunk[i] for i in range(len(chunk))])
    return batch["pixel_values"], batch["labels"], split


def _load(model_dir: str):
    from transformers import AutoImageProcessor

    from ..modeling_advsoup import AdvSoupViTForImageClassification

    return (AdvSoupViTForImageClassification.from_pretrained(model_dir).eval(),
            AutoImageProcessor.from_pretrained(model_dir))


def clean(spec: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    """Clean outcomes of one trained model at each of ``betas`` on the whole test split.

    spec: ``{"model_dir", "dataset_name", "betas": [...], "batch_size"}``. Returns ``{"split", "num_examples",
    "outcomes": {str(beta): packed flags}}``."""
    import torch

    from ..intervals import pack_flags

    model, processor = _load(spec["model_dir"])
    x, y, split = load_test_tensors(spec["dataset_name"], processor)
    batch = int(spec.get("batch_size", 500))
    outcomes = {}
    with torch.no_grad():
        for beta in spec["betas"]:
            flags = torch.cat([model(pixel_values=x[i:i + batch], beta=float(beta)).logits.argmax(-1)
                               == y[i:i + batch] for i in range(0, x.shape[0], batch)])
            outcomes[f"{float(beta):g}"] = pack_flags(flags)
            logger.info("beta %g: %d of %d test images right", beta, int(flags.sum()), flags.numel())
    return {"split": split, "num_examples": int(x.shape[0]), "outcomes": outcomes}


def attack(spec: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    """One attack of record on test images ``start:stop``, against one trained model at one ``beta``.

    spec: ``{"model_dir", "dataset_name", "beta", "attack" (a preset of hf_advsoup.attacks: "report",
    "autoattack"), "epsilon", "start", "stop", "seed", "attack_steps" and "autoattack_attacks" (optional: fewer
    steps, an AutoAttack subset; smoke runs)}``. The
    attack's randomness is seeded with ``seed + start``, so each chunk is reproducible on its own. Returns the
    packed clean and robust outcomes, the attack's description and version, and the wall time."""
    import torch

    from ..attacks import AttackConfig, Normalization
    from ..evaluation import evaluate_robustness
    from ..intervals import pack_flags

    torch.manual_seed(0)
    model, processor = _load(spec["model_dir"])
    start, stop = int(spec["start"]), int(spec["stop"])
    x, y, split = load_test_tensors(spec["dataset_name"], processor, start, stop)
    overrides: dict[str, Any] = {"epsilon": spec["epsilon"]}
    if spec.get("attack_steps") is not None:
        overrides["steps"] = int(spec["attack_steps"])
    if spec.get("autoattack_attacks"):  # a subset of AutoAttack (smoke runs); default: the standard version
        overrides.update(autoattack_version="custom", autoattack_attacks=list(spec["autoattack_attacks"]))
    config = AttackConfig.from_preset(spec["attack"], **overrides)
    began = time.perf_counter()
    result = evaluate_robustness(model, x, y, [config], normalization=Normalization.from_processor(processor),
                                 forward_kwargs={"beta": float(spec["beta"])}, batch_size=x.shape[0],
                                 seed=int(spec["seed"]) + start, show_progress=False)
    return {
        "split": split, "start": start, "stop": start + int(x.shape[0]),
        "clean": pack_flags(result.clean_correct), "robust": pack_flags(result.worst_case_correct),
        "attack": {"preset": spec["attack"], "name": config.short_name, "description": config.description,
                   "version": _attack_version(config)},
        "forward_passes_per_example": result.attacks[0]["forward_passes_per_example"],
        "attack_time_s": time.perf_counter() - began,
    }


def _attack_version(config) -> str:
    """What produced the numbers: ``hf_advsoup <version>`` for the library's attacks, ``pyautoattack <version>``
    (its ``standard`` version) for AutoAttack."""
    from importlib.metadata import PackageNotFoundError, version

    package = "pyautoattack" if config.name == "autoattack" else "hf_advsoup"
    try:
        installed = version(package)
    except PackageNotFoundError:
        installed = "unknown"
    suffix = f", {config.autoattack_version} version" if config.name == "autoattack" else ""
    return f"{package} {installed}{suffix}"


def choose_mix(spec: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    """The mixtures of the two modes, chosen on the validation split under attack (MixedNUTS' selection,
    :func:`hf_advsoup.selection.choose_mix`): robust mode is attacked to minimise its own margin (PGD-40, margin
    loss) on the first ``examples`` validation images; for each floor (robust mode's validation robust accuracy minus
    ``floors``), the configuration of the grid with the highest clean accuracy whose worst-case robust accuracy
    reaches it.

    spec: ``{"model_dir", "dataset_name", "examples", "epsilon", "floors", "seed", "attack_steps"}``."""
    import torch

    from ..attacks import AttackConfig, Normalization
    from ..attacks import attack as run_attack
    from ..selection import choose_mix as choose

    model, processor = _load(spec["model_dir"])
    x, y, split = load_test_tensors(spec["dataset_name"], processor, 0, int(spec["examples"]), split="validation")
    overrides: dict[str, Any] = {"epsilon": spec["epsilon"], "loss": "margin"}
    if spec.get("attack_steps") is not None:
        overrides["steps"] = int(spec["attack_steps"])
    config = AttackConfig.from_preset("pgd40", **overrides)
    normalization = Normalization.from_processor(processor)
    clean_logits, robust_clean, robust_attacked = [], [], []
    generator = torch.Generator().manual_seed(int(spec["seed"]))
    for i in range(0, x.shape[0], 500):
        xb, yb = x[i:i + 500], y[i:i + 500]
        attacked = run_attack(model, xb, yb, config, normalization=normalization, forward_kwargs={"beta": 0.0},
                              generator=generator)
        with torch.no_grad():
            clean_logits.append(model(pixel_values=xb, beta=1.0).logits)
            robust_clean.append(model(pixel_values=xb, beta=0.0).logits)
            robust_attacked.append(model(pixel_values=attacked, beta=0.0).logits)
    clean_logits, robust_clean, robust_attacked = (torch.cat(t) for t in (clean_logits, robust_clean, robust_attacked))
    robust_mode_clean = robust_clean.argmax(-1) == y
    robust_mode_robust = robust_mode_clean & (robust_attacked.argmax(-1) == y)
    reference = int(robust_mode_robust.sum()) / y.numel()
    floors = [reference - float(points) for points in spec["floors"]]
    chosen = choose(clean_logits, robust_clean, robust_attacked, y, floors)
    return {"split": split, "num_examples": int(y.numel()), "attack": config.description,
            "robust_mode": {"clean_accuracy": int(robust_mode_clean.sum()) / y.numel(),
                            "robust_accuracy": reference},
            "clean_mode_clean_accuracy": int((clean_logits.argmax(-1) == y).sum()) / y.numel(),
            "floors_below_robust_mode": list(spec["floors"]), "chosen": chosen}


def defend(spec: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    """The per-image defences and the baselines they are compared with, on test images ``start:stop``: every
    system of ``spec["systems"]`` attacked by the attacks that apply to its family
    (:func:`hf_advsoup.selection.evaluate_systems`).

    spec: ``{"model_dir", "selector_dir", "dataset_name", "start", "stop", "epsilon", "seed", "systems": [{"family",
    "beta", "mix"}], "attack_steps", "autoattack_attacks"}``. Fixed soups get the transferred attack (a) only here:
    the end-to-end ``report`` attack of the main evaluation covers them on the same images. Returns each system's
    packed outcomes per attack."""
    import dataclasses

    from ..attacks import Normalization
    from ..intervals import pack_flags
    from ..modeling_advsoup import AdvSoupViTForImageClassification
    from ..selection import AutoEvaluationArguments, MixConfig, System, adaptive_attacks, evaluate_systems

    model, processor = _load(spec["model_dir"])
    start, stop = int(spec["start"]), int(spec["stop"])
    x, y, split = load_test_tensors(spec["dataset_name"], processor, start, stop)
    systems = [System(s["family"], s.get("beta"), MixConfig(**s["mix"]) if s.get("mix") else None)
               for s in spec["systems"]]
    args = AutoEvaluationArguments(auto_attack="report", auto_clean_push=[1.0, 10.0], auto_autoattack=True,
                                   auto_autoattack_attacks=list(spec.get("autoattack_attacks", [])))
    attacks = adaptive_attacks(args, epsilon=spec["epsilon"], steps=spec.get("attack_steps"),
                               surrogate=any(s.family == "mix" for s in systems))
    families = {"transfer": ("auto", "mix", "soup", "ensemble"), "end_to_end": ("auto", "mix", "ensemble"),
                "surrogate": ("mix",), "autoattack": ("auto", "mix")}
    attacks = [dataclasses.replace(a, families=families.get(a.key, a.families)) for a in attacks]
    began = time.perf_counter()
    results = []
    by_model = {"auto": [s for s in systems if s.family == "auto"], "other": [s for s in systems if s.family != "auto"]}
    for kind, group in by_model.items():
        if not group:
            continue
        target = model if kind == "other" else AdvSoupViTForImageClassification.from_pretrained(
            spec["selector_dir"]).eval()
        evaluation = evaluate_systems(target, (x, y), group, args, normalization=Normalization.from_processor(processor),
                                      batch_size=x.shape[0], seed=int(spec["seed"]) + start, progress=False,
                                      attacks=attacks)
        results += evaluation.results
        labels = {a["key"]: a["label"] for a in evaluation.attacks}
    return {"split": split, "start": start, "stop": start + int(x.shape[0]),
            "systems": {r.name: {"family": r.family, "beta": r.beta, "mix": r.mix, "forwards": r.forwards,
                                 "clean": pack_flags(r.clean_correct),
                                 "attacks": {k: pack_flags(v) for k, v in r.attack_correct.items()},
                                 "mean_beta": r.mean_beta} for r in results},
            "attack_labels": labels, "defence_time_s": time.perf_counter() - began}
