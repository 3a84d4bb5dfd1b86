"""The ensemble of the two modes (Figure 4, Table 8): probability averages, and the ensemble as one classifier for
attacks."""

from __future__ import annotations

import torch
from torch import nn

from ..configuration_advsoup import validate_beta
from ..modeling_advsoup import AdvSoupViTForImageClassification


def ensemble_probabilities(clean_logits: torch.Tensor, robust_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """``beta * softmax(clean_logits) + (1 - beta) * softmax(robust_logits)``: the ensemble of Figure 4 / Table 8.

    The same average as :meth:`AdvSoupViTForImageClassification.ensemble_forward` (whose ``logits`` are the log of
    this), computed from logits that were already there so that a sweep over betas costs two forwards in all.
    """
    beta = validate_beta(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"An ensemble needs 0 <= beta <= 1 (a probability average), got beta={beta}.")
    return beta * clean_logits.float().softmax(-1) + (1.0 - beta) * robust_logits.float().softmax(-1)


class SoupEnsemble(nn.Module):
    """The ensemble of the clean and robust modes of ``model`` at weight ``beta`` as one classifier.

    ``forward(pixel_values)`` returns :meth:`~AdvSoupViTForImageClassification.ensemble_forward`: its ``logits``
    are the log of the averaged probabilities, so an attack on this module attacks the ensemble end to end (the
    gradient flows through both modes). It wraps the model (no copy of any weight).
    """

    def __init__(self, model: AdvSoupViTForImageClassification, beta: float):
        super().__init__()
        self.model = model
        self.beta = validate_beta(beta)
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"An ensemble needs 0 <= beta <= 1, got beta={self.beta}.")
        self.config = model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        return self.model.ensemble_forward(pixel_values, beta=self.beta, labels=labels)


__all__ = [
    "SoupEnsemble",
    "ensemble_probabilities",
]
