"""Tests of CoTrainer: Eq. 2 by hand, alpha=1 == plain Trainer, gradients and parameter changes per adapter,
gradient accumulation, exact resume, EMA, robust monitoring, catastrophic-overfitting and non-finite-loss handling.

Tiny seeded models (hidden 16, 1-2 layers, 8x8 images) and a handful of steps; the whole file runs in seconds.
"""

import copy
import os
import traceback

import numpy as np
import pytest
import torch
import transformers
from datasets import Dataset
from safetensors.torch import load_file
from transformers import Trainer, TrainerControl, TrainerState

import hf_advsoup.trainer as trainer_module  # the earlier import path, kept working
import hf_advsoup.training.trainer as cotrainer_module  # where CoTrainer looks its names up
from hf_advsoup import ADAPTER_TYPES, AdvSoupViTConfig, AdvSoupViTForImageClassification
from hf_advsoup.attacks import Normalization
from hf_advsoup.augmentation import AugmentationArguments, BatchAugmenter
from hf_advsoup.modeling_advsoup import SoupWeights
from hf_advsoup.trainer import (
    EMA_WEIGHTS_NAME,
    CatastrophicOverfittingCallback,
    CoTrainer,
    NonFiniteLossError,
    smoothed_targets,
    soft_cross_entropy,
)
from hf_advsoup.training_args import CoTrainingArguments

NUM_LABELS = 4
NORM = Normalization(mean=(0.5,), std=(0.5,))


def make_model(seed=0, adapter="cls_token", **overrides):
    torch.manual_seed(seed)
    config = AdvSoupViTConfig(
        hidden_size=16, num_hidden_layers=overrides.pop("num_hidden_layers", 1), num_attention_heads=2,
        intermediate_size=32, image_size=8, patch_size=4, num_labels=NUM_LABELS, adapter=adapter, **overrides,
    )
    model = AdvSoupViTForImageClassification(config)
    with torch.no_grad():  # make the two copies differ (random noise: a constant would vanish in LayerNorm)
        for param in model.adversarial_adapter_parameters().values():
            param.add_(torch.randn_like(param) * 0.3)
    return model


def make_dataset(n=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images01 = torch.rand(n, 3, 8, 8, generator=generator)
    labels = torch.randint(0, NUM_LABELS, (n,), generator=generator)
    return Dataset.from_dict({"pixel_values": NORM.to_model(images01).numpy(), "labels": labels.numpy()}).with_format(
        "torch"
    )


def make_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, per_device_eval_batch_size=16, max_steps=2,
        learning_rate=1e-2, warmup_steps=0, report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
        eval_strategy="no", logging_steps=1, ema_decay=0.0, robust_eval_samples=0, seed=0, dataloader_pin_memory=False,
    )
    values.update(overrides)
    return CoTrainingArguments(**values)


def make_trainer(tmp_path, model=None, dataset=None, **overrides):
    augmenter = overrides.pop("batch_augmenter", None)
    return CoTrainer(
        model=model if model is not None else make_model(),
        args=make_args(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else make_dataset(),
        eval_dataset=make_dataset(16, seed=1),
        normalization=NORM,
        batch_augmenter=augmenter,
    )


def batch(n=6, seed=3):
    generator = torch.Generator().manual_seed(seed)
    x = NORM.to_model(torch.rand(n, 3, 8, 8, generator=generator))
    return {"pixel_values": x, "labels": torch.randint(0, NUM_LABELS, (n,), generator=generator)}


def params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def eq2_loss_by_hand(clean_logits, adv_logits, labels, alpha, smoothing):
    """Eq. 2 written out: alpha x label-smoothed cross-entropy of the clean half + (1 - alpha) x that of the
    adversarial half; ``labels`` are class indices or (soft, mixup/CutMix) probability rows."""
    if labels.dim() == 2:
        target = labels * (1 - smoothing) + smoothing / NUM_LABELS
    else:
        target = torch.nn.functional.one_hot(labels, NUM_LABELS).float() * (1 - smoothing)
        target += smoothing / NUM_LABELS
    loss = alpha * -(target * clean_logits.log_softmax(-1)).sum(-1).mean()
    return loss + (1 - alpha) * -(target * adv_logits.log_softmax(-1)).sum(-1).mean()


# ------------------------------------------------------------------------------------------------------ Eq. 2
@pytest.mark.parametrize("soft", [False, True])
def test_loss_equals_eq2_by_hand_with_fixed_perturbation(tmp_path, monkeypatch, soft):
    alpha, smoothing = 0.3, 0.1
    trainer = make_trainer(tmp_path, alpha=alpha, label_smoothing_factor=smoothing)
    model = trainer.model.train()
    inputs = batch()
    if soft:
        inputs["labels"] = torch.softmax(torch.randn(6, NUM_LABELS, generator=torch.Generator().manual_seed(4)), -1)
    delta = torch.randn_like(inputs["pixel_values"]) * 0.05
    calls = []

    def fixed_attack(attacked, pixel_values, labels, config, *, normalization, forward_kwargs, generator,
                     validate_range):
        assert validate_range is False  # the trainer checks the input range itself, without a host sync
        calls.append((attacked, labels.clone(), dict(forward_kwargs), config))
        return pixel_values + delta

    monkeypatch.setattr(cotrainer_module, "attack", fixed_attack)
    loss = trainer.compute_loss(model, inputs)

    # The attack saw the unwrapped model in robust mode, with hard labels (argmax of soft labels).
    assert len(calls) == 1 and calls[0][0] is model and calls[0][2] == {"beta": 0.0}
    assert torch.equal(calls[0][1], inputs["labels"].argmax(-1) if soft else inputs["labels"])
    assert calls[0][3].name == "pgd" and calls[0][3].steps == 2  # the paper's PGD-2 default

    model.eval()  # no dropout in this config; eval only to be explicit
    with torch.no_grad():
        clean_logits = model(inputs["pixel_values"], beta=1.0).logits
        adv_logits = model(inputs["pixel_values"] + delta, beta=0.0).logits
    by_hand = eq2_loss_by_hand(clean_logits, adv_logits, inputs["labels"], alpha, smoothing)
    torch.testing.assert_close(loss.detach(), by_hand, rtol=1e-5, atol=1e-6)
    # Hard labels: the same as torch's label-smoothed cross-entropy.
    if not soft:
        ref = alpha * torch.nn.functional.cross_entropy(clean_logits, inputs["labels"], label_smoothing=smoothing)
        ref += (1 - alpha) * torch.nn.functional.cross_entropy(adv_logits, inputs["labels"], label_smoothing=smoothing)
        torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)


def test_one_batched_forward_alpha1_no_attack_alpha0_no_clean_forward(tmp_path, monkeypatch):
    seen = []

    def record(module, args, kwargs):
        pixel_values = kwargs.get("pixel_values", args[0] if args else None)
        seen.append((module.training, pixel_values.shape[0], kwargs["beta"]))

    for alpha in (0.5, 1.0, 0.0):
        trainer = make_trainer(tmp_path, alpha=alpha)
        model = trainer.model.train()
        handle = model.register_forward_pre_hook(record, with_kwargs=True)
        if alpha == 1.0:
            monkeypatch.setattr(cotrainer_module, "attack", lambda *a, **k: pytest.fail("alpha=1 must not attack"))
        seen.clear()
        trainer.compute_loss(model, batch(n=6))
        handle.remove()
        monkeypatch.undo()
        # The attack's forwards run in eval mode; the loss's forward in train mode, exactly once.
        training = [(size, beta) for is_training, size, beta in seen if is_training]
        attack_betas = [beta for is_training, _, beta in seen if not is_training]
        assert len(training) == 1
        ((size, beta),) = training
        if alpha == 0.5:
            # The per-sample soup goes in as SoupWeights (clean, adversarial): the model's finiteness check of a
            # beta tensor would read it back from the device every step.
            assert size == 12 and isinstance(beta, SoupWeights)
            assert torch.equal(beta.clean, torch.tensor([1.0] * 6 + [0.0] * 6))
            assert torch.equal(beta.adversarial, 1 - beta.clean)
            assert len(attack_betas) == 2 and all(b == 0.0 for b in attack_betas)  # PGD-2 on robust mode
        elif alpha == 1.0:
            assert seen == [(True, 6, 1.0)]  # clean images only, clean mode, no attack forward
        else:
            assert size == 6 and beta == 0.0  # adversarial images only: no clean-mode forward at all
            assert all(b == 0.0 for b in attack_betas)


def test_smoothed_targets_validate_labels():
    with pytest.raises(ValueError, match="class indices in"):
        smoothed_targets(torch.tensor([0, 7]), 4)
    with pytest.raises(ValueError, match="Soft labels have 3 classes"):
        smoothed_targets(torch.rand(2, 3), 4)
    targets = smoothed_targets(torch.tensor([1]), 4, 0.2)
    torch.testing.assert_close(targets, torch.tensor([[0.05, 0.85, 0.05, 0.05]]))
    assert soft_cross_entropy(torch.zeros(1, 4), targets).item() == pytest.approx(torch.log(torch.tensor(4.0)).item())


# ------------------------------------------------------------------------------------------------------ training
def test_alpha1_matches_plain_trainer(tmp_path):
    args = dict(max_steps=3, weight_decay=0.0, label_smoothing_factor=0.1)
    co = make_trainer(tmp_path, model=make_model(), alpha=1.0, **args)
    co.train()
    plain_args = make_args(tmp_path / "plain", alpha=1.0, **args)
    plain = Trainer(model=make_model(), args=plain_args, train_dataset=make_dataset())
    plain.train()
    before = params(make_model())
    for name, value in params(co.model).items():
        torch.testing.assert_close(value, dict(plain.model.named_parameters())[name].detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(params(co.model)["classifier.weight"], before["classifier.weight"])  # it trained


@pytest.mark.parametrize("adapter", ADAPTER_TYPES)
def test_gradients_reach_both_adapter_copies(tmp_path, adapter):
    trainer = make_trainer(tmp_path, model=make_model(adapter=adapter), alpha=0.5)
    model = trainer.model.train()
    loss = trainer.compute_loss(model, batch())
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.clean_adapter().items():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient on clean {name}"
    for name, param in model.adversarial_adapter_parameters().items():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient on adversarial {name}"
    assert model.classifier.weight.grad.abs().sum() > 0  # shared parameters learn too (also for "none")


@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_only_intended_parameters_change(tmp_path, alpha):
    trainer = make_trainer(tmp_path, alpha=alpha, weight_decay=0.3)
    model = trainer.model
    before = params(model)
    trainer.train()
    after = params(model)
    clean, adversarial = "vit.embeddings.cls_token", "vit.embeddings.adversarial_cls_token"
    unused, used = (adversarial, clean) if alpha == 1.0 else (clean, adversarial)
    # The unused token gets no gradient and, being a token, no weight decay: it must not move at all.
    assert torch.equal(before[unused], after[unused])
    assert not torch.equal(before[used], after[used])
    assert not torch.equal(before["vit.layers.0.mlp.fc1.weight"], after["vit.layers.0.mlp.fc1.weight"])


def test_decay_parameters_treat_both_copies_alike(tmp_path):
    trainer = make_trainer(tmp_path, model=make_model(adapter="layernorm"))
    names = set(trainer.get_decay_parameter_names(trainer.model))
    assert "vit.layers.0.mlp.fc1.weight" in names
    assert not any("norm" in n or ".adversarial_" in n for n in names)
    assert "vit.embeddings.cls_token" not in names and "vit.embeddings.position_embeddings" not in names
    trainer = make_trainer(tmp_path, model=make_model(adapter="patch_embed"))
    names = set(trainer.get_decay_parameter_names(trainer.model))
    assert {"vit.embeddings.patch_embeddings.projection.weight",
            "vit.embeddings.patch_embeddings.projection.adversarial_weight"} <= names
    assert "vit.embeddings.patch_embeddings.projection.adversarial_bias" not in names


def test_gradient_accumulation_matches_doubled_batch(tmp_path):
    # No random start: the perturbation of each image then does not depend on how the batch is split.
    common = dict(alpha=0.5, max_steps=2, train_attack_random_start=False, weight_decay=0.1)
    ga = make_trainer(tmp_path / "ga", per_device_train_batch_size=4, gradient_accumulation_steps=2, **common)
    ga.train()
    big = make_trainer(tmp_path / "big", per_device_train_batch_size=8, gradient_accumulation_steps=1, **common)
    big.train()
    start = params(make_model())
    for name, value in params(big.model).items():
        torch.testing.assert_close(params(ga.model)[name], value, rtol=1e-4, atol=1e-5)
    assert not torch.equal(start["classifier.weight"], params(big.model)["classifier.weight"])
    # Adam hides a constant gradient scale in the weights; the gradient norms show it (a GA-times-too-large
    # gradient, the model_accepts_loss_kwargs trap, would log twice the norm).
    norms = [[log["grad_norm"] for log in t.state.log_history if "grad_norm" in log] for t in (ga, big)]
    assert norms[0] == pytest.approx(norms[1], rel=1e-4) and len(norms[0]) == 2


def test_resume_continues_identically(tmp_path):
    """Stochastic everything: random-start attack, mixup/CutMix + RandAugment, dropout, stochastic depth, EMA."""
    def run(output, resume=None):
        augmenter = BatchAugmenter(AugmentationArguments(randaugment_magnitude=5.0))
        model = make_model(num_hidden_layers=2, drop_path_rate=0.2, hidden_dropout_prob=0.1)
        trainer = make_trainer(tmp_path, model=model, output_dir=str(output), max_steps=4, save_strategy="steps",
                               save_steps=2, ema_decay=0.9, batch_augmenter=augmenter)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2"))
    for name, value in params(full.model).items():
        torch.testing.assert_close(params(resumed.model)[name], value, rtol=0, atol=0)
    for name, value in full.ema.shadow.items():
        torch.testing.assert_close(resumed.ema.shadow[name], value, rtol=0, atol=0)
    # Control: a different seed changes the run, so the equality above is not vacuous.
    other = make_trainer(tmp_path, model=make_model(num_hidden_layers=2, drop_path_rate=0.2, hidden_dropout_prob=0.1),
                         output_dir=str(tmp_path / "other"), max_steps=4, seed=1)
    other.train()
    assert not torch.equal(params(other.model)["classifier.weight"], params(full.model)["classifier.weight"])


# ------------------------------------------------------------------------------------------------------ EMA, saving
def test_ema_weights_are_evaluated_and_saved_checkpoints_keep_raw(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=3, ema_decay=0.5, save_strategy="steps", save_steps=3)
    trainer.train()
    raw = params(trainer.model)
    checkpoint = os.path.join(trainer.args.output_dir, "checkpoint-3")
    assert os.path.isfile(os.path.join(checkpoint, "model.safetensors"))
    saved_raw = load_file(os.path.join(checkpoint, "model.safetensors"))
    torch.testing.assert_close(saved_raw["classifier.weight"], raw["classifier.weight"])
    ema = load_file(os.path.join(checkpoint, EMA_WEIGHTS_NAME))
    assert not torch.equal(ema["classifier.weight"], raw["classifier.weight"])

    final = str(tmp_path / "final")
    trainer.save_model(final)
    reloaded = AdvSoupViTForImageClassification.from_pretrained(final, beta=0.5)
    torch.testing.assert_close(reloaded.classifier.weight, ema["classifier.weight"])
    assert reloaded.config.beta == 0.5
    torch.testing.assert_close(params(trainer.model)["classifier.weight"], raw["classifier.weight"])  # swapped back

    metrics_ema = trainer.evaluate()
    predictions_ema = trainer.predict(trainer.eval_dataset)
    ema_model = copy.deepcopy(trainer.model).eval()
    ema_model.load_state_dict(reloaded.state_dict())
    batch_ = next(iter(trainer.get_test_dataloader(trainer.eval_dataset)))
    with torch.no_grad():
        expected = ema_model(pixel_values=batch_["pixel_values"], beta=1.0).logits
    torch.testing.assert_close(torch.as_tensor(predictions_ema.predictions[: len(expected)]), expected)
    trainer.ema = None
    metrics_raw = trainer.evaluate()
    assert metrics_ema["eval_loss"] != metrics_raw["eval_loss"]
    assert not np.allclose(trainer.predict(trainer.eval_dataset).predictions, predictions_ema.predictions)


# ------------------------------------------------------------------------------------------------------ monitoring
def test_evaluation_logs_clean_and_robust_accuracy(tmp_path):
    trainer = make_trainer(tmp_path, robust_eval_samples=12, eval_attack="pgd40", eval_attack_steps=3,
                           eval_epsilon="0.5")
    metrics = trainer.evaluate()
    assert metrics["eval_robust_eval_samples"] == 12
    for key in ("eval_clean_accuracy", "eval_robust_accuracy", "eval_robust_mode_clean_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    # eps=0.5 in l_inf destroys the images: robust accuracy cannot exceed the robust mode's clean accuracy here.
    assert metrics["eval_robust_accuracy"] <= metrics["eval_robust_mode_clean_accuracy"]
    again = trainer.evaluate()
    assert again["eval_robust_accuracy"] == metrics["eval_robust_accuracy"]  # fixed subset, fixed randomness


def test_catastrophic_overfitting_detected_and_last_good_checkpoint(tmp_path):
    monitor = CatastrophicOverfittingCallback(drop=0.5, min_best=0.05, stop=True)
    args = make_args(tmp_path)
    state, control = TrainerState(), TrainerControl()
    for step, robust in ((10, 0.20), (20, 0.30), (30, 0.10)):
        state.global_step = step
        os.makedirs(os.path.join(args.output_dir, f"checkpoint-{step}"), exist_ok=True)
        control.should_save = True
        monitor.on_evaluate(args, state, control, metrics={"eval_robust_accuracy": robust})
        if control.should_save:
            monitor.on_save(args, state, control)
    assert monitor.collapsed and monitor.collapsed_at_step == 30
    assert control.should_training_stop and not control.should_save  # the collapsed weights are not saved
    assert monitor.last_good_checkpoint == os.path.join(args.output_dir, "checkpoint-20")
    calm = CatastrophicOverfittingCallback(drop=0.5, min_best=0.05)
    for robust in (0.02, 0.0, 0.3, 0.2):  # below min_best at first: no false alarm at chance level
        calm.on_evaluate(args, state, TrainerControl(), metrics={"eval_robust_accuracy": robust})
    assert not calm.collapsed
    # With 10 classes, an early dip from 12.5% to 4% (near chance, 10%) is noise; the same run later collapsing
    # from 80% is not.
    ten_classes = CatastrophicOverfittingCallback(drop=0.5, min_best=0.05, num_labels=10)
    assert ten_classes.min_best == 0.2
    for robust in (0.125, 0.04, 0.6, 0.8):
        ten_classes.on_evaluate(args, state, TrainerControl(), metrics={"eval_robust_accuracy": robust})
    assert not ten_classes.collapsed
    ten_classes.on_evaluate(args, state, TrainerControl(), metrics={"eval_robust_accuracy": 0.1})
    assert ten_classes.collapsed
    assert CatastrophicOverfittingCallback(min_best=0.05, num_labels=1000).min_best == 0.05


def test_stop_on_collapse_restores_last_good_checkpoint(tmp_path, monkeypatch, caplog):
    robust = iter([0.5, 0.0, 0.0, 0.0])
    monkeypatch.setattr(CoTrainer, "robust_metrics",
                        lambda self, loader: {"robust_accuracy": next(robust), "robust_mode_clean_accuracy": 1.0})
    trainer = make_trainer(tmp_path, max_steps=6, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                           save_steps=2, robust_eval_samples=4, stop_on_catastrophic_overfitting=True,
                           ema_decay=0.9)
    with caplog.at_level("WARNING"):
        trainer.train()
    assert trainer.state.global_step == 4  # stopped at the collapse
    assert "Catastrophic overfitting at step 4" in caplog.text
    good = load_file(os.path.join(trainer.args.output_dir, "checkpoint-2", "model.safetensors"))
    torch.testing.assert_close(trainer.model.classifier.weight.detach(), good["classifier.weight"])
    assert not os.path.exists(os.path.join(trainer.args.output_dir, "checkpoint-4"))


def test_non_finite_loss_stops_with_clear_message(tmp_path):
    model = make_model()
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    trainer = make_trainer(tmp_path, model=model)
    with pytest.raises(NonFiniteLossError, match="Non-finite co-training loss at optimizer step 0"):
        trainer.train()


def test_non_finite_loss_is_found_at_the_next_logging_step(tmp_path):
    """The check is read at logging steps (no host sync per step): a NaN from step 0 on stops the run at step 3
    with logging every 3 steps, naming the first non-finite step."""
    model = make_model()
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    trainer = make_trainer(tmp_path, model=model, max_steps=6, logging_steps=3)
    steps = []
    trainer.add_callback(type("Count", (trainer_module.TrainerCallback,), {
        "on_step_end": lambda self, args, state, control, **kw: steps.append(state.global_step)})())
    with pytest.raises(NonFiniteLossError, match=r"at optimizer step 0 \(on this process: loss=nan.*found at step 3"):
        trainer.train()
    assert steps == [1, 2, 3]


def test_out_of_range_labels_are_reported_at_the_next_log(tmp_path):
    data = make_dataset()
    data = data.map(lambda row: {"labels": 7 if row["labels"] == 0 else row["labels"]})
    trainer = make_trainer(tmp_path, dataset=data.with_format("torch"), max_steps=4, logging_steps=2)
    with pytest.raises(ValueError, match=r"training label\(s\) outside the class indices \[0, 4\)"):
        trainer.train()


class HostReads:
    """Counts the tensor methods that make the host wait for the device (read a value back): ``item``, ``tolist``,
    ``numpy``, ``__bool__`` (``if tensor:``, ``torch.isfinite(x).all()`` in a condition), ``__float__`` and
    ``__int__``. On a GPU each is a synchronisation; on a CPU they are the same calls, so counting them tests the
    code path that a GPU would run."""

    NAMES = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch):
        self.calls = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def counted(tensor, *args, **kwargs):
            # The DataLoader's samplers draw their shuffles from CPU tensors once per epoch: never device reads.
            if not any("torch/utils/data" in frame.filename for frame in traceback.extract_stack(limit=8)):
                self.calls.append(name)
            return original(tensor, *args, **kwargs)
        return counted


@pytest.mark.parametrize("mode", ["nominal", "pgd2", "free"])
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch, mode):
    kwargs = {"nominal": dict(alpha=1.0), "pgd2": dict(alpha=0.5), "free": dict(alpha=0.5, train_attack="free")}[mode]
    trainer = make_trainer(tmp_path, **kwargs)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model.train()
    trainer.training_step(model, batch())  # first step: lazily created state
    reads = HostReads(monkeypatch)
    trainer.training_step(model, batch(seed=4))
    monkeypatch.undo()
    assert reads.calls == []  # the old per-step float(loss term) and finiteness .item() would show here
    if torch.cuda.is_available():  # the same on a GPU, with CUDA's own detector
        trainer = make_trainer(tmp_path, use_cpu=False, **kwargs)
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1
        model = trainer.model.train()
        inputs = {k: v.to(trainer.args.device) for k, v in batch().items()}
        trainer.training_step(model, inputs)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            trainer.training_step(model, inputs)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_host_reads_do_not_grow_with_the_number_of_steps(tmp_path, monkeypatch):
    """A whole run (Trainer's loop, clipping, AdamW, EMA, scheduler) reads the device at logs only."""
    counts = []
    for steps in (2, 6):
        trainer = make_trainer(tmp_path / str(steps), max_steps=steps, logging_steps=100, ema_decay=0.9,
                               max_grad_norm=1.0)
        reads = HostReads(monkeypatch)
        trainer.train()
        monkeypatch.undo()
        counts.append(len(reads.calls))
    assert counts[0] == counts[1] and counts[0] < 10


def test_needs_normalization_and_cotraining_arguments(tmp_path):
    with pytest.raises(ValueError, match="needs the image normalization"):
        CoTrainer(model=make_model(), args=make_args(tmp_path), train_dataset=make_dataset())
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="CoTrainingArguments"):
        CoTrainer(model=make_model(), args=TrainingArguments(output_dir=str(tmp_path)), normalization=NORM)


# ------------------------------------------------------------------------------------------------------ exact resume
def image_dataset(n=28, size=12, seed=0):
    """PIL images (larger than the model's 8 px, so random resized crops have room) in an ``Image`` column."""
    from datasets import ClassLabel, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)) for _ in range(n)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=[str(i) for i in range(NUM_LABELS)])})
    return Dataset.from_dict({"image": images, "label": [i % NUM_LABELS for i in range(n)]}, features=features)


class StopAt(trainer_module.TrainerCallback):
    """Interrupts training after optimizer step ``step`` (as a SIGINT would, between two steps)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def image_trainer(output_dir, num_workers=0, seed=0, callbacks=(), **overrides):
    from datasets import DatasetDict

    from hf_advsoup.data import DataArguments, collate_fn, set_image_transforms

    data = DatasetDict({"train": image_dataset()})
    # The real pipeline: random resized crops (scale 0.3-1) and horizontal flips of PIL images.
    set_image_transforms(data, ((8, 8), (0.5,) * 3, (0.5,) * 3),
                         DataArguments(random_resized_crop=True, crop_min_scale=0.3, horizontal_flip=True))
    model = make_model(num_hidden_layers=2, drop_path_rate=0.2, hidden_dropout_prob=0.1)
    # 28 images in batches of 4: 7 steps per epoch, so checkpoint-30 lies inside epoch 4 (30 = 4 * 7 + 2).
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=60, save_strategy="steps",
                  save_steps=10, ema_decay=0.9, dataloader_num_workers=num_workers, seed=seed)
    args = make_args(output_dir, **{**values, **overrides})
    return CoTrainer(model=model, args=args, train_dataset=data["train"], data_collator=collate_fn,
                     normalization=NORM, callbacks=list(callbacks))


def step_losses(trainer):
    return {log["step"]: log["loss"] for log in trainer.state.log_history if "loss" in log}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_mid_epoch_resume_with_random_crops_and_flips_is_bit_identical(tmp_path, num_workers):
    full = image_trainer(tmp_path / "full", num_workers)
    full.train()
    interrupted = image_trainer(tmp_path / "interrupted", num_workers, callbacks=[StopAt(33)])
    interrupted.train()
    assert interrupted.state.global_step == 33
    resumed = image_trainer(tmp_path / "interrupted", num_workers)
    resumed.train(resume_from_checkpoint=str(tmp_path / "interrupted" / "checkpoint-30"))

    full_losses = step_losses(full)
    assert sorted(full_losses) == list(range(1, 61))
    assert step_losses(resumed) == full_losses  # every logged loss, exactly (1-30 come from the checkpoint)
    for name, value in params(full.model).items():
        torch.testing.assert_close(params(resumed.model)[name], value, rtol=0, atol=0)
    for name, value in full.ema.shadow.items():
        torch.testing.assert_close(resumed.ema.shadow[name], value, rtol=0, atol=0)
    # Control: another seed crops, flips and trains differently, so the equality above is not vacuous.
    if num_workers == 0:
        other = image_trainer(tmp_path / "other", seed=1, callbacks=[StopAt(3)])
        other.train()
        assert step_losses(other)[1] != full_losses[1]


def test_crops_and_flips_are_keyed_to_seed_epoch_and_image():
    from hf_advsoup.data.transforms import build_transforms

    batch = {"image": list(image_dataset(n=6)["image"]), "label": [0] * 6}
    transform = build_transforms(((8, 8), (0.5,) * 3, (0.5,) * 3), train=True, scale=(0.3, 1.0))
    transform.set_epoch(3, seed=0)
    first = torch.stack(transform(batch)["pixel_values"])
    torch.manual_seed(123)  # torch's global RNG plays no part
    again = torch.stack(transform(batch)["pixel_values"])
    assert torch.equal(first, again)
    reordered = torch.stack(transform({"image": batch["image"][::-1], "label": [0] * 6})["pixel_values"])
    assert torch.equal(reordered, first.flip(0))  # a function of the image, not of its position in the batch
    transform.set_epoch(4, seed=0)
    assert not torch.equal(torch.stack(transform(batch)["pixel_values"]), first)
    transform.set_epoch(3, seed=1)
    assert not torch.equal(torch.stack(transform(batch)["pixel_values"]), first)


# ------------------------------------------------------------------------------------------------------ checkpoints
def test_resume_from_latest_checkpoint(tmp_path):
    full = make_trainer(tmp_path, output_dir=str(tmp_path / "run"), max_steps=4, save_strategy="steps", save_steps=2)
    full.train()
    for value in (True, "True", "true", "latest"):
        assert trainer_module.resolve_checkpoint(value, str(tmp_path / "run")) == str(tmp_path / "run" / "checkpoint-4")
    assert trainer_module.resolve_checkpoint("False", str(tmp_path / "run")) is None
    resumed = make_trainer(tmp_path, output_dir=str(tmp_path / "run"), max_steps=6, save_strategy="no")
    steps_run = []
    resumed.add_callback(type("Count", (trainer_module.TrainerCallback,), {
        "on_step_end": lambda self, args, state, control, **kw: steps_run.append(state.global_step)})())
    resumed.train(resume_from_checkpoint="True")
    assert steps_run == [5, 6]  # continued after checkpoint-4
    empty = make_trainer(tmp_path, output_dir=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="empty holds no checkpoint-N folder"):
        empty.train(resume_from_checkpoint="latest")
    with pytest.raises(FileNotFoundError, match="nowhere.*is not a folder"):
        empty.train(resume_from_checkpoint=str(tmp_path / "nowhere"))


def test_load_best_model_at_end_reloads_the_best_checkpoint_and_its_ema(tmp_path, monkeypatch, caplog):
    robust = iter([0.2, 0.9, 0.3])  # best at the second evaluation (step 4 of 6): neither the first nor the last
    monkeypatch.setattr(CoTrainer, "robust_metrics",
                        lambda self, loader: {"robust_accuracy": next(robust), "robust_mode_clean_accuracy": 1.0})
    trainer = make_trainer(tmp_path, model=make_model(num_hidden_layers=2), max_steps=6, eval_strategy="steps",
                           eval_steps=2, save_strategy="steps", save_steps=2, robust_eval_samples=4, ema_decay=0.8,
                           load_best_model_at_end=True, metric_for_best_model="robust_accuracy",
                           greater_is_better=True)
    transformers.utils.logging.enable_propagation()  # let caplog see transformers' load report
    try:
        with caplog.at_level("WARNING"):
            trainer.train()
    finally:
        transformers.utils.logging.disable_propagation()
    best = os.path.join(trainer.args.output_dir, "checkpoint-4")
    assert trainer.state.best_model_checkpoint == best
    assert "missing" not in caplog.text.lower() and "unexpected" not in caplog.text.lower()
    final = str(tmp_path / "final")
    trainer.save_model(final)
    saved = AdvSoupViTForImageClassification.from_pretrained(final)
    raw = AdvSoupViTForImageClassification.from_pretrained(best)
    ema = load_file(os.path.join(best, EMA_WEIGHTS_NAME))
    for name, value in saved.state_dict().items():
        expected = ema[name] if name in ema else raw.state_dict()[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)
    assert not torch.equal(ema["vit.layers.1.mlp.fc1.weight"], raw.state_dict()["vit.layers.1.mlp.fc1.weight"])


def test_truncated_checkpoint_is_named(tmp_path):
    trainer = make_trainer(tmp_path, output_dir=str(tmp_path / "run"), max_steps=2, save_strategy="steps",
                           save_steps=2)
    trainer.train()
    weights = tmp_path / "run" / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    resumed = make_trainer(tmp_path, output_dir=str(tmp_path / "run"), max_steps=4)
    with pytest.raises(trainer_module.CorruptCheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        resumed.train(resume_from_checkpoint="latest")
