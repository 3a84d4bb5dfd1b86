"""What a soup evaluation runs: the beta grids and :class:`SoupEvaluationArguments` (the fields of
``scripts/evaluate_soups.py``, validated at construction)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..configuration_advsoup import validate_beta
from .threat_model import build_attack

DEFAULT_BETAS: tuple[float, ...] = tuple(round(0.1 * i, 2) for i in range(11))
"""The paper's grid (Tables 7, 8, 9; Figures 4, 5): 0, 0.1, ..., 1."""

DEFAULT_LANDSCAPE_BETAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
"""Default axis of the 2-D landscape (appendix D, Figure 8), for both ``beta1`` and ``beta2``: 6 x 6 = 36 models.
It contains the soups ``beta1 + beta2 = 1`` on its anti-diagonal and a little extrapolation on both sides."""


def _default_betas() -> list[float]:
    return list(DEFAULT_BETAS)


def _default_landscape_betas() -> list[float]:
    return list(DEFAULT_LANDSCAPE_BETAS)


@dataclass
class SoupEvaluationArguments:
    """What to evaluate and how (the library function :func:`evaluate_soups` and ``scripts/evaluate_soups.py``)."""

    betas: list[float] = field(
        default_factory=_default_betas,
        metadata={"help": "Soup weights to evaluate (1 = clean mode, 0 = robust mode). Default: 0, 0.1, ..., 1."},
    )
    extrapolate_betas: list[float] = field(
        default_factory=list,
        metadata={
            "help": "Extra soup weights outside [0, 1] (extrapolation, Section 5.2: the paper reports 1.05 and -0.05)."
            " Soups only: an ensemble is a probability average and needs 0 <= beta <= 1."
        },
    )
    ensembles: bool = field(
        default=True,
        metadata={"help": "Also evaluate ensembles of clean and robust modes at the betas in [0, 1] (Figure 4)."},
    )
    attack: str = field(
        default="report",
        metadata={
            "help": "Attack preset of hf_advsoup.attacks for robust accuracy, or 'none' for clean accuracy only. "
            "Default 'report': the paper's PGD-40 then MultiTargeted towards 9 classes, the attack behind every "
            "reported number (measured within 0.5 points of AutoAttack's APGD-CE + APGD-T, see docs/attacks.md); "
            "'pgd40': the paper's PGD-40 alone (cheaper, weaker); 'autoattack': AutoAttack, needs pyautoattack."
        },
    )
    autoattack_attacks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "With --attack autoattack: run only these AutoAttack attacks (pyautoattack's custom version), "
            "e.g. 'apgd-ce' or 'apgd-ce apgd-t', instead of the standard four (APGD-CE, APGD-T, FAB-T, Square). "
            "Default: empty = the standard version. APGD-CE alone is the cheap closing check of a training run."
        },
    )
    epsilon: str | None = field(
        default=None,
        metadata={
            "help": "Override the preset's perturbation radius, in [0, 1] pixel units, as a number or a fraction "
            "('8/255'). Default: the preset's (l_inf 4/255, the paper's)."
        },
    )
    attack_steps: int | None = field(
        default=None,
        metadata={"help": "Override the preset's number of steps (pgd40 / report: the step-size decay points scale "
                  "with it, e.g. 20 steps decay at 10 and 15; the attack is then named PGD-20)."},
    )
    attack_target_classes: int | None = field(
        default=None,
        metadata={"help": "Override the preset's number of MultiTargeted classes (report: 9, every other class of a "
                  "10-class data set; 0 = PGD-40 alone). Fewer is cheaper and can miss examples: on one measured "
                  "soup 3 left a 0.9-point gap to APGD-CE + APGD-T, 5 and 9 0.1 (docs/attacks.md)."},
    )
    batch_size: int = field(default=64, metadata={"help": "Batch size of clean and robust evaluation."})
    max_eval_examples: int | None = field(
        default=None, metadata={"help": "Clean accuracy on the first N examples of each data set (default: all)."}
    )
    max_robust_examples: int | None = field(
        default=1000,
        metadata={
            "help": "Robust accuracy on the first N examples of each data set (an attack costs steps+1 forward and "
            "backward passes per example and beta). Default 1000; 0 or a negative value means all."
        },
    )
    robust_datasets: list[str] | None = field(
        default=None,
        metadata={"help": "Names of the data sets to attack (default: only the first one; 'all' for every one)."},
    )
    landscape: bool = field(
        default=False, metadata={"help": "Evaluate the 2-D landscape beta1*phi_clean + beta2*phi_adv (appendix D)."}
    )
    landscape_betas: list[float] = field(
        default_factory=_default_landscape_betas,
        metadata={"help": "Axis values used for both beta1 and beta2 of the landscape (default 0, 0.25, ..., 1.25)."},
    )
    landscape_robust: bool = field(
        default=True, metadata={"help": "Also attack every landscape cell (Figure 8b). Costly: one attack per cell."}
    )
    landscape_attack: str | None = field(
        default=None,
        metadata={"help": "Attack preset for the landscape (default: --attack). The paper's Figure 8 uses PGD-2."},
    )
    min_clean_accuracy: float | None = field(
        default=None,
        metadata={"help": "Select the most robust soup whose clean accuracy is at least this fraction (e.g. 0.8)."},
    )
    bf16: bool = field(
        default=False, metadata={"help": "bf16 autocast for the forward passes (CUDA only; ignored on CPU)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the attacks' random starts."})
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})

    def __post_init__(self):
        self.betas = [validate_beta(b) for b in self.betas]
        self.extrapolate_betas = [validate_beta(b) for b in self.extrapolate_betas]
        self.landscape_betas = [validate_beta(b) for b in self.landscape_betas]
        if not self.betas and not self.extrapolate_betas:
            raise ValueError("betas is empty: give at least one soup weight (e.g. --betas 0 0.5 1).")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}.")
        for name in ("max_eval_examples", "max_robust_examples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                setattr(self, name, None)
        if self.min_clean_accuracy is not None and not 0.0 <= self.min_clean_accuracy <= 1.0:
            raise ValueError(
                f"min_clean_accuracy is a fraction in [0, 1], got {self.min_clean_accuracy} (did you mean "
                f"{self.min_clean_accuracy / 100:g}?)."
            )
        self.autoattack_attacks = [name.lower() for name in self.autoattack_attacks]
        if self.autoattack_attacks and self.attack != "autoattack":
            raise ValueError(f"autoattack_attacks {self.autoattack_attacks} needs attack='autoattack', got attack="
                             f"{self.attack!r}.")
        if self.robust:
            # Unknown presets, epsilon=4 for l_inf, ...: clear errors now rather than after the clean sweep.
            build_attack(self.attack, epsilon=self.epsilon, steps=self.attack_steps,
                         target_classes=self.attack_target_classes,
                         autoattack_attacks=self.autoattack_attacks)

    @property
    def all_betas(self) -> list[float]:
        """Sorted, de-duplicated soup weights: ``betas`` plus ``extrapolate_betas``."""
        return sorted(set(self.betas) | set(self.extrapolate_betas))

    @property
    def ensemble_betas(self) -> list[float]:
        """The soup weights at which ensembles are evaluated (those in ``[0, 1]``), or none."""
        return [b for b in self.all_betas if 0.0 <= b <= 1.0] if self.ensembles else []

    @property
    def robust(self) -> bool:
        return self.attack.lower() != "none"


__all__ = [
    "DEFAULT_BETAS",
    "DEFAULT_LANDSCAPE_BETAS",
    "SoupEvaluationArguments",
]
