"""What the flagship's evaluation jobs do: clean accuracy on the whole test split, and one attack on one chunk of it.

Each task returns per-image outcomes (packed with :func:`hf_advsoup.intervals.pack_flags`), so that every accuracy
of the card is a count of images and every comparison is paired over the same images. Training jobs are the
study's ``train`` task (``scripts/cotrain.py``'s ``main``), resumable from their checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["attack", "clean", "load_test_tensors"]

logger = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def _test_split(dataset_name: str):
    from ..data import DataArguments, load_image_dataset

    dataset = load_image_dataset(DataArguments(dataset_name=dataset_name))
    split = "test" if "test" in dataset else "validation"
    return dataset[split], split


def load_test_tensors(dataset_name: str, processor, start: int = 0, stop: int | None = None):
    """``(pixel_values, labels, split)``: images ``start:stop`` of the data set's test split (its validation split
    when it has no test split) through the evaluation transform of ``processor`` (what the model was validated
    with during training)."""
    from ..data import build_transforms, collate_fn

    data, split = _test_split(dataset_name)
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
