"""What the sections of the study ask for: training runs (:class:`RunSpec`), the numbers they measure at any seed
(:class:`RunResult`, :class:`SoupResult`, :class:`TransferResult`), and the differences they compare
(:class:`Comparison`). The engine (:class:`hf_advsoup.study.engine.Study`) turns them into jobs and reads their
numbers back; a section never runs anything itself.

A measured number is never a float here: :meth:`values` returns each metric's **per-image outcomes** (integers: 1 =
correct), in the order of the evaluated test images, so that accuracies are counts and comparisons are paired over
the same images (:mod:`hf_advsoup.intervals`). ``mean`` (of clean and robust accuracy) is the per-image sum of the
two on the robust images (0, 1 or 2; :data:`METRIC_SCALES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Study
    from .jobs import Job

__all__ = ["METRIC_SCALES", "Comparison", "Measure", "RunResult", "RunSpec", "SoupResult", "TransferResult",
           "epsilon_slug", "outcomes"]

METRIC_SCALES = {"mean": 2}
"""The score of a perfect image for metrics that are not plain correctness (default 1)."""


def outcomes(packed: str) -> np.ndarray:
    """Per-image outcomes (0/1 integers) from a job's packed flags."""
    from ..intervals import unpack_flags

    return unpack_flags(packed).astype(np.int64)


def _with_mean(clean: np.ndarray, robust: np.ndarray, **extra: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics of one evaluated setting; ``mean`` on the robust images (the first ``len(robust)``)."""
    return {"clean": clean, "robust": robust, "mean": clean[:robust.size] + robust, **extra}


def epsilon_slug(text: str) -> str:
    """A radius as a run-name part: ``"8/255"`` -> ``"eps8"`` (in 1/255 units when it is a whole number of them),
    ``"0.1"`` -> ``"eps0p1"``."""
    from ..attacks import parse_epsilon

    value = float(parse_epsilon(text, "linf"))
    in_255 = value * 255
    if "/" in text and abs(in_255 - round(in_255)) < 1e-6:
        return f"eps{round(in_255)}"
    return f"eps{value:g}".replace(".", "p")


@dataclass(frozen=True)
class RunSpec:
    """One training run of ``scripts/cotrain.py`` (at any seed: the engine appends ``_s<seed>`` to the name).

    Attributes:
        name: unique name of the run's settings, e.g. ``"cls_token_eps0p1"``.
        title: what the card calls it.
        alpha: co-training weight (1 nominal, 0 adversarial training).
        adapter: doubled parameters (``"none"``: a single network).
        epsilon: training radius (``None`` for nominal training, which computes no attack).
        train_attack: attack preset of the training attack.
        step_over_epsilon: training step as a multiple of epsilon (``None``: the preset's, rescaled with epsilon).
        classes: train on these classes only (relabelled 0..k-1; the transfer section's pre-training).
        extra_argv: further ``scripts/cotrain.py`` flags (e.g. a training mode's own options).
    """

    name: str
    title: str
    alpha: float
    adapter: str
    epsilon: str | None = None
    train_attack: str = "pgd2"
    step_over_epsilon: float | None = None
    classes: tuple[int, ...] | None = None
    extra_argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunResult:
    """A run evaluated on the test split at the study's epsilon: ``clean`` (clean accuracy, clean mode),
    ``robust`` (robust accuracy, robust mode, attacks of record), ``clean_robust_mode`` and ``mean`` (of clean and
    robust)."""

    spec: RunSpec

    @property
    def key(self) -> str:
        return f"run:{self.spec.name}"

    def jobs(self, study: Study, seed: int) -> list[Job]:
        return [study.train_job(self.spec, seed), study.eval_job(self.spec, seed, "test")]

    def values(self, study: Study, seed: int) -> dict[str, np.ndarray] | None:
        result = study.result(study.eval_job(self.spec, seed, "test"))
        if result is None:
            return None
        o = result["outcomes"]
        return _with_mean(outcomes(o["clean"]), outcomes(o["robust"]),
                          clean_robust_mode=outcomes(o["clean_robust_mode"]))


@dataclass(frozen=True)
class SoupResult:
    """One point of the soups section (``family`` soup, ensemble or independent_soup, at ``beta``) on the test
    split: ``clean``, ``robust`` and their ``mean``."""

    family: str
    beta: float

    @property
    def key(self) -> str:
        return f"soup:{self.family}:{self.beta:g}"

    def jobs(self, study: Study, seed: int) -> list[Job]:
        return study.soups_jobs(seed)

    def values(self, study: Study, seed: int) -> dict[str, np.ndarray] | None:
        result = study.result(study.soups_jobs(seed)[-1])
        if result is None:
            return None
        packed = result["outcomes"][self.family]
        clean = packed["clean_accuracy"].get(str(self.beta))
        robust = packed["robust_accuracy"].get(str(self.beta))
        if clean is None or robust is None:
            return None
        return _with_mean(outcomes(clean), outcomes(robust))


@dataclass(frozen=True)
class TransferResult:
    """One cell of the transfer table: ``source`` fine-tuned with ``strategy`` from its ``token_init`` mode;
    ``accuracy`` on the target classes' test split."""

    column: str
    source: RunSpec
    token_init: str
    strategy: str

    @property
    def key(self) -> str:
        return f"transfer:{self.strategy}:{self.column}"

    def jobs(self, study: Study, seed: int) -> list[Job]:
        return [study.train_job(self.source, seed), study.transfer_job(self, seed)]

    def values(self, study: Study, seed: int) -> dict[str, np.ndarray] | None:
        result = study.result(study.transfer_job(self, seed))
        return None if result is None else {"accuracy": outcomes(result["outcomes"])}


Measure = RunResult | SoupResult | TransferResult


@dataclass(frozen=True)
class Comparison:
    """A difference the card interprets: ``metric`` of ``a`` minus ``metric`` of ``b``, paired over the same test
    images and pooled over the seeds both were measured at, with its 95% paired bootstrap interval.

    The verdict is :func:`hf_advsoup.intervals.decide` of "``a - b`` is ``direction`` ``boundary``" (a fraction:
    ``"-1/25"`` is -4 points). A ``claim`` is a comparison a paper claim is decided by: while its interval straddles
    the boundary and more seeds could resolve it (:func:`hf_advsoup.study.rules.seeds_to_resolve`), the engine
    measures both sides at another seed, up to the study's ``max_seeds``. Other comparisons are reported with their
    interval (default: "``a`` above ``b``").

    ``key`` names it in ``results.json``; ``label`` is how the card says it."""

    key: str
    label: str
    a: Any  # a Measure
    b: Any  # a Measure
    metric: str
    direction: str = "above"
    boundary: str = "0"
    claim: bool = False
