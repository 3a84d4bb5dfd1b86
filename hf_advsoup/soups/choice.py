"""Choosing one soup from a sweep: the best mean accuracy over data sets (Tables 3, 4), the most robust soup above
a clean-accuracy floor, and the selections reported with every evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .records import SoupEvaluation, SoupRecord


def best_soup_by_mean_accuracy(
    records: Sequence[SoupRecord] | SoupEvaluation,
    *,
    family: str = "soup",
    metric: str = "clean_accuracy",
    datasets: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    """The ``beta`` with the best mean ``metric`` over ``datasets`` (default: every data set that has all betas);
    Table 3 / Table 4 (``beta=0.9`` on the ImageNet variants in the paper). Ties go to the larger ``beta``.

    Returns ``{"family", "beta", "metric", "mean_accuracy", "per_dataset": {name: accuracy}}`` or ``None`` when
    there is nothing to choose from.
    """
    records = records.records if isinstance(records, SoupEvaluation) else records
    rows = [r for r in records if r.family == family and r.metric == metric and r.beta2 is None]
    names = list(datasets) if datasets is not None else list(dict.fromkeys(r.dataset for r in rows))
    table: dict[float, dict[str, float]] = {}
    for r in rows:
        if r.dataset in names:
            table.setdefault(r.beta, {})[r.dataset] = r.value
    complete = {b: v for b, v in table.items() if all(n in v for n in names)}
    if not complete:
        return None
    best = max(complete, key=lambda b: (sum(complete[b].values()) / len(names), b))
    return {
        "family": family,
        "beta": best,
        "metric": metric,
        "mean_accuracy": sum(complete[best].values()) / len(names),
        "per_dataset": {n: complete[best][n] for n in names},
    }


def most_robust_soup(
    records: Sequence[SoupRecord] | SoupEvaluation,
    min_clean_accuracy: float,
    *,
    dataset: str | None = None,
    family: str = "soup",
) -> dict[str, Any]:
    """The most robust ``beta`` whose clean accuracy is at least ``min_clean_accuracy`` (a fraction) on ``dataset``
    (default: the first data set with robust numbers). Ties go to the higher clean accuracy.

    Returns ``{"family", "beta", "dataset", "clean_accuracy", "robust_accuracy", "min_clean_accuracy"}``, or, when
    no soup qualifies, ``{"message": ..., "min_clean_accuracy", "best_clean_accuracy"}`` saying so.
    """
    records = records.records if isinstance(records, SoupEvaluation) else records
    rows = [r for r in records if r.family == family and r.beta2 is None]
    if dataset is None:
        dataset = next((r.dataset for r in rows if r.metric == "robust_accuracy"), None)
    if dataset is None:
        raise ValueError("No robust accuracy to select from: run the sweep with an attack (not --attack none).")
    clean = {r.beta: r.value for r in rows if r.dataset == dataset and r.metric == "clean_accuracy"}
    robust = {r.beta: r.value for r in rows if r.dataset == dataset and r.metric == "robust_accuracy"}
    candidates = [b for b in robust if b in clean and clean[b] >= min_clean_accuracy]
    if not candidates:
        best_clean = max(clean.values()) if clean else float("nan")
        return {
            "message": f"no {family} on {dataset} reaches {100 * min_clean_accuracy:.2f}% clean accuracy (best: "
            f"{100 * best_clean:.2f}%)",
            "min_clean_accuracy": min_clean_accuracy,
            "best_clean_accuracy": best_clean,
            "dataset": dataset,
        }
    best = max(candidates, key=lambda b: (robust[b], clean[b]))
    return {
        "family": family,
        "beta": best,
        "dataset": dataset,
        "clean_accuracy": clean[best],
        "robust_accuracy": robust[best],
        "min_clean_accuracy": min_clean_accuracy,
    }


def select_soups(result: SoupEvaluation, *, min_clean_accuracy: float | None = None) -> dict[str, Any]:
    """The selections reported with a sweep: best soup and best ensemble by mean clean accuracy over the data sets
    (Table 3), and, when robust numbers exist, the best soup by mean of clean and robust accuracy and the most
    robust soup with clean accuracy ``>= min_clean_accuracy``."""
    selection: dict[str, Any] = {}
    for family in ("soup", "ensemble"):
        choice = best_soup_by_mean_accuracy(result, family=family)
        if choice is not None:
            selection[f"best_{family}_by_mean_clean_accuracy"] = choice
    robust_rows = result.filter(family="soup", metric="robust_accuracy")
    if robust_rows:
        dataset = robust_rows[0].dataset
        clean = result.curve(dataset, "soup", "clean_accuracy")
        robust = result.curve(dataset, "soup", "robust_accuracy")
        both = {b: (clean[b] + robust[b]) / 2 for b in robust if b in clean}
        if both:
            best = max(both, key=lambda b: (both[b], b))
            selection["best_soup_by_mean_of_clean_and_robust"] = {
                "family": "soup", "beta": best, "dataset": dataset, "mean_accuracy": both[best],
                "clean_accuracy": clean[best], "robust_accuracy": robust[best],
            }
        if min_clean_accuracy is not None:
            selection["most_robust_soup_with_min_clean_accuracy"] = most_robust_soup(
                result, min_clean_accuracy, dataset=dataset
            )
    return selection


__all__ = [
    "best_soup_by_mean_accuracy",
    "most_robust_soup",
    "select_soups",
]
