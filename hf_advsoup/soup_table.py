"""The short soup table a co-training run ends with: clean and robust accuracy of the soups at beta 1 (clean mode),
0.5 and 0 (robust mode), and whether they show the clean-vs-robust trade-off the method exists for.

``scripts/cotrain.py`` prints it after training (``--soup_table``, on by default in the two tiny recipes); from
Python::

    from hf_advsoup.soup_table import soup_table
    table = soup_table(model, loader, normalization=Normalization.from_processor(processor), epsilon=0.1)
    print(table.to_text())

The robust column defaults to APGD-CE alone (pyautoattack's custom version with the standard version's settings,
through :mod:`hf_advsoup.attacks`): a step-size-free attack that is cheap enough to end a CPU run with, and much
stronger than a short PGD. Clean accuracy is measured on every example of the split, robust accuracy on its first
``robust_examples``. Any attack preset of :mod:`hf_advsoup.attacks` (e.g. ``report``) can replace it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .intervals import Accuracy, paired_difference, unpack_flags
from .soups import EvalData, SoupEvaluation, SoupEvaluationArguments, evaluate_soups

__all__ = ["TABLE_BETAS", "SoupTable", "TradeOff", "check_table_attack", "resolve_table_attack", "soup_table"]

TABLE_BETAS = (1.0, 0.5, 0.0)
"""Soup weights of the table: clean mode, the halfway soup, robust mode."""


@dataclass(frozen=True)
class TradeOff:
    """What the table's end points say, from image counts. ``robust_gain``: robust accuracy of robust mode minus
    clean mode's; ``clean_cost``: clean accuracy of clean mode minus robust mode's (exact fractions); their paired 95%
    intervals over the same images (``None`` without per-image outcomes); ``halfway_between``: the 0.5 soup lies
    between the two modes on both metrics (counts)."""

    robust_gain: Fraction
    clean_cost: Fraction
    halfway_between: bool
    robust_gain_interval: tuple[Fraction, Fraction] | None = None
    clean_cost_interval: tuple[Fraction, Fraction] | None = None

    def shows_trade_off(self, min_robust_gain: Fraction = Fraction(15, 100),
                        min_clean_cost: Fraction = Fraction(2, 100)) -> bool:
        """The thresholds the README's main job is held to: robust mode at least 15 points more robust, clean mode
        at least 2 points more accurate on clean images -- each over its whole paired 95% interval where the
        per-image outcomes are known (beyond sampling noise), else at the point estimate -- and the 0.5 soup in
        between. Exact comparisons."""
        gain = self.robust_gain_interval[0] if self.robust_gain_interval else self.robust_gain
        cost = self.clean_cost_interval[0] if self.clean_cost_interval else self.clean_cost
        return gain >= min_robust_gain and cost >= min_clean_cost and self.halfway_between


@dataclass
class SoupTable:
    """The soups' clean and robust accuracy (fractions) per beta, on one split, with the full evaluation kept;
    ``outcomes`` (``{"clean" | "robust": {beta: per-image flags}}``) when the evaluation recorded them."""

    dataset: str
    clean: dict[float, float]
    robust: dict[float, float]
    attack_name: str
    epsilon: float
    num_clean: int
    num_robust: int
    evaluation: SoupEvaluation
    outcomes: dict[str, dict[float, Any]] | None = field(default=None)

    def _counts(self, metric: str) -> dict[float, Fraction]:
        if self.outcomes is not None:
            return {b: Fraction(int(f.sum()), f.size) for b, f in self.outcomes[metric].items()}
        values = self.clean if metric == "clean" else self.robust
        return {b: Fraction(str(v)) for b, v in values.items()}

    @property
    def trade_off(self) -> TradeOff:
        c, r = self._counts("clean"), self._counts("robust")
        between = all(min(v[1.0], v[0.0]) <= v[0.5] <= max(v[1.0], v[0.0]) for v in (c, r))
        intervals = {}
        if self.outcomes is not None:
            for name, metric, a, b in (("robust_gain_interval", "robust", 0.0, 1.0),
                                       ("clean_cost_interval", "clean", 1.0, 0.0)):
                d = paired_difference(self.outcomes[metric][a], self.outcomes[metric][b])
                intervals[name] = (d.low, d.high)
        return TradeOff(robust_gain=r[0.0] - r[1.0], clean_cost=c[1.0] - c[0.0], halfway_between=between, **intervals)

    def to_text(self) -> str:
        """A markdown table and one sentence that reads it."""
        lines = [
            f"Soups on {self.dataset}: clean accuracy on {self.num_clean} images, robust accuracy under "
            f"{self.attack_name} at l_inf {_radius(self.epsilon)} on the first {self.num_robust}",
            "",
            "| beta | mode | clean accuracy | robust accuracy |",
            "|---|---|---|---|",
        ]
        names = {1.0: "clean mode", 0.5: "soup", 0.0: "robust mode"}
        for beta in TABLE_BETAS:
            lines.append(f"| {beta:g} | {names[beta]} | {self._cell('clean', beta)} | {self._cell('robust', beta)} |")
        t = self.trade_off

        def interval(bounds):
            return "" if bounds is None else f" [{100 * float(bounds[0]):.1f}, {100 * float(bounds[1]):.1f}]"

        summary = (f"robust mode is {100 * float(t.robust_gain):.1f}{interval(t.robust_gain_interval)} points more "
                   f"robust than clean mode and {100 * float(t.clean_cost):.1f}{interval(t.clean_cost_interval)} "
                   "points less accurate on clean images; the 0.5 soup lies "
                   f"{'between them' if t.halfway_between else 'outside them on at least one metric'}")
        if t.shows_trade_off():
            summary = "Trade-off: " + summary + ". Any beta in between picks a point on it, at the cost of one forward."
        else:
            summary = ("No clear trade-off (below +15 robust / 2 clean points): " + summary + ". The two tokens did "
                       "not specialise much on this run; see docs/cotraining.md for recipes that make them.")
        lines += ["", summary]
        if self.outcomes is not None:
            lines += ["", "Brackets: 95% Wilson intervals of the accuracies; paired 95% bootstrap intervals of the "
                      "differences (the same images)."]
        return "\n".join(lines)

    def _cell(self, metric: str, beta: float) -> str:
        if self.outcomes is not None:
            return Accuracy.of(self.outcomes[metric][beta]).text()
        return f"{100 * (self.clean if metric == 'clean' else self.robust)[beta]:.1f}%"


def _radius(epsilon: float) -> str:
    """``8/255`` for a whole number of 255ths, else the number (``0.1``)."""
    steps = epsilon * 255
    return f"{round(steps)}/255" if abs(steps - round(steps)) < 1e-6 and round(steps) > 0 else f"{epsilon:.4g}"


def resolve_table_attack(attack: str) -> tuple[str, list[str]]:
    """``(preset, AutoAttack subset)`` of a soup-table attack name: ``"apgd-ce"`` / ``"apgd-ce+apgd-t"`` ->
    ``("autoattack", [...])``; a preset of :mod:`hf_advsoup.attacks` -> ``(preset, [])``. Raises ``ValueError``
    naming the valid choices otherwise."""
    from .attacks import AUTOATTACK_ATTACKS, PRESETS

    names = [name.strip().lower() for name in attack.split("+")]
    if all(name in AUTOATTACK_ATTACKS for name in names):
        return "autoattack", names
    if attack in PRESETS:
        return attack, []
    raise ValueError(f"Unknown soup-table attack {attack!r}: an AutoAttack attack ({', '.join(AUTOATTACK_ATTACKS)}; "
                     f"several joined by '+') or a preset ({', '.join(PRESETS)}).")


def check_table_attack(attack: str) -> tuple[str, list[str]]:
    """:func:`resolve_table_attack`, and check that the packages the attack needs are installed (AutoAttack's
    attacks need ``pyautoattack``), so that a run that ends with the table fails before it trains, not after.

    Raises:
        ValueError: an unknown attack name.
        ImportError: ``pyautoattack`` is missing for an AutoAttack attack (the message says how to install it and
            which attacks need nothing more).
    """
    preset, subset = resolve_table_attack(attack)
    if preset == "autoattack":
        try:
            import pyautoattack  # noqa: F401
        except ImportError as error:
            raise ImportError(
                f"The soup table's attack {attack!r} runs through pyautoattack, which is not installed: "
                "pip install --no-deps pyautoattack==0.2.0 (the README's set-up line), or choose an attack of this "
                "library with --soup_table_attack report (or pgd40), or --soup_table false. Nothing was trained."
            ) from error
    return preset, subset


def soup_table(
    model,
    data: EvalData,
    *,
    normalization,
    epsilon: float | str,
    attack: str = "apgd-ce",
    robust_examples: int = 500,
    batch_size: int = 256,
    dataset: str = "test",
    class_indices: Sequence[int] | None = None,
    progress: bool = True,
) -> SoupTable:
    """Evaluate the soups at beta 1, 0.5 and 0 on ``data`` (:data:`hf_advsoup.soups.EvalData`).

    Args:
        model: a co-trained :class:`~hf_advsoup.AdvSoupViTForImageClassification` (left unchanged).
        normalization: the image processor's :class:`~hf_advsoup.attacks.Normalization` (attacks run in pixels).
        epsilon: l_inf radius in pixel units (``0.1``, ``"8/255"``).
        attack: ``"apgd-ce"`` (default), another AutoAttack attack name (``"apgd-t"``; several joined by ``+``), or a
            preset of :mod:`hf_advsoup.attacks` (``"report"``, ``"pgd40"``, ``"autoattack"``).
        robust_examples: attacked examples (the first ones of ``data``).
    """
    preset, subset = resolve_table_attack(attack)
    if robust_examples < 1:
        raise ValueError(f"robust_examples must be >= 1, got {robust_examples}.")
    args = SoupEvaluationArguments(
        betas=list(TABLE_BETAS), ensembles=False, attack=preset, autoattack_attacks=subset, epsilon=str(epsilon),
        max_robust_examples=robust_examples, batch_size=batch_size, progress=progress,
    )
    result = evaluate_soups(model, {dataset: data}, args, normalization=normalization,
                            class_indices={dataset: class_indices} if class_indices is not None else None)
    clean = result.curve(dataset, "soup", "clean_accuracy")
    robust = result.curve(dataset, "soup", "robust_accuracy")
    clean_records = result.filter(dataset=dataset, family="soup", metric="clean_accuracy")
    robust_records = result.filter(dataset=dataset, family="soup", metric="robust_accuracy")
    threat = robust_records[0].threat_model or {}
    outcomes = None
    if all(r.outcomes for r in clean_records + robust_records):
        outcomes = {"clean": {r.beta: unpack_flags(r.outcomes) for r in clean_records},
                    "robust": {r.beta: unpack_flags(r.outcomes) for r in robust_records}}
    return SoupTable(
        dataset=dataset, clean=clean, robust=robust, attack_name=str(threat.get("name", preset)),
        epsilon=float(threat.get("epsilon", float("nan"))), num_clean=int(clean_records[0].num_examples),
        num_robust=int(robust_records[0].num_examples), evaluation=result, outcomes=outcomes,
    )
