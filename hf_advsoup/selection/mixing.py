"""Mixed outputs of the two modes (the ``mix`` family): clean mode's and robust mode's probabilities mixed per image,
after a nonlinear transform of robust mode's logits, training-free (MixedNUTS: Bai et al., "MixedNUTS: Training-Free
Accuracy-Robustness Balance via Nonlinearly Mixed Classifiers", TMLR 2024).

A robust classifier is more confident on the images it classifies correctly, also under attack. MixedNUTS sharpens
that signal: robust mode's logits ``z`` are normalized over the classes (``(z - mean) / std``), shifted by ``c``,
clamped by a GELU, raised to the power ``p`` (sign kept) and scaled by ``s``; the mixture is

    ``h(x) = (1 - alpha) * softmax(z_clean) + alpha * softmax(s * |GELU(LN(z_robust) + c)|^p * sign(...))``

so where robust mode is confident it decides, and where it is not, clean mode does. Our two modes are the two
classifiers, sharing all but one token. Cost: **two forwards** per image (clean mode and robust mode), like an
ensemble, twice a soup's.

The four parameters are chosen on the validation split under attack, as MixedNUTS does (:func:`mix_grid` and
:func:`choose_mix`): robust mode's logits on images attacked to minimise its own margin are computed once; a mixture
keeps an image when robust mode's transformed probability of the true class beats every other class's by more than
``(1 - alpha) / alpha`` (:func:`worst_case_correct`: clean mode is assumed fully fooled, its probability all on the
attacker's class), and its clean accuracy is computed exactly. Every configuration of the grid is scored this way for
the cost of two forwards per validation image; the chosen ones are then evaluated on test with the adaptive attacks
(:mod:`.evaluation`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling_advsoup import AdvSoupViTForImageClassification
from .systems import push_toward_clean

__all__ = ["MixConfig", "MixedModes", "choose_mix", "mix_grid", "mix_probabilities", "robust_logit_map",
           "worst_case_correct"]


@dataclass(frozen=True)
class MixConfig:
    """MixedNUTS' three parameters of the robust logits' transform (``scale`` s > 0, ``power`` p > 0, ``bias`` c)
    and the mixing weight ``alpha`` in [0, 1] of robust mode (0: clean mode alone, 1: transformed robust mode alone)."""

    scale: float = 1.0
    power: float = 1.0
    bias: float = 0.0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        values = (self.scale, self.power, self.bias, self.alpha)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"MixConfig values must be finite, got {values}.")
        if self.scale <= 0 or self.power <= 0:
            raise ValueError(f"scale and power must be > 0, got scale={self.scale}, power={self.power}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (a probability average), got {self.alpha}.")

    @property
    def name(self) -> str:
        return f"mix_s{self.scale:g}_p{self.power:g}_c{self.bias:g}_a{self.alpha:g}"

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def robust_logit_map(logits: torch.Tensor, config: MixConfig) -> torch.Tensor:
    """MixedNUTS' transform of robust logits ``(batch, classes)``: ``s * |GELU(LN(z) + c)|^p * sign(GELU(LN(z) + c))``,
    ``LN`` the normalization over the classes (mean 0, unbiased variance 1)."""
    logits = logits.float()
    normed = (logits - logits.mean(-1, keepdim=True)) / (logits.var(-1, keepdim=True) + 1e-8).sqrt()
    clamped = F.gelu(normed + config.bias)
    return config.scale * clamped.abs().pow(config.power) * clamped.sign()


def mix_probabilities(clean_logits: torch.Tensor, robust_logits: torch.Tensor, config: MixConfig) -> torch.Tensor:
    """``(1 - alpha) * softmax(clean) + alpha * softmax(robust_logit_map(robust))``, shape ``(batch, classes)``."""
    return ((1.0 - config.alpha) * F.softmax(clean_logits.float(), -1)
            + config.alpha * F.softmax(robust_logit_map(robust_logits, config), -1))


class MixedModes(nn.Module):
    """The mixture of clean mode and robust mode as one classifier for attacks: ``forward(pixel_values)`` returns
    the log of the mixed probabilities (two forwards of ``model``: ``beta=1`` and ``beta=0``), differentiable end to
    end through the transform.

    Variants for adaptive attacks (:mod:`.evaluation`):

    - ``surrogate=True``: MixedNUTS' own attack surrogate, whose gradient partly bypasses the transform (where the
      transform saturates its gradient vanishes): robust mode enters as ``0.9 * softmax(z) + 0.1 * mapped``;
    - ``clean_push = lambda > 0``: the prediction unchanged, every logit but the top one shifted by ``lambda *
      log(1 - max mapped robust probability)`` (:func:`~.systems.push_toward_clean`): the attack then also drives
      robust mode's (transformed) confidence down, so that clean mode decides -- the attack this design invites.

    It wraps the model (no weight is copied) and takes no other forward arguments.
    """

    def __init__(self, model: AdvSoupViTForImageClassification, config: MixConfig, *, surrogate: bool = False,
                 clean_push: float = 0.0):
        super().__init__()
        if not math.isfinite(clean_push) or clean_push < 0:
            raise ValueError(f"clean_push must be a finite number >= 0, got {clean_push}.")
        self.model = model
        self.config = config
        self.surrogate = surrogate
        self.clean_push = float(clean_push)

    def mode_logits(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean mode's, robust mode's) logits, one forward each."""
        return (self.model(pixel_values=pixel_values, beta=1.0).logits,
                self.model(pixel_values=pixel_values, beta=0.0).logits)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        clean, robust = self.mode_logits(pixel_values)
        mapped = F.softmax(robust_logit_map(robust, self.config), -1)
        if self.surrogate:
            robust_part = 0.9 * F.softmax(robust.float(), -1) + 0.1 * mapped
        else:
            robust_part = mapped
        probabilities = (1.0 - self.config.alpha) * F.softmax(clean.float(), -1) + self.config.alpha * robust_part
        logits = probabilities.clamp_min(1e-30).log()
        if not self.clean_push:
            return logits
        doubt = (1.0 - mapped.amax(-1)).clamp_min(1e-12).log()
        return push_toward_clean(logits, doubt, self.clean_push)


def worst_case_correct(robust_logits: torch.Tensor, labels: torch.Tensor, config: MixConfig) -> torch.Tensor:
    """Per image, whether the mixture stays correct when clean mode is fully fooled (all its probability on the
    attacker's best class ``j``): ``alpha * (P(y) - P(j)) > 1 - alpha`` for every ``j != y``, with ``P`` robust mode's
    transformed probabilities on the attacked image. ``robust_logits``: robust mode's logits on images attacked to
    minimise its margin."""
    probabilities = F.softmax(robust_logit_map(robust_logits, config), -1)
    true = probabilities.gather(1, labels[:, None]).squeeze(1)
    others = probabilities.scatter(1, labels[:, None], float("-inf")).amax(-1)
    return config.alpha * (true - others) > (1.0 - config.alpha)


def mix_grid(scales: Iterable[float] = (0.5, 1.0, 2.0, 4.0, 8.0), powers: Iterable[float] = (1.0, 2.0, 4.0),
             biases: Iterable[float] = (-1.0, 0.0, 1.0),
             alphas: Iterable[float] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)) -> list[MixConfig]:
    """The configurations :func:`choose_mix` scores (default: 270, MixedNUTS' ranges scaled to 10 classes)."""
    return [MixConfig(s, p, c, a) for s, p, c, a in itertools.product(scales, powers, biases, alphas)]


def choose_mix(clean_logits: torch.Tensor, robust_clean_logits: torch.Tensor, robust_attacked_logits: torch.Tensor,
               labels: torch.Tensor, robust_floors: Sequence[float], grid: Sequence[MixConfig] | None = None
               ) -> list[dict[str, Any]]:
    """MixedNUTS' selection on validation: for each robustness floor, the configuration with the highest clean
    accuracy whose worst-case robust accuracy (:func:`worst_case_correct`) is at least the floor.

    Args:
        clean_logits, robust_clean_logits: clean mode's and robust mode's logits on the clean validation images.
        robust_attacked_logits: robust mode's logits on the same images attacked to minimise robust mode's margin.
        labels: the true classes.
        robust_floors: fractions, e.g. robust mode's own validation robust accuracy minus 1 and 3 points.
        grid: the configurations to score (default :func:`mix_grid`).

    Returns:
        One entry per floor: ``{"floor", "config" (a dict, None when no configuration reaches the floor),
        "clean_accuracy", "worst_case_robust_accuracy", "scored"}`` (validation fractions).
    """
    grid = list(grid) if grid is not None else mix_grid()
    scored = []
    for config in grid:
        clean = mix_probabilities(clean_logits, robust_clean_logits, config).argmax(-1) == labels
        robust = worst_case_correct(robust_attacked_logits, labels, config) & clean
        scored.append((config, int(clean.sum()) / labels.numel(), int(robust.sum()) / labels.numel()))
    out = []
    for floor in robust_floors:
        eligible = [s for s in scored if s[2] >= floor]
        best = max(eligible, key=lambda s: (s[1], s[2]), default=None)
        out.append({"floor": floor, "config": None if best is None else best[0].to_dict(),
                    "clean_accuracy": None if best is None else best[1],
                    "worst_case_robust_accuracy": None if best is None else best[2], "scored": len(scored)})
    return out
