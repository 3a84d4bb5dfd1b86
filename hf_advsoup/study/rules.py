"""The decision rules of the study, as pure functions of the numbers: the choice of epsilon and alpha (on the
validation split), the Pareto front, and when another seed can resolve a claim.

Verdicts of compared differences are :func:`hf_advsoup.intervals.decide` on paired intervals; the
catastrophic-overfitting rule is the library's: :mod:`hf_advsoup.catastrophic_overfitting`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from ..intervals import PairedDifference, decide, images_to_resolve

__all__ = ["choose_alpha", "choose_epsilon", "pareto_front", "seeds_to_resolve"]


def choose_epsilon(rows: Sequence[Mapping[str, Any]], max_nominal_robust: float = 0.10,
                   min_clean_ratio: float = 0.90) -> dict[str, Any]:
    """The radius of the study from validation numbers: the **largest** radius of the grid at which (a) the nominally
    trained model is broken (robust accuracy <= ``max_nominal_robust``, as 4/255 breaks nominal ImageNet models)
    and (b) adversarial training keeps at least ``min_clean_ratio`` of the nominal clean accuracy (a trade-off that
    still learns the task; 76.9% vs 82.6% on ImageNet in the paper, a ratio of 0.93), i.e. the hardest threat model
    still in the paper's regime. When no radius meets both, the one with the largest robust-accuracy gain of
    adversarial over nominal training.

    Each row holds ``epsilon``, ``epsilon_value`` (a float, for ordering), ``nominal_clean_accuracy``,
    ``nominal_robust_accuracy``, ``adversarial_clean_accuracy`` and ``adversarial_robust_accuracy`` (fractions).
    """
    if not rows:
        raise ValueError("choose_epsilon needs at least one row (one radius of the grid).")
    ok = [r for r in rows if r["nominal_robust_accuracy"] <= max_nominal_robust
          and r["adversarial_clean_accuracy"] >= min_clean_ratio * r["nominal_clean_accuracy"]]
    if ok:
        best = max(ok, key=lambda r: r["epsilon_value"])
        reason = (f"largest radius with nominal robust accuracy <= {100 * max_nominal_robust:g}% and adversarial "
                  f"clean accuracy >= {min_clean_ratio:g} x nominal")
    else:
        best = max(rows, key=lambda r: r["adversarial_robust_accuracy"] - r["nominal_robust_accuracy"])
        reason = ("no radius met both criteria; fallback: largest robust-accuracy gain of adversarial over nominal "
                  "training")
    return {"epsilon": best["epsilon"], "reason": reason, "max_nominal_robust": max_nominal_robust,
            "min_clean_ratio": min_clean_ratio}


def choose_alpha(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The co-training weight chosen on validation: among co-trained runs (0 < alpha < 1), the highest mean of clean
    accuracy in clean mode and robust accuracy in robust mode (ties: the larger alpha, i.e. more clean weight).

    Each row holds ``alpha``, ``clean_accuracy`` and ``robust_accuracy`` (validation fractions)."""
    inner = [r for r in rows if 0.0 < r["alpha"] < 1.0]
    if not inner:
        raise ValueError("choose_alpha needs a co-trained run (0 < alpha < 1) among the rows.")
    best = max(inner, key=lambda r: ((r["clean_accuracy"] + r["robust_accuracy"]) / 2, r["alpha"]))
    return {"alpha": best["alpha"], "reason": "highest mean of clean (clean mode) and robust (robust mode) accuracy "
            "on the validation split, among 0 < alpha < 1",
            "validation_mean": (best["clean_accuracy"] + best["robust_accuracy"]) / 2}


def pareto_front(points: Mapping[Any, tuple[float, float]]) -> list:
    """Keys whose (clean, robust) pair no other pair dominates (>= in both, > in one), sorted."""
    front = []
    for key, (c, r) in points.items():
        dominated = any(c2 >= c and r2 >= r and (c2 > c or r2 > r) for k2, (c2, r2) in points.items() if k2 != key)
        if not dominated:
            front.append(key)
    return sorted(front)


def seeds_to_resolve(comparison: PairedDifference, boundary: Fraction | str, direction: str, seeds: int,
                     max_seeds: int) -> int | None:
    """How many seeds (in all, at most ``max_seeds``) would likely resolve an unresolved claim: the interval's
    half-width shrinks as one over the square root of the measured images x seeds, so ``k`` seeds resolve it when
    ``seeds * (half-width / distance to the boundary) ** 2 <= k``. ``None`` when the verdict is already resolved,
    the difference sits on the boundary, or even ``max_seeds`` seeds would not do (the card then says how many
    images it would take)."""
    if decide(comparison, boundary, direction) != "unresolved":
        return None
    need = images_to_resolve(comparison, boundary, direction)
    if need is None:
        return None
    total = -(-need * seeds // comparison.num_examples)  # seeds of this many images each
    return total if total <= max_seeds else None
