"""Tests of free co-training (``train_attack="free"``, Shafahi et al. 2019, in CoTrainer's one loop): the replaying
sampler, Eq. 2 on [clean, clean + delta] with the perturbation's sign step taken from the same backward, run length
in optimizer steps, gradient accumulation, exact resume inside a minibatch's replays, catastrophic-overfitting
monitoring and the argument checks.

Tiny seeded models (hidden 16, 1-2 layers, 8x8 images) on CPU; the file runs in well under a minute.
"""

import copy
import os

import pytest
import torch
from torch.utils.data import SequentialSampler

from hf_advsoup.free_training import FreeReplaySampler, free_state_file
from hf_advsoup.modeling_advsoup import SoupWeights
from hf_advsoup.trainer import CoTrainer
from hf_advsoup.training_args import CoTrainingArguments
from test_trainer import (
    NORM,
    NUM_LABELS,
    StopAt,
    batch,
    eq2_loss_by_hand,
    image_trainer,
    make_dataset,
    make_model,
    make_trainer,
    params,
    step_losses,
)

EPS = 8 / 255


def free_trainer(tmp_path, **overrides):
    values = dict(train_attack="free", free_replays=3, train_epsilon="8/255")
    values.update(overrides)
    return make_trainer(tmp_path, **values)


# ------------------------------------------------------------------------------------------------------ sampler
def test_sampler_replays_each_block_and_drops_the_incomplete_one():
    sampler = FreeReplaySampler(SequentialSampler(range(10)), block_size=4, replays=3)
    assert list(sampler) == [0, 1, 2, 3] * 3 + [4, 5, 6, 7] * 3  # 8 and 9 do not fill a block
    assert len(sampler) == 24 and sampler.blocks_per_pass == 2


def test_data_loader_gives_each_optimizer_step_its_minibatch_replays_times(tmp_path):
    # Gradient accumulation 2: a minibatch is two micro-batches, and both come back at each replay.
    trainer = free_trainer(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    labels = [b["labels"].tolist() for b in trainer.get_train_dataloader()]
    assert len(labels) == 4 * 3 * 2  # 32 images = 4 minibatches of 8, 3 replays, 2 micro-batches each
    for start in range(0, len(labels), 6):
        group = labels[start:start + 6]
        assert group == group[:2] * 3
    # Every image once per pass, in the order a normal run of the same seed uses.
    normal = make_trainer(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    normal_labels = [b["labels"].tolist() for b in normal.get_train_dataloader()]
    assert [x for s in range(0, len(labels), 6) for x in labels[s:s + 2]] == normal_labels


# ------------------------------------------------------------------------------------------------------ the step
@pytest.mark.parametrize("soft", [False, True])
def test_replay_is_eq2_on_clean_and_clean_plus_delta_in_one_forward(tmp_path, soft):
    alpha, smoothing = 0.3, 0.1
    trainer = free_trainer(tmp_path, alpha=alpha, label_smoothing_factor=smoothing, free_start="random")
    model = trainer.model.train()
    inputs = batch()
    if soft:
        inputs["labels"] = torch.softmax(torch.randn(6, NUM_LABELS, generator=torch.Generator().manual_seed(4)), -1)
    seen = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((module.training, kwargs["pixel_values"], kwargs["beta"])),
        with_kwargs=True)
    loss = trainer.compute_loss(model, inputs)
    handle.remove()
    # One forward, in training mode, on 2 x 6 images: no attack pass at all.
    ((training, model_input, beta),) = seen
    assert training and model_input.shape[0] == 12 and isinstance(beta, SoupWeights)
    assert torch.equal(beta.clean, torch.tensor([1.0] * 6 + [0.0] * 6)) and torch.equal(beta.adversarial, 1 - beta.clean)
    (entry,) = trainer._free_batches.values()
    delta = entry.delta
    # The perturbation is in pixel space: inside the eps-ball and the [0, 1] box (mean = std = 0.5, so a
    # normalized-space bug would show up as 2 * eps), and not zero (random start).
    images = NORM.to_pixels(inputs["pixel_values"])
    assert delta.abs().max() <= EPS + 1e-7 and delta.abs().max() > EPS / 2
    assert (images + delta).min() >= -1e-6 and (images + delta).max() <= 1 + 1e-6
    torch.testing.assert_close(NORM.to_pixels(model_input[6:]), images + delta, rtol=0, atol=1e-6)
    assert torch.equal(model_input[:6], inputs["pixel_values"])

    model.eval()  # no dropout in this config; eval only to be explicit
    with torch.no_grad():
        clean_logits = model(inputs["pixel_values"], beta=1.0).logits
        adv_logits = model(NORM.to_model(images + delta), beta=0.0).logits
    by_hand = eq2_loss_by_hand(clean_logits, adv_logits, inputs["labels"], alpha, smoothing)
    torch.testing.assert_close(loss.detach(), by_hand, rtol=1e-5, atol=1e-6)


def test_weight_gradients_are_eq2_and_delta_takes_a_projected_sign_step(tmp_path):
    trainer = free_trainer(tmp_path, alpha=0.5, free_start="random", label_smoothing_factor=0.0)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model.train()
    reference = copy.deepcopy(model)
    inputs = batch()
    trainer.training_step(model, inputs)
    (entry,) = trainer._free_batches.values()

    # By hand: the same start (drawn from the same seeded generator), one forward/backward of Eq. 2.
    generator = trainer_generator(trainer)
    start = torch.empty(inputs["pixel_values"].shape).uniform_(-EPS, EPS, generator=generator)
    images = NORM.to_pixels(inputs["pixel_values"])
    start = torch.clamp(start, (-images).clamp_min(-EPS), (1 - images).clamp_max(EPS)).requires_grad_(True)
    logits = reference(torch.cat([inputs["pixel_values"], NORM.to_model(images + start)]),
                       beta=torch.tensor([1.0] * 6 + [0.0] * 6)).logits
    per_sample = torch.nn.functional.cross_entropy(logits, torch.cat([inputs["labels"]] * 2), reduction="none")
    (0.5 * per_sample[:6].mean() + 0.5 * per_sample[6:].mean()).backward()
    # The weights' gradients are those of Eq. 2 alone: the perturbation's update added nothing to them.
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    # The perturbation took one sign step of eps (Shafahi's step) from its gradient, projected onto ball and box.
    expected = start.detach() + EPS * start.grad.sign()
    expected = torch.clamp(expected, (-images).clamp_min(-EPS), (1 - images).clamp_max(EPS))
    torch.testing.assert_close(entry.delta, expected, rtol=0, atol=1e-6)
    assert not torch.equal(entry.delta, start.detach())


def trainer_generator(trainer):
    from hf_advsoup.trainer import step_generator

    return step_generator(trainer.args.seed, 0, 0, 0, torch.device("cpu"))


@pytest.mark.parametrize("start", ["carry", "zero"])
def test_augmentation_once_per_minibatch_and_perturbation_reset_or_carried(tmp_path, start):
    from hf_advsoup.augmentation import AugmentationArguments, BatchAugmenter

    augmenter = BatchAugmenter(AugmentationArguments(randaugment_magnitude=5.0))
    trainer = free_trainer(tmp_path, free_start=start, max_steps=6, free_replays=3, batch_augmenter=augmenter,
                           logging_steps=100)
    seen = []
    trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["pixel_values"].detach().clone()) if module.training else None,
        with_kwargs=True)
    deltas = []
    trainer.add_callback(type("Record", (trainer_module().TrainerCallback,), {
        "on_step_end": lambda self, args, state, control, **kw: deltas.append(
            trainer._free_batches[0].delta.clone())})())
    trainer.train()
    clean = [x[:8] for x in seen]
    # The three replays of a minibatch see the same augmented clean images; the next minibatch others.
    assert torch.equal(clean[0], clean[1]) and torch.equal(clean[1], clean[2]) and not torch.equal(clean[2], clean[3])
    assert torch.equal(clean[3], clean[5])
    # Replay 0 of the first minibatch starts from zero: its adversarial half is the clean images.
    torch.testing.assert_close(seen[0][8:], seen[0][:8], rtol=0, atol=1e-6)
    assert not torch.allclose(seen[1][8:], seen[1][:8])  # replay 1 is perturbed
    second_start = seen[3][8:] - seen[3][:8]
    if start == "zero":
        assert second_start.abs().max() < 1e-6  # a new minibatch starts from zero again
    else:
        # Carried: the first minibatch's final perturbation, projected onto the new images' box.
        images = NORM.to_pixels(seen[3][:8])
        carried = torch.clamp(deltas[2], -images, 1 - images)
        torch.testing.assert_close(NORM.to_pixels(seen[3][8:]) - images, carried, rtol=0, atol=1e-5)
        assert carried.abs().max() > EPS / 2
    for delta in deltas:
        assert delta.abs().max() <= EPS + 1e-7


def trainer_module():
    import hf_advsoup.trainer as module

    return module


# ------------------------------------------------------------------------------------------------------ run length
@pytest.mark.parametrize("size", [32, 30])
def test_epochs_count_the_optimizer_steps_of_a_normal_run(tmp_path, size):
    common = dict(max_steps=-1, num_train_epochs=3, logging_steps=100)
    normal = make_trainer(tmp_path / "normal", dataset=make_dataset(size), **common)
    normal.train()
    free = free_trainer(tmp_path / "free", dataset=make_dataset(size), free_replays=4, **common)
    free.train()
    assert normal.state.global_step == 12  # ceil(size / 8) = 4 steps per epoch
    assert free.state.global_step == free.state.max_steps == 12
    # 4 (32 images) or 3 (30: the incomplete block is dropped) minibatches per pass, each replayed 4 times.
    assert free.state.epoch == pytest.approx(12 / (4 * (size // 8)))
    # The schedule spans the same 12 steps: cosine decay ends at zero in both.
    assert free.lr_scheduler.get_last_lr()[0] == pytest.approx(normal.lr_scheduler.get_last_lr()[0], abs=1e-12)


def test_gradient_accumulation_matches_doubled_batch(tmp_path):
    common = dict(alpha=0.5, max_steps=6, weight_decay=0.1, free_start="zero")
    ga = free_trainer(tmp_path / "ga", per_device_train_batch_size=4, gradient_accumulation_steps=2, **common)
    ga.train()
    big = free_trainer(tmp_path / "big", per_device_train_batch_size=8, gradient_accumulation_steps=1, **common)
    big.train()
    start = params(make_model())
    for name, value in params(big.model).items():
        torch.testing.assert_close(params(ga.model)[name], value, rtol=1e-4, atol=1e-5)
    assert not torch.equal(start["classifier.weight"], params(big.model)["classifier.weight"])
    # Each micro-batch keeps its own perturbation: together they are the big batch's.
    torch.testing.assert_close(torch.cat([ga._free_batches[0].delta, ga._free_batches[1].delta]),
                               big._free_batches[0].delta, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ resume
def free_image_trainer(output_dir, callbacks=()):
    # 28 images in batches of 4, 3 replays: 21 optimizer steps per pass over the data.
    return image_trainer(output_dir, callbacks=callbacks, train_attack="free", free_replays=3, max_steps=30,
                         train_epsilon="8/255", save_steps=5)


def test_resume_inside_and_between_replays_is_bit_identical(tmp_path):
    """Crops, flips, dropout, stochastic depth, EMA and a carried perturbation; checkpoint-10 lies inside a
    minibatch's replays (10 = 3 * 3 + 1) and checkpoint-15 at a minibatch boundary, whose carried start it holds."""
    full = free_image_trainer(tmp_path / "full")
    full.train()
    full_losses = step_losses(full)
    assert sorted(full_losses) == list(range(1, 31))
    assert os.path.isfile(free_state_file(str(tmp_path / "full" / "checkpoint-10"), 0, 1))
    for checkpoint, stop in ((10, 12), (15, 17)):
        folder = tmp_path / f"resumed-{checkpoint}"
        free_image_trainer(folder, callbacks=[StopAt(stop)]).train()
        resumed = free_image_trainer(folder)
        resumed.train(resume_from_checkpoint=str(folder / f"checkpoint-{checkpoint}"))
        assert step_losses(resumed) == full_losses
        for name, value in params(full.model).items():
            torch.testing.assert_close(params(resumed.model)[name], value, rtol=0, atol=0)
        for name, value in full.ema.shadow.items():
            torch.testing.assert_close(resumed.ema.shadow[name], value, rtol=0, atol=0)
    # Control: without the saved perturbation, the resumed run differs (the state file is what makes it exact).
    folder = tmp_path / "resumed-without-state"
    free_image_trainer(folder, callbacks=[StopAt(12)]).train()
    os.remove(free_state_file(str(folder / "checkpoint-10"), 0, 1))
    lost = free_image_trainer(folder)
    lost.train(resume_from_checkpoint=str(folder / "checkpoint-10"))
    assert step_losses(lost)[11] != full_losses[11]


# ------------------------------------------------------------------------------------------------------ monitoring
def test_catastrophic_overfitting_stops_free_training_too(tmp_path, monkeypatch, caplog):
    robust = iter([0.5, 0.0, 0.0, 0.0])
    monkeypatch.setattr(CoTrainer, "robust_metrics",
                        lambda self, loader: {"robust_accuracy": next(robust), "robust_mode_clean_accuracy": 1.0})
    trainer = free_trainer(tmp_path, max_steps=6, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                           save_steps=2, robust_eval_samples=4, stop_on_catastrophic_overfitting=True)
    with caplog.at_level("WARNING"):
        trainer.train()
    assert trainer.state.global_step == 4 and "Catastrophic overfitting at step 4" in caplog.text
    assert "free co-training" in caplog.text  # the warning names this run's likely cause
    assert not os.path.exists(os.path.join(trainer.args.output_dir, "checkpoint-4"))


def test_non_finite_loss_stops_at_the_next_save_and_is_never_checkpointed(tmp_path):
    model = make_model()
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    trainer = free_trainer(tmp_path, model=model, max_steps=6, logging_steps=5, save_strategy="steps", save_steps=2)
    with pytest.raises(trainer_module().NonFiniteLossError,
                       match="at optimizer step 0 .*found at step 2"):
        trainer.train()
    assert not os.path.exists(os.path.join(trainer.args.output_dir, "checkpoint-2"))


# ------------------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(alpha=1.0), "alpha=1 is nominal training"),
        (dict(free_replays=0), "free_replays must be an integer >= 1"),
        (dict(free_replays=1, free_start="zero"), "never uses an updated perturbation"),
        (dict(free_start="warm"), "free_start must be one of carry, zero, random"),
        (dict(train_attack_steps=2), "one step per replay"),
        (dict(train_attack_norm="l2"), "l_inf sign step only"),
        (dict(train_attack_targeted=True), "untargeted"),
        (dict(train_attack_random_start=True), "free_start"),
        (dict(train_sampling_strategy="group_by_length"), "train_sampling_strategy='group_by_length'"),
        (dict(accelerator_config={"split_batches": True}), "split_batches"),
        (dict(train_epsilon="8"), "did you mean '8/255'"),
    ],
)
def test_incompatible_settings_have_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CoTrainingArguments(output_dir="unused", use_cpu=True, report_to=[], train_attack="free", **kwargs)


def test_free_replays_needs_free_training_and_defaults(tmp_path):
    with pytest.raises(ValueError, match="free_replays=4 only applies to free co-training"):
        CoTrainingArguments(output_dir="unused", use_cpu=True, report_to=[], free_replays=4)
    args = CoTrainingArguments(output_dir="unused", use_cpu=True, report_to=[], train_attack="free")
    config = args.train_attack_config()
    assert args.free_replays == 4 and args.free_start == "carry"
    assert config.epsilon == pytest.approx(4 / 255) and config.effective_step_size == pytest.approx(4 / 255)
    custom = CoTrainingArguments(output_dir="unused", use_cpu=True, report_to=[], train_attack="free",
                                 train_epsilon="8/255", train_attack_step_size="2/255").train_attack_config()
    assert custom.epsilon == pytest.approx(8 / 255) and custom.effective_step_size == pytest.approx(2 / 255)


def test_too_small_training_set_and_resume_without_data_skip_are_refused(tmp_path):
    trainer = free_trainer(tmp_path, per_device_train_batch_size=16, gradient_accumulation_steps=4)
    with pytest.raises(ValueError, match="whole optimizer steps of 64 images.*has 32"):
        trainer.train()
    trainer = free_trainer(tmp_path, ignore_data_skip=True, output_dir=str(tmp_path / "run"))
    os.makedirs(tmp_path / "run" / "checkpoint-2")
    with pytest.raises(ValueError, match="ignore_data_skip"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
