"""Study presets: everything that differs between the data sets of the reproduction study, in one typed object.

A :class:`StudyPreset` names the data set, the model shape and training recipe of every run, the epsilon grid and
the rule that picks a radius from it, the training subset and the evaluation subsets, the class split of the
transfer section, the soup betas and co-training alphas, the training attacks of Table 2, and the attack that
produces every reported robust number (:attr:`StudyPreset.report_attacks`). A second data set is a second preset
(:data:`STUDY_PRESETS`), never a copy of the engine. :meth:`StudyPreset.quick` shrinks any preset to a smoke run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["STUDY_PRESETS", "ModelShape", "StudyPreset", "TrainingAttack", "TrainingRecipe", "get_study_preset"]


@dataclass(frozen=True)
class ModelShape:
    """The ViT of every run (``scripts/cotrain.py``'s model flags). Defaults: the embedded digits run's tiny ViT."""

    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 128
    patch_size: int = 4
    patch_stride: int | None = None  # None: non-overlapping patches
    pooling: str = "mean"  # the paper's MAE head: mean of the patch tokens

    def to_argv(self) -> list[str]:
        argv = ["--hidden_size", str(self.hidden_size), "--num_hidden_layers", str(self.num_hidden_layers),
                "--num_attention_heads", str(self.num_attention_heads), "--intermediate_size",
                str(self.intermediate_size), "--patch_size", str(self.patch_size), "--pooling", self.pooling]
        if self.patch_stride is not None:
            argv += ["--patch_stride", str(self.patch_stride)]
        return argv


@dataclass(frozen=True)
class TrainingRecipe:
    """The training recipe of every run (``scripts/cotrain.py`` flags; the rest are cotrain's embedded defaults:
    AdamW (0.9, 0.95), cosine schedule, label smoothing 0.1, gradient clipping 1).

    Units: ``base_learning_rate`` per 256 images (the linear scaling rule), ``warmup_epochs`` in epochs,
    ``crop_min_scale`` a fraction of the image area, ``ema_decay`` per optimizer step."""

    num_train_epochs: float
    per_device_train_batch_size: int = 64
    base_learning_rate: float = 1e-2
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    ema_decay: float = 0.99
    random_resized_crop: bool = True
    crop_min_scale: float = 0.6
    horizontal_flip: bool = False
    randaugment_num_layers: int = 0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    train_attack: str = "pgd2"  # the co-training attack of every run but Table 2's (the paper's default)

    def to_argv(self) -> list[str]:
        return [
            "--num_train_epochs", f"{self.num_train_epochs:g}",
            "--per_device_train_batch_size", str(self.per_device_train_batch_size),
            "--base_learning_rate", repr(self.base_learning_rate),
            "--warmup_epochs", f"{self.warmup_epochs:g}",
            "--weight_decay", repr(self.weight_decay),
            "--ema_decay", repr(self.ema_decay),
            "--random_resized_crop", str(self.random_resized_crop).lower(),
            "--crop_min_scale", repr(self.crop_min_scale),
            "--horizontal_flip", str(self.horizontal_flip).lower(),
            "--randaugment_num_layers", str(self.randaugment_num_layers),
            "--mixup_alpha", repr(self.mixup_alpha),
            "--cutmix_alpha", repr(self.cutmix_alpha),
        ]


@dataclass(frozen=True)
class TrainingAttack:
    """One row of a training-attack table (Table 2): a title, the ``--train_attack`` of ``scripts/cotrain.py`` (an
    attack preset of :mod:`hf_advsoup.attacks`, or another training mode cotrain.py accepts), the training step as a
    multiple of epsilon (``None``: the preset's step, rescaled with epsilon), and any further ``scripts/cotrain.py``
    flags the mode needs (e.g. a free-training mode's replay count)."""

    title: str
    preset: str
    step_over_epsilon: float | None = None
    extra_argv: tuple[str, ...] = ()


TABLE2_ATTACKS: tuple[TrainingAttack, ...] = (
    TrainingAttack("PGD-2 (the default)", "pgd2"),
    TrainingAttack("PGD-5", "pgd5"),
    TrainingAttack("FAST-AT, the paper's reduced step", "fast_at"),
    TrainingAttack("N-FGSM, the paper's reduced step", "nfgsm"),
    TrainingAttack("FAST-AT, Wong et al.'s recommended step", "fast_at", 1.25),
    TrainingAttack("N-FGSM, de Jorge et al.'s recommended step", "nfgsm", 1.0),
    TrainingAttack("Free co-training, 4 replays (not in the paper)", "free", None, ("--free_replays", "4")),
)
"""Table 2 of the paper: PGD-2 vs PGD-5 vs the one-step attacks with the paper's reduced steps and with their
authors' recommended (larger) steps, which overfit catastrophically in the paper; and this library's free co-training
(each minibatch replayed 4 times, the perturbation updated from each replay's own backward: no attack passes) at the
same number of optimizer steps."""


@dataclass(frozen=True)
class StudyPreset:
    """One data set's study. Every number a section reports is computed with these settings; the card states them.

    Protocol fields: the study trains on ``train_samples`` images of the training split, tunes (the epsilon of the
    sweep, the alpha of Figure 3) on the validation carve-out of train, and reports on the test split. A data set
    without a test split (``digits``) gives its validation split to ``test`` and carves a new validation split of
    ``validation_fraction`` out of train (``test_from_validation``).
    """

    name: str
    title: str
    dataset_name: str  # an hf_advsoup.data preset (or any data set load_image_dataset accepts)
    output_dir: str  # where the card is written by default
    image_size: int  # pixels (square)
    model: ModelShape
    recipe: TrainingRecipe
    # -- threat model
    epsilon_grid: tuple[str, ...]  # l_inf radii of the epsilon sweep, [0, 1] pixel units ("0.1", "8/255")
    default_epsilon: str  # used when the sweep is not run and no --epsilon is given
    epsilon_max_nominal_robust: float = 0.10  # the rule of choose_epsilon: the nominal model is broken ...
    epsilon_min_clean_ratio: float = 0.90  # ... and adversarial training keeps this fraction of its clean accuracy
    # -- data and evaluation sizes (images; None: the whole split)
    train_samples: int | None = None
    validation_samples: int | None = None  # clean accuracy on validation (tuning, monitoring)
    validation_robust_samples: int = 256  # robust accuracy on the first N validation images (tuning)
    test_samples: int | None = None  # clean accuracy on test (reported)
    test_robust_samples: int = 1000  # robust accuracy on the first N test images (reported)
    test_from_validation: bool = False
    validation_fraction: float = 0.2
    split_seed: int = 0  # the carve-out and the subsets: the same images for every run and seed
    # -- attacks
    report_attacks: tuple[str, ...] = ("pgd40",)  # the attack of record: every reported robust accuracy
    report_attack_steps: int | None = None  # override of their step counts (smoke runs only)
    monitor_samples: int = 128  # robust accuracy monitored after every epoch on the first N validation images
    monitor_steps: int = 10  # steps of the monitoring attack (pgd40 shortened): cheap, for catastrophic overfitting
    # -- sections
    soup_betas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
    soup_robust_samples: int = 500  # first N test images attacked at each beta (the soups' robust numbers)
    soup_extra_points: tuple[str, ...] = ()  # names of hf_advsoup.study.tasks.SOUP_POINTS evaluated beside the soups
    alphas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
    training_attacks: tuple[TrainingAttack, ...] = TABLE2_ATTACKS
    transfer_source_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    transfer_target_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    transfer_steps: int = 300
    transfer_batch_size: int = 64
    transfer_horizontal_flip: bool = False
    transfer_strategies: tuple[str, ...] = ("head", "all")
    # -- the long-horizon section (catastrophic overfitting; its own invocation: --sections all, after the study)
    long_horizon_epochs: float = 30.0  # epochs of each long run (10x the optimizer steps of a 3-epoch study run)
    long_horizon_epsilons: tuple[str, ...] = ("0.1", "0.2")  # radii of the long runs (one above the study's)
    evaluation_batch_size: int = 500  # images per attack call (larger batches: more images per second on a CPU)
    notes: tuple[str, ...] = field(default=())  # why the settings are what they are (one line each, on the card)

    def __post_init__(self) -> None:
        from ..attacks import PRESETS, parse_epsilon

        for text in (*self.epsilon_grid, self.default_epsilon):
            parse_epsilon(text, "linf")  # "4" for 4/255 fails here, with the attacks module's hint
        unknown = [name for name in self.report_attacks if name not in PRESETS]
        if not self.report_attacks or unknown:
            raise ValueError(f"report_attacks must name attack presets of hf_advsoup.attacks ({', '.join(PRESETS)}); "
                             f"got {list(self.report_attacks)}.")
        overlap = set(self.transfer_source_classes) & set(self.transfer_target_classes)
        if overlap or not self.transfer_source_classes or not self.transfer_target_classes:
            raise ValueError("transfer_source_classes and transfer_target_classes must be non-empty and disjoint; "
                             f"got {self.transfer_source_classes} and {self.transfer_target_classes}.")
        for text in self.long_horizon_epsilons:
            parse_epsilon(text, "linf")
        if sorted(set(self.soup_betas)) != sorted(self.soup_betas) or not {0.0, 1.0} <= set(self.soup_betas):
            raise ValueError(f"soup_betas must be increasing, without repeats, and hold 0 and 1; got {self.soup_betas}.")

    def quick(self) -> StudyPreset:
        """The same study at a smoke-test scale (a 2-layer width-32 ViT, 2 epochs, 512 training images, small
        evaluation subsets, the report attack cut to 5 steps, 3 betas and 3 alphas, 10 transfer steps): every
        section and the second-seed logic run in minutes; the numbers mean nothing."""
        from ..attacks import parse_epsilon

        grid = tuple(dict.fromkeys((self.default_epsilon, *self.epsilon_grid)))[:2]
        grid = tuple(sorted(grid, key=lambda text: float(parse_epsilon(text, "linf"))))
        return dataclasses.replace(
            self,
            name=f"{self.name}-quick",
            model=ModelShape(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=self.model.patch_size, patch_stride=self.model.patch_stride,
                             pooling=self.model.pooling),
            recipe=dataclasses.replace(self.recipe, num_train_epochs=2, warmup_epochs=0.5),
            epsilon_grid=grid,
            train_samples=512 if self.train_samples is None else min(512, self.train_samples),
            validation_samples=128, validation_robust_samples=32, test_samples=256, test_robust_samples=64,
            report_attack_steps=5, monitor_samples=32, monitor_steps=3,
            soup_betas=(0.0, 0.5, 1.0), soup_robust_samples=32, alphas=(0.0, 0.5, 1.0), transfer_steps=10,
            long_horizon_epochs=3, long_horizon_epsilons=grid[:1],
            notes=("Quick mode: a smoke test of the pipeline; the numbers mean nothing.",),
        )


DIGITS = StudyPreset(
    name="digits",
    title="digits",
    dataset_name="digits",
    output_dir="model_cards/digits",
    image_size=16,
    model=ModelShape(),
    recipe=TrainingRecipe(num_train_epochs=30),
    epsilon_grid=("4/255", "8/255", "16/255"),
    default_epsilon="8/255",
    train_samples=None,
    validation_samples=None,
    validation_robust_samples=287,
    test_samples=None,
    test_robust_samples=360,
    test_from_validation=True,  # the embedded digits have train/validation only: validation is the test split
    validation_fraction=0.2,
    monitor_samples=128,
    soup_betas=tuple(round(0.1 * i, 1) for i in range(11)),
    soup_robust_samples=360,
    transfer_horizontal_flip=False,  # digits are not mirror-symmetric
    notes=(
        "scikit-learn's 8x8 digits upscaled to 16x16 (offline); the 360 images of its validation split are the "
        "test split, and a stratified 20% of the 1,437 training images is the validation split used for tuning.",
        "The model and recipe are scripts/cotrain.py's embedded digits run (30 epochs, a few seconds each).",
    ),
)

FASHION_MNIST = StudyPreset(
    name="fashion_mnist",
    title="Fashion-MNIST",
    dataset_name="fashion_mnist",
    output_dir="model_cards/fashion-mnist",
    # The main job's model and recipe (scripts/configs/fashion_mnist_tiny.yaml): 16x16 px, patch 4 (16 patches),
    # 2 blocks, class-token pooling, 16,000 images x 3 epochs of batch 32, whole images. Measured: about 155 CPU-s
    # per PGD-2 co-training run, and clean mode 81.7% clean / 13.0% APGD-CE, robust mode 73.7% / 48.2% (README).
    image_size=16,
    model=ModelShape(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     patch_size=4, pooling="cls"),
    recipe=TrainingRecipe(num_train_epochs=3, per_device_train_batch_size=32, base_learning_rate=1e-2,
                          warmup_epochs=1.0, weight_decay=0.05, ema_decay=0.99, random_resized_crop=False,
                          horizontal_flip=False),
    epsilon_grid=("0.05", "0.1", "0.15"),
    default_epsilon="0.1",  # the field's usual l_inf radius on Fashion-MNIST
    epsilon_max_nominal_robust=0.10,
    epsilon_min_clean_ratio=0.85,
    train_samples=16_000,
    validation_samples=2_000,
    validation_robust_samples=500,
    test_samples=None,  # the 10,000 test images for clean accuracy
    test_robust_samples=2000,  # the first 2,000 attacked: sampling error about 1.1 points (0.5 at 10,000)
    report_attacks=("report",),  # PGD-40 + MultiTargeted-9: within 0.1 points of APGD-CE + APGD-T (docs/attacks.md)
    monitor_samples=200,
    monitor_steps=5,
    soup_betas=(0.0, 0.25, 0.5, 0.75, 1.0),
    soup_robust_samples=2000,
    transfer_steps=200,
    transfer_horizontal_flip=False,
    notes=(
        "Zalando's Fashion-MNIST (28x28 grayscale, 10 classes; the offline IDX files), resized to 16x16: training on "
        "a fixed seeded subset of 16,000 of the 54,000 training images left after the validation carve-out (6,000 "
        "stratified images, of which a seeded 2,000 are used for tuning and monitoring), reporting on the 10,000 "
        "test images (robust accuracy on the first 2,000, the same images for every run: paired comparisons).",
        "At l_inf 0.1, the field's usual radius here, adversarial training costs clean accuracy, so the two modes "
        "have a trade-off to show; the epsilon rule accepts adversarial training keeping 85% of the nominal clean "
        "accuracy (Fashion-MNIST's cost at 0.1 is larger than ImageNet's at 4/255).",
        "Every run is the README's main job (16,000 images x 3 epochs, 2 blocks, class-token pooling) so that the "
        "whole study, second seeds included, fits in two hours on two CPU cores: absolute accuracies are those of "
        "three CPU-minutes of training.",
        "Robust accuracy is PGD-40 (Adam) + MultiTargeted towards 9 classes, the attack measured within 0.1 points "
        "of AutoAttack's APGD-CE + APGD-T on Fashion-MNIST co-trained models (docs/attacks.md).",
    ),
)

STUDY_PRESETS: dict[str, StudyPreset] = {preset.name: preset for preset in (FASHION_MNIST, DIGITS)}


def get_study_preset(name: str, quick: bool = False) -> StudyPreset:
    """The preset called ``name`` (:data:`STUDY_PRESETS`), shrunk by :meth:`StudyPreset.quick` when ``quick``."""
    if name not in STUDY_PRESETS:
        raise ValueError(f"Unknown study preset {name!r}; available: {', '.join(STUDY_PRESETS)}. A new data set is a "
                         "new StudyPreset in hf_advsoup/study/presets.py.")
    preset = STUDY_PRESETS[name]
    return preset.quick() if quick else preset
