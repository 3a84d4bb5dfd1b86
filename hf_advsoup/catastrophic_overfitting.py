"""The catastrophic-overfitting rule (Figures 6 and 10 of the paper): when a monitored robust accuracy counts as a
collapse.

One rule, two users: :class:`hf_advsoup.training.CatastrophicOverfittingCallback` applies it during training, one
evaluation at a time, and the reproduction study (:mod:`hf_advsoup.study`) applies it after training to the
robust accuracies a run logged. Both call :func:`is_collapse` with the threshold of :func:`collapse_min_best`, so
the card of the study and the warning of the trainer cannot disagree.

The rule: once the best robust accuracy so far has reached ``min_best`` -- and twice the chance level
``1 / num_labels``, since early in training robust accuracy hovers around chance and a dip there is noise -- an
evaluation below ``drop * best`` is a collapse. Defaults (``drop=0.5``, ``min_best=0.05``) are those of
:class:`hf_advsoup.training_args.CoTrainingArguments` (``catastrophic_overfitting_drop`` and
``catastrophic_overfitting_min_best``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Collapse", "collapse_min_best", "find_collapse", "is_collapse"]


def collapse_min_best(min_best: float, num_labels: int | None = None) -> float:
    """The best robust accuracy (a fraction) a run must have reached before a drop counts as a collapse:
    ``max(min_best, 2 / num_labels)`` (twice the chance level), or ``min_best`` when ``num_labels`` is unknown."""
    return max(min_best, 2.0 / num_labels) if num_labels else min_best


def is_collapse(value: float, best: float | None, *, drop: float, min_best: float) -> bool:
    """Whether robust accuracy ``value`` is a collapse, given the ``best`` value seen before it (``None``: no
    evaluation yet): ``best >= min_best and value < drop * best``. ``min_best`` is the threshold of
    :func:`collapse_min_best` (the chance level already applied). All values are fractions in [0, 1]."""
    return best is not None and best >= min_best and value < drop * best


@dataclass(frozen=True)
class Collapse:
    """The first collapse of a monitored series: its position ``index`` in the series, the collapsed ``value`` and
    the ``best_before`` it (fractions)."""

    index: int
    value: float
    best_before: float


def find_collapse(values: Sequence[float], *, drop: float = 0.5, min_best: float = 0.05,
                  num_labels: int | None = None) -> Collapse | None:
    """The first collapse in ``values`` (robust accuracies in evaluation order), exactly as
    :class:`~hf_advsoup.training.CatastrophicOverfittingCallback` would have reported it during training, or
    ``None``."""
    threshold = collapse_min_best(min_best, num_labels)
    best: float | None = None
    for index, value in enumerate(values):
        if is_collapse(value, best, drop=drop, min_best=threshold):
            return Collapse(index=index, value=float(value), best_before=float(best))
        best = value if best is None else max(best, value)
    return None
