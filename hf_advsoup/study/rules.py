"""The decision rules of the study, as pure functions of the numbers: the choice of epsilon and alpha (on the
validation split), the Pareto front, and the seed-noise rule that says which compared differences are real.

The catastrophic-overfitting rule is the library's: :mod:`hf_advsoup.catastrophic_overfitting`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Difference", "choose_alpha", "choose_epsilon", "compare", "pareto_front"]


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


@dataclass(frozen=True)
class Difference:
    """A compared difference ``a - b`` between two measured numbers (fractions), each at one or two seeds.

    The seed-noise rule (stated on the card): a difference is **within seed noise** when its size (of the mean over
    the seeds) is no larger than the spread between the seeds -- the largest change of either number from one seed
    to the other. A difference measured with one seed is only reported as a difference when it reaches ``threshold``
    (2 points by default); below it the study runs a second seed first (:meth:`needs_second_seed`).
    """

    a: Mapping[int, float]
    b: Mapping[int, float]
    threshold: float

    @property
    def seeds(self) -> list[int]:
        return sorted(set(self.a) & set(self.b))

    @property
    def mean_a(self) -> float:
        return sum(self.a[s] for s in self.seeds) / len(self.seeds)

    @property
    def mean_b(self) -> float:
        return sum(self.b[s] for s in self.seeds) / len(self.seeds)

    @property
    def value(self) -> float:
        """``mean(a) - mean(b)`` over the seeds both were measured at."""
        return self.mean_a - self.mean_b

    @property
    def spread(self) -> float | None:
        """The largest seed-to-seed change of ``a`` or ``b`` (None with one seed)."""
        seeds = self.seeds
        if len(seeds) < 2:
            return None
        return max(max(self.a[s] for s in seeds) - min(self.a[s] for s in seeds),
                   max(self.b[s] for s in seeds) - min(self.b[s] for s in seeds))

    def needs_second_seed(self) -> bool:
        return len(self.seeds) < 2 and abs(self.value) < self.threshold

    @property
    def verdict(self) -> str:
        """``"beyond seed noise"``, ``"within seed noise"`` (two seeds), ``"one seed"`` (at least ``threshold``) or
        ``"unresolved"`` (under ``threshold`` with one seed: the second seed was not run)."""
        spread = self.spread
        if spread is None:
            return "one seed" if abs(self.value) >= self.threshold else "unresolved"
        return "within seed noise" if abs(self.value) <= spread + 1e-12 else "beyond seed noise"

    @property
    def real(self) -> bool:
        """Whether the difference counts (its sign is a finding): not within seed noise, not unresolved."""
        return self.verdict in ("beyond seed noise", "one seed")

    def to_dict(self) -> dict[str, Any]:
        return {"a": {str(s): v for s, v in sorted(self.a.items())}, "b": {str(s): v for s, v in sorted(self.b.items())},
                "difference": self.value, "spread": self.spread, "seeds": self.seeds, "verdict": self.verdict,
                "real": self.real, "threshold": self.threshold}


def compare(a: Mapping[int, float], b: Mapping[int, float], threshold: float = 0.02) -> Difference:
    """The :class:`Difference` ``a - b`` of two numbers given per seed (``{seed: fraction}``)."""
    if not set(a) & set(b):
        raise ValueError(f"No seed in common between the compared numbers (seeds {sorted(a)} and {sorted(b)}).")
    return Difference(dict(a), dict(b), threshold)
