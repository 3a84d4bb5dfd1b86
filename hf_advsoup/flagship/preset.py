"""The flagship model's settings in one typed object: its recipe, its two baselines, and its evaluation.

A :class:`FlagshipPreset` names the co-training recipe file (``scripts/configs/...``, also runnable alone with
``scripts/cotrain.py``), the command-line changes that make the two baselines from it (nominal training,
``alpha=1``; adversarial training, ``alpha=0``) with the epochs that give them the co-training run's wall time, and
what is evaluated on which test images with which attack. :data:`FASHION_MNIST_FLAGSHIP` is the one shipped;
:meth:`FlagshipPreset.quick` shrinks any preset to a smoke run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["FASHION_MNIST_FLAGSHIP", "FLAGSHIP_PRESETS", "FlagshipPreset", "FlagshipRun", "System",
           "get_flagship_preset"]


@dataclass(frozen=True)
class FlagshipRun:
    """One training run of the flagship: ``scripts/cotrain.py <recipe> <argv>``.

    ``name`` is its folder and key (``cotrained``, ``nominal``, ``adversarial``); ``beta`` the soup weight its
    single-mode evaluation uses (a baseline trains one token: nominal the clean one, ``beta=1``; adversarial the
    adversarial one, ``beta=0``); ``None`` for the co-trained model, evaluated at every beta of the sweep."""

    name: str
    title: str
    argv: tuple[str, ...] = ()
    beta: float | None = None


@dataclass(frozen=True)
class System:
    """What a number is about: the co-trained model at one ``beta`` (a soup; 1 = clean mode, 0 = robust mode), or a
    baseline. ``key`` names it in ``results.json``: ``clean_mode``, ``soup_0.5``, ``robust_mode``, ``nominal``,
    ``adversarial``."""

    run: str
    beta: float

    @property
    def key(self) -> str:
        if self.run != "cotrained":
            return self.run
        return {1.0: "clean_mode", 0.0: "robust_mode"}.get(self.beta, f"soup_{self.beta:g}")

    @property
    def title(self) -> str:
        if self.run != "cotrained":
            return {"nominal": "nominal training", "adversarial": "adversarial training (PGD-2)"}.get(self.run,
                                                                                                      self.run)
        return {1.0: "clean mode (beta 1)", 0.0: "robust mode (beta 0)"}.get(self.beta, f"soup beta {self.beta:g}")


@dataclass(frozen=True)
class FlagshipPreset:
    """Everything that defines the flagship model and its card.

    Units: ``epsilon`` in [0, 1] pixel units (l_inf); image counts are the first N images of the test split, the
    same images for every system (paired comparisons); ``chunk_size`` images per evaluation job (an interrupted
    evaluation loses at most one chunk per worker)."""

    name: str
    title: str
    recipe: str  # path of the co-training recipe, relative to the repository root
    dataset_name: str
    dataset_hub_id: str
    output_dir: str
    runs: tuple[FlagshipRun, ...]
    epsilon: str = "0.1"
    betas: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
    autoattack_betas: tuple[float, ...] = (1.0, 0.5, 0.0)  # soups under full AutoAttack (with the adversarial run)
    autoattack_attacks: tuple[str, ...] = ()  # empty: AutoAttack's standard version; else a custom subset (smoke runs)
    autoattack_examples: int = 1000
    report_examples: int = 2000
    chunk_size: int = 500
    seed: int = 0
    # -- per-image defences (scripts/flagship.py --defences; docs/selection.md): beta="auto" with a selector trained
    # against the system it defends, and the mix family chosen on validation, next to the fixed soups and ensembles
    defence_examples: int = 1000  # the first N test images (within report_examples: the soups' report is reused)
    defence_chunk_size: int = 200
    defence_validation_examples: int = 2000  # validation images the mixtures are chosen on
    mix_floors: tuple[float, ...] = (0.01, 0.03)  # mixtures at robust mode's validation robust accuracy minus these
    ensemble_betas: tuple[float, ...] = (0.5,)
    selector_argv: tuple[str, ...] = (
        "--objective", "composite", "--selector_layers", "1", "--selector_hidden_size", "64",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "64", "--learning_rate", "0.003",
        "--save_strategy", "no", "--eval_strategy", "no", "--max_eval_samples", "1000", "--logging_steps", "50")
    defence_attack_steps: int | None = None  # override of the gradient attacks' steps (smoke runs)
    defence_autoattack_attacks: tuple[str, ...] = ("apgd-ce", "apgd-t")  # (d) on auto and mix: AutoAttack's first two
    quick_mode: bool = False
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        from ..attacks import parse_epsilon

        parse_epsilon(self.epsilon, "linf")
        names = [run.name for run in self.runs]
        if "cotrained" not in names or len(set(names)) != len(names):
            raise ValueError(f"A flagship needs one run named 'cotrained' and unique run names, got {names}.")
        if not {0.0, 1.0} <= set(self.betas) or not set(self.autoattack_betas) <= set(self.betas):
            raise ValueError("betas must hold 0 and 1, and autoattack_betas must be among them.")
        if min(self.autoattack_examples, self.report_examples, self.chunk_size) < 1:
            raise ValueError("autoattack_examples, report_examples and chunk_size must be positive.")
        if self.defence_examples > self.report_examples:
            raise ValueError("defence_examples must be at most report_examples (the fixed soups' report attack is "
                             "the main evaluation's, on the same images).")

    def run(self, name: str) -> FlagshipRun:
        return next(run for run in self.runs if run.name == name)

    @property
    def soups(self) -> list[System]:
        return [System("cotrained", beta) for beta in sorted(self.betas, reverse=True)]

    @property
    def baselines(self) -> list[System]:
        return [System(run.name, run.beta) for run in self.runs if run.name != "cotrained"]

    def autoattack_systems(self) -> list[System]:
        """Full AutoAttack: the soups of ``autoattack_betas`` and the adversarial baseline."""
        return ([System("cotrained", beta) for beta in sorted(self.autoattack_betas, reverse=True)]
                + [s for s in self.baselines if s.run == "adversarial"])

    def report_systems(self) -> list[System]:
        """The ``report`` attack: every soup of the sweep and both baselines."""
        return self.soups + self.baselines

    def quick(self) -> FlagshipPreset:
        """A smoke run of the whole pipeline (a 1-layer width-32 ViT, a few steps, tiny evaluation, the report attack
        cut to 3 steps and AutoAttack to APGD-CE): a minute on a CPU; the numbers mean nothing."""
        tiny = ("--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
                "--intermediate_size", "64", "--max_train_samples", "256", "--max_eval_samples", "64",
                "--robust_eval_samples", "16", "--eval_attack_steps", "2", "--logging_steps", "2",
                "--save_strategy", "epoch")
        runs = tuple(dataclasses.replace(run, argv=tuple(a for a in run.argv) + tiny + ("--num_train_epochs", "1"))
                     for run in self.runs)
        return dataclasses.replace(self, name=f"{self.name}-quick", runs=runs, betas=(0.0, 0.5, 1.0),
                                   autoattack_attacks=("apgd-ce",), autoattack_examples=8, report_examples=16,
                                   chunk_size=8, defence_examples=8, defence_chunk_size=4,
                                   defence_validation_examples=16, defence_attack_steps=2,
                                   defence_autoattack_attacks=("apgd-ce",),
                                   selector_argv=self.selector_argv + ("--max_train_samples", "64",
                                                                       "--max_eval_samples", "16"),
                                   quick_mode=True,
                                   notes=("Quick mode: a smoke test of the pipeline; the numbers mean nothing.",))


_FOUR_EVALUATIONS = ("--eval_strategy", "steps", "--eval_steps", "0.25", "--save_strategy", "steps", "--save_steps",
                     "0.25")

FASHION_MNIST_FLAGSHIP = FlagshipPreset(
    name="fashion-mnist-flagship",
    title="Fashion-MNIST",
    recipe="scripts/configs/fashion_mnist_flagship.yaml",
    dataset_name="fashion_mnist",
    dataset_hub_id="zalando-datasets/fashion_mnist",
    output_dir="model_cards/fashion-mnist-flagship",
    # The baselines get the co-training run's wall time: epochs scaled by the measured images per second of each
    # kind of step (two jobs side by side, one thread each, the recipe's model and batch: co-training 149.6 and
    # 144.1, adversarial training 208.6, nominal training 469.8 images/s; docs/flagship.md), i.e. 1.39x and 3.26x
    # the co-training run's 4 epochs; and the same 4 evaluations (every quarter of the steps). The nominal run
    # monitors clean accuracy only (its adversarial token is never trained).
    runs=(
        FlagshipRun("cotrained", "co-training (dual classification token)"),
        FlagshipRun("nominal", "nominal training", ("--alpha", "1", "--num_train_epochs", "13.04",
                                                    "--robust_eval_samples", "0", *_FOUR_EVALUATIONS), beta=1.0),
        FlagshipRun("adversarial", "adversarial training (PGD-2)", ("--alpha", "0", "--num_train_epochs", "5.57",
                                                                    *_FOUR_EVALUATIONS), beta=0.0),
    ),
)

FLAGSHIP_PRESETS: dict[str, FlagshipPreset] = {FASHION_MNIST_FLAGSHIP.name: FASHION_MNIST_FLAGSHIP}


def get_flagship_preset(name: str, quick: bool = False) -> FlagshipPreset:
    """The preset called ``name`` (:data:`FLAGSHIP_PRESETS`), shrunk by :meth:`FlagshipPreset.quick` when ``quick``."""
    if name not in FLAGSHIP_PRESETS:
        raise ValueError(f"Unknown flagship preset {name!r}; available: {', '.join(FLAGSHIP_PRESETS)}.")
    preset = FLAGSHIP_PRESETS[name]
    return preset.quick() if quick else preset
