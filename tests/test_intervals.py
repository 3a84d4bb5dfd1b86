"""Accuracies, paired differences and verdicts from whole-image counts (hf_advsoup.intervals): exact arithmetic on the
boundary cases (the study's -4.0 case that float32 accuracies decided wrongly), the bootstrap's pairing and
reproducibility, the exact McNemar test, the Wilson interval, and the packing of per-image outcomes."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from hf_advsoup.intervals import (
    Accuracy,
    decide,
    images_to_resolve,
    mcnemar_exact_p,
    pack_flags,
    paired_difference,
    unpack_flags,
    wilson_interval,
)


def _flags(correct: int, total: int, offset: int = 0) -> np.ndarray:
    flags = np.zeros(total, dtype=bool)
    flags[offset:offset + correct] = True
    return flags


def test_the_minus_four_point_case_is_exact_and_on_the_claims_side():
    """236/500 - 256/500 is exactly -4 points; from float32 accuracies it was -0.04000002 and failed ">= -0.04"."""
    a, b = _flags(236, 500), _flags(256, 500)
    assert float(np.float32(236 / 500)) - float(np.float32(256 / 500)) < -0.04  # the round-off the study hit
    difference = paired_difference(a, b)
    assert difference.difference == Fraction(-4, 100)
    # a difference of exactly the boundary never makes "within 4 points" false at the point estimate ...
    assert difference.difference >= Fraction(-4, 100)
    # ... and with an interval around it the verdict is unresolved, never "not reproduced"
    assert decide(difference, Fraction(-4, 100), "at least") == "unresolved"
    assert images_to_resolve(difference, Fraction(-4, 100)) is None  # sits on the boundary: no n resolves it


def test_verdicts_follow_the_interval_and_treat_bounds_exactly():
    # a has 30 more right of 1000 images and never fewer: the difference is +3 points with a tight interval
    a, b = _flags(830, 1000), _flags(800, 1000)
    d = paired_difference(a, b)
    assert d.only_a == 30 and d.only_b == 0 and d.difference == Fraction(3, 100)
    assert d.low > 0 and d.high <= Fraction(5, 100)
    assert decide(d, 0, "above") == "reproduced"
    assert decide(d, Fraction(-4, 100), "at least") == "reproduced"
    assert decide(d, Fraction(10, 100), "at least") == "not reproduced"
    assert decide(d, Fraction(10, 100), "at most") == "reproduced"
    assert decide(d, d.low, "at least") == "reproduced"  # a bound equal to the boundary satisfies "at least"
    assert decide(d, d.low, "above") == "unresolved"  # ... but not "above"
    assert decide(d, d.high, "below") == "unresolved"
    assert decide(d, d.high, "at most") == "reproduced"
    with pytest.raises(ValueError, match="direction"):
        decide(d, 0, "roughly")


def test_identical_systems_differ_by_exactly_zero_and_are_not_above():
    a = _flags(400, 1000)
    d = paired_difference(a, a.copy())
    assert (d.difference, d.low, d.high, d.only_a, d.only_b, d.mcnemar_p) == (0, 0, 0, 0, 0, 1.0)
    assert decide(d, 0, "above") == "not reproduced" and decide(d, 0, "at least") == "reproduced"


def test_the_bootstrap_keeps_the_pairing():
    """Two systems that are right on overlapping images: the paired interval is much narrower than the interval of
    two independent accuracies (what an unpaired bootstrap would give), and it is reproducible by its seed."""
    rng = np.random.default_rng(0)
    a = rng.random(2000) < 0.7
    b = a.copy()
    flip = rng.choice(2000, 40, replace=False)
    b[flip] = ~b[flip]
    d = paired_difference(a, b, seed=3)
    independent = 1.96 * np.sqrt(2 * 0.7 * 0.3 / 2000)  # half-width of an unpaired comparison
    assert float(d.high - d.low) / 2 < independent / 3
    assert d == paired_difference(a, b, seed=3)
    other = paired_difference(a, b, seed=4)
    assert abs(float(other.low - d.low)) <= 0.002 and abs(float(other.high - d.high)) <= 0.002
    assert d.low <= d.difference <= d.high
    assert (d.low * 2000).denominator == 1 and (d.high * 2000).denominator == 1  # counts of images over 2000


def test_seeds_are_pooled_and_resampled_too():
    rng = np.random.default_rng(1)
    a = {0: rng.random(500) < 0.6, 1: rng.random(500) < 0.6}
    b = {0: rng.random(500) < 0.5, 1: rng.random(500) < 0.5}
    d = paired_difference(a, b)
    total = sum(int(a[s].sum()) - int(b[s].sum()) for s in (0, 1))
    assert d.num_seeds == 2 and d.num_examples == 500 and d.difference == Fraction(total, 1000)
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(a, {0: b[0], 2: b[1]})
    with pytest.raises(ValueError, match="same images"):
        paired_difference(a[0], b[0][:400])


def test_exact_mcnemar_matches_the_binomial_test():
    # 3 vs 10 discordant: 2 * P(X <= 3), X ~ Binomial(13, 1/2) = 2 * 378 / 8192
    assert mcnemar_exact_p(3, 10) == pytest.approx(2 * 378 / 8192)
    assert mcnemar_exact_p(10, 3) == mcnemar_exact_p(3, 10)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(5, 5) == 1.0
    assert mcnemar_exact_p(0, 30) < 1e-8


def test_wilson_interval_and_accuracy():
    low, high = wilson_interval(236, 500)
    assert low < 236 / 500 < high and high - low == pytest.approx(2 * 1.96 * np.sqrt(0.472 * 0.528 / 500), rel=0.02)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0
    for n in (7, 500, 2000, 10000):  # 0 of 500 once gave a lower end of 4e-19, above its value: a negative error bar
        for k in (0, 1, n // 2, n - 1, n):
            low, high = wilson_interval(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    accuracy = Accuracy.of(torch.tensor([True, False, True, True]))
    assert (accuracy.correct, accuracy.total, accuracy.value) == (3, 4, Fraction(3, 4))
    assert Accuracy(8830, 10000).text() == "88.3% [87.7, 88.9]"
    for bad in ((5, 4), (-1, 4), (0, 0)):
        with pytest.raises(ValueError):
            Accuracy(*bad)


def test_images_to_resolve_scales_with_the_square_of_the_interval():
    a, b = _flags(520, 1000), _flags(500, 1000, offset=300)  # +2 points with a wide interval
    d = paired_difference(a, b)
    assert decide(d, 0, "above") == "unresolved"
    need = images_to_resolve(d, 0)
    half = float(d.high - d.low) / 2
    assert need == pytest.approx(1000 * (half / 0.02) ** 2, rel=0.01) and need > 1000


def test_packed_flags_round_trip():
    rng = np.random.default_rng(2)
    for size in (1, 7, 8, 9, 10_000):
        flags = rng.random(size) < 0.5
        text = pack_flags(torch.from_numpy(flags))
        assert text.startswith(f"{size}:") and len(text) < size // 4 + 16
        assert np.array_equal(unpack_flags(text), flags)


def test_on_par_within_a_margin_and_scores_of_two_metrics():
    a, b = _flags(800, 2000), _flags(805, 2000)  # -0.25 points, a narrow interval
    d = paired_difference(a, b)
    assert decide(d, Fraction(1, 100), "within") == "reproduced"
    assert decide(paired_difference(_flags(900, 2000), b), Fraction(1, 100), "within") == "not reproduced"
    with pytest.raises(ValueError, match="margin"):
        decide(d, Fraction(-1, 100), "within")
    # the mean of clean and robust accuracy: per-image scores 0..2 with scale 2, exact halves of points
    clean_a, robust_a = _flags(9, 10), _flags(4, 10)
    clean_b, robust_b = _flags(8, 10), _flags(4, 10)
    d = paired_difference(clean_a.astype(int) + robust_a, clean_b.astype(int) + robust_b, scale=2)
    assert d.difference == Fraction(1, 20)  # (0.9 + 0.4) / 2 - (0.8 + 0.4) / 2
    with pytest.raises(ValueError, match="between 0 and scale"):
        paired_difference(clean_a.astype(int) * 3, clean_b.astype(int))
    with pytest.raises(ValueError, match="whole numbers"):
        paired_difference(np.array([0.5, 1.0]), np.array([1.0, 0.0]))


def test_interval_plots_draw_accuracies_at_zero_and_one(tmp_path):
    """A baseline with no robust image left (0 of 500) and a perfect one (500 of 500) are drawn, not refused for an
    error bar a round-off below zero."""
    from hf_advsoup.plots import plot_curves_with_intervals, plot_tradeoff_with_intervals

    zero, full, half = (Accuracy(k, 500) for k in (0, 500, 250))
    point = lambda a: (float(a.value), *a.interval)  # noqa: E731
    path = plot_tradeoff_with_intervals({"nominal": [("", *point(half), *point(zero))],
                                         "soups": [("1", *point(full), *point(zero)), ("0", *point(half), *point(full))]},
                                        tmp_path / "tradeoff.png", xlabel="clean", ylabel="robust", title="t")
    assert path.stat().st_size > 0
    path = plot_curves_with_intervals({"robust": [(1.0, *point(zero)), (0.0, *point(full))]}, tmp_path / "beta.png",
                                      xlabel="beta", ylabel="accuracy", title="t", references={"nominal": point(zero)})
    assert path.stat().st_size > 0
