"""Accuracies with their uncertainty, and verdicts that follow from it, computed from whole-image counts.

Every accuracy this library publishes is a count ``k`` of correct images out of ``n``; every comparison is between two
systems evaluated on the *same* images. This module keeps those integers until the last step:

- :class:`Accuracy` -- ``k / n`` as an exact :class:`~fractions.Fraction`, with its 95% Wilson score interval (the
  interval for one binomial proportion recommended by Brown, Cai & DasGupta 2001; it never leaves [0, 1]);
- :func:`paired_difference` -- ``accuracy(a) - accuracy(b)`` over the same images (and, when there are several,
  the same seeds), with a 95% **paired bootstrap** interval (images resampled with replacement, and seeds when
  there are two or more) and the **exact McNemar** p-value of "no difference" on the discordant images of each
  seed. The interval's ends are resampled differences, i.e. fractions of whole-image counts, so no float ever
  meets a threshold;
- :func:`decide` -- the verdict of a claim "``a - b`` is at least (or at most) ``boundary``": *reproduced* when the
  whole interval lies on the claim's side of the boundary, *not reproduced* when it lies wholly on the other side,
  *unresolved* otherwise -- never decided inside its own noise. :func:`images_to_resolve` says roughly how many
  images (at the same per-image spread) would resolve an unresolved claim.

Sampling error of an accuracy ``p`` on ``n`` images is about ``sqrt(p (1 - p) / n)``: 2.2 points at ``n = 500``,
1.1 at 2,000, 0.5 at 10,000 for ``p`` near 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np

__all__ = [
    "Accuracy",
    "PairedDifference",
    "DIRECTIONS",
    "decide",
    "images_to_resolve",
    "mcnemar_exact_p",
    "pack_flags",
    "paired_difference",
    "percent_text",
    "points",
    "unpack_flags",
    "wilson_interval",
]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
"""Resamples of the paired bootstrap: the 2.5% and 97.5% quantiles move by well under 0.1 points between seeds of the
resampling at this count (tested)."""


def points(value: Fraction | float) -> str:
    """A difference in percentage points, signed, one decimal: ``Fraction(-1, 25)`` -> ``"-4.0"``."""
    return f"{100 * float(value):+.1f}"


def percent_text(value: float, interval: Sequence[float]) -> str:
    """``"88.3% [87.7, 88.9]"``: a fraction and its interval, in percent."""
    low, high = interval
    return f"{100 * value:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials (floats in [0, 1], for display only)."""
    if n <= 0:
        raise ValueError(f"An interval needs at least one image, got n={n}.")
    if not 0 <= k <= n:
        raise ValueError(f"k must be between 0 and n={n}, got {k}.")
    z = _z(confidence)
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # the interval always holds k / n; at k = 0 (k = n) its end is exactly 0 (1), not a round-off away from it
    return (0.0 if k == 0 else min(p, centre - half)), (1.0 if k == n else max(p, centre + half))


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class Accuracy:
    """``correct`` images right out of ``total``: the exact value and its 95% Wilson interval."""

    correct: int
    total: int

    def __post_init__(self) -> None:
        if self.total <= 0 or not 0 <= self.correct <= self.total:
            raise ValueError(f"An accuracy needs 0 <= correct <= total and total > 0, got {self.correct}/{self.total}.")

    @classmethod
    def of(cls, flags: Sequence[bool] | np.ndarray | Any) -> Accuracy:
        """From per-image outcomes (a boolean sequence, array or tensor)."""
        array = np.asarray(flags.cpu() if hasattr(flags, "cpu") else flags).astype(bool).reshape(-1)
        return cls(int(array.sum()), int(array.size))

    @property
    def value(self) -> Fraction:
        return Fraction(self.correct, self.total)

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)

    def __float__(self) -> float:
        return self.correct / self.total

    def text(self) -> str:
        """``"88.3% [87.7, 88.9]"``: the accuracy and its 95% interval, in percent."""
        return percent_text(self.correct / self.total, self.interval)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {"correct": self.correct, "num_examples": self.total, "accuracy": self.correct / self.total,
                "interval_95": [low, high], "interval_method": "Wilson score"}


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of ``only_a`` vs ``only_b`` discordant images at 1/2."""
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    from scipy.stats import binom  # scipy comes with scikit-learn, a dependency

    return min(1.0, 2 * float(binom.cdf(min(only_a, only_b), discordant, 0.5)))


@dataclass(frozen=True)
class PairedDifference:
    """``accuracy(a) - accuracy(b)`` over the same images (and seeds).

    Attributes:
        difference: the observed difference, exact (``(correct_a - correct_b) / (images x seeds)``).
        low, high: the 95% paired bootstrap interval's ends, exact fractions of whole-image counts.
        num_examples: images per seed; ``num_seeds``: seeds pooled.
        only_a, only_b: discordant images summed over the seeds (``a`` right and ``b`` wrong, and the reverse; with
            scores, ``a`` higher and ``b`` higher).
        mcnemar_p: exact McNemar p-value of "no difference" (one seed: that seed's; several: the sum of the
            discordant counts, a summary only -- the interval is the verdict's basis).
        resamples, bootstrap_seed: how the interval was drawn.
    """

    difference: Fraction
    low: Fraction
    high: Fraction
    num_examples: int
    num_seeds: int
    only_a: int
    only_b: int
    mcnemar_p: float
    resamples: int
    bootstrap_seed: int

    def text(self) -> str:
        """``"-1.2 points [-2.0, -0.4]"``."""
        return f"{points(self.difference)} points [{points(self.low)}, {points(self.high)}]"

    def to_dict(self) -> dict[str, Any]:
        return {"difference": float(self.difference), "interval_95": [float(self.low), float(self.high)],
                "difference_exact": str(self.difference), "interval_95_exact": [str(self.low), str(self.high)],
                "num_examples": self.num_examples, "num_seeds": self.num_seeds, "only_a": self.only_a,
                "only_b": self.only_b, "mcnemar_exact_p": self.mcnemar_p,
                "interval_method": f"paired bootstrap over images{' and seeds' if self.num_seeds > 1 else ''}, "
                f"{self.resamples} resamples (seed {self.bootstrap_seed}), 2.5% and 97.5% quantiles",
                "text": self.text()}


def _outcome_matrix(outcomes: Any) -> np.ndarray:
    """``(seeds, images)`` integers (booleans as 0/1) from one seed's outcomes, a list of per-seed outcomes or a
    ``{seed: outcomes}`` map."""
    if isinstance(outcomes, Mapping):
        outcomes = [outcomes[key] for key in sorted(outcomes)]
    if hasattr(outcomes, "cpu"):
        outcomes = outcomes.cpu()
    array = np.asarray(outcomes) if not isinstance(outcomes, list) else np.stack(
        [np.asarray(o.cpu() if hasattr(o, "cpu") else o) for o in outcomes])
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError("Outcomes must be whole numbers per image (correct = 1), not fractions: keep counts.")
    array = array.astype(np.int64)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"Outcomes must be per-image flags (one row per seed), got shape {array.shape}.")
    return array


def paired_difference(a: Any, b: Any, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                      confidence: float = CONFIDENCE, scale: int = 1) -> PairedDifference:
    """The paired difference ``accuracy(a) - accuracy(b)``, with a percentile bootstrap interval.

    Args:
        a, b: per-image outcomes (``True`` = correct) of the two systems on the same images, in the same order: one
            seed's flags (a sequence, array or tensor), or several seeds' (a list, a ``(seeds, images)`` array, or a
            ``{seed: flags}`` map with the same keys for ``a`` and ``b``). Whole-number scores are allowed too, with
            ``scale`` the score of a perfect image: e.g. clean + robust correctness (0, 1 or 2, ``scale=2``) for
            "the mean of clean and robust accuracy".
        resamples: bootstrap resamples (default 10,000). Each resample draws the images with replacement (the same
            draw for ``a`` and ``b``, and for every seed: the pairing is kept) and, with two or more seeds, the
            seeds with replacement.
        seed: the bootstrap's own random seed (results are reproducible).
        confidence: the interval's coverage (default 0.95).
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping) and sorted(a) != sorted(b):
        raise ValueError(f"a and b must be measured at the same seeds, got {sorted(a)} and {sorted(b)}.")
    matrix_a, matrix_b = _outcome_matrix(a), _outcome_matrix(b)
    if matrix_a.shape != matrix_b.shape:
        raise ValueError(f"a and b must cover the same images and seeds, got shapes {matrix_a.shape} and "
                         f"{matrix_b.shape}.")
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100, got {resamples}.")
    if scale < 1 or matrix_a.min() < 0 or matrix_b.min() < 0 or max(matrix_a.max(), matrix_b.max()) > scale:
        raise ValueError(f"Outcomes must be whole numbers between 0 and scale={scale}.")
    num_seeds, num_examples = matrix_a.shape
    per_image = matrix_a - matrix_b  # per (seed, image): -scale .. scale
    denominator = num_examples * num_seeds * scale
    observed = Fraction(int(per_image.sum()), denominator)
    # Resampling images only matters through how often each per-image pattern (its difference at every seed: -1, 0
    # or 1) is drawn: a multinomial over the distinct patterns is the same draw as one over the images, and cheap.
    patterns, counts = np.unique(per_image.T, axis=0, return_counts=True)  # (distinct, seeds), (distinct,)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(num_examples, counts / num_examples, size=resamples)  # (resamples, distinct)
    per_seed = weights @ patterns  # (resamples, seeds): each seed's resampled numerator
    if num_seeds > 1:
        picks = rng.integers(0, num_seeds, size=(resamples, num_seeds))
        numerators = np.take_along_axis(per_seed, picks, axis=1).sum(axis=1)
    else:
        numerators = per_seed[:, 0].copy()
    numerators.sort()
    tail = (1 - confidence) / 2
    low_index = int(math.floor(tail * (resamples - 1)))
    high_index = int(math.ceil((1 - tail) * (resamples - 1)))
    only_a = int((per_image > 0).sum())
    only_b = int((per_image < 0).sum())
    return PairedDifference(
        difference=observed, low=Fraction(int(numerators[low_index]), denominator),
        high=Fraction(int(numerators[high_index]), denominator), num_examples=num_examples, num_seeds=num_seeds,
        only_a=only_a, only_b=only_b, mcnemar_p=mcnemar_exact_p(only_a, only_b), resamples=resamples,
        bootstrap_seed=seed,
    )


Verdict = Literal["reproduced", "not reproduced", "unresolved"]
Direction = Literal["at least", "at most", "above", "below", "within"]
DIRECTIONS = ("at least", "at most", "above", "below", "within")


def decide(comparison: PairedDifference, boundary: Fraction | int | str, direction: Direction) -> Verdict:
    """The verdict of the claim "``a - b`` is ``direction`` ``boundary``".

    ``direction``: ``"at least"`` (``a - b >= boundary``: "within 4 points" is at least ``Fraction(-4, 100)``),
    ``"at most"`` (``<=``), ``"above"`` (``>``: "more robust" is above 0), ``"below"`` (``<``) or ``"within"``
    (``|a - b| <= boundary``: "on par" within a stated margin). *reproduced* when every value of the 95% interval
    satisfies the claim, *not reproduced* when none does, *unresolved* when the interval holds values of both kinds.
    All comparisons are between exact fractions.
    """
    boundary = Fraction(boundary)
    if direction == "within":
        if boundary < 0:
            raise ValueError(f"A 'within' margin must be >= 0, got {boundary}.")
        if -boundary <= comparison.low and comparison.high <= boundary:
            return "reproduced"
        if comparison.low > boundary or comparison.high < -boundary:
            return "not reproduced"
        return "unresolved"
    holds = {"at least": lambda v: v >= boundary, "at most": lambda v: v <= boundary,
             "above": lambda v: v > boundary, "below": lambda v: v < boundary}.get(direction)
    if holds is None:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}.")
    # The claim is monotone in the difference, so the interval's two ends decide it.
    low_holds, high_holds = holds(comparison.low), holds(comparison.high)
    if low_holds and high_holds:
        return "reproduced"
    if not low_holds and not high_holds:
        return "not reproduced"
    return "unresolved"


def images_to_resolve(comparison: PairedDifference, boundary: Fraction | int | str,
                      direction: Direction = "at least") -> int | None:
    """Roughly how many images per seed would make the interval exclude ``boundary`` at the observed difference and
    per-image spread (the interval narrows as one over the square root of the images): ``None`` when the observed
    difference sits on the boundary (no number of images resolves it) or the interval excludes it already. With
    ``"within"``, the nearer of ``-boundary`` and ``boundary``."""
    boundary = Fraction(boundary)
    if direction == "within":
        boundary = boundary if comparison.difference >= 0 else -boundary
    distance = abs(float(comparison.difference - boundary))
    half_width = float(comparison.high - comparison.low) / 2
    if distance == 0 or half_width == 0:
        return None
    if comparison.low > boundary or comparison.high < boundary:
        return None
    factor = (half_width / distance) ** 2
    return int(math.ceil(comparison.num_examples * factor))


def pack_flags(flags: Any) -> str:
    """Per-image outcomes (booleans) as a compact string for JSON: the bits, 8 to a byte, in hexadecimal, after
    the count (``"12:fff0"``). :func:`unpack_flags` reverses it."""
    array = np.asarray(flags.cpu() if hasattr(flags, "cpu") else flags).astype(bool).reshape(-1)
    return f"{array.size}:{np.packbits(array).tobytes().hex()}"


def unpack_flags(text: str) -> np.ndarray:
    """The boolean array :func:`pack_flags` packed."""
    count, _, payload = text.partition(":")
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(payload), dtype=np.uint8))
    return bits[: int(count)].astype(bool)
