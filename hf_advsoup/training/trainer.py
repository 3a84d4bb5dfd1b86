"""Adversarial co-training (Eq. 2 of Rebuffi, Croce & Gowal, "Revisiting adapters with adversarial training", ICLR
2023) as a :class:`~transformers.Trainer` subclass.

Differences from :class:`~transformers.Trainer`:

- **Loss** (:meth:`CoTrainer.compute_loss`): ``alpha * CE(f(x; psi + phi_clean), y) + (1 - alpha) *
  CE(f(x_adv; psi + phi_adv), y)`` with label smoothing applied to (possibly soft, mixup/CutMix) targets. ``x_adv``
  comes from the training attack (:func:`hf_advsoup.attacks.attack`) run on the *robust-mode* model (``beta=0``, the
  adversarial adapter) in eval mode, through the unwrapped model (no DDP hooks). Clean and adversarial images then go
  through **one** batched forward of the wrapped (DDP) model with a per-sample ``beta`` (1 for the clean half, 0 for
  the adversarial half). ``alpha=1`` computes no attack, ``alpha=0`` runs no clean forward. The loss is a per-batch
  mean, divided by the Trainer for gradient accumulation (``model_accepts_loss_kwargs = False``).
- **Free co-training** (``train_attack="free"``, Shafahi et al. 2019): each minibatch is replayed ``free_replays``
  times by the data loader (:class:`~hf_advsoup.free_training.FreeReplaySampler`); each replay is one Eq. 2 step on
  ``[clean, clean + delta]`` whose backward also gives the gradient of ``delta`` (a pixel-space leaf), which then
  takes a sign step in :meth:`CoTrainer.training_step`. ``num_train_epochs`` keeps counting the optimizer steps of a
  normal run. The perturbations are saved in checkpoints for exact resume.
- **No host synchronisation per step**: loss terms, the finiteness check, the input range and label checks
  accumulate on the device (:class:`StepChecks`) and are read at logging steps, saves and evaluations; a non-finite
  loss stops the run at the first of those after it, before anything is checkpointed.
- **Batch augmentation**: an optional ``batch_augmenter`` (:class:`hf_advsoup.augmentation.BatchAugmenter`:
  RandAugment, mixup, CutMix) runs on ``[0, 1]`` pixels before the attack, so the attack sees the augmented images.
- **Randomness**: augmentation and attack draw from a ``torch.Generator`` seeded by ``(seed, optimizer step,
  micro-batch, process index)``, and the per-image crops and flips of the training transform
  (:class:`hf_advsoup.data.ImageClassificationTransform`) from one seeded by ``(data_seed or seed, epoch, image)``
  (:class:`TransformEpochCallback`), so ``--resume_from_checkpoint`` repeats them exactly, also mid-epoch.
- **Checkpoints** (:mod:`.checkpoints`): ``resume_from_checkpoint`` accepts ``True``/``"true"``/``"latest"`` (the
  last complete ``checkpoint-N`` of ``output_dir``); checkpoints and the best model of ``load_best_model_at_end`` are
  reloaded through ``from_pretrained`` (ViT's checkpoint key conversion) with their EMA; a truncated weights file is
  named (:class:`CorruptCheckpointError`).
- **EMA** of the weights (:class:`WeightEMA`, ``ema_decay``): evaluation and :meth:`CoTrainer.save_model` use the EMA
  weights; checkpoints keep the raw weights (``model.safetensors``) and the EMA (``ema.safetensors``) for resuming.
- **Monitoring**: evaluation logs ``eval_clean_accuracy`` (clean mode, ``beta=1``, whole evaluation set) and
  ``eval_robust_accuracy`` (robust mode, ``beta=0``, ``eval_attack`` on the first ``robust_eval_samples`` images)
  plus ``eval_robust_mode_clean_accuracy`` on the same subset. :class:`CatastrophicOverfittingCallback` warns when
  robust accuracy collapses (Figures 6 and 10: one-step attacks, fully shared model) and can stop the run and
  restore the last good checkpoint.
- **Safety**: a non-finite loss raises :class:`NonFiniteLossError` on every process (no silent skipping), at the
  next log, save or evaluation.
- **Weight decay** follows MAE: none on biases, LayerNorms, classification tokens and position embeddings; both
  copies of an adapter always get the same treatment.
- **FSDP** (:mod:`.distributed`): a CPU run launched with FSDP becomes one (accelerate enables FSDP on accelerators
  only); FSDP2 is initialised before the first attack (whose frozen weights would leave its gradient dtypes unset);
  the saved model is whole and keeps its own class for the remote code; the EMA follows the shards.
- **Streaming** (:class:`hf_advsoup.data.StreamingTrainSet`): the loader of this process's part of the stream
  (not re-split by accelerate), its position saved per process in checkpoints and restored on resume.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable

import torch
from accelerate.data_loader import SeedableRandomSampler
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler
from transformers import PreTrainedModel, Trainer, get_scheduler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..attacks import Normalization, attack, check_pixel_range, linf_bounds, linf_sign_step, pixel_range_excess
from ..data.streaming import StreamingTrainSet
from ..free_training import FreeBatch, FreeReplaySampler, free_state_file, load_free_state, save_free_state
from ..modeling_advsoup import SoupWeights
from ..training_args import CoTrainingArguments
from .callbacks import CatastrophicOverfittingCallback, TransformEpochCallback
from .checkpoints import check_weight_files, resolve_checkpoint
from .distributed import enable_fsdp_on_cpu, initialize_before_attacks, plain_class
from .ema import EMA_WEIGHTS_NAME, EMACallback, WeightEMA
from .losses import compute_accuracy, hard_labels, smoothed_targets, soft_cross_entropy
from .randomness import step_generator
from .step_checks import NonFiniteLossError, StepChecks

logger = logging.getLogger(__name__)

STREAM_STATE_NAME = "stream_state-{process}-of-{processes}.pt"
"""File of a checkpoint holding one process's position in a streamed training set (``--streaming``)."""

BatchAugmenterFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""``(images01 (B, C, H, W), labels (B,), num_classes, generator) -> (images01, soft labels (B, num_classes))``."""


class CoTrainer(Trainer):
    r"""Trainer for adversarial co-training of :class:`~hf_advsoup.AdvSoupViTForImageClassification` (Eq. 2).

    Works for every adapter type, including ``"none"`` (the fully shared baseline: the two halves of the batch then
    share all weights), and for ``alpha`` in [0, 1]: nominal (1), adversarial (0), co-training (in between).

    Args:
        model: an :class:`~hf_advsoup.AdvSoupViTForImageClassification` (any model whose forward takes
            ``pixel_values`` and a per-sample ``beta`` works).
        args: :class:`~hf_advsoup.CoTrainingArguments`.
        normalization: the image processor's mean/std, to move between model inputs and [0, 1] pixels (attacks
            and augmentation work in pixel space). Default: read from ``processing_class``.
        batch_augmenter: optional batch augmentation on [0, 1] pixels, e.g.
            :class:`~hf_advsoup.augmentation.BatchAugmenter` (RandAugment, mixup, CutMix).
        **kwargs: everything :class:`~transformers.Trainer` takes (``train_dataset``, ``eval_dataset``,
            ``data_collator``, ``processing_class``, ``callbacks``, ...). ``compute_metrics`` defaults to
            :func:`compute_accuracy`.

    Example:

    ```python
    >>> trainer = CoTrainer(model=model, args=CoTrainingArguments(output_dir="runs/x", alpha=0.5),
    ...                     train_dataset=train, eval_dataset=val, data_collator=collate_fn,
    ...                     processing_class=image_processor)
    >>> trainer.train()
    >>> trainer.evaluate()  # {"eval_clean_accuracy": ..., "eval_robust_accuracy": ..., ...}
    >>> trainer.save_model()  # EMA weights + image processor
    ```
    """

    args: CoTrainingArguments

    def __init__(
        self,
        model: nn.Module | None = None,
        args: CoTrainingArguments | None = None,
        *,
        normalization: Normalization | None = None,
        batch_augmenter: BatchAugmenterFn | None = None,
        **kwargs,
    ):
        if not isinstance(args, CoTrainingArguments):
            raise TypeError(f"CoTrainer needs CoTrainingArguments, got {type(args).__name__}.")
        kwargs.setdefault("compute_metrics", compute_accuracy)
        super().__init__(model=model, args=args, **kwargs)
        # Our forward has **kwargs, so Trainer would assume compute_loss already divides by the accumulation steps
        # (gradients GA times too large). Eq. 2 is a per-batch mean: let the Trainer divide it.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        if normalization is None:
            processor = self.processing_class
            if processor is None or getattr(processor, "image_mean", None) is None:
                raise ValueError(
                    "CoTrainer needs the image normalization (attacks and augmentation work on [0, 1] pixels): pass "
                    "normalization=Normalization(mean, std) or processing_class=<the image processor>."
                )
            normalization = Normalization.from_processor(processor)
        self.normalization = normalization
        self.batch_augmenter = batch_augmenter
        self.train_attack = args.train_attack_config() if args.alpha < 1.0 else None
        self.eval_attack = args.eval_attack_config()
        self.ema = WeightEMA(args.ema_decay, args.ema_warmup) if args.ema_decay > 0 else None
        if self.ema is not None:
            self.add_callback(EMACallback(self.ema))
        self.overfitting_monitor = CatastrophicOverfittingCallback(
            drop=args.catastrophic_overfitting_drop,
            min_best=args.catastrophic_overfitting_min_best,
            stop=args.stop_on_catastrophic_overfitting,
            num_labels=getattr(self.accelerator.unwrap_model(self.model).config, "num_labels", None),
            cause=(f"free co-training, {args.free_replays} replays of a sign step of "
                   f"{self.train_attack.effective_step_size * 255:.3g}/255 at eps "
                   f"{self.train_attack.epsilon * 255:.3g}/255 (a one-step attack per replay: try a smaller "
                   "train_attack_step_size, more free_replays, or train_attack='pgd2')") if self.free_training else None,
        )
        self.add_callback(self.overfitting_monitor)
        self.add_callback(TransformEpochCallback())
        self._rng_position: tuple[int, int] | None = None
        self.checks = StepChecks()
        # Free co-training: per micro-batch index, the minibatch being replayed; the replays awaiting their update.
        self._free_batches: dict[int, FreeBatch] = {}
        self._free_pending: list[FreeBatch] = []
        self._inv_stds: dict[tuple[torch.device, int], torch.Tensor] = {}
        # --streaming: this process's stream and its loader; the position a resumed run starts from.
        self._stream: StreamingTrainSet | None = None
        self._stream_loader: DataLoader | None = None
        self._stream_resume_state: dict | None = None

    def create_accelerator_and_postprocess(self):
        """Trainer's accelerator; a CPU run launched with FSDP becomes one (:func:`.distributed.enable_fsdp_on_cpu`:
        accelerate enables FSDP on accelerators only and would otherwise train plain data-parallel copies)."""
        super().create_accelerator_and_postprocess()
        if enable_fsdp_on_cpu(self.accelerator):
            self.is_fsdp_enabled = True

    # -------------------------------------------------------------- loss
    @property
    def num_labels(self) -> int:
        return int(self.accelerator.unwrap_model(self.model).config.num_labels)

    @property
    def free_training(self) -> bool:
        """Whether this is free co-training (``train_attack="free"``, :mod:`hf_advsoup.free_training`)."""
        return self.args.free_training and self.args.alpha < 1.0

    def _micro_batch_index(self) -> int:
        """The index of this call among the micro-batches of the current optimizer step (0 to
        ``gradient_accumulation_steps - 1``)."""
        step = self.state.global_step
        micro = 0 if self._rng_position is None or self._rng_position[0] != step else self._rng_position[1] + 1
        self._rng_position = (step, micro)
        return micro

    def _training_generator(self, device: torch.device) -> torch.Generator:
        return step_generator(self.args.seed, self.state.global_step, self._micro_batch_index(),
                              self.args.process_index, device)

    def _inv_std(self, reference: torch.Tensor) -> torch.Tensor:
        """``1 / std`` of the normalization, shaped for ``reference``, on its device (made once per device)."""
        key = (reference.device, reference.dim())
        if key not in self._inv_stds:
            self._inv_stds[key] = 1.0 / self.normalization._stats(reference)[1]
        return self._inv_stds[key]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Eq. 2 in training mode; the clean-mode loss (first term) in evaluation mode (``prediction_step``).

        ``inputs``: ``pixel_values`` (batch, C, H, W), normalized; ``labels`` (batch,) class indices or
        (batch, num_labels) soft labels. Returns the mean loss (and the outputs of the batched forward, whose
        first ``batch`` logits are clean mode on clean images and the last ``batch`` robust mode on adversarial
        images when ``0 < alpha < 1``).

        In training mode nothing is read back from the device: the loss terms and the finiteness check accumulate
        there (:class:`StepChecks`) and are read at the next log, save or evaluation.
        """
        pixel_values = inputs["pixel_values"]
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError("CoTrainer needs labels in every batch (a 'labels' entry from the collator).")
        smoothing = self.args.label_smoothing_factor
        if not model.training:
            outputs = model(pixel_values=pixel_values, beta=1.0)
            targets = smoothed_targets(labels, outputs.logits.shape[-1], smoothing)
            loss = soft_cross_entropy(outputs.logits, targets).mean()
            return (loss, outputs) if return_outputs else loss

        if self.free_training:
            clean, adversarial, targets = self._free_inputs(pixel_values, labels)
        else:
            generator = self._training_generator(pixel_values.device)
            pixel_values, labels, targets = self._augmented(pixel_values, labels, generator)
            clean = pixel_values if self.args.alpha > 0 else None
            adversarial = None
            if self.args.alpha < 1:
                if self.is_fsdp_enabled:
                    initialize_before_attacks(model)
                # The inner max of Eq. 2 is taken through the adversarial-token (robust-mode) model, unwrapped so
                # that no DDP hook fires; attack() runs it in eval mode with frozen weights and restores both. Its
                # input range check is one of this trainer's deferred checks (recorded in _augmented).
                adversarial = attack(
                    self.accelerator.unwrap_model(model),
                    pixel_values,
                    hard_labels(labels),
                    self.train_attack,
                    normalization=self.normalization,
                    forward_kwargs={"beta": 0.0},
                    generator=generator,
                    validate_range=False,
                )
        loss, outputs, clean_loss, adversarial_loss = self._eq2(model, clean, adversarial, targets)
        self.checks.record_losses(self.state.global_step, loss, clean_loss, adversarial_loss)
        return (loss, outputs) if return_outputs else loss

    def _augmented(self, pixel_values: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        """``(pixel_values, labels, targets)`` after the optional batch augmentation (on [0, 1] pixels) and label
        smoothing; records how far the un-normalized inputs leave [0, 1] (a normalization mismatch)."""
        images = self.normalization.to_pixels(pixel_values)
        self.checks.record_range(pixel_range_excess(images))
        self.checks.record_labels(labels, self.num_labels)
        if labels.dim() == 1:
            # Out-of-range indices are reported at the next check; until then they must not crash a GPU kernel.
            labels = labels.long().clamp(0, self.num_labels - 1)
        if self.batch_augmenter is not None:
            images, labels = self.batch_augmenter(images, labels, self.num_labels, generator)
            pixel_values = self.normalization.to_model(images).to(pixel_values.dtype)
        targets = smoothed_targets(labels, self.num_labels, self.args.label_smoothing_factor, validate=False)
        return pixel_values, labels, targets

    def _eq2(self, model, clean: torch.Tensor | None, adversarial: torch.Tensor | None, targets: torch.Tensor):
        """Eq. 2 on the given halves (either may be ``None``: alpha = 0 or 1) in **one** forward of the wrapped
        model, clean mode for the clean half and robust mode for the adversarial half. Returns ``(loss, outputs,
        clean_loss, adversarial_loss)``, the terms ``None`` where their half is absent."""
        alpha = self.args.alpha
        halves = [x for x in (clean, adversarial) if x is not None]
        batch = halves[0].shape[0]
        if len(halves) == 2:
            # One forward of the wrapped model on both halves: one DDP reduction, one autocast region.
            inputs_all = torch.cat(halves)
            beta = torch.cat([torch.ones(batch, device=inputs_all.device), torch.zeros(batch, device=inputs_all.device)])
            if isinstance(self.accelerator.unwrap_model(model), PreTrainedModel) and hasattr(
                    self.accelerator.unwrap_model(model), "soup_for"):
                # Our model's per-sample soup, given directly: the model's check that a per-sample beta is finite
                # would read it back from the device (a host synchronisation) every step; 1 and 0 are finite.
                beta = SoupWeights(beta, 1.0 - beta)
            targets_all = torch.cat([targets, targets])
        else:
            # A scalar beta still puts both adapter copies in the graph (1*clean + 0*adv), so DDP sees every
            # parameter used, and is cheaper than per-sample adapters.
            inputs_all, beta, targets_all = halves[0], (1.0 if clean is not None else 0.0), targets
        outputs = model(pixel_values=inputs_all, beta=beta)
        per_sample = soft_cross_entropy(outputs.logits, targets_all)
        clean_loss = per_sample[:batch].mean() if clean is not None else None
        adversarial_loss = per_sample[-batch:].mean() if adversarial is not None else None
        if clean_loss is None:
            loss = adversarial_loss
        elif adversarial_loss is None:
            loss = clean_loss
        else:
            loss = alpha * clean_loss + (1.0 - alpha) * adversarial_loss
        return loss, outputs, clean_loss, adversarial_loss

    # -------------------------------------------------------------- free co-training
    def _free_inputs(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        """``(clean, adversarial, targets)`` of one replay of free co-training.

        The minibatch being replayed is identified by its first optimizer step (``global_step - replay``, replay =
        ``global_step % free_replays``: every pass over the data has a multiple of ``free_replays`` steps) and the
        micro-batch index. Its first replay (or the first after a resume) augments the batch once and sets up the
        perturbation; later replays reuse both and check that the data loader replayed the same batch. The
        perturbation enters as a leaf that requires grad, so the training backward also gives its gradient;
        :meth:`training_step` then takes the sign step.
        """
        replays = self.args.free_replays
        step = self.state.global_step
        replay = step % replays
        first_step = step - replay
        micro = self._micro_batch_index()
        entry = self._free_batches.get(micro)
        if entry is None or entry.first_step != first_step or entry.restored:
            entry = self._start_free_batch(pixel_values, labels, micro, first_step, replay, entry)
            self._free_batches[micro] = entry
        else:
            self.checks.record_mismatch(entry.raw, pixel_values)
        leaf = entry.delta.detach().requires_grad_(True)
        entry.leaf = leaf
        self._free_pending.append(entry)
        dtype = pixel_values.dtype
        # pixel_values + delta / std: the normalized image + delta, exact at delta = 0 (as in the attack core).
        adversarial = torch.addcmul(entry.pixel_values, leaf, self._inv_std(entry.pixel_values)).to(dtype)
        clean = entry.pixel_values.to(dtype) if self.args.alpha > 0 else None
        return clean, adversarial, entry.targets

    def _start_free_batch(self, pixel_values, labels, micro: int, first_step: int, replay: int,
                          previous: FreeBatch | None) -> FreeBatch:
        """Augment a new minibatch (seeded by its first step, so a resumed run repeats it) and set its perturbation:
        the saved one when resuming inside the minibatch's replays, else ``free_start`` (``carry``: the previous
        minibatch's, ``zero``, or ``random`` in the eps-ball), projected onto the ball and the new images' box."""
        generator = step_generator(self.args.seed, first_step, micro, self.args.process_index, pixel_values.device)
        augmented, _, targets = self._augmented(pixel_values, labels, generator)
        images = self.normalization.to_pixels(augmented).clamp(0.0, 1.0)
        config = self.train_attack
        bounds = linf_bounds(images, config.epsilon)
        if previous is not None and previous.first_step == first_step:
            delta = previous.delta  # restored from the checkpoint: resuming inside this minibatch's replays
            self.checks.record_mismatch(previous.labels, labels)
        elif replay > 0:
            logger.warning(
                "Free co-training resumed at replay %d of the minibatch that began at step %d without its saved "
                "perturbation (the checkpoint holds no free_perturbation file for process %d): it restarts from zero, "
                "so this run no longer repeats the uninterrupted one exactly.", replay, first_step,
                self.args.process_index)
            delta = torch.zeros_like(images)
        elif self.args.free_start == "carry" and previous is not None and previous.delta.shape == images.shape:
            delta = previous.delta
        elif self.args.free_start == "random":
            delta = torch.empty(images.shape, device=generator.device).uniform_(
                -config.epsilon, config.epsilon, generator=generator).to(images.device)
        else:
            delta = torch.zeros_like(images)
        delta = torch.clamp(delta.to(device=images.device, dtype=torch.float32), bounds[0], bounds[1])
        return FreeBatch(first_step=first_step, delta=delta, labels=labels.detach(), raw=pixel_values.detach(),
                         pixel_values=augmented.float(), targets=targets, bounds=bounds)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """:meth:`~transformers.Trainer.training_step`; in free co-training, then the perturbation's sign step from
        the gradient that the step's backward left on it (the weights' gradients are untouched by it)."""
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
            step_size = self.train_attack.effective_step_size if self.free_training else 0.0
            with torch.no_grad():
                for entry in self._free_pending:
                    leaf, entry.leaf = entry.leaf, None
                    if leaf is not None and leaf.grad is not None:
                        entry.delta = linf_sign_step(leaf.detach(), leaf.grad, step_size, entry.bounds)
        finally:
            self._free_pending.clear()
        return loss

    def _raise_on_failed_checks(self, take_losses: bool = False) -> dict[str, float]:
        """Read :class:`StepChecks` (once, on every process: call it at the same point on all of them) and raise
        for a non-finite loss, inputs outside [0, 1] or a replay of another batch. Returns the mean loss terms since
        the last call with ``take_losses`` (empty without it)."""
        result = self.checks.read(self.accelerator, self.args.world_size, take_losses=take_losses)
        if result is None:
            return {}
        check_pixel_range(result["range_excess"], self.normalization, where="Training pixel_values")
        if result["bad_labels"]:
            raise ValueError(
                f"{result['bad_labels']} training label(s) outside the class indices [0, {self.num_labels}) since the "
                "last check. Check the label column and the model's num_labels."
            )
        if result["any_nonfinite"]:
            step, values = result["nonfinite_step"], result["nonfinite_losses"]
            if step >= 0:
                parts = ", ".join(f"{name}={value:.4g}" for name, value in values.items() if not math.isnan(value)
                                  or name == "loss")
                where = f"at optimizer step {step} (on this process: {parts})"
            else:
                where = "on another process"
            raise NonFiniteLossError(
                f"Non-finite co-training loss {where}; found at step {self.state.global_step} (epoch "
                f"{self.state.epoch or 0:.2f}), the first log, save or evaluation after it: the loss is checked "
                "there, not every step, so the weights and EMA have taken the non-finite updates since. Learning "
                f"rate now {self._current_lr():.3g}. Training stopped. Check the inputs for NaN/inf, lower the "
                "learning rate or raise warm-up, keep max_grad_norm > 0, and prefer bf16 over fp16. Every checkpoint "
                "written so far was saved after a passing check; resume with --resume_from_checkpoint."
            )
        if result["replay_mismatches"]:
            raise RuntimeError(
                f"Free co-training replayed {result['replay_mismatches']} batch(es) that differ from the minibatch "
                "being replayed (or, after a resume, from the checkpoint's). Each minibatch must come "
                f"{self.args.free_replays} times in a row from CoTrainer's FreeReplaySampler: a custom "
                "get_train_dataloader or sampler, or resuming with another batch size, number of processes or "
                "--ignore_data_skip, breaks that."
            )
        return result["loss_means"]

    def _current_lr(self) -> float:
        try:
            return float(self._get_learning_rate())
        except Exception:  # noqa: BLE001 - only used to enrich an error message
            return float("nan")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Every process logs at the same steps: the deferred checks (and their reduction) run here. With the
        # training loss come the two terms of Eq. 2 (this process's average since the last log).
        for name, value in self._raise_on_failed_checks(take_losses="loss" in logs).items():
            logs[name] = round(value, 4)
        super().log(logs, start_time)

    # -------------------------------------------------------------- optimizer and schedule
    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Transformers' rule (no decay on biases and LayerNorms) minus classification tokens and position
        embeddings (MAE), with each adversarial adapter copy treated like its clean copy."""
        names = set(super().get_decay_parameter_names(model))
        unwrapped = self.accelerator.unwrap_model(model)
        by_id = {id(p): name for name, p in model.named_parameters()}
        for name, _ in model.named_parameters():
            if name.endswith(("cls_token", "position_embeddings")):
                names.discard(name)
        if hasattr(unwrapped, "clean_adapter") and hasattr(unwrapped, "adversarial_adapter_parameters"):
            clean, adversarial = unwrapped.clean_adapter(), unwrapped.adversarial_adapter_parameters()
            for key, clean_param in clean.items():
                clean_name, adv_name = by_id.get(id(clean_param)), by_id.get(id(adversarial[key]))
                if clean_name is None or adv_name is None:
                    continue
                if clean_name in names:
                    names.add(adv_name)
                else:
                    names.discard(adv_name)
        return sorted(names)

    # -------------------------------------------------------------- data and length of free co-training
    def _free_block_size(self) -> int:
        """Images that one optimizer step consumes over all processes and micro-batches (one replayed block)."""
        return self._train_batch_size * self.args.gradient_accumulation_steps * max(self.accelerator.num_processes, 1)

    def _get_train_sampler(self, train_dataset=None):
        """Trainer's sampler; in free co-training wrapped in a :class:`FreeReplaySampler` that repeats each
        optimizer step's block of images ``free_replays`` times. A shuffling sampler becomes accelerate's seeded
        one (``data_seed``, else ``seed``, plus the epoch): the order a normal run of the same seed uses."""
        sampler = super()._get_train_sampler(train_dataset)
        if not self.free_training:
            return sampler
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if sampler is None:
            raise ValueError("Free co-training replays the batches of a sampler: the training dataset must have a "
                             "length (not an IterableDataset).")
        if isinstance(sampler, RandomSampler) and not isinstance(sampler, SeedableRandomSampler):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = SeedableRandomSampler(sampler.data_source, data_seed=seed)
        block = self._free_block_size()
        if len(sampler) < block:
            raise ValueError(
                f"Free co-training replays whole optimizer steps of {block} images (per-device batch x gradient "
                f"accumulation x processes), but the training set has {len(dataset)}: use a smaller batch."
            )
        return FreeReplaySampler(sampler, block, self.args.free_replays)

    def get_train_dataloader(self):
        if self.free_training and self.train_dataset is not None and isinstance(self.train_dataset, IterableDataset):
            raise ValueError("Free co-training replays the batches of a sampler: the training dataset must have a "
                             "length (not an IterableDataset).")
        if isinstance(self.train_dataset, StreamingTrainSet):
            return self._streaming_dataloader()
        return super().get_train_dataloader()

    # -------------------------------------------------------------- streamed training data
    def _streaming_dataloader(self) -> DataLoader:
        """The loader of this process's part of a :class:`~hf_advsoup.data.StreamingTrainSet` (split across
        processes with ``split_dataset_by_node``, endless, so every process has a batch at every step).

        It is not passed through ``accelerator.prepare``, which would split the already split stream again (for a
        ``datasets`` stream it shards it, else every process reads all of it and keeps its batches); the Trainer puts
        the batches on the device. With loader workers it is torchdata's ``StatefulDataLoader`` when installed, so
        that checkpoints record the workers' positions."""
        stream = self.train_dataset.for_process(self.args.process_index, self.args.world_size)
        workers = self.args.dataloader_num_workers
        loader_class = DataLoader
        if workers > 0:
            try:
                from torchdata.stateful_dataloader import StatefulDataLoader

                loader_class = StatefulDataLoader
            except ImportError:
                logger.warning("--streaming with %d loader workers and no torchdata: checkpoints cannot record the "
                               "workers' positions, so a resumed run reads the stream again from its start and skips "
                               "the batches already trained (exact, but slow). pip install torchdata.", workers)
        params: dict = {"batch_size": self._train_batch_size, "collate_fn": self.data_collator,
                        "num_workers": workers, "pin_memory": self.args.dataloader_pin_memory}
        if workers > 0:
            params.update(persistent_workers=self.args.dataloader_persistent_workers,
                          prefetch_factor=self.args.dataloader_prefetch_factor)
        if workers > stream.num_shards:
            logger.warning("--streaming: %d loader workers but %d shard(s) for this process: %d worker(s) will read "
                           "nothing. Use at most %d workers, or a data set in more files.", workers, stream.num_shards,
                           workers - stream.num_shards, stream.num_shards)
        self._stream, self._stream_loader = stream, loader_class(stream, **params)
        logger.info("Streaming training data, process %d of %d: %s.", self.args.process_index, self.args.world_size,
                    stream.describe())
        return self._stream_loader

    def _stream_checkpoint_state(self) -> dict | None:
        """This process's position in the stream (``None`` when it cannot be recorded: workers without torchdata)."""
        if self._stream is None:
            return None
        if self.args.dataloader_num_workers == 0:
            return {"dataset": self._stream.state_dict()}  # iterated in this process: its own state is the position
        if hasattr(self._stream_loader, "state_dict"):
            return {"loader": self._stream_loader.state_dict()}
        return None

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """Resuming mid-stream: the stream continues from the position the checkpoint recorded for this process
        (nothing is read again). Without one (workers without torchdata, another number of processes), Trainer's
        skip: the stream is read again from its start and ``num_batches`` batches are dropped."""
        state = self._stream_resume_state if isinstance(self.train_dataset, StreamingTrainSet) else None
        if state is not None and "dataset" in state and self.args.dataloader_num_workers == 0:
            self._stream.load_state_dict(state["dataset"])
            return dataloader
        if state is not None and "loader" in state and hasattr(dataloader, "load_state_dict"):
            dataloader.load_state_dict(state["loader"])
            return dataloader
        if isinstance(self.train_dataset, StreamingTrainSet):
            logger.warning("The checkpoint holds no stream position for process %d of %d (or not one this loader "
                           "can use): reading the stream again from its start and skipping %d batches.",
                           self.args.process_index, self.args.world_size, num_batches)
        return super().get_resumed_dataloader(dataloader, num_batches)

    def _load_stream_state(self, folder: str) -> None:
        self._stream_resume_state = None
        if not isinstance(self.train_dataset, StreamingTrainSet):
            return
        path = os.path.join(folder, STREAM_STATE_NAME.format(process=self.args.process_index,
                                                             processes=self.args.world_size))
        if os.path.isfile(path):
            self._stream_resume_state = torch.load(path, weights_only=True)

    def set_initial_training_values(self, args, dataloader):
        """Trainer's run length; in free co-training with an epoch budget (``max_steps <= 0``), ``max_steps``
        becomes ``ceil(num_train_epochs x optimizer steps per epoch of a normal run)``: the optimizer steps (and so
        the schedules, EMA updates and logging steps) of a normal run of ``num_train_epochs`` epochs, over about
        ``num_train_epochs / free_replays`` passes over the data (the loader's epochs)."""
        values = super().set_initial_training_values(args, dataloader)
        if not self.free_training or args.max_steps > 0 or not has_length(dataloader):
            return values
        _, per_pass, num_examples, _, total_batch, steps_in_epoch, _ = values
        normal = self._normal_update_steps_per_epoch()
        max_steps = max(math.ceil(args.num_train_epochs * normal), 1)
        passes = math.ceil(max_steps / per_pass)
        logger.info("Free co-training: %g epochs = %d optimizer steps (%d per epoch of a normal run) = %d replays of "
                    "%d minibatches per pass over the data, %d passes.", args.num_train_epochs, max_steps, normal,
                    args.free_replays, per_pass // args.free_replays, passes)
        return passes, per_pass, num_examples, max_steps * total_batch, total_batch, steps_in_epoch, max_steps

    def _normal_update_steps_per_epoch(self) -> int:
        """Optimizer steps per epoch that Trainer computes for a normal run on this data (batches per process,
        with accelerate's even batches, over gradient accumulation)."""
        processes = max(self.accelerator.num_processes, 1)
        size = len(self.train_dataset)
        if self.args.dataloader_drop_last:
            batches = size // self._train_batch_size
            per_process = batches // processes
        else:
            batches = math.ceil(size / self._train_batch_size)
            per_process = math.ceil(batches / processes)
        return max(math.ceil(per_process / self.args.gradient_accumulation_steps), 1)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None and self.args.warmup_epochs is not None:
            if self.train_dataset is not None and not has_length(self.train_dataset):
                dataset_size = getattr(self.train_dataset, "num_examples", None)
                if dataset_size is None and self.args.warmup_epochs > 0:
                    raise ValueError("warmup_epochs needs the size of the training set, which this stream does not "
                                     "declare: give the warm-up in optimizer steps (--warmup_steps N) and leave "
                                     "warmup_epochs out (or --warmup_epochs 0).")
                dataset_size = dataset_size or 0
            else:
                dataset_size = len(self.train_dataset) if self.train_dataset is not None else 0
            steps_per_epoch = max(math.ceil(dataset_size / self.args.global_train_batch_size), 1)
            self.lr_scheduler = get_scheduler(
                self.args.lr_scheduler_type,
                optimizer=optimizer if optimizer is not None else self.optimizer,
                num_warmup_steps=self.args.warmup_steps_for(steps_per_epoch, num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
            )
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    # -------------------------------------------------------------- evaluation
    def ema_weights(self):
        """Context manager: the EMA weights swapped into the model (when EMA is on and training has begun; the weights
        that :meth:`save_model` writes and :meth:`evaluate` measures), else the model as it is. Use it to evaluate the
        trained model outside the Trainer (e.g. ``scripts/cotrain.py``'s soup table)."""
        if self.ema is None or not self.ema.initialized:
            return contextlib.nullcontext(self.model)
        return self.ema.swapped(self.model)

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        """:meth:`~transformers.Trainer.evaluate` with the EMA weights (when EMA is on and training has begun).
        The training steps' deferred checks run first, so a non-finite loss stops the run before it is evaluated."""
        self._raise_on_failed_checks()
        with self.ema_weights():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        """:meth:`~transformers.Trainer.predict` with the EMA weights, like :meth:`evaluate` and the saved model."""
        with self.ema_weights():
            return super().predict(*args, **kwargs)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        if self.eval_attack is not None and self.args.robust_eval_samples > 0:
            for key, value in self.robust_metrics(dataloader).items():
                output.metrics[f"{metric_key_prefix}_{key}"] = value
        return output

    def robust_metrics(self, dataloader) -> dict[str, float]:
        """Robust-mode accuracy under ``eval_attack`` on the first ``robust_eval_samples`` images of ``dataloader``.

        Returns ``robust_accuracy`` (adversarial images, ``beta=0``), ``robust_mode_clean_accuracy`` (clean images,
        ``beta=0``) and ``robust_eval_samples`` (images used, summed over processes). The attack randomness is
        seeded by ``args.seed`` so every evaluation attacks the same images in the same way.
        """
        model = self.accelerator.unwrap_model(self.model)
        if self.is_fsdp_enabled:
            initialize_before_attacks(model)
        quota = math.ceil(self.args.robust_eval_samples / max(self.args.world_size, 1))
        device = self.args.device
        generator = step_generator(self.args.seed, 0, 0, self.args.process_index, device, stream=1)
        counts = torch.zeros(3, device=device, dtype=torch.float64)  # robust correct, clean correct, seen
        for inputs in dataloader:
            if counts[2] >= quota:
                break
            inputs = self._prepare_inputs(inputs)
            take = int(quota - counts[2])
            pixel_values, labels = inputs["pixel_values"][:take], hard_labels(inputs["labels"][:take])
            with torch.enable_grad():
                adversarial = attack(model, pixel_values, labels, self.eval_attack, normalization=self.normalization,
                                     forward_kwargs={"beta": 0.0}, generator=generator)
            was_training = model.training
            model.eval()  # no dropout / stochastic depth in the measured predictions, whoever calls this
            try:
                with torch.no_grad():
                    robust_pred = model(pixel_values=adversarial, beta=0.0).logits.argmax(-1)
                    clean_pred = model(pixel_values=pixel_values, beta=0.0).logits.argmax(-1)
            finally:
                model.train(was_training)
            counts += torch.stack([(robust_pred == labels).sum(), (clean_pred == labels).sum(),
                                   torch.tensor(labels.shape[0], device=labels.device)]).to(counts)
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        seen = max(float(counts[2]), 1.0)
        return {
            "robust_accuracy": float(counts[0]) / seen,
            "robust_mode_clean_accuracy": float(counts[1]) / seen,
            "robust_eval_samples": int(counts[2]),
        }

    # -------------------------------------------------------------- saving, resuming, stopping
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model with its **EMA** weights (when EMA is on). Checkpoints (``_internal_call``) keep the raw
        weights, plus ``ema.safetensors`` written by :class:`EMACallback`, so that resuming is exact. Under FSDP the
        saved model is always a whole one (``from_pretrained`` loads it), whatever the checkpoints' state dict
        type."""
        if _internal_call:
            return super().save_model(output_dir, _internal_call)
        with self.ema_weights():
            state_dict_type = str(getattr(getattr(self.accelerator.state, "fsdp_plugin", None), "state_dict_type", ""))
            if self.is_fsdp_enabled and "FULL_STATE_DICT" not in state_dict_type:
                # Trainer writes no weights under FSDP's sharded state dicts; the model a user loads is whole (the
                # checkpoints stay sharded): every process gathers, the main one writes.
                self._save(output_dir, state_dict=self.accelerator.get_state_dict(self.model))
                if self.args.push_to_hub:
                    self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)
                return None
            return super().save_model(output_dir, _internal_call)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Trainer's writer of the model folder, with the model's own class (not FSDP2's ``FSDP<name>`` subclass)
        for the remote code and ``auto_map`` it writes (:func:`.distributed.plain_class`)."""
        with plain_class(self.accelerator.unwrap_model(self.model)):
            return super()._save(output_dir, state_dict=state_dict)

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint, written only after the deferred step checks pass (a non-finite loss is never
        checkpointed), with the perturbations of free co-training (:func:`save_free_state`) and the position in a
        streamed training set (:data:`STREAM_STATE_NAME`), one file per process each, written before Trainer's
        ``trainer_state.json`` marks the checkpoint complete."""
        self._raise_on_failed_checks()
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.free_training and self._free_batches:
            save_free_state(free_state_file(folder, self.args.process_index, self.args.world_size),
                            self._free_batches, global_step=self.state.global_step, replays=self.args.free_replays)
        stream_state = self._stream_checkpoint_state()
        if stream_state is not None:
            os.makedirs(folder, exist_ok=True)
            torch.save(stream_state, os.path.join(folder, STREAM_STATE_NAME.format(
                process=self.args.process_index, processes=self.args.world_size)))
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Resume: the checkpoint's weights (with the key conversion, see :meth:`_load_checkpoint_weights`), its
        EMA and, in free co-training, this process's perturbations; with a streamed training set, this process's
        position in it (used by :meth:`get_resumed_dataloader`)."""
        if not self._load_checkpoint_weights(resume_from_checkpoint, model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_checkpoint_ema(resume_from_checkpoint)
        self._load_free_state(resume_from_checkpoint)
        self._load_stream_state(resume_from_checkpoint)

    def _load_free_state(self, folder: str) -> None:
        self._free_batches = {}
        if not self.free_training:
            return
        path = free_state_file(folder, self.args.process_index, self.args.world_size)
        if not os.path.isfile(path):
            return  # a checkpoint at a minibatch boundary of a zero/random start needs none; else a warning later
        batches, replays = load_free_state(path, self.args.device)
        if replays != self.args.free_replays:
            raise ValueError(f"{path} was written with free_replays={replays}, this run has "
                             f"free_replays={self.args.free_replays}: resume with the same value.")
        self._free_batches = batches

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the best checkpoint's weights (with the key conversion) and its EMA, so that
        :meth:`save_model` saves the best model's EMA weights."""
        best = self.state.best_model_checkpoint
        logger.info("Loading the best model from %s (score: %s).", best, self.state.best_metric)
        if not self._load_checkpoint_weights(best):
            super()._load_best_model()
        self._load_checkpoint_ema(best)

    def _load_checkpoint_weights(self, folder: str, model: nn.Module | None = None) -> bool:
        """Load ``folder``'s ``model.safetensors`` (or sharded index) into the model through ``from_pretrained``;
        return False where Trainer's own loader must do it (FSDP, other weight formats, non-transformers models).

        Trainer (transformers 5.24) loads the file's keys as they are, but ``save_pretrained`` writes ViT's legacy
        key names (``vit.encoder.layer.N...``): the layers would silently keep their current weights.
        ``from_pretrained`` applies the key conversion; strict loading then catches any gap.
        """
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        has_weights = any(os.path.isfile(os.path.join(folder, name))
                          for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME))
        check_weight_files(folder)
        if not has_weights or self.is_fsdp_enabled or not isinstance(unwrapped, PreTrainedModel):
            return False
        logger.info("Loading model weights from %s (with checkpoint key conversion).", folder)
        reloaded = type(unwrapped).from_pretrained(folder, dtype=unwrapped.dtype)
        unwrapped.load_state_dict(reloaded.state_dict(), strict=True)
        del reloaded
        return True

    def _load_checkpoint_ema(self, folder: str) -> None:
        if self.ema is None:
            return
        path = os.path.join(folder, EMA_WEIGHTS_NAME)
        if os.path.isfile(path):
            self.ema.load(path, self.accelerator.unwrap_model(self.model))
        else:
            logger.warning("%s has no %s: the EMA restarts from the checkpoint's weights.", folder, EMA_WEIGHTS_NAME)
            self.ema.shadow = {}

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        """:meth:`~transformers.Trainer.train`, with ``resume_from_checkpoint`` resolved by
        :func:`resolve_checkpoint` (``True``/``"true"``/``"latest"``: the last checkpoint of ``output_dir``); after a
        stop for catastrophic overfitting, the weights (and EMA) of the last good checkpoint are restored, so
        :meth:`save_model` saves them."""
        checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if checkpoint is not None and self.free_training and self.args.ignore_data_skip:
            raise ValueError("Free co-training cannot resume with ignore_data_skip=True: the replays of a minibatch "
                             "are told apart by the optimizer step, which must match the data loader's position.")
        self.checks = StepChecks()
        self._free_batches, self._free_pending, self._rng_position = {}, [], None
        self._stream_resume_state = None
        output = super().train(resume_from_checkpoint=checkpoint, trial=trial,
                               ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        monitor = self.overfitting_monitor
        if monitor.collapsed and monitor.stop:
            good = monitor.last_good_checkpoint
            if good is None:
                logger.warning("Catastrophic overfitting stopped the run but no checkpoint precedes it; the "
                               "collapsed weights are kept. Save more often (save_steps <= eval_steps).")
            else:
                logger.warning("Restoring the last good checkpoint %s (before the collapse at step %d).", good,
                               monitor.collapsed_at_step)
                self._load_from_checkpoint(good)
        return output


__all__ = ["BatchAugmenterFn", "CoTrainer"]
