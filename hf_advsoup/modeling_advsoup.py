"""The dual-adapter Vision Transformer of "Revisiting adapters with adversarial training" (Rebuffi et al., ICLR 2023).

Differences from :class:`~transformers.ViTForImageClassification`:

- The parameters named by ``config.adapter`` exist twice (Table 1). The *clean* copy is the stock parameter, where a
  vanilla ViT keeps it (so a vanilla checkpoint loads into it unchanged); the *adversarial* copy lives beside it in
  the same module, named ``adversarial_<name>`` (e.g. ``vit.embeddings.adversarial_cls_token``,
  ``vit.layers.3.layernorm_before.adversarial_weight``), in the style of peft's adapter layers. Everything else
  (``psi`` in the paper) is shared.
- ``forward`` takes ``beta`` (Eq. 3): every doubled parameter is used as ``beta * clean + (1 - beta) * adversarial``,
  with ``beta`` a float for the whole batch or a per-sample tensor, so that one batched forward mixes clean-mode and
  robust-mode samples (the co-training loss, Eq. 2). ``beta2`` gives the 2-D combination of appendix D.
- The head reads the mean of the final tokens except the classification token (``pooling="mean"``, MAE-style, the
  paper's choice; padded tokens excluded when an ``attention_mask`` is given) or the classification token
  (``pooling="cls"``).
- Overlapping patches (``patch_stride``) and stochastic depth (``drop_path_rate``), which HF ViT lacks.
- Optionally a soup selector (:class:`AdvSoupSelector`, ``config.selector_layers``): ``beta="auto"`` gives each image
  the soup a small head chooses from the tokens after the first ``selector_layers`` blocks in robust mode (appendix
  E's "automatic selection of the right soup for each sample"; docs/selection.md says what it can and cannot promise).

How it runs: ``self.vit`` is an :class:`AdvSoupViTModel`, a :class:`~transformers.ViTModel` whose embeddings,
layers and final LayerNorm are small subclasses of the stock modules, and whose forward is ViTModel's own; so output
recording (``output_hidden_states`` as a bool or as layer indices, ``output_attentions``), gradient checkpointing,
attention back-ends and masks, and checkpoint key conversions work as for ViT (ViT's key conversion is registered
for this class name). ``forward`` sets the soup once (:class:`SoupWeights`, in the model's :class:`SoupContext`);
the embeddings and the final LayerNorm read it there, and every layer receives it as the keyword ``soup``, which
gradient checkpointing stores with the layer's other inputs so that a replay during backward uses the soup of the
forward it replays. A soup forward is one ordinary ViT forward: only the doubled tensors are mixed (a few thousand
multiply-adds for the default classification-token adapter).

This file is copied next to the weights by ``save_pretrained`` (remote code): it imports only ``torch``,
``transformers`` and the sibling configuration file.
"""

import copy
import logging
import math
import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
)
from transformers.models.vit.modeling_vit import (
    ViTEmbeddings,
    ViTForImageClassification,
    ViTLayer,
    ViTModel,
    ViTPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .configuration_advsoup import (
    AUTO_BETA,
    AdvSoupViTConfig,
    patch_grid,
    validate_beta,
    validate_config_beta,
)

logger = logging.getLogger(__name__)

Beta = float | torch.Tensor

ADVERSARIAL_PREFIX = "adversarial_"
"""Prefix of an adversarial copy's name, next to its clean parameter (``cls_token`` -> ``adversarial_cls_token``)."""


def adapter_parameter_names(config: AdvSoupViTConfig) -> list[str]:
    """Names (relative to ``model.vit``) of the clean parameters that ``config.adapter`` doubles (Table 1)."""
    if config.adapter == "cls_token":
        return ["embeddings.cls_token"]
    if config.adapter == "pos_embed":
        return ["embeddings.position_embeddings"]
    if config.adapter == "patch_embed":
        return ["embeddings.patch_embeddings.projection.weight", "embeddings.patch_embeddings.projection.bias"]
    if config.adapter == "layernorm":
        names = []
        for i in range(config.num_hidden_layers):
            for norm in ("layernorm_before", "layernorm_after"):
                names += [f"layers.{i}.{norm}.weight", f"layers.{i}.{norm}.bias"]
        return names + ["layernorm.weight", "layernorm.bias"]
    return []


def adversarial_name(clean_name: str) -> str:
    """The name of the adversarial copy of a clean parameter: same module, ``adversarial_`` + the parameter's name."""
    module, _, leaf = clean_name.rpartition(".")
    return f"{module}.{ADVERSARIAL_PREFIX}{leaf}" if module else ADVERSARIAL_PREFIX + leaf


# Checkpoints written before the doubled parameters moved next to their clean copies kept them in one
# `adversarial_adapter` parameter dict with flattened keys. Loading maps them to the current names.
# (transformers' key renamings substitute one capture group, `\1`, hence one pattern per parameter.)
LEGACY_KEY_MAPPING = {
    r"^adversarial_adapter\.embeddings_cls_token$": "vit.embeddings.adversarial_cls_token",
    r"^adversarial_adapter\.embeddings_position_embeddings$": "vit.embeddings.adversarial_position_embeddings",
    **{
        rf"^adversarial_adapter\.embeddings_patch_embeddings_projection_{leaf}$":
            f"vit.embeddings.patch_embeddings.projection.adversarial_{leaf}"
        for leaf in ("weight", "bias")
    },
    **{
        rf"^adversarial_adapter\.block(\d+)_{norm}_{leaf}$": rf"vit.layers.\1.{norm}.adversarial_{leaf}"
        for norm in ("layernorm_before", "layernorm_after")
        for leaf in ("weight", "bias")
    },
    **{rf"^adversarial_adapter\.layernorm_{leaf}$": f"vit.layernorm.adversarial_{leaf}" for leaf in ("weight", "bias")},
}


# The encoder is a ViTModel subclass: checkpoints on disk keep ViT's key names (`encoder.layer.N.attention.attention.
# query`, ...), converted on load and back on save by the mapping transformers registers for "ViTModel" (looked up by
# class name, so it is registered for this class's name too).
register_checkpoint_conversion_mapping(
    "AdvSoupViTModel", get_checkpoint_conversion_mapping("ViTModel") or [], overwrite=True
)


# ---------------------------------------------------------------------------------------------------- soup weights
class SoupWeights(NamedTuple):
    """The weights of one forward's soup: each doubled tensor is used as ``clean * phi_clean + adversarial *
    phi_adv``. Both are floats (one soup for the batch) or both are ``(batch,)`` tensors (one soup per sample)."""

    clean: Beta
    adversarial: Beta

    @property
    def per_sample(self) -> bool:
        return isinstance(self.clean, torch.Tensor) and self.clean.dim() == 1

    def mix(self, clean: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
        """``clean * clean_tensor + adversarial * adversarial_tensor``: the parameter's shape for a scalar soup, or
        ``(batch, *shape)`` for per-sample weights. Both copies stay in the autograd graph whatever the weights
        (clean mode gives the adversarial copy a zero gradient, not none: DDP requires every parameter to be used).
        ``(1, 0)`` gives the clean tensor exactly (and ``(0, 1)`` the adversarial one), for finite parameters."""
        if self.per_sample:
            shape = (-1,) + (1,) * clean.dim()
            return (
                self.clean.to(clean.dtype).view(shape) * clean + self.adversarial.to(clean.dtype).view(shape) * adversarial
            )
        return self.clean * clean + self.adversarial * adversarial

    def mix_outputs(self, clean: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
        """Mix two outputs of shape ``(batch, ...)`` of a module that is linear in its doubled parameters."""
        shape = (-1,) + (1,) * (clean.dim() - 1)
        return (
            self.clean.to(clean.dtype).view(shape) * clean + self.adversarial.to(clean.dtype).view(shape) * adversarial
        )


def soup_weights(
    clean: Mapping[str, torch.Tensor], adversarial: Mapping[str, torch.Tensor], beta: Beta, beta2: Beta | None = None
) -> dict[str, torch.Tensor]:
    """Interpolate every adapter tensor with the same weights: ``beta * clean + beta2 * adversarial``.

    ``beta2`` defaults to ``1 - beta`` (the soup of Eq. 3). A float gives tensors of the parameters' shapes; a
    tensor of shape ``(batch,)`` gives one adapter per sample, of shape ``(batch, *parameter_shape)``. ``beta=1``
    (resp. ``0``) returns the clean (resp. adversarial) copy exactly.
    """
    if beta2 is None:
        beta2 = 1.0 - beta
    per_sample = isinstance(beta, torch.Tensor) and beta.dim() == 1
    if per_sample and not isinstance(beta2, torch.Tensor):
        beta2 = torch.full_like(beta, float(beta2))
    weights = SoupWeights(beta, beta2)
    return {name: weights.mix(c, adversarial[name]) for name, c in clean.items()}


class SoupContext:
    """The soup of the forward in progress, shared by a model and its dual modules (like peft's active adapter).

    Context-local (a :class:`~contextvars.ContextVar`), so two threads may run one model with different soups at
    once; under ``torch.compile`` a plain attribute, which dynamo can trace. Outside a forward, modules that read
    it get ``config.beta``.
    """

    def __init__(self, config: AdvSoupViTConfig):
        self.config = config
        self._var: ContextVar[SoupWeights | None] = ContextVar(f"advsoup_soup_{id(self)}", default=None)
        self._compiled: SoupWeights | None = None

    def get(self) -> SoupWeights:
        current = self._compiled if torch.compiler.is_compiling() else self._var.get()
        if current is not None:
            return current
        beta = validate_beta(self.config.beta)
        return SoupWeights(beta, 1.0 - beta)

    def set(self, weights: SoupWeights | None):
        """Make ``weights`` the current soup; returns a token for :meth:`reset`."""
        if torch.compiler.is_compiling():
            self._compiled = weights
            return None
        return self._var.set(weights)

    def reset(self, token) -> None:
        if token is None:
            self._compiled = None
        else:
            self._var.reset(token)

    # A ContextVar cannot be copied or pickled: copies (deepcopy for EMA, torch.save) get a fresh, empty context.
    def __deepcopy__(self, memo):
        return SoupContext(copy.deepcopy(self.config, memo))

    def __reduce__(self):
        return SoupContext, (self.config,)


class _DualParameters:
    """Mixin for a stock module that keeps an adversarial copy of some of its parameters beside them."""

    doubled: tuple[str, ...] = ()

    def _add_adversarial_copies(self, names: tuple[str, ...], soup: SoupContext) -> None:
        self.doubled = tuple(names)
        self.soup_context = soup
        for name in names:  # copied from the clean ones once those are initialised or loaded (the model does it)
            self.register_parameter(ADVERSARIAL_PREFIX + name, nn.Parameter(torch.empty_like(getattr(self, name))))

    def soup_parameter(self, name: str, weights: SoupWeights) -> torch.Tensor:
        """Parameter ``name`` of this forward's soup (the stock parameter when it is not doubled)."""
        clean = getattr(self, name)
        if name not in self.doubled:
            return clean
        return weights.mix(clean, getattr(self, ADVERSARIAL_PREFIX + name))


# ---------------------------------------------------------------------------------------------------- modules
class AdvSoupLayerNorm(_DualParameters, nn.LayerNorm):
    """A LayerNorm with a clean (``weight``, ``bias``) and an adversarial (``adversarial_weight``,
    ``adversarial_bias``) scale and offset (the ``"layernorm"`` adapter). Per-sample soups broadcast a
    ``(batch, hidden)`` scale and offset over the tokens."""

    def __init__(self, hidden_size: int, eps: float, soup: SoupContext):
        super().__init__(hidden_size, eps=eps)
        self._add_adversarial_copies(("weight", "bias"), soup)

    def forward(self, hidden_states: torch.Tensor, soup: SoupWeights | None = None) -> torch.Tensor:
        soup = soup if soup is not None else self.soup_context.get()
        weight, bias = self.soup_parameter("weight", soup), self.soup_parameter("bias", soup)
        if weight.dim() == 1:
            return F.layer_norm(hidden_states, self.normalized_shape, weight, bias, self.eps)
        normed = F.layer_norm(hidden_states, self.normalized_shape, None, None, self.eps)
        return normed * weight[:, None] + bias[:, None]


class AdvSoupPatchProjection(_DualParameters, nn.Conv2d):
    """The patch embedder's convolution with a clean and an adversarial copy of its weights (``"patch_embed"``).

    Per-sample soups: the convolution is linear in its weights, so mixing the outputs of the two copies is exact and
    costs one extra (cheap) patch convolution instead of a per-sample convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, soup: SoupContext):
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, stride=stride)
        self._add_adversarial_copies(("weight", "bias"), soup)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        soup = self.soup_context.get()
        if not soup.per_sample:
            return self._conv_forward(pixel_values, soup.mix(self.weight, self.adversarial_weight),
                                      soup.mix(self.bias, self.adversarial_bias))
        both_weights = torch.cat([self.weight, self.adversarial_weight])
        both_biases = torch.cat([self.bias, self.adversarial_bias])
        clean, adversarial = self._conv_forward(pixel_values, both_weights, both_biases).chunk(2, dim=1)
        return soup.mix_outputs(clean, adversarial)


class AdvSoupViTEmbeddings(_DualParameters, ViTEmbeddings):
    """ViT's embeddings with overlapping patches (``patch_stride``) and, for the ``"cls_token"`` and ``"pos_embed"``
    adapters, an adversarial copy of the classification token or of the position embeddings.

    Differences from :class:`~transformers.models.vit.modeling_vit.ViTEmbeddings`: the patch grid is
    ``(size - patch_size) // stride + 1`` per side; the soup's token and positions (per sample when the soup is)
    are used; masked image modelling (``bool_masked_pos``) is not supported.
    """

    def __init__(self, config: AdvSoupViTConfig, soup: SoupContext):
        super().__init__(config, use_mask_token=False)
        stride = config.patch_stride or config.patch_size
        grid = patch_grid(config.image_size, config.patch_size, stride)
        patches = self.patch_embeddings
        if config.adapter == "patch_embed":
            patches.projection = AdvSoupPatchProjection(
                config.num_channels, config.hidden_size, config.patch_size, stride, soup
            )
        elif stride != config.patch_size:
            patches.projection = nn.Conv2d(
                config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=stride
            )
        patches.num_patches = grid[0] * grid[1]
        if patches.num_patches + 1 != self.position_embeddings.shape[1]:
            self.position_embeddings = nn.Parameter(torch.zeros(1, patches.num_patches + 1, config.hidden_size))
        self.patch_stride = stride
        self.grid = grid
        doubled = {"cls_token": ("cls_token",), "pos_embed": ("position_embeddings",)}.get(config.adapter, ())
        self._add_adversarial_copies(doubled, soup)

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The position embeddings resized (bicubic) to the patch grid of a ``height`` x ``width`` image."""
        return self._interpolate(self.position_embeddings, height, width)

    def _interpolate(self, positions: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = patch_grid((height, width), self.patch_size, self.patch_stride)
        if tuple(grid) == tuple(self.grid) and not torch.jit.is_tracing():
            return positions
        rows, cols = self.grid
        patch_pos = positions[:, 1:].reshape(positions.shape[0], rows, cols, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos.float(), size=tuple(grid), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.to(positions.dtype).permute(0, 2, 3, 1).flatten(1, 2)
        return torch.cat([positions[:, :1], patch_pos], dim=1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        if bool_masked_pos is not None:
            raise ValueError("AdvSoupViTEmbeddings has no mask token: masked image modelling is not supported.")
        batch_size, _, height, width = pixel_values.shape
        soup = self.soup_context.get()
        patches = self.patch_embeddings(pixel_values)
        cls_token = self.soup_parameter("cls_token", soup)
        cls_token = cls_token.reshape(-1, 1, cls_token.shape[-1]).expand(batch_size, -1, -1)
        embeddings = torch.cat((cls_token, patches), dim=1)
        positions = self.soup_parameter("position_embeddings", soup)
        positions = positions.reshape(-1, *positions.shape[-2:])
        if interpolate_pos_encoding:
            positions = self._interpolate(positions, height, width)
        elif (height, width) != tuple(self.image_size):
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match model ({self.image_size[0]}*{self.image_size[1]}); "
                "resize the images or pass interpolate_pos_encoding=True."
            )
        return self.dropout(embeddings + positions)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): zero a residual branch per sample with probability ``rate``, rescale the
    rest by ``1 / (1 - rate)`` so the expectation is unchanged. Identity in eval mode or when ``rate == 0``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class AdvSoupViTLayer(ViTLayer):
    """ViT's block with stochastic depth (HF ViT has none) and, for the ``"layernorm"`` adapter, dual LayerNorms.

    Differences from :class:`~transformers.models.vit.modeling_vit.ViTLayer`: both residual branches go through
    :func:`drop_path` with this block's rate; ``forward`` takes the soup as the keyword ``soup`` (passed by the
    model through ``ViTModel.forward``'s ``**kwargs``) so that a gradient-checkpointing replay uses the soup of the
    forward it replays.
    """

    def __init__(self, config: AdvSoupViTConfig, drop_path_rate: float, soup: SoupContext):
        super().__init__(config)
        if config.adapter == "layernorm":
            self.layernorm_before = AdvSoupLayerNorm(config.hidden_size, config.layer_norm_eps, soup)
            self.layernorm_after = AdvSoupLayerNorm(config.hidden_size, config.layer_norm_eps, soup)
        self.drop_path_rate = float(drop_path_rate)

    def _norm(self, norm: nn.Module, hidden_states: torch.Tensor, soup: SoupWeights | None) -> torch.Tensor:
        return norm(hidden_states, soup) if isinstance(norm, AdvSoupLayerNorm) else norm(hidden_states)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        soup: SoupWeights | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self._norm(self.layernorm_before, hidden_states, soup)
        hidden_states, _ = self.attention(hidden_states, attention_mask, **kwargs)
        hidden_states = drop_path(self.dropout(hidden_states), self.drop_path_rate, self.training) + residual

        residual = hidden_states
        hidden_states = self._norm(self.layernorm_after, hidden_states, soup)
        hidden_states = self.mlp(hidden_states)
        return drop_path(self.dropout(hidden_states), self.drop_path_rate, self.training) + residual


# ---------------------------------------------------------------------------------------------------- the selector
class AdvSoupSelector(nn.Module):
    r"""The soup selector of ``beta="auto"``: scores, per image, whether clean mode (high score) or robust mode (low
    score) should classify it, from tokens the encoder computes anyway.

    Input: the tokens after the first ``config.selector_layers`` blocks run in **robust mode** (``0``: the
    embeddings), shape ``(batch, 1 + num_patches, hidden_size)``. Each patch token goes through ``LayerNorm ->
    Linear(hidden_size, selector_hidden_size) -> GELU``; the mean and the maximum of these over the patches
    (``2 * selector_hidden_size`` numbers: the maximum sees a perturbation confined to a few patches, which a mean
    dilutes) go through ``Linear(2 * selector_hidden_size, 1)`` to the score ``s``, shape ``(batch,)``. ``beta =
    sigmoid(s)`` (``selector_mode="soft"``) or ``1[s > 0]`` (``"hard"``), see :meth:`AdvSoupViTModel.selector_beta`.
    (Chosen by measurement on Fashion-MNIST, docs/selection.md: per-token features beat statistics of the tokens.)

    A selected soup then runs the whole network once at the chosen per-image ``beta``: ``(num_hidden_layers +
    selector_layers) / num_hidden_layers`` forwards in all (the prefix cannot be shared: from the first block on,
    the tokens depend on the adapter, hence on ``beta``). Trained with the backbone frozen, on clean images (target
    1) and training-attack images (target 0): :class:`hf_advsoup.selection.SelectorTrainer`.
    """

    def __init__(self, config: AdvSoupViTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.proj = nn.Linear(config.hidden_size, config.selector_hidden_size)
        self.score = nn.Linear(2 * config.selector_hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden_states`` ``(batch, 1 + num_patches, hidden_size)``; a 2-D ``attention_mask`` (1 = keep, the
        classification token first) leaves padded patches out of the pooling. Returns the score ``(batch,)``."""
        features = F.gelu(self.proj(self.norm(hidden_states[:, 1:])))
        if attention_mask is not None and attention_mask.dim() == 2:
            keep = attention_mask[:, 1:].to(features.dtype).unsqueeze(-1)
            mean = (features * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
            peak = features.masked_fill(keep == 0, torch.finfo(features.dtype).min).amax(dim=1)
        else:
            mean, peak = features.mean(dim=1), features.amax(dim=1)
        return self.score(torch.cat([mean, peak], dim=-1)).squeeze(-1)


class _StraightThroughStep(torch.autograd.Function):
    """``1[soft > 0.5]`` forward, identity backward: the hard selector's value with the soft selector's gradient
    (BPDA, Athalye et al. 2018), so that gradient attacks can attack a hard selector end to end."""

    @staticmethod
    def forward(ctx, soft: torch.Tensor) -> torch.Tensor:
        return (soft > 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _is_auto(beta) -> bool:
    return isinstance(beta, str) and beta.strip().lower() == AUTO_BETA


@dataclass
class AdvSoupImageClassifierOutput(ImageClassifierOutput):
    r"""The outputs of :class:`ImageClassifierOutput`, plus what the selector chose when ``beta="auto"``.

    Args:
        beta (`torch.FloatTensor` of shape `(batch_size,)`, *optional*):
            The soup weight the selector gave each image (`beta="auto"` only): 1 = clean mode, 0 = robust mode.
        selector_logits (`torch.FloatTensor` of shape `(batch_size,)`, *optional*):
            The selector's score per image (`beta="auto"` only): `sigmoid(selector_logits)` is the soft `beta`.
    """

    beta: torch.FloatTensor | None = None
    selector_logits: torch.FloatTensor | None = None


class _SoupLoading:
    """Loading behaviour shared by the base and the classification model (see ``from_pretrained``)."""

    def _adversarial_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if n.rpartition(".")[2].startswith(ADVERSARIAL_PREFIX)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """:meth:`~transformers.PreTrainedModel.from_pretrained`, plus: checkpoints of earlier versions of this
        library load (their adversarial copies were kept in one ``adversarial_adapter`` dict); a checkpoint whose
        weights hold adversarial copies of other parameters than ``config.adapter`` names (an edited
        ``config.json``, or ``adapter=`` given for a checkpoint of another adapter) raises a ``ValueError``; ``beta``
        and the patch geometry are validated at load (``beta="auto"`` needs a model with a selector). A vanilla ViT
        checkpoint, or one with ``adapter="none"``, starts both copies from its weights; a checkpoint without selector
        weights loaded with ``selector_layers=k`` gets a freshly initialised (untrained) selector."""
        want_info = kwargs.pop("output_loading_info", False)
        kwargs["key_mapping"] = {**LEGACY_KEY_MAPPING, **(kwargs.pop("key_mapping", None) or {})}
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        # The legacy renamings are for reading old files only: saving writes the current layout.
        legacy = set(LEGACY_KEY_MAPPING)
        model._weight_conversions = [
            c for c in getattr(model, "_weight_conversions", None) or []
            if not set(getattr(c, "source_patterns", [])) & legacy
        ] or None
        model._check_loaded_adapter(info, pretrained_model_name_or_path)
        model.config.beta = validate_config_beta(model.config.beta)
        model.config.validate_selector()  # beta="auto" needs a selector
        return (model, info) if want_info else model

    def _check_loaded_adapter(self, info: dict, source) -> None:
        def doubled(keys) -> list[str]:
            return sorted(k for k in keys if k.rpartition(".")[2].startswith(ADVERSARIAL_PREFIX))

        unexpected, missing = doubled(info.get("unexpected_keys", [])), doubled(info.get("missing_keys", []))
        expected = self._adversarial_parameter_names()
        if unexpected or (missing and len(missing) < len(expected)):
            found = unexpected or sorted(set(expected) - set(missing))
            raise ValueError(
                f"The checkpoint {os.fspath(source)!r} does not match adapter={self.config.adapter!r}: its weights "
                f"hold adversarial copies {found[:4]}{' ...' if len(found) > 4 else ''}"
                + (f" and lack {missing[:4]}{' ...' if len(missing) > 4 else ''}" if missing else "")
                + ". The adapter in config.json (or the `adapter=` argument) must be the one the model was trained "
                "with; loading anyway would silently drop trained adversarial parameters or make robust mode equal "
                "clean mode. To change the adapter on purpose, load the checkpoint with its own adapter and call "
                "`model.convert_adapter(new_adapter)`."
            )
        if missing:
            logger.info("No adversarial copies in %s: both copies of each doubled parameter start from its weights.",
                        source)
            self.start_adversarial_from_clean()


class AdvSoupViTModel(_SoupLoading, ViTModel):
    r"""The dual-adapter ViT encoder, without a head: what ``AutoModel`` and the ``image-feature-extraction``
    pipeline load from a checkpoint of this library (and ``AdvSoupViTForImageClassification.vit``).

    Differences from :class:`~transformers.ViTModel`: the embeddings, layers and final LayerNorm are this file's
    subclasses (doubled adapter parameters, overlapping patches, stochastic depth); ``forward`` takes ``beta`` and
    ``beta2`` (``beta="auto"``: one soup per image from :attr:`selector`, when the model has one); ``pooler_output``
    is what the classification head reads (the mean of the final patch tokens, or the
    final classification token, by ``config.pooling``), not ViT's dense + tanh pooler, which this model has not.
    Checkpoints on disk use ViT's key names (ViT's key conversion is registered for this class).
    """

    config_class = AdvSoupViTConfig
    config: AdvSoupViTConfig
    _no_split_modules = ["AdvSoupViTEmbeddings", "AdvSoupViTLayer"]

    def __init__(self, config: AdvSoupViTConfig):
        config.validate_geometry()
        # The stock modules are built on the meta device (no memory, no initialisation) and replaced. Their
        # post_init consumes `config.gradient_checkpointing` (enabling it on the modules about to be replaced):
        # it is restored for the post_init below.
        checkpointing = getattr(config, "gradient_checkpointing", None)
        with torch.device("meta"):
            super().__init__(config, add_pooling_layer=False)
        if checkpointing is not None:
            config.gradient_checkpointing = checkpointing
        self.soup_context = SoupContext(config)
        self.embeddings = AdvSoupViTEmbeddings(config, self.soup_context)
        layers = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(layers - 1, 1) for i in range(layers)]
        self.layers = nn.ModuleList([AdvSoupViTLayer(config, rate, self.soup_context) for rate in rates])
        if config.adapter == "layernorm":
            self.layernorm = AdvSoupLayerNorm(config.hidden_size, config.layer_norm_eps, self.soup_context)
        else:
            self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        config.validate_selector()
        self.selector = AdvSoupSelector(config) if config.selector_layers is not None else None
        for module in self.modules():
            module.__dict__.pop("_is_hf_initialized", None)
        self.post_init()
        # Done here rather than in `_init_weights`, once every clean copy is initialised. (Under from_pretrained
        # this runs on the meta device; from_pretrained copies the copies its checkpoint lacks once it has loaded.)
        self.start_adversarial_from_clean()
        self._no_split_modules = set(type(self)._no_split_modules)

    # ------------------------------------------------------------------ adapters
    @property
    def adapter_parameter_names(self) -> list[str]:
        """Names (relative to this encoder) of the doubled parameters; empty for ``adapter="none"``."""
        return adapter_parameter_names(self.config)

    def start_adversarial_from_clean(self) -> None:
        """Copy the clean copy of each doubled parameter into its adversarial copy: both copies start equal, at
        fresh initialisation and when a checkpoint has no adversarial copies (a vanilla ViT, or
        ``adapter="none"``)."""
        with torch.no_grad():
            for name in self.adapter_parameter_names:
                self.get_parameter(adversarial_name(name)).copy_(self.get_parameter(name))

    def _resolve_beta(self, beta, batch_size: int, name: str = "beta") -> Beta:
        if torch.compiler.is_compiling() and isinstance(beta, (int, float)):
            # Under torch.compile a float may be traced symbolically: validate in eager mode only.
            return beta
        if beta is None:
            beta = self.config.beta
        if _is_auto(beta):
            raise ValueError(
                f"{name}='auto' is chosen per image from the images themselves: call forward(pixel_values, "
                f"beta='auto') or select_beta(pixel_values), not soup_for."
            )
        if isinstance(beta, torch.Tensor):
            if beta.dim() == 0:
                return validate_beta(beta.item())
            if beta.dim() != 1 or beta.shape[0] != batch_size:
                raise ValueError(
                    f"A per-sample {name} must have shape (batch_size,) = ({batch_size},), got {tuple(beta.shape)}."
                )
            # A data-dependent check would break a torch.compile graph (and sync a GPU): eager mode only.
            if not torch.compiler.is_compiling() and not torch.isfinite(beta).all():
                raise ValueError(f"{name} must be finite; got non-finite values in the per-sample tensor.")
            return beta.to(device=self.device, dtype=torch.float32)
        return validate_beta(beta)

    # ------------------------------------------------------------------ the selector (beta="auto")
    def uses_selector(self, beta: "Beta | str | None") -> bool:
        """Whether a forward with this ``beta`` (``None``: ``config.beta``) selects its soups per image."""
        return _is_auto(self.config.beta if beta is None else beta)

    def add_selector(self, num_layers: int = 1, hidden_size: int = 64, mode: str = "soft") -> AdvSoupSelector:
        """Give the model a new, untrained :class:`AdvSoupSelector` (replacing any selector it has) that reads the
        tokens after ``num_layers`` robust-mode blocks; sets ``config.selector_layers``, ``selector_hidden_size`` and
        ``selector_mode``. Initialised like the model's other layers, on the model's device and dtype. Train it with
        :class:`hf_advsoup.selection.SelectorTrainer` (``scripts/train_selector.py``)."""
        trial = copy.deepcopy(self.config)
        trial.selector_layers, trial.selector_hidden_size, trial.selector_mode = num_layers, hidden_size, mode
        trial.validate_selector()  # a bad value changes nothing
        self.config.selector_layers, self.config.selector_hidden_size = int(num_layers), int(hidden_size)
        self.config.selector_mode = mode
        selector = AdvSoupSelector(self.config)
        for module in selector.modules():
            self._init_weights(module)
        self.selector = selector.to(device=self.device, dtype=self.dtype)
        return self.selector

    def _require_selector(self) -> AdvSoupSelector:
        if self.selector is None:
            raise ValueError(
                "beta='auto' needs a soup selector, and this model has none (config.selector_layers is None). Train "
                "one on the co-trained model (python scripts/train_selector.py --model_name_or_path ..., see "
                "docs/selection.md), or pass a number: beta=1 (clean mode), beta=0 (robust mode) or in between."
            )
        return self.selector

    def selector_inputs(
        self,
        pixel_values: torch.Tensor,
        num_layers: int | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What the selector reads: the tokens after the first ``num_layers`` blocks (default
        ``config.selector_layers``; ``0``: the embeddings) run in robust mode, shape ``(batch, 1 + num_patches,
        hidden_size)``. Through the stock modules, so gradient checkpointing applies; not recorded as hidden states of
        a forward."""
        num_layers = self.config.selector_layers if num_layers is None else num_layers
        if num_layers is None or not 0 <= num_layers <= len(self.layers):
            raise ValueError(f"num_layers must be in [0, {len(self.layers)}], got {num_layers} (this model has no "
                             "selector to take it from).")
        robust = SoupWeights(0.0, 1.0)
        token = self.soup_context.set(robust)
        try:
            dtype = self.embeddings.patch_embeddings.projection.weight.dtype
            hidden_states = self.embeddings(pixel_values.to(dtype),
                                            interpolate_pos_encoding=bool(interpolate_pos_encoding))
            mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states,
                                             attention_mask=attention_mask)
            for layer in self.layers[:num_layers]:
                hidden_states = layer(hidden_states, mask, soup=robust)
        finally:
            self.soup_context.reset(token)
        return hidden_states

    def selector_logits(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The selector's score per image, shape ``(batch,)``, fp32: :class:`AdvSoupSelector` on
        :meth:`selector_inputs`. ``> 0`` leans to clean mode."""
        selector = self._require_selector()
        hidden_states = self.selector_inputs(pixel_values, None, interpolate_pos_encoding, attention_mask)
        return selector(hidden_states, attention_mask).float()

    def selector_beta(self, selector_logits: torch.Tensor) -> torch.Tensor:
        """``beta`` per image from the selector's scores: ``sigmoid(s)`` (``selector_mode="soft"``), or ``1[s > 0]``
        (``"hard"``), whose gradient is the sigmoid's (straight through, BPDA) so that attacks can differentiate the
        whole selected model."""
        soft = torch.sigmoid(selector_logits.float())
        return _StraightThroughStep.apply(soft) if self.config.selector_mode == "hard" else soft

    def select_beta(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The soup weight ``beta="auto"`` gives each image, shape ``(batch,)``, in ``[0, 1]``."""
        return self.selector_beta(self.selector_logits(pixel_values, interpolate_pos_encoding, attention_mask))

    def soup_for(self, batch_size: int, beta: Beta | None = None, beta2: Beta | None = None) -> SoupWeights:
        """The :class:`SoupWeights` that ``forward(..., beta=beta, beta2=beta2)`` uses for a batch of this size:
        ``beta`` defaults to ``config.beta`` and ``beta2`` to ``1 - beta``; a per-sample tensor in either makes both
        ``(batch_size,)`` tensors."""
        beta = self._resolve_beta(beta, batch_size)
        beta2 = 1.0 - beta if beta2 is None else self._resolve_beta(beta2, batch_size, "beta2")
        if isinstance(beta, torch.Tensor) or isinstance(beta2, torch.Tensor):
            device = self.device
            beta, beta2 = (
                b if isinstance(b, torch.Tensor) else torch.full((batch_size,), float(b), device=device)
                for b in (beta, beta2)
            )
        return SoupWeights(beta, beta2)

    def pool(self, sequence_output: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The head's input: the mean of the final patch tokens (``pooling="mean"``; the unmasked ones when a 2-D
        ``attention_mask`` is given) or the final classification token (``pooling="cls"``)."""
        if self.config.pooling == "cls":
            return sequence_output[:, 0]
        patches = sequence_output[:, 1:]
        if attention_mask is None or attention_mask.dim() != 2:
            return patches.mean(dim=1)
        keep = attention_mask[:, 1:].to(patches.dtype).unsqueeze(-1)
        return (patches * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        beta: "Beta | SoupWeights | None" = None,
        beta2: Beta | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images normalized by the model's image processor.
            bool_masked_pos: Not supported (this model has no mask token); must be None.
            interpolate_pos_encoding (`bool`, *optional*):
                Resize the position embeddings (bicubic) to the patch grid of larger or smaller images.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                As for ViT: 1 for tokens to attend to (the classification token first), 0 for padding.
            beta, beta2: The soup, as for :meth:`AdvSoupViTForImageClassification.forward`.
            kwargs: `output_hidden_states` (a bool, or the indices of the states to keep), `output_attentions`,
                and the attention back-end's options, passed to every layer as `ViTModel.forward` does.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required.")
        if not isinstance(beta, SoupWeights) and self.uses_selector(beta):
            _check_no_beta2(beta2)
            beta = self.select_beta(pixel_values, interpolate_pos_encoding, attention_mask)
        soup = beta if isinstance(beta, SoupWeights) else self.soup_for(pixel_values.shape[0], beta, beta2)
        token = self.soup_context.set(soup)
        try:
            outputs = super().forward(
                pixel_values,
                bool_masked_pos=bool_masked_pos,
                interpolate_pos_encoding=interpolate_pos_encoding,
                attention_mask=attention_mask,
                soup=soup,
                return_dict=True,
                **kwargs,
            )
        finally:
            self.soup_context.reset(token)
        outputs.pooler_output = self.pool(outputs.last_hidden_state, attention_mask)
        return outputs


def _check_no_beta2(beta2) -> None:
    if beta2 is not None:
        raise ValueError("beta2 (the 2-D combination of appendix D) cannot be combined with beta='auto', which "
                         "chooses soups beta * clean + (1 - beta) * adversarial.")


# ---------------------------------------------------------------------------------------------------- the model
class AdvSoupViTForImageClassification(_SoupLoading, ViTForImageClassification):
    r"""ViT with a clean and an adversarial copy of its adapter, co-trained on clean and adversarial images, whose
    soups (Eq. 3) trade clean accuracy for robustness in one forward pass.

    Example:

    ```python
    >>> import torch
    >>> from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification
    >>> config = AdvSoupViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    ...                           image_size=16, patch_size=4, num_labels=10)
    >>> model = AdvSoupViTForImageClassification(config).eval()
    >>> x = torch.randn(4, 3, 16, 16)
    >>> soup = model(x, beta=0.5).logits                                # one forward, halfway soup
    >>> mixed = model(x, beta=torch.tensor([1.0, 1.0, 0.0, 0.0])).logits  # clean mode, clean, robust, robust
    ```
    """

    config_class = AdvSoupViTConfig
    config: AdvSoupViTConfig
    # FSDP units and device_map boundaries: the stock units (embeddings, blocks) of this model.
    _no_split_modules = ["AdvSoupViTEmbeddings", "AdvSoupViTLayer"]

    def __init__(self, config: AdvSoupViTConfig):
        # Built by hand (not ViTForImageClassification.__init__) so that a stock ViTModel is never allocated.
        ViTPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.vit = AdvSoupViTModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()
        # post_init merged in ViTModel's units (ViTEmbeddings, ViTLayer), which are not class names of this model:
        # FSDP's auto-wrap fails on a name it cannot find.
        self._no_split_modules = set(type(self)._no_split_modules)

    @property
    def soup_context(self) -> SoupContext:
        """The soup state shared by this model's modules (:class:`SoupContext`)."""
        return self.vit.soup_context

    def save_pretrained(self, save_directory, *args, **kwargs):
        """:meth:`~transformers.PreTrainedModel.save_pretrained`; with remote code, ``config.auto_map`` also names
        the encoder, so ``AutoModel.from_pretrained(path, trust_remote_code=True)`` loads it where this package is
        not installed."""
        if self._auto_class is not None:
            module = type(self).__module__.rsplit(".", 1)[-1]
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            self.config.auto_map = {**auto_map, "AutoModel": f"{module}.{AdvSoupViTModel.__name__}"}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def start_adversarial_from_clean(self) -> None:
        """See :meth:`AdvSoupViTModel.start_adversarial_from_clean`."""
        self.vit.start_adversarial_from_clean()

    # ------------------------------------------------------------------ adapters
    @property
    def adapter_parameter_names(self) -> list[str]:
        """Names (relative to ``self.vit``) of the doubled parameters; empty for ``adapter="none"``."""
        return adapter_parameter_names(self.config)

    def clean_adapter(self) -> dict[str, nn.Parameter]:
        """The clean-mode copy of each doubled parameter (``phi_clean``), keyed by name relative to ``self.vit``."""
        return {name: self.vit.get_parameter(name) for name in self.adapter_parameter_names}

    def adversarial_adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The robust-mode copy of each doubled parameter (``phi_adv``), keyed like :meth:`clean_adapter`."""
        return {name: self.vit.get_parameter(adversarial_name(name)) for name in self.adapter_parameter_names}

    def soup_adapter(self, beta: Beta, beta2: Beta | None = None) -> dict[str, torch.Tensor]:
        """The adapter tensors of the soup ``beta * clean + beta2 * adversarial`` (``beta2`` defaults to ``1 - beta``)."""
        return soup_weights(self.clean_adapter(), self.adversarial_adapter_parameters(), beta, beta2)

    def soup_for(self, batch_size: int, beta: Beta | None = None, beta2: Beta | None = None) -> SoupWeights:
        """See :meth:`AdvSoupViTModel.soup_for`."""
        return self.vit.soup_for(batch_size, beta, beta2)

    # ------------------------------------------------------------------ the selector (beta="auto")
    @property
    def selector(self) -> AdvSoupSelector | None:
        """The soup selector of ``beta="auto"`` (``self.vit.selector``), or ``None``."""
        return self.vit.selector

    def add_selector(self, num_layers: int = 1, hidden_size: int = 64, mode: str = "soft") -> AdvSoupSelector:
        """See :meth:`AdvSoupViTModel.add_selector`."""
        return self.vit.add_selector(num_layers, hidden_size, mode)

    def select_beta(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None = None,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """See :meth:`AdvSoupViTModel.select_beta`."""
        return self.vit.select_beta(pixel_values, interpolate_pos_encoding, attention_mask)

    # ------------------------------------------------------------------ forward
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        beta: Beta | None = None,
        beta2: Beta | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> AdvSoupImageClassifierOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images normalized by the model's image processor.
            labels (`torch.LongTensor` of shape `(batch_size,)`, or soft labels `(batch_size, num_labels)`):
                Class indices (cross-entropy, `config.problem_type` honoured as in transformers) or probability
                vectors (soft-target cross-entropy, e.g. from mixup/CutMix).
            interpolate_pos_encoding (`bool`, *optional*):
                Resize the position embeddings (bicubic) to the patch grid of larger or smaller images.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                As for ViT: 1 for tokens to attend to (the classification token first), 0 for padding. With
                `pooling="mean"` the head averages the unmasked patch tokens only.
            beta (`float`, `torch.Tensor` of shape `(batch_size,)` or `"auto"`, *optional*):
                Soup weight (Eq. 3): 1 = clean mode, 0 = robust mode, any finite value. Defaults to `config.beta`.
                A tensor gives one soup per sample in the same forward. `"auto"`: the model's selector chooses one
                soup per image (the output then holds `beta` and `selector_logits`).
            beta2 (`float` or `torch.Tensor`, *optional*):
                Weight of the adversarial copy for the 2-D combination of appendix D
                (`beta * clean + beta2 * adversarial`). Defaults to `1 - beta`.
            kwargs: `output_hidden_states` (a bool, or the indices of the states to keep), `output_attentions`
                (eager attention only; other back-ends return none, as for ViT), `return_dict`, and the attention
                back-end's options, passed to every layer as `ViTModel.forward` does.
        """
        selected = selector_logits = None
        if self.vit.uses_selector(beta):
            if pixel_values is None:
                raise ValueError("pixel_values is required.")
            _check_no_beta2(beta2)
            selector_logits = self.vit.selector_logits(pixel_values, interpolate_pos_encoding, attention_mask)
            beta = selected = self.vit.selector_beta(selector_logits)
        outputs = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            attention_mask=attention_mask,
            beta=beta,
            beta2=beta2,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = self._loss(logits, labels) if labels is not None else None
        return AdvSoupImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            beta=selected, selector_logits=selector_logits,
        )

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(logits.device)
        if (
            labels.is_floating_point()
            and labels.shape == logits.shape
            and self.config.problem_type in (None, "single_label_classification")
        ):
            return F.cross_entropy(logits.float(), labels.float())
        return self.loss_function(labels, logits, self.config)

    # ------------------------------------------------------------------ ensembles and export
    def ensemble_forward(
        self, pixel_values: torch.Tensor, beta: float | None = None, labels: torch.Tensor | None = None
    ) -> ImageClassifierOutput:
        """Ensemble of the two modes (Figure 4, Table 8): ``beta * p_clean + (1 - beta) * p_robust``.

        Two forward passes (twice the cost of a soup). The returned ``logits`` are the log of the averaged
        probabilities, so ``logits.softmax(-1)`` (or ``logits.exp()``) is the ensemble's distribution and an attack
        on these logits attacks the ensemble end to end.
        """
        beta = validate_beta(self.config.beta if beta is None else beta)
        clean = self(pixel_values, beta=1.0).logits.float().log_softmax(-1)
        robust = self(pixel_values, beta=0.0).logits.float().log_softmax(-1)
        if beta == 1.0:
            log_probs = clean
        elif beta == 0.0:
            log_probs = robust
        else:
            if not 0.0 < beta < 1.0:
                raise ValueError(f"An ensemble needs 0 <= beta <= 1 (a probability average), got beta={beta}.")
            log_probs = torch.logsumexp(
                torch.stack([clean + math.log(beta), robust + math.log(1.0 - beta)]), dim=0
            )
        loss = F.nll_loss(log_probs, labels.to(log_probs.device)) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=log_probs)

    def convert_adapter(self, adapter: str) -> "AdvSoupViTForImageClassification":
        """A copy of this model with another adapter type: every shared weight and the clean copies are kept, this
        model's adversarial copies (and its soup selector, trained for them) are dropped, and the new adapter's
        adversarial copies start as copies of the clean parameters (as from a vanilla ViT). The deliberate way to change ``adapter``; ``from_pretrained`` refuses a
        checkpoint whose weights do not match the adapter it is told."""
        config = copy.deepcopy(self.config)
        config.adapter = adapter
        if config.selector_layers is not None:
            logger.info("convert_adapter drops the soup selector: it was trained for the old adapter's robust mode.")
        _without_selector(config)
        converted = type(self)(config).to(device=self.device, dtype=self.dtype)
        shared = {k: v for k, v in self.state_dict().items()
                  if not k.rpartition(".")[2].startswith(ADVERSARIAL_PREFIX) and not k.startswith(_SELECTOR_PREFIX)}
        missing, unexpected = converted.load_state_dict(shared, strict=False)
        assert not unexpected and all(k.rpartition(".")[2].startswith(ADVERSARIAL_PREFIX) for k in missing), (
            missing, unexpected)
        converted.start_adversarial_from_clean()
        converted.train(self.training)
        return converted

    def export_soup(self, beta: float | None = None, beta2: float | None = None) -> "AdvSoupViTForImageClassification":
        """A standalone single-copy model (``adapter="none"``) whose adapters are the soup ``beta * clean + beta2 *
        adversarial``, baked in. It predicts exactly like ``self(x, beta=beta, beta2=beta2)`` and saves, loads and
        fine-tunes like any ViT; ``config.beta`` records the exported ``beta``. It has no soup selector."""
        beta = validate_beta(self.config.beta if beta is None else beta)
        config = copy.deepcopy(self.config)
        config.adapter = "none"
        config.beta = beta
        _without_selector(config)  # a single copy has one soup: nothing to select
        exported = type(self)(config).to(device=self.device, dtype=self.dtype)
        doubled = {"vit." + adversarial_name(n) for n in self.adapter_parameter_names}
        state = {k: v for k, v in self.state_dict().items() if k not in doubled and not k.startswith(_SELECTOR_PREFIX)}
        with torch.no_grad():
            for name, value in self.soup_adapter(beta, beta2).items():
                state["vit." + name] = value
        exported.load_state_dict(state, strict=True)
        exported.train(self.training)
        return exported


_SELECTOR_PREFIX = "vit.selector."


def _without_selector(config: AdvSoupViTConfig) -> None:
    config.selector_layers = None
    if _is_auto(config.beta):
        config.beta = 1.0


__all__ = [
    "AdvSoupImageClassifierOutput",
    "AdvSoupLayerNorm",
    "AdvSoupPatchProjection",
    "AdvSoupSelector",
    "AdvSoupViTEmbeddings",
    "AdvSoupViTForImageClassification",
    "AdvSoupViTLayer",
    "AdvSoupViTModel",
    "SoupContext",
    "SoupWeights",
    "adapter_parameter_names",
    "adversarial_name",
    "drop_path",
    "soup_weights",
]
