"""Checks of the attack core (ENGINEERING.md section 3) on tiny, seeded, in-process models.

Models: a linear model with a known margin, and a small MLP trained for a fraction of a second on scikit-learn's
digits (8x8 grayscale images in [0, 1]), both fed *normalized* inputs with mean = std = 0.5 so that a missing or
doubled (un)normalization shows up as a 2x error in epsilon.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_advsoup.attacks import (
    PRESETS,
    AttackConfig,
    Normalization,
    attack,
    attack_objective,
    format_epsilon,
    parse_epsilon,
)

HALF = Normalization(mean=(0.5,), std=(0.5,))
HALF_RGB = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
GRADIENT_PRESETS = ["pgd2", "pgd5", "fast_at", "nfgsm", "l2_pgd", "targeted", "pyramid", "pgd40", "report"]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Normalized(nn.Module):
    """Wraps a pixel-space classifier so that it takes normalized inputs, like an HF model."""

    def __init__(self, net: nn.Module, normalization: Normalization):
        super().__init__()
        self.net = net
        self.normalization = normalization

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalization.to_pixels(pixel_values))


@pytest.fixture(scope="module")
def digits():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    data = sklearn_datasets.load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.tensor(data.target)
    return images, labels


@pytest.fixture(scope="module")
def mlp(digits):
    """A 64-64-10 MLP on normalized digits, ~93% test accuracy after 300 Adam steps (~0.2 s)."""
    images, labels = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs = HALF.to_model(images)
    for _ in range(300):
        index = torch.randint(0, 1400, (128,))
        loss = F.cross_entropy(model(inputs[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@pytest.fixture(scope="module")
def test_set(digits):
    images, labels = digits
    return HALF.to_model(images[1400:]), labels[1400:]


def accuracy(model, pixel_values, labels) -> float:
    with torch.no_grad():
        return (model(pixel_values).argmax(-1) == labels).float().mean().item()


# ----------------------------------------------------------------------------------------------------- epsilon
def test_parse_epsilon_accepts_fractions_and_floats():
    assert parse_epsilon("4/255") == pytest.approx(4 / 255)
    assert parse_epsilon(" 2.5 / 255 ") == pytest.approx(2.5 / 255)
    assert parse_epsilon(0.0157) == pytest.approx(0.0157)
    assert parse_epsilon("0.5") == 0.5
    assert parse_epsilon(0) == 0.0
    assert parse_epsilon(4.0, norm="l2") == 4.0  # l_2 radii of 1..8 are normal (paper, Table 4)
    assert isinstance(parse_epsilon("4/255"), float)


@pytest.mark.parametrize("bad", [4, "8", 1.0, 255])
def test_parse_epsilon_rejects_linf_radius_in_0_255_units(bad):
    with pytest.raises(ValueError, match="/255"):
        parse_epsilon(bad)
    assert parse_epsilon(bad, allow_large=True) == float(bad)


@pytest.mark.parametrize("bad", [-1e-3, "-4/255", float("nan"), float("inf"), "four", "4/0", "1/2/3"])
def test_parse_epsilon_rejects_invalid(bad):
    with pytest.raises(ValueError):
        parse_epsilon(bad)


def test_parse_epsilon_rejects_unknown_norm():
    with pytest.raises(ValueError, match="linf"):
        parse_epsilon(0.1, norm="l1")


def test_format_epsilon():
    assert format_epsilon(4 / 255) == "4/255"
    assert format_epsilon(2.5 / 255) == "2.5/255"
    assert format_epsilon(0.5, "l2") == "0.5"


# ----------------------------------------------------------------------------------------------------- config
def test_presets_match_the_paper():
    pgd2 = AttackConfig.from_preset("pgd2")
    assert (pgd2.name, pgd2.norm, pgd2.steps) == ("pgd", "linf", 2)
    assert pgd2.epsilon == pytest.approx(4 / 255) and pgd2.step_size == pytest.approx(2.5 / 255)
    assert AttackConfig() == pgd2  # the defaults are the training default
    assert AttackConfig.from_preset("pgd5").step_size == pytest.approx(1 / 255)
    nfgsm = AttackConfig.from_preset("nfgsm")
    assert nfgsm.effective_nfgsm_init_radius == pytest.approx(8 / 255)
    assert nfgsm.step_size == pytest.approx(0.75 * 4 / 255)
    assert AttackConfig.from_preset("fast_at").step_size == pytest.approx(4 / 255)
    pgd40 = AttackConfig.from_preset("pgd40")
    assert (pgd40.steps, pgd40.step_size, pgd40.effective_lr_decay_steps, pgd40.keep_best) == (40, 0.1, [20, 30],
                                                                                               True)
    pyramid = AttackConfig.from_preset("pyramid")
    assert (pyramid.pyramid_scales, pyramid.pyramid_multipliers) == ([32, 16, 1], [20.0, 10.0, 1.0])
    assert AttackConfig.from_preset("targeted").targeted
    assert AttackConfig.from_preset("l2_pgd").norm == "l2"
    report = AttackConfig.from_preset("report")
    assert (report.name, report.steps, report.loss, report.target_classes) == ("pgd40", 40, "ce", 9)
    assert report.label == "PGD-40 (Adam) + MT-9 linf eps=4/255"
    assert set(PRESETS) == {"pgd2", "pgd5", "fast_at", "nfgsm", "l2_pgd", "targeted", "pyramid", "pgd40",
                            "report", "autoattack"}


def test_from_preset_rescales_step_with_epsilon():
    config = AttackConfig.from_preset("targeted", epsilon="8/255")
    assert config.epsilon == pytest.approx(8 / 255) and config.step_size == pytest.approx(5 / 255)
    assert AttackConfig.from_preset("targeted", epsilon="8/255", step_size="1/255").step_size == pytest.approx(1 / 255)
    assert AttackConfig.from_preset("pgd40", epsilon="8/255").step_size == 0.1  # Adam learning rate: kept
    assert AttackConfig.from_preset("pgd2", name="fgsm", steps=1).name == "fgsm"


def test_pgd40_step_override_rescales_decay_points_and_label():
    """The paper's schedule (step 0.1, /10 at steps 20 and 30 of 40) keeps its shape at any step count, and every
    name of the attack states the steps that run."""
    pgd20 = AttackConfig.from_preset("pgd40", steps=20)
    assert pgd20.effective_lr_decay_steps == [10, 15]
    assert AttackConfig.from_preset("pgd40", steps=10).effective_lr_decay_steps == [5, 7]
    assert AttackConfig.from_preset("pgd40", steps=1).effective_lr_decay_steps == []
    assert AttackConfig.from_preset("pgd40", steps=20, lr_decay_steps=[5]).effective_lr_decay_steps == [5]
    assert pgd20.label == "PGD-20 (Adam) linf eps=4/255" and "40" not in pgd20.label
    assert pgd20.description.startswith("PGD-20 (Adam): 20 steps of Adam") and "steps 10 and 15" in pgd20.description
    assert AttackConfig.from_preset("pgd40").label == "PGD-40 (Adam) linf eps=4/255"
    assert AttackConfig.from_preset("pgd2", steps=3).label == "PGD-3 linf eps=4/255"
    assert AttackConfig.from_preset("pgd40", epsilon=0.1).label.endswith("eps=0.1")  # not "25.5/255"
    # dataclasses.replace keeps the scaled schedule too (the decay points are derived, not stored).
    assert dataclasses.replace(AttackConfig.from_preset("pgd40"), steps=20).effective_lr_decay_steps == [10, 15]


def test_pgd40_runs_the_rescaled_step_size_schedule():
    """The Adam step sizes actually taken: on a two-class linear model with the margin loss the input gradient is
    constant, so each Adam update has magnitude 1 per coordinate and the iterates move by exactly the step size."""
    torch.manual_seed(0)
    model = LinearTwoClass(torch.randn(16), bias=0.0)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    images = torch.full((2, 1, 4, 4), 0.5)  # far from the box; the ball (0.3) never binds: total < 0.11
    config = AttackConfig.from_preset("pgd40", steps=20, step_size=0.01, loss="margin", random_start=False,
                                      epsilon=0.3)
    attack(model, HALF.to_model(images), torch.tensor([0, 1]), config, normalization=HALF)
    moves = [(HALF.to_pixels(b) - HALF.to_pixels(a)).abs().amax().item() for a, b in itertools.pairwise(seen)]
    assert len(moves) == 20  # 20 steps and the final forward of the best iterate
    expected = [0.01] * 10 + [0.001] * 5 + [0.0001] * 5  # decayed 10x at steps 10 and 15 (of 20)
    assert moves == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="cw"), "pgd, fgsm"),
        (dict(norm="l1"), "linf, l2"),
        (dict(loss="dlr"), "ce, margin"),
        (dict(epsilon=8), "8/255"),
        (dict(steps=-1), "steps"),
        (dict(restarts=0), "restarts"),
        (dict(restarts=2, random_start=False), "random_start"),
        (dict(name="fgsm", steps=3), "one-step"),
        (dict(name="pyramid", pyramid_scales=[8, 1], pyramid_multipliers=[1.0]), "same length"),
        (dict(name="pgd40", norm="l2", epsilon=1.0), "l_2"),
        (dict(name="autoattack", targeted=True), "targeted"),
        (dict(name="autoattack", autoattack_version="custom"), "autoattack_attacks"),
        (dict(name="autoattack", autoattack_version="custom", autoattack_attacks=["mt"]), "apgd-ce"),
        (dict(step_size=-0.1), "step_size"),
        (dict(name="pgd40", steps=20, lr_decay_steps=[20, 30]), "lr_decay_steps=None"),
        (dict(name="fgsm", steps=1, target_classes=3), "target_classes"),
        (dict(targeted=True, target_classes=3), "untargeted"),
        (dict(target_classes=-1), "target_classes"),
    ],
)
def test_config_errors_name_valid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttackConfig(**kwargs)


def test_from_preset_errors():
    with pytest.raises(ValueError, match="pgd2"):
        AttackConfig.from_preset("pgd-2")
    with pytest.raises(TypeError, match="epsilon"):
        AttackConfig.from_preset("pgd2", eps=0.1)


def test_config_parses_from_command_line():
    transformers = pytest.importorskip("transformers")
    parser = transformers.HfArgumentParser(AttackConfig)
    (config,) = parser.parse_args_into_dataclasses(
        ["--name", "pyramid", "--epsilon", "6/255", "--step_size", "1/255", "--steps", "5",
         "--pyramid_scales", "8", "4", "1", "--pyramid_multipliers", "20", "10", "1"]
    )
    assert config.name == "pyramid" and config.epsilon == pytest.approx(6 / 255)
    assert config.step_size == pytest.approx(1 / 255) and config.pyramid_scales == [8, 4, 1]
    with pytest.raises(ValueError, match="/255"):
        parser.parse_args_into_dataclasses(["--epsilon", "4"])
    for f in AttackConfig.__dataclass_fields__.values():
        assert f.metadata.get("help"), f"field {f.name} has no help"


# ----------------------------------------------------------------------------------------------------- normalization
def test_normalization_roundtrip_and_processor():
    images = torch.rand(2, 3, 4, 4)
    assert torch.allclose(IMAGENET.to_pixels(IMAGENET.to_model(images)), images, atol=1e-6)
    assert torch.allclose(HALF_RGB.to_model(images), images * 2 - 1)

    class Processor:
        image_mean = [0.5, 0.5, 0.5]
        image_std = [0.5, 0.5, 0.5]
        do_normalize = True

    assert Normalization.from_processor(Processor()) == HALF_RGB
    Processor.do_normalize = False
    assert Normalization.from_processor(Processor()) == Normalization()
    with pytest.raises(ValueError, match="std"):
        Normalization(mean=(0.5,), std=(0.0,))
    with pytest.raises(ValueError, match="channels"):
        IMAGENET.to_model(torch.rand(1, 2, 4, 4))


def test_normalization_from_hf_processor():
    transformers = pytest.importorskip("transformers")
    processor = transformers.ViTImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    assert Normalization.from_processor(processor) == HALF_RGB


# ----------------------------------------------------------------------------------------------------- eps-ball
def _tiny_cnn(channels: int = 3) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


@pytest.mark.parametrize("normalization", [HALF_RGB, IMAGENET], ids=["mean=std=0.5", "imagenet"])
@pytest.mark.parametrize("preset", GRADIENT_PRESETS)
def test_perturbation_in_eps_ball_and_image_in_unit_box(preset, normalization):
    net = _tiny_cnn()
    model = Normalized(net, normalization)
    images = torch.rand(6, 3, 8, 8)
    images[:, :, 0] = 0.0  # saturated pixels: the box constraint must bind here
    images[:, :, 1] = 1.0
    pixel_values = normalization.to_model(images)
    labels = torch.arange(6) % 10
    config = AttackConfig.from_preset(preset, epsilon=0.5 if preset == "l2_pgd" else "8/255")
    adversarial = attack(model, pixel_values, labels, config, normalization=normalization, generator=seeded())
    assert adversarial.shape == pixel_values.shape and adversarial.dtype == pixel_values.dtype
    adv_images = normalization.to_pixels(adversarial)
    delta = adv_images - images
    assert adv_images.min() >= -1e-6 and adv_images.max() <= 1 + 1e-6
    eps = config.epsilon
    if preset == "l2_pgd":
        size = delta.flatten(1).norm(dim=1).max().item()
    else:
        size = delta.abs().max().item()
    if preset == "nfgsm":  # no projection back to the ball, by design: noise radius + one step
        bound = config.effective_nfgsm_init_radius + config.step_size
    elif preset == "pyramid":  # every level is eps-bounded, scaled by its multiplier
        bound = eps * sum(config.pyramid_multipliers)
    else:
        bound = eps
    assert size <= bound * (1 + 1e-5) + 1e-6
    # ...and the attack did move the input (a no-op would pass the bound trivially).
    assert size >= 0.5 * min(bound, 1.0)
    # A 2*eps bug (normalized-space eps with std 0.5) would exceed the bound; a eps/2 bug would fail this:
    if preset in ("pgd2", "fast_at", "targeted", "pgd40", "report"):
        assert size >= 0.99 * eps


@pytest.mark.parametrize("preset", GRADIENT_PRESETS + ["autoattack"])
def test_zero_epsilon_is_identity(preset):
    model = Normalized(_tiny_cnn(), HALF_RGB)
    pixel_values = HALF_RGB.to_model(torch.rand(3, 3, 8, 8))
    config = AttackConfig.from_preset(preset, epsilon=0)
    adversarial = attack(model, pixel_values, torch.tensor([0, 1, 2]), config, normalization=HALF_RGB,
                         generator=seeded())
    assert torch.equal(adversarial, pixel_values)


def test_pyramid_levels_are_blockwise():
    model = Normalized(_tiny_cnn(), HALF_RGB)
    images = torch.rand(2, 3, 8, 8) * 0.5 + 0.25  # no clipping at the box
    config = AttackConfig(name="pyramid", epsilon="2/255", steps=3, step_size="1/255", pyramid_scales=[4],
                          pyramid_multipliers=[2.0], random_start=False)
    adversarial = attack(model, HALF_RGB.to_model(images), torch.tensor([0, 1]), config, normalization=HALF_RGB)
    delta = HALF_RGB.to_pixels(adversarial) - images
    blocks = delta.unfold(2, 4, 4).unfold(3, 4, 4)  # (batch, channel, 2, 2, 4, 4)
    assert torch.allclose(blocks, blocks[..., :1, :1].expand_as(blocks), atol=1e-6)
    assert delta.abs().max() == pytest.approx(2 * 2 / 255, rel=1e-4)  # multiplier * eps after 3 steps of 1/255


def test_rejects_inputs_that_do_not_match_the_normalization():
    model = Normalized(_tiny_cnn(), HALF_RGB)
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="normalization"):
        attack(model, images * 255, torch.tensor([0, 1]), AttackConfig(), normalization=HALF_RGB)


# ----------------------------------------------------------------------------------------------------- strength
def test_linf_eps_one_breaks_everything(mlp, test_set):
    pixel_values, labels = test_set
    config = AttackConfig.from_preset("pgd40", epsilon=1.0, allow_large_epsilon=True, steps=10)
    adversarial = attack(mlp, pixel_values[:200], labels[:200], config, normalization=HALF, generator=seeded())
    assert accuracy(mlp, pixel_values[:200], labels[:200]) > 0.85
    assert accuracy(mlp, adversarial, labels[:200]) <= 0.02


def test_robust_accuracy_non_increasing_in_epsilon(mlp, test_set):
    from hf_advsoup.evaluation import evaluate_robustness

    pixel_values, labels = test_set
    accuracies, worst = [], []
    for eps in ["2/255", "8/255", "16/255", "32/255", "64/255"]:
        config = AttackConfig.from_preset("pgd40", epsilon=eps)
        adversarial = attack(mlp, pixel_values, labels, config, normalization=HALF, generator=seeded())
        accuracies.append(accuracy(mlp, adversarial, labels))
    assert accuracies == sorted(accuracies, reverse=True), accuracies
    assert accuracies[0] - accuracies[-1] > 0.3  # the sweep spans a real range
    configs = [AttackConfig.from_preset("pgd2", epsilon=e) for e in ["2/255", "8/255", "32/255"]]
    result = evaluate_robustness(mlp, pixel_values, labels, configs, normalization=HALF, show_progress=False)
    for label in result.attack_correct:
        worst.append(result.robust_accuracy <= result.attack_accuracies[label])
    assert all(worst)


def test_robust_accuracy_non_increasing_in_steps_and_restarts(mlp, test_set):
    pixel_values, labels = test_set
    by_steps = []
    for steps in [0, 1, 2, 5, 10, 40]:
        config = AttackConfig.from_preset("pgd40", epsilon="16/255", steps=steps)
        adversarial = attack(mlp, pixel_values, labels, config, normalization=HALF, generator=seeded())
        by_steps.append(accuracy(mlp, adversarial, labels))
    assert by_steps == sorted(by_steps, reverse=True), by_steps
    assert by_steps[0] - by_steps[-1] > 0.1
    by_restarts = []
    for restarts in [1, 2, 4]:
        config = AttackConfig.from_preset("pgd2", epsilon="16/255", restarts=restarts)
        adversarial = attack(mlp, pixel_values, labels, config, normalization=HALF, generator=seeded())
        by_restarts.append(accuracy(mlp, adversarial, labels))
    assert by_restarts == sorted(by_restarts, reverse=True), by_restarts
    assert by_restarts[0] > by_restarts[-1]


def test_attack_loss_rises(mlp, test_set):
    pixel_values, labels = test_set
    losses = []
    for steps in [0, 1, 3, 10]:
        config = AttackConfig.from_preset("pgd2", epsilon="8/255", step_size="2/255", steps=steps)
        adversarial = attack(mlp, pixel_values, labels, config, normalization=HALF, generator=seeded())
        with torch.no_grad():
            losses.append(F.cross_entropy(mlp(adversarial), labels).item())
    assert all(b > a for a, b in zip(losses, losses[1:])), losses
    with torch.no_grad():
        clean_loss = F.cross_entropy(mlp(pixel_values), labels).item()
    assert losses[-1] > 1.5 * clean_loss


def test_best_iterate_is_kept(mlp, test_set):
    pixel_values, labels = test_set
    kwargs = dict(epsilon="16/255", steps=10, step_size="8/255", loss="ce")  # large steps oscillate
    last = attack(mlp, pixel_values, labels, AttackConfig(**kwargs), normalization=HALF, generator=seeded())
    best = attack(mlp, pixel_values, labels, AttackConfig(keep_best=True, **kwargs), normalization=HALF,
                  generator=seeded())
    with torch.no_grad():
        logits_last, logits_best = mlp(last), mlp(best)
    fooled_last, fooled_best = logits_last.argmax(-1) != labels, logits_best.argmax(-1) != labels
    loss_last = attack_objective(logits_last, labels)
    loss_best = attack_objective(logits_best, labels)
    assert bool((fooled_best | ~fooled_last).all())  # never loses a success
    same = fooled_best == fooled_last
    assert bool((loss_best[same] >= loss_last[same] - 1e-5).all())
    assert bool((loss_best > loss_last + 1e-3).any())  # it made a difference somewhere


class LinearTwoClass(nn.Module):
    """logits = [-f, f] with f = w . x + b on normalized inputs; its pixel-space gradient is w / std."""

    def __init__(self, weight: torch.Tensor, bias: float):
        super().__init__()
        self.linear = nn.Linear(weight.numel(), 1)
        with torch.no_grad():
            self.linear.weight.copy_(weight.view(1, -1))
            self.linear.bias.fill_(bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        f = self.linear(pixel_values.flatten(1))
        return torch.cat([-f, f], dim=1)


@pytest.mark.parametrize(
    "norm, config_kwargs",
    [
        ("linf", dict(name="pgd", steps=2, random_start=True)),  # step = eps reaches the corner from anywhere
        ("linf", dict(name="fgsm", steps=1, random_start=False)),
        ("linf", dict(name="pgd40", steps=40, step_size=0.1, keep_best=True)),
        ("l2", dict(name="pgd", steps=2, random_start=False)),
    ],
)
def test_linear_model_broken_below_margin_and_never_above(norm, config_kwargs):
    torch.manual_seed(0)
    dims = 3 * 4 * 4
    weight = torch.randn(dims)
    model = LinearTwoClass(weight, bias=0.0)
    images = 0.3 + 0.4 * torch.rand(400, 3, 4, 4)  # far from the box, so only the ball binds
    pixel_values = HALF_RGB.to_model(images)
    with torch.no_grad():
        f = model.linear(pixel_values.flatten(1)).squeeze(1)
    labels = (f > 0).long()
    pixel_weight = weight / 0.5  # d f / d image = w / std: a 2x error here would shift every margin
    dual = pixel_weight.abs().sum() if norm == "linf" else pixel_weight.norm()
    margin = f.abs() / dual  # smallest perturbation (in pixels) that flips the sign of f
    eps = margin.median().item()
    step = {"step_size": eps} if config_kwargs["name"] != "pgd40" else {}
    config = AttackConfig(norm=norm, epsilon=eps, **config_kwargs, **step)
    adversarial = attack(model, pixel_values, labels, config, normalization=HALF_RGB, generator=seeded())
    with torch.no_grad():
        robust = model(adversarial).argmax(-1) == labels
    below, above = margin < 0.99 * eps, margin > 1.01 * eps
    assert below.sum() > 100 and above.sum() > 100
    assert not robust[below].any(), "an example within the radius survived: the attack is too weak"
    assert robust[above].all(), "an example beyond the radius was broken: the threat model is too large"


def test_targeted_attack_reaches_the_target(mlp, test_set):
    pixel_values, labels = test_set
    config = AttackConfig.from_preset("targeted", epsilon="48/255", steps=10, step_size="8/255")
    generator = seeded(3)
    targets = (labels + torch.randint(1, 10, labels.shape, generator=generator)) % 10
    adversarial = attack(mlp, pixel_values, labels, config, normalization=HALF, targets=targets)
    untargeted = attack(mlp, pixel_values, labels, AttackConfig.from_preset("pgd2", epsilon="48/255", steps=10,
                                                                               step_size="8/255"),
                        normalization=HALF, generator=seeded())
    with torch.no_grad():
        hit = (mlp(adversarial).argmax(-1) == targets).float().mean().item()
        hit_untargeted = (mlp(untargeted).argmax(-1) == targets).float().mean().item()
    assert hit > 3 * (1 / 9) and hit > 2 * hit_untargeted
    # Random targets (drawn inside the attack) are never the label and still get reached.
    random_targets = attack(mlp, pixel_values, labels, config, normalization=HALF, generator=seeded())
    with torch.no_grad():
        prediction = mlp(random_targets).argmax(-1)
    assert (prediction != labels).float().mean().item() > 0.3
    with pytest.raises(ValueError, match="targeted"):
        attack(mlp, pixel_values, labels, AttackConfig(), normalization=HALF, targets=targets)


# ----------------------------------------------------------------------------------------------------- side effects
class WithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5))
        self.frozen_norm = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 10)
        self.seen_training: list[bool] = []

    def forward(self, pixel_values):
        self.seen_training.append(self.training)
        return self.head(self.frozen_norm(self.body(pixel_values)))


@pytest.mark.parametrize("preset", GRADIENT_PRESETS)
def test_attack_leaves_everything_as_it_found_it(preset):
    torch.manual_seed(0)
    model = WithDropout()
    model.train()
    model.frozen_norm.eval()  # a mixed state that model.train(was_training) would not restore
    model.head.weight.requires_grad_(False)  # a frozen parameter must stay frozen, the others trainable
    model.body[1].weight.grad = torch.randn_like(model.body[1].weight)  # an accumulated gradient must survive
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    grad_before = model.body[1].weight.grad.clone()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    pixel_values = HALF.to_model(torch.rand(8, 1, 8, 8))
    pixel_values_copy = pixel_values.clone()
    labels = torch.arange(8)
    labels_copy = labels.clone()
    rng_state = torch.random.get_rng_state()

    config = AttackConfig.from_preset(preset, epsilon=0.5 if preset == "l2_pgd" else "8/255")
    adversarial = attack(model, pixel_values, labels, config, normalization=HALF, generator=seeded())

    assert not torch.equal(adversarial, pixel_values)  # it did something
    assert model.seen_training and not any(model.seen_training)  # attacked in eval mode (documented choice)
    assert torch.equal(pixel_values, pixel_values_copy) and torch.equal(labels, labels_copy)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # incl. BatchNorm buffers
    assert torch.equal(model.body[1].weight.grad, grad_before)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "body.1.weight")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # all randomness from the generator
    assert not adversarial.requires_grad and adversarial.grad_fn is None


def test_no_weight_gradients_are_computed_during_the_attack():
    model = WithDropout()
    seen = []
    model.head.register_forward_pre_hook(lambda module, args: seen.append(module.weight.requires_grad))
    attack(model, HALF.to_model(torch.rand(4, 1, 8, 8)), torch.arange(4), AttackConfig(), normalization=HALF)
    assert seen and not any(seen)
    assert model.head.weight.requires_grad


def test_restores_state_when_the_model_raises():
    class Broken(WithDropout):
        def forward(self, pixel_values):
            raise RuntimeError("boom")

    model = Broken()
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        attack(model, HALF.to_model(torch.rand(2, 1, 8, 8)), torch.arange(2), AttackConfig(), normalization=HALF)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_deterministic_given_a_generator(mlp, test_set):
    pixel_values, labels = test_set[0][:64], test_set[1][:64]
    for preset in ["pgd2", "nfgsm", "targeted", "l2_pgd"]:
        config = AttackConfig.from_preset(preset)
        a = attack(mlp, pixel_values, labels, config, normalization=HALF, generator=seeded(5))
        b = attack(mlp, pixel_values, labels, config, normalization=HALF, generator=seeded(5))
        c = attack(mlp, pixel_values, labels, config, normalization=HALF, generator=seeded(6))
        assert torch.equal(a, b) and not torch.equal(a, c), preset


def test_works_under_no_grad_and_rejects_inference_mode(mlp, test_set):
    pixel_values, labels = test_set[0][:16], test_set[1][:16]
    reference = attack(mlp, pixel_values, labels, AttackConfig(), normalization=HALF, generator=seeded())
    with torch.no_grad():
        inside = attack(mlp, pixel_values, labels, AttackConfig(), normalization=HALF, generator=seeded())
    assert torch.equal(reference, inside) and not torch.equal(reference, pixel_values)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        attack(mlp, pixel_values, labels, AttackConfig(), normalization=HALF)


def test_perturbation_stays_fp32_under_autocast():
    """Near 1.0 bf16 has a spacing of 2^-8 ~ 1/255: a bf16 perturbation could not hold 0.5/255 steps."""
    torch.manual_seed(0)
    model = Normalized(_tiny_cnn(), HALF_RGB)
    dtypes = []
    model.net[0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    images = 0.9 + 0.05 * torch.rand(4, 3, 8, 8)
    pixel_values = HALF_RGB.to_model(images)
    config = AttackConfig(epsilon="4/255", steps=1, step_size="0.5/255", random_start=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        adversarial = attack(model, pixel_values, torch.arange(4), config, normalization=HALF_RGB)
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)  # the model really ran in bf16
    assert adversarial.dtype == torch.float32
    delta = HALF_RGB.to_pixels(adversarial) - images
    moved = delta.abs() > 0
    assert moved.float().mean() > 0.9
    assert torch.allclose(delta[moved].abs(), torch.full_like(delta[moved], 0.5 / 255), atol=2e-6)


def test_accepts_hf_style_outputs_and_forward_kwargs():
    class Soup(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.clean, self.robust = nn.Linear(64, 10), nn.Linear(64, 10)
            self.betas = []

        def forward(self, pixel_values, beta=1.0):
            self.betas.append(beta)
            x = pixel_values.flatten(1)
            logits = beta * self.clean(x) + (1 - beta) * self.robust(x)
            return type("Output", (), {"logits": logits})()

    model = Soup()
    pixel_values, labels = HALF.to_model(torch.rand(4, 1, 8, 8)), torch.arange(4)
    robust = attack(model, pixel_values, labels, AttackConfig(), normalization=HALF, forward_kwargs={"beta": 0.0},
                    generator=seeded())
    clean = attack(model, pixel_values, labels, AttackConfig(), normalization=HALF, forward_kwargs={"beta": 1.0},
                   generator=seeded())
    assert set(model.betas) == {0.0, 1.0} and not torch.equal(robust, clean)


# ----------------------------------------------------------------------------------------------------- references
def test_pgd40_at_least_as_strong_as_torchattacks_pgd(mlp, test_set):
    if importlib.util.find_spec("torchattacks") is None:
        pytest.skip("torchattacks is not installed (optional): pip install --no-deps torchattacks==3.5.1")
    import torchattacks

    pixel_values, labels = test_set
    images = HALF.to_pixels(pixel_values)
    pixel_model = _PixelModel(mlp)
    eps = 8 / 255
    torch.manual_seed(0)
    reference = torchattacks.PGD(pixel_model, eps=eps, alpha=eps / 4, steps=40, random_start=True)
    reference_accuracy = accuracy(pixel_model, reference(images, labels), labels)
    ours = attack(mlp, pixel_values, labels, AttackConfig.from_preset("pgd40", epsilon=eps), normalization=HALF,
                  generator=seeded())
    our_accuracy = accuracy(mlp, ours, labels)
    assert our_accuracy < accuracy(mlp, pixel_values, labels) - 0.05  # the comparison is not vacuous
    assert our_accuracy <= reference_accuracy, (our_accuracy, reference_accuracy)


def test_pgd40_at_least_as_strong_as_apgd_ce(mlp, test_set):
    if importlib.util.find_spec("pyautoattack") is None:
        pytest.skip("pyautoattack is not installed (optional): pip install --no-deps pyautoattack==0.2.0")
    from pyautoattack import AutoAttack

    pixel_values, labels = test_set
    eps = 8 / 255
    pixel_model = _PixelModel(mlp)
    adversary = AutoAttack(pixel_model, eps=eps, version="custom", attacks=["apgd-ce"], seed=0)
    reference, _ = adversary.run_standard_evaluation(HALF.to_pixels(pixel_values), labels, batch_size=512)
    reference_accuracy = accuracy(pixel_model, reference, labels)
    ours = attack(mlp, pixel_values, labels, AttackConfig.from_preset("pgd40", epsilon=eps), normalization=HALF,
                  generator=seeded())
    assert accuracy(mlp, ours, labels) <= reference_accuracy


class _SaturatedLogits(nn.Module):
    """A trained classifier with its logits multiplied by 1000: the same decisions, but cross-entropy saturates (the
    softmax of every other class underflows to 0 in fp32), so its input gradient vanishes on every confidently
    classified example and CE-driven PGD stalls there, while margin and DLR losses are scale-free. A model where the
    paper's PGD-40 and AutoAttack's APGD-CE + APGD-T disagree by construction."""

    def __init__(self, model: nn.Module, scale: float = 1000.0):
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, pixel_values):
        return self.model(pixel_values) * self.scale


def test_report_attack_is_no_weaker_than_apgd_ce_plus_apgd_t(mlp, test_set):
    if importlib.util.find_spec("pyautoattack") is None:
        pytest.skip("pyautoattack is not installed (optional): pip install --no-deps pyautoattack==0.2.0")
    model = _SaturatedLogits(mlp)
    pixel_values, labels = test_set[0][:40], test_set[1][:40]
    eps = "8/255"
    reference = AttackConfig.from_preset("autoattack", epsilon=eps, autoattack_version="custom",
                                         autoattack_attacks=["apgd-ce", "apgd-t"])
    results = {
        name: accuracy(model, attack(model, pixel_values, labels, config, normalization=HALF, generator=seeded()),
                       labels)
        for name, config in [("apgd", reference), ("pgd40", AttackConfig.from_preset("pgd40", epsilon=eps)),
                             ("report", AttackConfig.from_preset("report", epsilon=eps))]
    }
    assert results["apgd"] < accuracy(model, pixel_values, labels) - 0.05  # the reference does break examples
    assert results["pgd40"] >= results["apgd"] + 0.05, results  # the gap exists: CE-driven PGD-40 stalls
    assert results["report"] <= results["apgd"], results  # ...and the reported attack closes it


def test_multitargeted_stage_only_adds_successes(mlp, test_set):
    """``report`` = ``pgd40`` + MultiTargeted: with the same generator its first stage is PGD-40 itself, so it breaks
    every example PGD-40 breaks, and the targeted runs go only to the examples still classified correctly."""
    pixel_values, labels = test_set
    eps = "16/255"
    pgd40 = attack(mlp, pixel_values, labels, AttackConfig.from_preset("pgd40", epsilon=eps), normalization=HALF,
                   generator=seeded())
    counted = _Counting(mlp)
    report = attack(counted, pixel_values, labels, AttackConfig.from_preset("report", epsilon=eps),
                    normalization=HALF, generator=seeded())
    with torch.no_grad():
        broken_pgd = mlp(pgd40).argmax(-1) != labels
        broken_report = mlp(report).argmax(-1) != labels
    assert not (broken_pgd & ~broken_report).any()
    assert broken_report.sum() > broken_pgd.sum()  # the targeted stage found more on this model
    survivors = int((~broken_pgd).sum())
    # PGD-40 (40 steps + last iterate) on all, one forward to rank targets, at most 9 x 41 on the survivors.
    assert counted.rows <= len(labels) * 42 + 9 * 41 * survivors
    assert (HALF.to_pixels(report) - HALF.to_pixels(pixel_values)).abs().max() <= 16 / 255 + 1e-6


class _Counting(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, pixel_values):
        self.rows += pixel_values.shape[0]
        return self.model(pixel_values)


class _PixelModel(nn.Module):
    """The normalized-input model seen from [0, 1] pixels, as the reference libraries expect."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(HALF.to_model(images))


def test_autoattack_through_our_wrapper(mlp, test_set):
    if importlib.util.find_spec("pyautoattack") is None:
        pytest.skip("pyautoattack is not installed (optional): pip install --no-deps pyautoattack==0.2.0")
    pixel_values, labels = test_set[0][:16], test_set[1][:16]
    config = AttackConfig.from_preset("autoattack", epsilon="16/255", autoattack_version="custom",
                                      autoattack_attacks=["apgd-ce", "apgd-t"])
    mlp.train()
    rng_state = torch.random.get_rng_state()
    adversarial = attack(mlp, pixel_values, labels, config, normalization=HALF, generator=seeded())
    assert mlp.training and torch.equal(torch.random.get_rng_state(), rng_state)
    mlp.eval()
    delta = HALF.to_pixels(adversarial) - HALF.to_pixels(pixel_values)
    assert delta.abs().max() <= config.epsilon + 1e-6
    pgd = attack(mlp, pixel_values, labels, AttackConfig.from_preset("pgd40", epsilon="16/255"), normalization=HALF,
                 generator=seeded())
    assert accuracy(mlp, adversarial, labels) <= accuracy(mlp, pgd, labels) + 1 / 16
    assert accuracy(mlp, adversarial, labels) < accuracy(mlp, pixel_values, labels) - 0.1


# ----------------------------------------------------------------------------------------------------- the soup model
def _has_soup_model() -> bool:
    return importlib.util.find_spec("hf_advsoup.modeling_advsoup") is not None


@pytest.mark.skipif(not _has_soup_model(), reason="hf_advsoup.modeling_advsoup is not available yet")
def test_attacks_the_robust_mode_of_the_soup_model():
    from hf_advsoup.configuration_advsoup import AdvSoupViTConfig
    from hf_advsoup.modeling_advsoup import AdvSoupViTForImageClassification

    torch.manual_seed(0)
    config = AdvSoupViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                              image_size=16, patch_size=4, num_labels=10, adapter="cls_token", drop_path_rate=0.1,
                              hidden_dropout_prob=0.1)
    model = AdvSoupViTForImageClassification(config)
    with torch.no_grad():  # distinct tokens so the two modes differ
        for param in model.adversarial_adapter_parameters().values():
            param.add_(torch.randn_like(param))
    model.train()
    model.classifier.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    pixel_values = HALF_RGB.to_model(torch.rand(4, 3, 16, 16))
    labels = torch.arange(4)
    attack_config = AttackConfig.from_preset("pgd2", epsilon="8/255")
    robust = attack(model, pixel_values, labels, attack_config, normalization=HALF_RGB,
                    forward_kwargs={"beta": 0.0}, generator=seeded())
    again = attack(model, pixel_values, labels, attack_config, normalization=HALF_RGB,
                   forward_kwargs={"beta": 0.0}, generator=seeded())
    clean = attack(model, pixel_values, labels, attack_config, normalization=HALF_RGB,
                   forward_kwargs={"beta": 1.0}, generator=seeded())
    assert torch.equal(robust, again)  # eval mode: no stochastic depth / dropout during the attack
    assert not torch.equal(robust, clean)  # the beta reached the model
    assert (HALF_RGB.to_pixels(robust) - HALF_RGB.to_pixels(pixel_values)).abs().max() <= 8 / 255 + 1e-6
    assert model.training and all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        model.eval()
        loss_clean = F.cross_entropy(model(pixel_values, beta=0.0).logits, labels)
        loss_adv = F.cross_entropy(model(robust, beta=0.0).logits, labels)
    assert loss_adv > loss_clean
