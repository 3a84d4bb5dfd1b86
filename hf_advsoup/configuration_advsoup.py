"""Configuration of the dual-adapter (adversarial soup) Vision Transformer.

Differences from :class:`~transformers.ViTConfig` (Rebuffi, Croce & Gowal, "Revisiting adapters with adversarial
training", ICLR 2023):

- ``adapter``: which parameters are doubled, one copy per domain (clean / adversarial); all others are shared.
- ``beta``: the soup weight used when ``forward`` is not told otherwise (Eq. 3).
- ``pooling``: the MAE-style mean-pooled head of the paper, or the vanilla ViT classification-token head.
- ``patch_stride``: overlapping patches for small images (appendix A: patch 4, stride 2 on 32x32 images).
- ``drop_path_rate``: stochastic depth, linearly increasing with depth (HF ViT has none).
- ``selector_layers``, ``selector_hidden_size``, ``selector_mode``: the optional per-image soup selector
  (``beta="auto"``; appendix E's "automatic selection of the right soup for each sample"), see docs/selection.md.

This file is copied next to the weights by ``save_pretrained`` (remote code): it imports nothing from
``hf_advsoup``.
"""

from __future__ import annotations

import math
import warnings

from transformers import ViTConfig

ADAPTER_TYPES = ("cls_token", "layernorm", "pos_embed", "patch_embed", "none")
"""Adapter types of Table 1. ``"none"`` is the fully shared co-training baseline (one copy of everything)."""

SELECTOR_MODES = ("soft", "hard")
"""How the selector's score ``s`` becomes ``beta``: ``"soft"``: ``sigmoid(s)`` (the default: differentiable, so the
function that is deployed is the one gradient attacks see); ``"hard"``: 1 when ``s > 0`` else 0 (exactly clean or
robust mode; attacks differentiate it straight through the sigmoid, BPDA)."""

AUTO_BETA = "auto"
"""The ``beta`` that asks the model's selector for one soup per image."""

BETA_WARNING_MARGIN = 0.5
"""A soup weight more than this outside [0, 1] gets a warning (it is allowed: any finite value extrapolates). The
paper extrapolates to 1.05 and -0.05, appendix D's landscape to 1.25; beyond 1.5 or below -0.5 nothing was
measured and predictions change (e.g. beta=2 flips test images)."""

POOLING_TYPES = ("mean", "cls")
"""``"mean"``: mean of the final tokens except the classification token (MAE head, the paper's choice);
``"cls"``: the final classification token (vanilla ViT)."""


def validate_choice(name: str, value, choices) -> None:
    """Raise a ``ValueError`` that names the valid options when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; valid options are: {', '.join(repr(c) for c in choices)}.")


def validate_beta(beta) -> float:
    """Check that a scalar soup weight is a finite number and return it as a float.

    Any finite value is allowed: ``beta=1`` is clean mode, ``beta=0`` robust mode, and values outside ``[0, 1]``
    extrapolate (the paper reports gains at 1.05 and -0.05); one more than :data:`BETA_WARNING_MARGIN` outside
    ``[0, 1]`` (e.g. ``beta=2``) gets a ``UserWarning`` naming it. ``"auto"`` is not a number: it is accepted only where a
    model chooses the soup per image (:func:`validate_config_beta`, the model's ``forward``).
    """
    if isinstance(beta, str) and beta.strip().lower() == AUTO_BETA:
        raise TypeError(
            "beta='auto' (one soup per image, chosen by the model's selector) is only accepted by the model's forward "
            "and by from_pretrained; here a number is needed (1 = clean mode, 0 = robust mode)."
        )
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        try:
            beta = float(beta)
        except (TypeError, ValueError):
            raise TypeError(f"beta must be a finite number, got {beta!r} of type {type(beta).__name__}.") from None
    beta = float(beta)
    if not math.isfinite(beta):
        raise ValueError(
            f"beta must be finite, got {beta}. Use beta=1 for clean mode, beta=0 for robust mode, or any finite "
            "value in between (or slightly outside [0, 1] to extrapolate)."
        )
    if not -BETA_WARNING_MARGIN <= beta <= 1 + BETA_WARNING_MARGIN:
        warnings.warn(
            f"beta={beta:g} is far outside [0, 1] (1 = clean mode, 0 = robust mode): the adapters are extrapolated "
            f"{beta - 1 if beta > 1 else -beta:g} beyond a mode, where nothing was measured (the paper uses 1.05 and "
            "-0.05; appendix D's landscape goes to 1.25). It is allowed; check the predictions.",
            UserWarning, stacklevel=2,
        )
    return beta


def validate_config_beta(beta) -> float | str:
    """``config.beta``: a finite number (:func:`validate_beta`) or ``"auto"`` (the model's selector chooses one soup
    per image; the model checks at load that it has a selector)."""
    if isinstance(beta, str) and beta.strip().lower() == AUTO_BETA:
        return AUTO_BETA
    return validate_beta(beta)


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def patch_grid(image_size, patch_size, stride) -> tuple[int, int]:
    """Rows and columns of patches that a ``patch_size`` convolution with ``stride`` cuts from an image of
    ``image_size`` (an int or ``(height, width)``): ``(size - patch_size) // stride + 1`` per side."""
    (height, width), (patch_h, patch_w) = _pair(image_size), _pair(patch_size)
    stride_h, stride_w = _pair(stride)
    return (height - patch_h) // stride_h + 1, (width - patch_w) // stride_w + 1


class AdvSoupViTConfig(ViTConfig):
    r"""Configuration of :class:`~hf_advsoup.AdvSoupViTForImageClassification`.

    Accepts every :class:`~transformers.ViTConfig` argument, plus:

    Args:
        adapter (`str`, defaults to `"cls_token"`):
            Which parameters are doubled (one clean and one adversarial copy), Table 1 of the paper:
            `"cls_token"` (768 parameters in ViT-B/16), `"layernorm"` (all LayerNorm scales and offsets, 38k),
            `"pos_embed"` (positional embedding, 151k), `"patch_embed"` (patch embedder, 591k), or `"none"`
            (fully shared co-training: a single copy, `beta` has no effect).
        beta (`float`, defaults to `1.0`):
            Soup weight used when `forward` gets no `beta`: the adapters are `beta * clean + (1 - beta) *
            adversarial`. `1.0` is clean mode, `0.0` robust mode; any finite value is allowed (more than 0.5 outside
            `[0, 1]` it warns).
        pooling (`str`, defaults to `"mean"`):
            `"mean"` (MAE-style head: mean of the final tokens except the classification token, the paper's
            choice) or `"cls"` (vanilla ViT: the final classification token).
        patch_stride (`int`, *optional*):
            Stride of the patch embedder. `None` means `patch_size` (non-overlapping patches). The paper uses patch
            4 with stride 2 on 32x32 images (appendix A).
        drop_path_rate (`float`, defaults to `0.0`):
            Stochastic depth rate of the last block; block `i` of `L` drops its residual branches with probability
            `drop_path_rate * i / (L - 1)`. The paper uses 0.1.
        selector_layers (`int`, *optional*):
            The soup selector (`beta="auto"`): it reads the tokens after the first `selector_layers` blocks in robust
            mode (`0`: the embeddings), so a selected soup costs `(num_hidden_layers + selector_layers) /
            num_hidden_layers` forwards. `None` (the default): no selector.
        selector_hidden_size (`int`, defaults to `64`):
            Width of the selector's hidden layer.
        selector_mode (`str`, defaults to `"soft"`):
            `"soft"`: `beta = sigmoid(score)` per image; `"hard"`: `beta = 1` when `score > 0`, else `0`.

    `beta` may also be `"auto"` (e.g. `from_pretrained(path, beta="auto")`): each image gets the soup its selector
    chooses; a model without a selector refuses it.

    Example:

    ```python
    >>> from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification
    >>> config = AdvSoupViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
    ...                           image_size=32, patch_size=4, patch_stride=2, num_labels=10, adapter="cls_token")
    >>> model = AdvSoupViTForImageClassification(config)
    ```
    """

    model_type = "advsoup-vit"

    adapter: str = "cls_token"
    beta: float | int | str = 1.0
    pooling: str = "mean"
    patch_stride: int | None = None
    drop_path_rate: float | int = 0.0
    selector_layers: int | None = None
    selector_hidden_size: int = 64
    selector_mode: str = "soft"

    def __post_init__(self, **kwargs):
        validate_choice("adapter", self.adapter, ADAPTER_TYPES)
        validate_choice("pooling", self.pooling, POOLING_TYPES)
        self.beta = validate_config_beta(self.beta)
        if not 0.0 <= float(self.drop_path_rate) < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")
        super().__post_init__(**kwargs)
        self.validate_geometry()
        self.validate_selector()

    def validate_selector(self) -> None:
        """Check the selector fields: ``0 <= selector_layers <= num_hidden_layers`` (or ``None``), a positive
        ``selector_hidden_size``, a known ``selector_mode``, and ``beta="auto"`` only with a selector. Called by the
        model too (``from_pretrained(path, beta="auto")`` sets fields after this config was built)."""
        validate_choice("selector_mode", self.selector_mode, SELECTOR_MODES)
        layers = self.selector_layers
        if layers is not None and (isinstance(layers, bool) or int(layers) != layers
                                   or not 0 <= int(layers) <= self.num_hidden_layers):
            raise ValueError(
                f"selector_layers must be an integer in [0, num_hidden_layers={self.num_hidden_layers}] (the blocks "
                f"the selector reads in robust mode) or None for no selector, got {layers!r}."
            )
        if isinstance(self.selector_hidden_size, bool) or int(self.selector_hidden_size) < 1:
            raise ValueError(f"selector_hidden_size must be a positive integer, got {self.selector_hidden_size!r}.")
        if validate_config_beta(self.beta) == AUTO_BETA and layers is None:
            raise ValueError(
                "beta='auto' needs a soup selector, and this model has none (config.selector_layers is None). Train "
                "one on the co-trained model (python scripts/train_selector.py --model_name_or_path ... , see "
                "docs/selection.md), or pass a number: beta=1 (clean mode), beta=0 (robust mode) or in between."
            )

    def validate_geometry(self) -> None:
        """Check that the patches tile the image exactly: ``patch_size <= image_size`` and ``(image_size -
        patch_size)`` a multiple of the stride, per side. Otherwise the last rows or columns of every image would be
        silently ignored (or the model would fail at its first forward). Called by the model too, because
        ``from_pretrained(path, image_size=...)`` sets fields after this config was built."""
        stride = self.patch_stride if self.patch_stride is not None else self.patch_size
        if isinstance(stride, bool) or int(stride) != stride or int(stride) < 1:
            raise ValueError(f"patch_stride must be a positive integer or None, got {self.patch_stride}.")
        for side, size, patch in zip(("height", "width"), _pair(self.image_size), _pair(self.patch_size)):
            if patch > size:
                raise ValueError(
                    f"patch_size={patch} is larger than the image {side} ({size} px, image_size="
                    f"{self.image_size}): choose a patch size of at most {size}."
                )
            leftover = (size - patch) % int(stride)
            if leftover:
                fits = [s for s in range(1, size + 1) if (size - patch) % s == 0 and s <= patch]
                raise ValueError(
                    f"patch_size={patch} with stride {int(stride)} does not tile the image {side} of {size} px: the "
                    f"last {leftover} px would never be seen. Strides that tile it with this patch size: "
                    f"{fits}; or change image_size / patch_size."
                )


__all__ = [
    "ADAPTER_TYPES",
    "AUTO_BETA",
    "POOLING_TYPES",
    "SELECTOR_MODES",
    "AdvSoupViTConfig",
    "patch_grid",
    "validate_config_beta",
]
