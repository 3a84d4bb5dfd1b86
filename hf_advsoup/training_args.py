"""Arguments of adversarial co-training (:class:`~hf_advsoup.training.CoTrainer`).

:class:`CoTrainingArguments` is a :class:`~transformers.TrainingArguments` subclass, parsed by
:class:`~transformers.HfArgumentParser` from the command line or from YAML/JSON recipe files (see
``scripts/configs/``). It adds what the co-training loss (Eq. 2 of Rebuffi et al., "Revisiting adapters with
adversarial training", ICLR 2023) and the paper's recipe (appendix A) need, and changes some defaults of
``TrainingArguments`` to the paper's values:

==========================  =======================  ======================================================
field                       default here             paper (appendix A)
==========================  =======================  ======================================================
``adam_beta2``              0.95                     AdamW betas (0.9, 0.95)
``weight_decay``            0.3                      0.3
``lr_scheduler_type``       ``"cosine"``             cosine decay
``label_smoothing_factor``  0.1                      0.1
``base_learning_rate``      ``None`` (off)           1e-4 (ImageNet ViT-B16), 2e-4 (small data sets, ViT-S),
                                                     linearly scaled by ``global batch / 256``
``warmup_epochs``           ``None`` (off)           20 of 300 epochs
``ema_decay``               0.9999                   0.9999
``alpha``                   0.5                      0.5 in Table 1, best 0.4
``train_attack``            ``"pgd2"``               PGD-2, l_inf, eps 4/255, step 2.5/255
``logging_nan_inf_filter``  ``False``                (not in the paper) the trainer's own deferred check stops
                                                     on a non-finite loss; the filter would read every step's
                                                     loss back from the device
==========================  =======================  ======================================================

``train_attack="free"`` selects free co-training (Shafahi et al., "Adversarial Training for Free!", NeurIPS 2019;
:class:`~hf_advsoup.training.CoTrainer`): each minibatch is replayed ``free_replays`` times and the perturbation
is updated from the gradient of the training step itself. ``num_train_epochs`` then counts the optimizer steps of a
normal run of that many epochs; the data is passed about ``num_train_epochs / free_replays`` times (see
``docs/cotraining.md``).

Epsilons and attack step sizes are always in **pixel units of [0, 1] images** (``"4/255"`` is accepted), never in
the normalized units the model sees.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

logger = logging.getLogger(__name__)

FREE_TRAIN_ATTACK = "free"
"""``train_attack`` value selecting free co-training (one sign step of the perturbation per replayed minibatch)."""
FREE_STARTS = ("carry", "zero", "random")
"""Values of ``free_start``: where the perturbation of a new minibatch starts."""
_FREE_SAMPLING = ("random", "sequential")
"""``train_sampling_strategy`` values free co-training can replay (group_by_length/batch_rebalance reorder batches)."""

_REFERENCE_BATCH = 256
"""Batch size of the linear learning-rate scaling rule (Goyal et al. 2017): ``lr = base_lr * batch / 256``."""


@dataclass
class CoTrainingArguments(TrainingArguments):
    r"""Training arguments of :class:`~hf_advsoup.CoTrainer` (adversarial co-training, Eq. 2).

    Every :class:`~transformers.TrainingArguments` field is accepted; the defaults of ``adam_beta2``,
    ``weight_decay``, ``lr_scheduler_type``, ``label_smoothing_factor`` and ``remove_unused_columns`` are the paper's
    (see the module docstring). Attack fields left at ``None`` take the preset's value
    (:meth:`hf_advsoup.attacks.AttackConfig.from_preset`).

    Example:

    ```python
    >>> from hf_advsoup.training_args import CoTrainingArguments
    >>> args = CoTrainingArguments(output_dir="runs/x", alpha=0.4, train_attack="pgd2", train_epsilon="4/255",
    ...                            base_learning_rate=2e-4, per_device_train_batch_size=128)
    >>> args.learning_rate  # 2e-4 * 128 / 256 on one process
    0.0001
    ```
    """

    # ------------------------------------------------------------------ co-training (Eq. 2)
    alpha: float = field(
        default=0.5,
        metadata={
            "help": "Co-training weight alpha of Eq. 2 (unitless, in [0, 1]): loss = alpha * CE(clean images, clean "
            "mode) + (1 - alpha) * CE(adversarial images, robust mode). 1 = nominal training (no attack is "
            "computed), 0 = pure adversarial training (no clean forward). Paper: 0.5 in Table 1, best 0.4."
        },
    )
    # ------------------------------------------------------------------ training attack
    train_attack: str = field(
        default="pgd2",
        metadata={
            "help": "Preset of the attack that makes the adversarial half of each batch (see "
            "hf_advsoup.attacks.AttackConfig.from_preset; e.g. 'pgd2', 'pgd5', 'fast_at', 'nfgsm'). It attacks the "
            "robust-mode (adversarial-token) model in eval mode. Paper: 'pgd2' (l_inf, eps 4/255, 2 steps of 2.5/255). "
            "'free': free co-training (Shafahi et al. 2019): every minibatch is replayed free_replays times, each "
            "replay one Eq. 2 step on [clean, clean + delta] whose backward also updates delta by a sign step of "
            "train_attack_step_size (default: train_epsilon, Shafahi's choice), l_inf only."
        },
    )
    free_replays: int | None = field(
        default=None,
        metadata={
            "help": "Free co-training (train_attack='free'): optimizer steps taken on each minibatch (m in Shafahi "
            "et al. 2019, who use 4 to 10). Default: 4. num_train_epochs still counts the optimizer steps of a "
            "normal run of that many epochs, so the data is seen about num_train_epochs / free_replays times. Only "
            "valid with train_attack='free'."
        },
    )
    free_start: str = field(
        default="carry",
        metadata={
            "help": "Free co-training: the perturbation a new minibatch starts from. 'carry' (default, Shafahi et "
            "al.'s Algorithm 1 and code): the previous minibatch's final perturbation, projected onto the new "
            "images' [0, 1] box (zero at the start of the run); 'zero': zero; 'random': uniform in the eps-ball."
        },
    )
    train_attack_norm: str | None = field(
        default=None,
        metadata={"help": "Threat model of the training attack: 'linf' or 'l2'. Default: the preset's ('linf')."},
    )
    train_epsilon: str | None = field(
        default=None,
        metadata={
            "help": "Radius of the training attack in pixel units of [0, 1] images, as a number or fraction "
            "('4/255'). Default: the preset's. Paper: 4/255 (l_inf); {1, 2, 4, 8} for l_2; {4, 8, 12}/255 targeted."
        },
    )
    train_attack_steps: int | None = field(
        default=None,
        metadata={"help": "Number of attack iterations (forward+backward passes). Default: the preset's. Paper: 2."},
    )
    train_attack_step_size: str | None = field(
        default=None,
        metadata={
            "help": "Attack step size in pixel units of [0, 1] images, number or fraction ('2.5/255'). Default: "
            "the preset's. Paper: 2.5/255 for PGD-2, 1/255 for PGD-5."
        },
    )
    train_attack_targeted: bool | None = field(
        default=None,
        metadata={
            "help": "Attack towards a random target class (as AdvProp) instead of away from the label. Default: the "
            "preset's (untargeted)."
        },
    )
    train_attack_random_start: bool | None = field(
        default=None,
        metadata={
            "help": "Start the attack from a uniformly random point of the eps-ball. Default: the preset's (True for "
            "PGD-2, as in the paper). Its randomness is drawn from a generator seeded by (seed, optimizer step, "
            "micro-batch, process index), so a resumed run repeats it."
        },
    )
    # ------------------------------------------------------------------ monitoring
    eval_attack: str | None = field(
        default="pgd40",
        metadata={
            "help": "Preset of the attack used to monitor robust accuracy (robust mode, beta=0) during evaluation, "
            "on a fixed subset of the evaluation set (robust_eval_samples). None disables robust monitoring. Paper: "
            "PGD-40 ('pgd40', Adam, step 0.1 decayed 10x at steps 20 and 30); use eval_attack_steps or 'pgd5' for "
            "cheaper monitoring."
        },
    )
    eval_epsilon: str | None = field(
        default=None,
        metadata={"help": "Radius of the monitoring attack in pixel units ('4/255'). Default: the preset's."},
    )
    eval_attack_steps: int | None = field(
        default=None, metadata={"help": "Iterations of the monitoring attack. Default: the preset's."}
    )
    robust_eval_samples: int = field(
        default=256,
        metadata={
            "help": "Number of evaluation images (the first ones of the evaluation set, summed over processes) on "
            "which robust accuracy is measured at each evaluation. 0 disables robust monitoring."
        },
    )
    soup_table: bool = field(
        default=False,
        metadata={
            "help": "scripts/cotrain.py ends by printing the soups' clean and robust accuracy at beta 1, 0.5 and 0 on "
            "the test split (else the evaluation split) and whether they show a clean-vs-robust trade-off "
            "(hf_advsoup.soup_table; also saved as soup_table.md). On in the tiny recipes."
        },
    )
    soup_table_attack: str = field(
        default="apgd-ce",
        metadata={
            "help": "Attack of the soup table's robust column: an AutoAttack attack ('apgd-ce', several joined by "
            "'+') or a preset of hf_advsoup.attacks ('report', 'pgd40'). Radius: eval_epsilon, else train_epsilon."
        },
    )
    soup_table_robust_samples: int = field(
        default=500,
        metadata={"help": "Images attacked for the soup table (the first ones of its split)."},
    )
    catastrophic_overfitting_drop: float = field(
        default=0.5,
        metadata={
            "help": "Catastrophic overfitting is reported when robust accuracy falls below this fraction of the best "
            "robust accuracy seen so far (unitless, in (0, 1)); e.g. 0.5 = it halved. Paper (Figure 6, 10): "
            "one-step attacks with large steps and the fully shared model collapse to ~0%%."
        },
    )
    catastrophic_overfitting_min_best: float = field(
        default=0.05,
        metadata={
            "help": "Only report catastrophic overfitting once the best robust accuracy has exceeded this value "
            "(fraction in [0, 1]) and twice the chance level 1/num_labels; avoids false alarms while robust "
            "accuracy is still near chance early in training."
        },
    )
    stop_on_catastrophic_overfitting: bool = field(
        default=False,
        metadata={
            "help": "Stop training when catastrophic overfitting is detected; the collapsed weights are not saved as "
            "a checkpoint and the last good checkpoint is restored (scripts/cotrain.py saves it as the final model)."
        },
    )
    # ------------------------------------------------------------------ recipe (appendix A)
    base_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Base learning rate of the linear scaling rule: learning_rate = base_learning_rate * global "
            "batch / 256, global batch = per_device_train_batch_size * processes * gradient_accumulation_steps. "
            "Overrides learning_rate when set. Paper: 1e-4 (ImageNet ViT-B16, batch 4096 -> 1.6e-3), 2e-4 "
            "(small data sets, ViT-S, batch 1024)."
        },
    )
    warmup_epochs: float | None = field(
        default=None,
        metadata={
            "help": "Linear learning-rate warm-up in epochs (overrides warmup_steps when set). Paper: 20 (of 300)."
        },
    )
    ema_decay: float = field(
        default=0.9999,
        metadata={
            "help": "Decay of the exponential moving average of the weights, per optimizer step (unitless, in "
            "[0, 1)); the EMA weights are used for evaluation and for the saved model. 0 disables EMA. Paper: 0.9999."
        },
    )
    ema_warmup: bool = field(
        default=True,
        metadata={
            "help": "Use decay min(ema_decay, (1 + n) / (10 + n)) at update n, so that short runs get a useful "
            "average (with 0.9999 the EMA needs ~10k steps to forget its initialisation). The paper does not say; "
            "it makes no difference after ~100k steps."
        },
    )
    # ------------------------------------------------------------------ the output folder
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Continue a run: a checkpoint folder (<output_dir>/checkpoint-N), or 'latest' (also 'true', "
            "True) for the last complete checkpoint in --output_dir. The resumed run repeats the uninterrupted one "
            "exactly (see docs/cotraining.md)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Let scripts/cotrain.py start a new run in an --output_dir that is not empty: the new run's "
            "files replace the old ones and the old checkpoint-N folders are deleted once training has started "
            "(a start that fails changes nothing). Without it such a folder is refused, unless "
            "--resume_from_checkpoint continues the run in it."
        },
    )
    # ------------------------------------------------------------------ paper defaults of TrainingArguments fields
    adam_beta2: float = field(
        default=0.95, metadata={"help": "AdamW second-moment decay (unitless). Paper: 0.95 (betas 0.9, 0.95)."}
    )
    weight_decay: float = field(
        default=0.3,
        metadata={
            "help": "AdamW decoupled weight decay (unitless). Not applied to biases, LayerNorms, classification "
            "tokens and position embeddings (MAE recipe); both copies of an adapter are treated alike. Paper: 0.3."
        },
    )
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "Learning-rate schedule after warm-up. Paper: 'cosine'."}
    )
    label_smoothing_factor: float = field(
        default=0.1,
        metadata={
            "help": "Label smoothing of both terms of Eq. 2 (unitless, in [0, 1)): targets become (1 - s) * y + s / "
            "num_labels, also for soft mixup/CutMix targets. Paper: 0.1."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Keep all dataset columns: on-the-fly transforms (set_transform) need the raw image column."
        },
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "Trainer's filter that replaces a non-finite loss by the running mean in the logs. Off by "
            "default: it reads every step's loss back from the device (a host synchronisation per step), and "
            "CoTrainer stops on a non-finite loss anyway (at the next logging step, save or evaluation)."
        },
    )

    def __post_init__(self):
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (1 = nominal, 0 = adversarial training), got {self.alpha}.")
        self.alpha = float(self.alpha)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 disables EMA), got {self.ema_decay}.")
        if not 0.0 <= self.label_smoothing_factor < 1.0:
            raise ValueError(f"label_smoothing_factor must be in [0, 1), got {self.label_smoothing_factor}.")
        if not 0.0 < self.catastrophic_overfitting_drop < 1.0:
            raise ValueError(
                f"catastrophic_overfitting_drop must be in (0, 1), got {self.catastrophic_overfitting_drop}."
            )
        if self.soup_table:
            from .soup_table import check_table_attack

            # A typo, or an attack whose optional package is missing, fails now, not after training.
            check_table_attack(self.soup_table_attack)
        if self.soup_table_robust_samples < 1:
            raise ValueError(f"soup_table_robust_samples must be >= 1, got {self.soup_table_robust_samples}.")
        if self.robust_eval_samples < 0:
            raise ValueError(f"robust_eval_samples must be >= 0, got {self.robust_eval_samples}.")
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}.")
        self._check_free_training()
        # Build both attacks now: a typo in a preset name or an epsilon of 4 (meaning 4/255) fails at parse time,
        # with the attacks module's message, not hours into a run.
        if self.alpha < 1.0:
            self.train_attack_config()
        self.eval_attack_config()
        super().__post_init__()
        if self.base_learning_rate is not None:
            if self.base_learning_rate <= 0:
                raise ValueError(f"base_learning_rate must be > 0, got {self.base_learning_rate}.")
            self.learning_rate = self.base_learning_rate * self.global_train_batch_size / _REFERENCE_BATCH
            logger.info(
                "Linear scaling rule: learning_rate = %g * %d / %d = %g",
                self.base_learning_rate,
                self.global_train_batch_size,
                _REFERENCE_BATCH,
                self.learning_rate,
            )

    def _check_free_training(self) -> None:
        if not self.free_training:
            if self.free_replays is not None:
                raise ValueError(
                    f"free_replays={self.free_replays} only applies to free co-training; set train_attack='free' "
                    f"(it is {self.train_attack!r}) or drop free_replays."
                )
            return
        if self.free_replays is None:
            self.free_replays = 4
        if isinstance(self.free_replays, bool) or int(self.free_replays) != self.free_replays or self.free_replays < 1:
            raise ValueError(f"free_replays must be an integer >= 1, got {self.free_replays!r}.")
        self.free_replays = int(self.free_replays)
        if self.free_start not in FREE_STARTS:
            raise ValueError(f"free_start must be one of {', '.join(FREE_STARTS)}, got {self.free_start!r}.")
        problems = []
        if self.alpha >= 1.0:
            problems.append("alpha=1 is nominal training: there is no adversarial half to perturb (use alpha < 1, "
                            "or another train_attack)")
        if self.free_replays == 1 and self.free_start != "carry":
            problems.append(f"free_replays=1 with free_start={self.free_start!r} never uses an updated perturbation "
                            "(each minibatch is seen once, from a fresh start): use free_replays >= 2 or "
                            "free_start='carry'")
        if self.train_attack_steps not in (None, 1):
            problems.append(f"train_attack_steps={self.train_attack_steps}: free co-training takes one step per "
                            "replay; set the number of replays with free_replays")
        if self.train_attack_norm not in (None, "linf"):
            problems.append(f"train_attack_norm={self.train_attack_norm!r}: free co-training implements Shafahi et "
                            "al.'s l_inf sign step only")
        if self.train_attack_targeted:
            problems.append("train_attack_targeted: free co-training ascends the training loss itself (untargeted)")
        if self.train_attack_random_start:
            problems.append("train_attack_random_start: a free perturbation's start is free_start "
                            "('carry', 'zero' or 'random')")
        strategy = str(getattr(self.train_sampling_strategy, "value", self.train_sampling_strategy))
        if strategy not in _FREE_SAMPLING:
            problems.append(f"train_sampling_strategy={strategy!r}: free co-training replays the batches of a "
                            f"{' or '.join(_FREE_SAMPLING)} sampler")
        accelerator = self.accelerator_config
        for name in ("split_batches", "dispatch_batches"):
            value = accelerator.get(name) if isinstance(accelerator, dict) else getattr(accelerator, name, None)
            if value:
                problems.append(f"accelerator_config.{name}=True: free co-training gives each process whole "
                                "batches of its own to replay")
        if problems:
            raise ValueError("train_attack='free' is incompatible with: " + "; ".join(problems) + ".")

    @property
    def free_training(self) -> bool:
        """Whether ``train_attack`` selects free co-training (``"free"``)."""
        return self.train_attack == FREE_TRAIN_ATTACK

    @property
    def global_train_batch_size(self) -> int:
        """Images per optimizer step over all processes (clean images; the attack doubles the forward batch)."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * max(self.world_size, 1)

    def warmup_steps_for(self, num_update_steps_per_epoch: int, num_training_steps: int) -> int:
        """Warm-up length in optimizer steps: ``warmup_epochs`` converted with the epoch length, else
        :meth:`~transformers.TrainingArguments.get_warmup_steps`."""
        if self.warmup_epochs is None:
            return self.get_warmup_steps(num_training_steps)
        return min(math.ceil(self.warmup_epochs * num_update_steps_per_epoch), num_training_steps)

    # ------------------------------------------------------------------ attacks
    def train_attack_config(self):
        """The :class:`~hf_advsoup.attacks.AttackConfig` of the training attack (preset + overrides).

        For free co-training (``train_attack="free"``): the l_inf ball and the sign step of each replay, as the
        ``fast_at`` preset (one step of size epsilon, Shafahi et al.'s choice) with ``train_epsilon`` and
        ``train_attack_step_size``; ``random_start`` is ``free_start == "random"``.
        """
        if self.free_training:
            return _attack_config(
                "fast_at",
                epsilon=self.train_epsilon,
                step_size=self.train_attack_step_size,
                random_start=self.free_start == "random",
            )
        return _attack_config(
            self.train_attack,
            norm=self.train_attack_norm,
            epsilon=self.train_epsilon,
            steps=self.train_attack_steps,
            step_size=self.train_attack_step_size,
            targeted=self.train_attack_targeted,
            random_start=self.train_attack_random_start,
        )

    def eval_attack_config(self):
        """The :class:`~hf_advsoup.attacks.AttackConfig` used for robust-accuracy monitoring, or ``None``."""
        if self.eval_attack is None or self.robust_eval_samples == 0:
            return None
        return _attack_config(self.eval_attack, epsilon=self.eval_epsilon, steps=self.eval_attack_steps)

    def soup_table_epsilon(self) -> float:
        """Radius of the soup table's attack (pixel units): ``eval_epsilon`` when set, else ``train_epsilon``, else the
        monitoring preset's (``pgd40``'s when monitoring is off)."""
        from .attacks import AttackConfig, parse_epsilon

        for value in (self.eval_epsilon, self.train_epsilon):
            if value is not None:
                return parse_epsilon(value, "linf")
        return float(AttackConfig.from_preset(self.eval_attack or "pgd40").epsilon)


def _attack_config(preset: str, **overrides):
    """``AttackConfig.from_preset(preset, **overrides)`` with the ``None`` overrides dropped (they keep the preset's
    value). Overriding only the epsilon rescales the preset's step size with it (see ``from_preset``)."""
    from .attacks import AttackConfig

    return AttackConfig.from_preset(preset, **{k: v for k, v in overrides.items() if v is not None})


__all__ = ["FREE_STARTS", "FREE_TRAIN_ATTACK", "CoTrainingArguments"]
