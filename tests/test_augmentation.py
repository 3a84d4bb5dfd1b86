"""Tests of hf_advsoup.augmentation: batched RandAugment / MixUp / CutMix on [0, 1] tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from hf_advsoup import augmentation as aug
from hf_advsoup.augmentation import (
    RANDAUGMENT_OPS,
    AugmentationArguments,
    BatchAugmenter,
    mixup_cutmix,
    rand_augment,
)

NUM_CLASSES = 5


def _batch(n: int = 8, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    return images, labels


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_default_augmenter_shapes_range_and_soft_labels():
    images, labels = _batch()
    before = images.clone()
    out, soft = BatchAugmenter()(images, labels, NUM_CLASSES, generator=_gen(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert soft.shape == (8, NUM_CLASSES) and soft.dtype == torch.float32
    assert torch.allclose(soft.sum(dim=1), torch.ones(8))
    assert not torch.allclose(out, images)  # it did something
    assert torch.equal(images, before)  # and left the input alone


def test_disabled_augmentation_is_identity():
    args = AugmentationArguments(randaugment_num_layers=0, mixup_alpha=0.0, cutmix_alpha=0.0)
    images, labels = _batch()
    out, soft = BatchAugmenter(args)(images, labels, NUM_CLASSES, generator=_gen(0))
    assert torch.equal(out, images)
    assert torch.equal(soft, torch.nn.functional.one_hot(labels, NUM_CLASSES).float())
    zero_prob = AugmentationArguments(randaugment_prob=0.0, mix_prob=0.0)
    out, soft = BatchAugmenter(zero_prob)(images, labels, NUM_CLASSES, generator=_gen(1))
    assert torch.equal(out, images) and torch.equal(soft.argmax(1), labels)


def test_determinism_under_a_seed():
    images, labels = _batch()
    augmenter = BatchAugmenter()
    a = augmenter(images, labels, NUM_CLASSES, generator=_gen(3))
    b = augmenter(images, labels, NUM_CLASSES, generator=_gen(3))
    c = augmenter(images, labels, NUM_CLASSES, generator=_gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # Seed in the arguments: two augmenters replay the same stream.
    seeded = AugmentationArguments(augmentation_seed=7)
    first, second = BatchAugmenter(seeded), BatchAugmenter(seeded)
    for _ in range(2):
        x1, y1 = first(images, labels, NUM_CLASSES)
        x2, y2 = second(images, labels, NUM_CLASSES)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # Global RNG: torch.manual_seed fixes it too.
    torch.manual_seed(11)
    g1 = BatchAugmenter()(images, labels, NUM_CLASSES)
    torch.manual_seed(11)
    g2 = BatchAugmenter()(images, labels, NUM_CLASSES)
    assert torch.equal(g1[0], g2[0])


def test_mixup_mixes_exactly_the_mirrored_pairs():
    images, labels = _batch(6)
    out, soft, lam = mixup_cutmix(images, labels, NUM_CLASSES, mixup_alpha=0.8, cutmix_alpha=0.0, generator=_gen(0))
    assert 0.0 < lam < 1.0
    assert torch.allclose(out, lam * images + (1 - lam) * images.flip(0), atol=1e-6)
    onehot = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()
    assert torch.allclose(soft, lam * onehot + (1 - lam) * onehot.flip(0), atol=1e-6)
    # Only the two mixed labels carry mass.
    for row, (a, b) in enumerate(zip(labels.tolist(), labels.flip(0).tolist())):
        others = [c for c in range(NUM_CLASSES) if c not in (a, b)]
        assert soft[row, others].abs().sum() == 0


def test_cutmix_box_area_matches_label_weights():
    images, labels = _batch(4, size=20)
    labels = torch.tensor([0, 1, 2, 3])
    seen_partial = False
    for seed in range(8):
        out, soft, lam = mixup_cutmix(images, labels, NUM_CLASSES, mixup_alpha=0.0, cutmix_alpha=1.0,
                                      generator=_gen(seed))
        from_partner = (out[0] == images.flip(0)[0]).all(dim=0) & (out[0] != images[0]).any(dim=0)
        fraction_pasted = from_partner.float().mean().item()
        assert abs((1 - lam) - fraction_pasted) < 1e-6
        assert torch.allclose(soft[0, 0], torch.tensor(lam)) and torch.allclose(soft[0, 3], torch.tensor(1 - lam))
        assert torch.allclose(soft.sum(1), torch.ones(4))
        seen_partial |= 0.0 < lam < 1.0
    assert seen_partial


def test_switch_prob_chooses_between_mixup_and_cutmix():
    images, labels = _batch(4)
    kinds = set()
    for seed in range(20):
        out, _, lam = mixup_cutmix(images, labels, NUM_CLASSES, generator=_gen(seed))
        pasted = ((out == images) | (out == images.flip(0))).all()
        kinds.add("cutmix" if pasted else "mixup")
    assert kinds == {"cutmix", "mixup"}


@pytest.mark.parametrize("name", list(RANDAUGMENT_OPS))
def test_each_randaugment_op_keeps_range_and_changes_images(name):
    images, _ = _batch(4)
    op = RANDAUGMENT_OPS[name]
    level = torch.full((4,), 9.0)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = op(images.clone(), level, sign, torch.tensor([0.5, 0.5, 0.5]))
    assert out.shape == images.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not torch.allclose(out, images, atol=1e-3), name


def _pil_reference(images: torch.Tensor, fn) -> torch.Tensor:
    arrays = (images * 255).round().byte().permute(0, 2, 3, 1).numpy()
    outputs = [torch.from_numpy(np.array(fn(Image.fromarray(a)))).permute(2, 0, 1) for a in arrays]
    return torch.stack(outputs).float() / 255


def test_pixel_ops_match_pil():
    images, _ = _batch(3, size=12)
    images = (images * 255).round() / 255  # exact uint8 values, as PIL sees them
    level, sign, fill = torch.full((3,), 9.0), torch.ones(3), torch.tensor([0.5, 0.5, 0.5])
    factor = 1 + 0.9 * 0.9
    cases = {
        aug.equalize: (ImageOps.equalize, 0.0),
        aug.auto_contrast: (ImageOps.autocontrast, 1.5 / 255),
        aug.posterize_increasing: (lambda im: ImageOps.posterize(im, 1), 0.0),
        aug.solarize_increasing: (lambda im: ImageOps.solarize(im, 256 - int(0.9 * 256)), 1e-6),
        aug.color_increasing: (lambda im: ImageEnhance.Color(im).enhance(factor), 1.5 / 255),
        aug.contrast_increasing: (lambda im: ImageEnhance.Contrast(im).enhance(factor), 1.5 / 255),
        aug.sharpness_increasing: (lambda im: ImageEnhance.Sharpness(im).enhance(factor), 1.5 / 255),
    }
    for op, (reference, tolerance) in cases.items():
        error = (op(images, level, sign, fill) - _pil_reference(images, reference)).abs().max().item()
        assert error <= tolerance + 1e-6, (op.__name__, error)


def test_translate_moves_content_and_fills():
    images, _ = _batch(2, size=10)
    level = torch.full((2,), 2 / 0.45)  # 2 pixels of a 10-pixel image
    out = aug.translate_x_rel(images, level, torch.ones(2), torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(out[..., :8], images[..., 2:], atol=1e-5)
    assert torch.allclose(out[0, :, 0, 9], torch.tensor([0.1, 0.2, 0.3]), atol=1e-5)


def test_rand_augment_is_per_sample_and_keeps_dtype():
    images = torch.rand(1, 3, 16, 16).expand(16, -1, -1, -1).contiguous()
    out = rand_augment(images, prob=1.0, generator=_gen(0))
    distinct = {tuple(o.flatten()[:20].tolist()) for o in out}
    assert len(distinct) > 8  # identical inputs, different operations per sample
    half = rand_augment(images.to(torch.bfloat16), generator=_gen(0))
    assert half.dtype == torch.bfloat16 and half.min() >= 0 and half.max() <= 1


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="randaugment_prob"):
        AugmentationArguments(randaugment_prob=1.5)
    with pytest.raises(ValueError, match="randaugment_magnitude"):
        AugmentationArguments(randaugment_magnitude=30)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        BatchAugmenter()(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_the_batch_device():
    images, labels = _batch()
    cpu_out = BatchAugmenter()(images, labels, NUM_CLASSES, generator=_gen(0))
    gpu_out = BatchAugmenter()(images.cuda(), labels.cuda(), NUM_CLASSES, generator=_gen(0))
    assert gpu_out[0].device.type == "cuda" and gpu_out[1].device.type == "cuda"
    assert torch.allclose(cpu_out[0], gpu_out[0].cpu(), atol=1e-4)
    assert torch.allclose(cpu_out[1], gpu_out[1].cpu())
