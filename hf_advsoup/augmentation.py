"""Batched, on-device RandAugment, MixUp and CutMix on ``[0, 1]`` image tensors.

The co-training recipe (appendix A of Rebuffi et al., ICLR 2023, following MAE's fine-tuning pipeline, He et al.
2022) uses RandAugment "with two layers, magnitude 9 and a random probability of 0.5" in timm's version, MixUp
and CutMix. timm applies RandAugment per PIL image in the data loader; here the same operations run on a whole
batch of tensors on the batch's device (CPU or GPU), so that:

* the trainer can augment after un-normalising ``pixel_values`` (attacks work in ``[0, 1]`` pixel space too), and
* every random draw comes from one ``torch.Generator`` (or the global RNG): a seed fixes the output.

RandAugment follows timm's ``rand-m9-mstd0.5-inc1`` policy (the one MAE uses): each sample draws ``num_layers``
operations uniformly (with replacement) from the 15 "increasing" operations below, applies each with probability
``prob``, at a magnitude drawn from N(magnitude, magnitude_std) clipped to [0, 10]; signed operations flip sign
with probability 0.5. Differences from timm: geometric operations pivot on the image centre and use bilinear
sampling; the fill colour of uncovered pixels is ``fill`` (timm uses the data set mean).

MixUp/CutMix follow timm's ``Mixup`` in batch mode: one ``lam`` per batch, each sample mixed with its mirror in
the batch (``flip(0)``), CutMix's ``lam`` corrected to the pasted box's area, soft targets
``lam * onehot(y) + (1 - lam) * onehot(y.flip(0))``. Label smoothing is left to the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["RANDAUGMENT_OPS", "AugmentationArguments", "BatchAugmenter", "mixup_cutmix", "rand_augment"]

_MAX_LEVEL = 10.0
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L")


@dataclass
class AugmentationArguments:
    """Batch augmentation options (defaults: the paper's co-training recipe, appendix A; timm's Mixup defaults)."""

    randaugment_num_layers: int = field(
        default=2, metadata={"help": "RandAugment operations per image (paper: 2). 0 disables RandAugment."}
    )
    randaugment_magnitude: float = field(
        default=9.0, metadata={"help": "RandAugment magnitude on timm's 0..10 scale (paper: 9)."}
    )
    randaugment_magnitude_std: float = field(
        default=0.5,
        metadata={"help": "Std of the per-operation magnitude noise (timm's mstd; MAE uses 0.5). 0: fixed magnitude."},
    )
    randaugment_prob: float = field(
        default=0.5, metadata={"help": "Probability of applying each chosen operation (paper: 0.5). 0 disables it."}
    )
    mixup_alpha: float = field(default=0.8, metadata={"help": "MixUp Beta(alpha, alpha) parameter; 0 disables MixUp."})
    cutmix_alpha: float = field(
        default=1.0, metadata={"help": "CutMix Beta(alpha, alpha) parameter; 0 disables CutMix."}
    )
    mix_prob: float = field(
        default=1.0, metadata={"help": "Probability of mixing a batch with MixUp or CutMix (timm's prob)."}
    )
    switch_prob: float = field(
        default=0.5, metadata={"help": "Probability of CutMix instead of MixUp when both are enabled."}
    )
    augmentation_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the augmenter's own generator; default: draw from torch's global RNG (--seed)."},
    )

    def __post_init__(self) -> None:
        if self.randaugment_num_layers < 0:
            raise ValueError(f"randaugment_num_layers must be >= 0, got {self.randaugment_num_layers}.")
        if not 0.0 <= self.randaugment_magnitude <= _MAX_LEVEL:
            raise ValueError(f"randaugment_magnitude must be in [0, 10], got {self.randaugment_magnitude}.")
        if self.randaugment_magnitude_std < 0:
            raise ValueError(f"randaugment_magnitude_std must be >= 0, got {self.randaugment_magnitude_std}.")
        for name in ("randaugment_prob", "mix_prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")

    @property
    def randaugment_enabled(self) -> bool:
        return self.randaugment_num_layers > 0 and self.randaugment_prob > 0

    @property
    def mixing_enabled(self) -> bool:
        return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


# ----------------------------------------------------------------------------------------------------------------
# RandAugment operations. Each takes x (n, 3, H, W) in [0, 1], level (n,) in [0, 10], sign (n,) in {-1, 1},
# fill (3,), and returns (n, 3, H, W) in [0, 1].
# ----------------------------------------------------------------------------------------------------------------
def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: ``degenerate + factor * (x - degenerate)``, clipped."""
    return (degenerate + _per_sample(factor) * (x - degenerate)).clamp_(0.0, 1.0)


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return (x * 255.0).round_()


def _enhance_factor(level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    # timm's "increasing" enhance ops: 1 +/- 0.9 * level / 10, so a larger level is always a stronger change.
    return 1.0 + level / _MAX_LEVEL * 0.9 * sign


def _warp(x: torch.Tensor, matrix: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Affine warp. ``matrix`` (n, 2, 3) maps output to input pixel coordinates, centred on the image centre."""
    n, _, height, width = x.shape
    theta = matrix.clone()
    # Centred pixels -> normalised coordinates of grid_sample (align_corners=False): x_n = 2u / W, y_n = 2v / H.
    theta[:, 0, 1] *= height / width
    theta[:, 1, 0] *= width / height
    theta[:, 0, 2] *= 2.0 / width
    theta[:, 1, 2] *= 2.0 / height
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ones = torch.ones_like(x[:, :1])
    coverage = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (warped + (1.0 - coverage) * fill.view(1, 3, 1, 1)).clamp_(0.0, 1.0)


def _identity_matrix(n: int, like: torch.Tensor) -> torch.Tensor:
    matrix = torch.zeros(n, 2, 3, dtype=like.dtype, device=like.device)
    matrix[:, 0, 0] = 1.0
    matrix[:, 1, 1] = 1.0
    return matrix


def auto_contrast(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-12), x)


def equalize(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per channel, vectorised over the batch."""
    n, c, height, width = x.shape
    q = _quantize(x).long().clamp_(0, 255).reshape(n * c, -1)
    hist = torch.zeros(n * c, 256, dtype=torch.float64, device=x.device).scatter_add_(
        1, q, torch.ones_like(q, dtype=torch.float64)
    )
    positions = torch.arange(256, device=x.device).expand_as(hist)
    last = torch.where(hist > 0, positions, -1).amax(dim=1, keepdim=True)
    step = torch.floor((hist.sum(dim=1, keepdim=True) - hist.gather(1, last)) / 255.0)
    before = torch.cumsum(hist, dim=1) - hist  # pixels strictly below each level
    lut = torch.floor((torch.floor(step / 2) + before) / step.clamp_min(1.0)).clamp_(0, 255)
    lut = torch.where(step > 0, lut, positions.to(lut.dtype))  # PIL: identity when step == 0
    return (lut.gather(1, q) / 255.0).to(x.dtype).view(n, c, height, width)


def invert(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    return 1.0 - x


def rotate(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    angle = torch.deg2rad(level / _MAX_LEVEL * 30.0 * sign)  # up to +/-30 degrees
    cos, sin = torch.cos(angle), torch.sin(angle)
    matrix = _identity_matrix(x.shape[0], x)
    matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 1, 0], matrix[:, 1, 1] = cos, -sin, sin, cos
    return _warp(x, matrix, fill)


def posterize_increasing(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    bits = 4 - torch.floor(level / _MAX_LEVEL * 4.0)  # bits kept: 4 at level 0 down to 0 at level 10
    divisor = _per_sample(torch.pow(2.0, 8.0 - bits))
    return torch.floor(_quantize(x) / divisor) * divisor / 255.0


def solarize_increasing(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    threshold = 256.0 - torch.floor(level / _MAX_LEVEL * 256.0)  # 256 (nothing) at level 0, 0 (all) at level 10
    return torch.where(_quantize(x) >= _per_sample(threshold), 1.0 - x, x)


def solarize_add(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    add = torch.floor(level / _MAX_LEVEL * 110.0) / 255.0
    return torch.where(_quantize(x) < 128.0, (x + _per_sample(add)).clamp(0.0, 1.0), x)


def color_increasing(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    return _blend(_gray(x).expand_as(x), x, _enhance_factor(level, sign))


def contrast_increasing(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    # PIL: the rounded mean of the uint8 grayscale (L) image.
    mean = torch.round(_quantize(_gray(x)).mean(dim=(1, 2, 3), keepdim=True)) / 255.0
    return _blend(mean.expand_as(x), x, _enhance_factor(level, sign))


def brightness_increasing(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, _enhance_factor(level, sign))


def sharpness_increasing(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    # PIL's SMOOTH filter (centre 5, neighbours 1, /13) on the interior; the 1-pixel border stays as is.
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(3, 1, 3, 3)
    degenerate = x.clone()
    if x.shape[-1] > 2 and x.shape[-2] > 2:
        degenerate[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=3)
    return _blend(degenerate, x, _enhance_factor(level, sign))


def _shear(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor, axis: int) -> torch.Tensor:
    matrix = _identity_matrix(x.shape[0], x)
    matrix[:, axis, 1 - axis] = level / _MAX_LEVEL * 0.3 * sign  # shear factor up to +/-0.3
    return _warp(x, matrix, fill)


def shear_x(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    return _shear(x, level, sign, fill, axis=0)


def shear_y(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    return _shear(x, level, sign, fill, axis=1)


def _translate(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor, axis: int) -> torch.Tensor:
    matrix = _identity_matrix(x.shape[0], x)
    extent = x.shape[-1] if axis == 0 else x.shape[-2]
    matrix[:, axis, 2] = level / _MAX_LEVEL * 0.45 * sign * extent  # up to +/-45% of the image (timm's *Rel)
    return _warp(x, matrix, fill)


def translate_x_rel(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    return _translate(x, level, sign, fill, axis=0)


def translate_y_rel(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    return _translate(x, level, sign, fill, axis=1)


AugmentOp = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: timm's ``_RAND_INCREASING_TRANSFORMS`` (the ``inc1`` RandAugment policy), in timm's order.
RANDAUGMENT_OPS: dict[str, AugmentOp] = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "PosterizeIncreasing": posterize_increasing,
    "SolarizeIncreasing": solarize_increasing,
    "SolarizeAdd": solarize_add,
    "ColorIncreasing": color_increasing,
    "ContrastIncreasing": contrast_increasing,
    "BrightnessIncreasing": brightness_increasing,
    "SharpnessIncreasing": sharpness_increasing,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateXRel": translate_x_rel,
    "TranslateYRel": translate_y_rel,
}


# ----------------------------------------------------------------------------------------------------------------
# Random draws: always from ``generator`` (on its own device) or the global RNG, then moved to the batch's device.
# ----------------------------------------------------------------------------------------------------------------
def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=source).to(device)


def _randn(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(n, generator=generator, device=source).to(device)


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(high, (n,), generator=generator, device=source).to(device)


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    # torch has no seeded Beta sampler; derive a numpy generator from one torch draw instead.
    source = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=source).item())
    return np.random.default_rng(seed)


def rand_augment(
    images: torch.Tensor,
    *,
    num_layers: int = 2,
    magnitude: float = 9.0,
    magnitude_std: float = 0.5,
    prob: float = 0.5,
    fill: tuple[float, float, float] = (0.5, 0.5, 0.5),
    generator: torch.Generator | None = None,
    ops: dict[str, AugmentOp] | None = None,
) -> torch.Tensor:
    """RandAugment on a batch, with independent operations per sample.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1], any float dtype (computed in float32, returned in the input dtype).
        num_layers: Operations drawn per sample (uniformly, with replacement).
        magnitude: Mean magnitude on the 0..10 scale.
        magnitude_std: Std of the Gaussian magnitude noise per application (clipped to [0, 10]).
        prob: Probability that each drawn operation is applied.
        fill: RGB colour, in [0, 1], of pixels uncovered by geometric operations.
        generator: Source of randomness (any device); ``None`` uses torch's global RNG.
        ops: Operation table (default :data:`RANDAUGMENT_OPS`).

    Returns:
        A new ``(B, 3, H, W)`` tensor in [0, 1]; the input is not modified.
    """
    ops = RANDAUGMENT_OPS if ops is None else ops
    table = list(ops.values())
    batch, device = images.shape[0], images.device
    x = images.float().clone()
    fill_t = torch.tensor(fill, dtype=x.dtype, device=device)
    for _ in range(num_layers):
        choice = _randint(len(table), batch, generator, device)
        apply = _rand(batch, generator, device) < prob
        level = (magnitude + magnitude_std * _randn(batch, generator, device)).clamp(0.0, _MAX_LEVEL)
        sign = torch.where(_rand(batch, generator, device) < 0.5, -1.0, 1.0)
        for index, op in enumerate(table):
            selected = torch.nonzero(apply & (choice == index)).flatten()
            if selected.numel():
                x[selected] = op(x[selected], level[selected], sign[selected], fill_t).clamp_(0.0, 1.0)
    return x.to(images.dtype)


def mixup_cutmix(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    mix_prob: float = 1.0,
    switch_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MixUp or CutMix on a batch (timm's batch mode): each sample is mixed with ``images.flip(0)``.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].
        labels: ``(B,)`` class indices (or ``(B, C)`` soft labels, mixed the same way).
        num_classes: ``C``, the width of the soft labels.

    Returns:
        ``(mixed images, soft labels (B, C) float32 summing to 1, lam)``, where ``lam`` is the weight of the
        original sample (1.0 when the batch was not mixed); for CutMix it is corrected to the pasted area.
    """
    if labels.dim() == 1:
        targets = F.one_hot(labels.long(), num_classes).float()
    else:
        targets = labels.float()
    targets = targets.to(images.device)
    use_mixup, use_cutmix = mixup_alpha > 0, cutmix_alpha > 0
    draws = _rand(2, generator, torch.device("cpu")).tolist()
    if not (use_mixup or use_cutmix) or draws[0] >= mix_prob:
        return images, targets, 1.0
    cutmix = use_cutmix and (not use_mixup or draws[1] < switch_prob)
    rng = _numpy_rng(generator)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if cutmix else rng.beta(mixup_alpha, mixup_alpha))
    partner = images.flip(0)
    if cutmix:
        height, width = images.shape[-2:]
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
    else:
        mixed = images * lam + partner * (1.0 - lam)
    return mixed, targets * lam + targets.flip(0) * (1.0 - lam), lam


class BatchAugmenter:
    """RandAugment then MixUp/CutMix on a batch of ``[0, 1]`` images, on the batch's device.

    Usage in a training step (the trainer un-normalises first, since augmentations and attacks live in pixel
    space)::

        augmenter = BatchAugmenter(AugmentationArguments())
        images01 = pixel_values * std + mean
        images01, soft_labels = augmenter(images01, labels, num_classes)
        pixel_values = (images01 - mean) / std

    Args:
        args: Options (defaults: the paper's recipe).
        fill: RGB colour in [0, 1] for pixels that geometric RandAugment operations uncover.

    Determinism: pass ``generator=`` to a call, or set ``args.augmentation_seed`` (an internal CPU generator), or
    seed torch's global RNG. Disabled augmentations (``randaugment_num_layers=0`` or ``randaugment_prob=0``, and
    ``mixup_alpha=cutmix_alpha=0`` or ``mix_prob=0``) return the images unchanged and one-hot labels.
    """

    def __init__(
        self, args: AugmentationArguments | None = None, *, fill: tuple[float, float, float] = (0.5, 0.5, 0.5)
    ) -> None:
        self.args = args if args is not None else AugmentationArguments()
        self.fill = tuple(float(v) for v in fill)
        self._generator: torch.Generator | None = None
        if self.args.augmentation_seed is not None:
            self._generator = torch.Generator().manual_seed(self.args.augmentation_seed)

    def __call__(
        self,
        images01: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch.

        Args:
            images01: ``(B, 3, H, W)`` in [0, 1].
            labels: ``(B,)`` int64 class indices.
            num_classes: Width of the soft labels.
            generator: Optional source of randomness; default: the augmenter's own, else torch's global RNG.

        Returns:
            ``(images (B, 3, H, W) in [0, 1], soft labels (B, num_classes) float32)``.
        """
        if images01.dim() != 4 or images01.shape[1] != 3:
            raise ValueError(f"Expected images of shape (B, 3, H, W), got {tuple(images01.shape)}.")
        if labels.shape[0] != images01.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {images01.shape[0]} images.")
        generator = generator if generator is not None else self._generator
        args = self.args
        images = images01
        if args.randaugment_enabled:
            images = rand_augment(
                images, num_layers=args.randaugment_num_layers, magnitude=args.randaugment_magnitude,
                magnitude_std=args.randaugment_magnitude_std, prob=args.randaugment_prob, fill=self.fill,
                generator=generator,
            )
        images, soft_labels, _ = mixup_cutmix(
            images, labels, num_classes, mixup_alpha=args.mixup_alpha, cutmix_alpha=args.cutmix_alpha,
            mix_prob=args.mix_prob, switch_prob=args.switch_prob, generator=generator,
        )
        return images, soft_labels

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.args}, fill={self.fill})"
