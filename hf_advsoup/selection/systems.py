"""The defended systems an adaptive evaluation attacks, each as one differentiable classifier.

- :class:`AutoSoupClassifier`: ``model(x, beta="auto")``, the soup each image's selector picks (one forward plus the
  selector's prefix);
- :class:`MixedModes` (:mod:`.mixing`): the two modes' probabilities mixed per image (two forwards);
- fixed soups (``model(x, beta=b)``, one forward) and ensembles (:class:`hf_advsoup.soups.SoupEnsemble`, two).

Each returns logits (log-probabilities for the mixtures), with gradients flowing through every part of the system,
so that end-to-end attacks attack what is deployed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling_advsoup import AdvSoupViTForImageClassification

__all__ = ["AutoSoupClassifier", "push_toward_clean"]


def push_toward_clean(logits: torch.Tensor, score: torch.Tensor, weight: float) -> torch.Tensor:
    """``logits`` with every logit but the top one shifted by ``weight * score`` (per image): the prediction is
    unchanged, and while an image is classified correctly its margin loss becomes ``margin + weight * score``. An
    attack on the result maximises the classification loss and ``score`` at once -- e.g. ``log(beta)`` (the selector's
    vote for clean mode) or the log of the robust mode's doubt (the mixture then follows clean mode)."""
    others = 1.0 - F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    return logits + weight * score[:, None] * others


class AutoSoupClassifier(nn.Module):
    """``model(x, beta="auto")`` as one classifier, for attacks: ``forward(pixel_values)`` returns the logits of each
    image's selected soup, with the gradient flowing through the selector (soft selector: its sigmoid; hard selector:
    straight through its sigmoid, BPDA) and through the soup.

    With ``clean_push = lambda > 0`` (attack (c) of :func:`evaluate_auto_soup`) every logit except the top one is
    shifted by ``lambda * log(beta_soft)``, ``beta_soft = sigmoid(selector score)``. The prediction (argmax) is
    unchanged, so the attack's "fooled" test and the final evaluation see the real model; while an example is
    classified correctly, its margin loss becomes ``margin + lambda * log(beta_soft)``: the attack maximises the
    classification loss and, at the same time, the selector's vote for clean mode. (``log`` of the sigmoid rather
    than the sigmoid: its gradient does not vanish where the selector is sure an image is attacked.)

    It wraps the model (no weight is copied) and takes no other forward arguments.
    """

    def __init__(self, model: AdvSoupViTForImageClassification, clean_push: float = 0.0):
        super().__init__()
        if getattr(model, "selector", None) is None:
            raise ValueError("AutoSoupClassifier needs a model with a soup selector (beta='auto').")
        if not math.isfinite(clean_push) or clean_push < 0:
            raise ValueError(f"clean_push must be a finite number >= 0, got {clean_push}.")
        self.model = model
        self.clean_push = float(clean_push)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        outputs = self.model(pixel_values=pixel_values, beta="auto")
        logits = outputs.logits.float()
        if not self.clean_push:
            return logits
        return push_toward_clean(logits, F.logsigmoid(outputs.selector_logits.float()), self.clean_push)


