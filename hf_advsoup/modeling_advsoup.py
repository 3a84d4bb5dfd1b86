"""The dual-adapter Vision Transformer of "Revisiting adapters with adversarial training" (Rebuffi et al., ICLR 2023).

Differences from :class:`~transformers.ViTForImageClassification`:

- The parameters named by ``config.adapter`` exist twice: the *clean* copy lives where a vanilla ViT keeps it (so a
  vanilla checkpoint loads into it unchanged) and the *adversarial* copy lives in ``adversarial_adapter``. Everything
  else (``psi`` in the paper) is shared.
- ``forward`` takes ``beta`` (Eq. 3): the adapters used are ``beta * clean + (1 - beta) * adversarial``, as a float
  for the whole batch or as a per-sample tensor so that one batched forward mixes clean-mode and robust-mode samples
  (the co-training loss, Eq. 2). ``beta2`` gives the 2-D combination of appendix D.
- The head reads the mean of the final tokens except the classification token (``pooling="mean"``, MAE-style, the
  paper's choice) or the classification token (``pooling="cls"``).
- Overlapping patches (``patch_stride``) and stochastic depth (``drop_path_rate``), which HF ViT lacks.

A soup forward is one ordinary ViT forward: only the adapter tensors are mixed (a few thousand multiply-adds for the
default classification-token adapter). ``self.vit`` stays a stock :class:`~transformers.ViTModel` so that checkpoint
key conversions apply; this model runs its blocks itself to pass per-sample adapters and stochastic depth.

This file is copied next to the weights by ``save_pretrained`` (remote code): it imports only ``torch``,
``transformers`` and the sibling configuration file.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.vit.modeling_vit import ViTForImageClassification, ViTModel, ViTPreTrainedModel

from .configuration_advsoup import AdvSoupViTConfig, validate_beta

Beta = float | torch.Tensor


def adapter_parameter_names(config: AdvSoupViTConfig) -> list[str]:
    """Names (relative to ``model.vit``) of the parameters that ``config.adapter`` doubles (Table 1 of the paper)."""
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


def _key(name: str) -> str:
    # nn.ParameterDict keys cannot contain dots, and must not match the ViT checkpoint key conversions ("layers.",
    # "attention.query", ...) that transformers applies when saving and loading.
    return name.replace("layers.", "block").replace(".", "_")


def soup_weights(
    clean: Mapping[str, torch.Tensor], adversarial: Mapping[str, torch.Tensor], beta: Beta, beta2: Beta | None = None
) -> dict[str, torch.Tensor]:
    """Interpolate every adapter tensor with the same weights: ``beta * clean + beta2 * adversarial``.

    ``beta2`` defaults to ``1 - beta`` (the soup of Eq. 3). A float gives tensors of the parameters' shapes; a
    tensor of shape ``(batch,)`` gives one adapter per sample, of shape ``(batch, *parameter_shape)``. ``beta=1`` (resp.
    ``0``) returns the clean (resp. adversarial) copy exactly.
    """
    if beta2 is None:
        beta2 = 1.0 - beta
    mixed = {}
    for name, c in clean.items():
        a = adversarial[name]
        if isinstance(beta, torch.Tensor) and beta.dim() == 1:
            shape = (-1,) + (1,) * c.dim()
            b1 = beta.to(c.dtype).view(shape)
            b2 = beta2.to(c.dtype).view(shape) if isinstance(beta2, torch.Tensor) else beta2
            mixed[name] = b1 * c + b2 * a
        else:
            mixed[name] = beta * c + beta2 * a
    return mixed


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): zero a residual branch per sample with probability ``rate``, rescale the
    rest by ``1 / (1 - rate)`` so the expectation is unchanged. Identity in eval mode or when ``rate == 0``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class AdvSoupViTForImageClassification(ViTForImageClassification):
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
    # This model runs the embeddings and blocks itself (per-sample adapters, stochastic depth), so only modules whose
    # own forward runs may be FSDP units or device_map boundaries: the attention and MLP of each block.
    _no_split_modules = ["ViTAttention", "ViTMLP"]

    def __init__(self, config: AdvSoupViTConfig):
        # Built by hand (not ViTForImageClassification.__init__) to resize the patch grid before weights are
        # initialised once by post_init().
        ViTPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.vit = ViTModel(config, add_pooling_layer=False)
        stride = config.patch_stride or config.patch_size
        if stride != config.patch_size:
            self._use_patch_stride(config, stride)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.adversarial_adapter = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.empty_like(p)) for n, p in self._clean_parameters().items()}
        )
        # ViTModel initialised (and flagged) its own weights; let post_init initialise the whole model once, after
        # the resized patch grid exists and in an order where the clean copies come before the adversarial ones.
        for module in self.modules():
            module.__dict__.pop("_is_hf_initialized", None)
        self.post_init()
        # post_init merged in the stock ViTModel's units (ViTEmbeddings, ViTLayer), whose forward never runs here.
        self._no_split_modules = set(type(self)._no_split_modules)

    def _use_patch_stride(self, config: AdvSoupViTConfig, stride: int) -> None:
        embeddings = self.vit.embeddings
        patch = embeddings.patch_embeddings
        size = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
        grid = [(s - config.patch_size) // stride + 1 for s in size]
        patch.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=stride
        )
        patch.num_patches = grid[0] * grid[1]
        embeddings.position_embeddings = nn.Parameter(torch.zeros(1, patch.num_patches + 1, config.hidden_size))

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is getattr(self, "adversarial_adapter", None):
            # Both copies start equal (from the pretrained weights when loading a vanilla ViT checkpoint). The
            # module visit is post-order, so the clean copies are initialised or loaded by now; copy_ skips
            # adversarial copies that were loaded from a checkpoint.
            for name, clean in self._clean_parameters().items():
                init.copy_(module[_key(name)], clean)

    # ------------------------------------------------------------------ adapters
    @property
    def adapter_parameter_names(self) -> list[str]:
        """Names (relative to ``self.vit``) of the doubled parameters; empty for ``adapter="none"``."""
        return adapter_parameter_names(self.config)

    def _clean_parameters(self) -> dict[str, nn.Parameter]:
        return {name: self.vit.get_parameter(name) for name in adapter_parameter_names(self.config)}

    def clean_adapter(self) -> dict[str, nn.Parameter]:
        """The clean-mode copy of each doubled parameter (``phi_clean``), keyed by name relative to ``self.vit``."""
        return self._clean_parameters()

    def adversarial_adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The robust-mode copy of each doubled parameter (``phi_adv``), keyed like :meth:`clean_adapter`."""
        return {name: self.adversarial_adapter[_key(name)] for name in self.adapter_parameter_names}

    def soup_adapter(self, beta: Beta, beta2: Beta | None = None) -> dict[str, torch.Tensor]:
        """The adapter tensors of the soup ``beta * clean + beta2 * adversarial`` (``beta2`` defaults to ``1 - beta``)."""
        return soup_weights(self.clean_adapter(), self.adversarial_adapter_parameters(), beta, beta2)

    def _resolve_beta(self, beta, batch_size: int, name: str = "beta") -> Beta:
        if torch.compiler.is_compiling() and isinstance(beta, (int, float)):
            # Under torch.compile a float may be traced symbolically: validate in eager mode only.
            return beta
        if beta is None:
            return validate_beta(self.config.beta)
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

    # ------------------------------------------------------------------ forward
    def _embed(self, pixel_values, adapters, sample_betas, interpolate_pos_encoding: bool):
        emb = self.vit.embeddings
        projection = emb.patch_embeddings.projection
        if pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"Expected {self.config.num_channels} channels in pixel_values, got {pixel_values.shape[1]}."
            )
        weight = adapters.get("embeddings.patch_embeddings.projection.weight", projection.weight)
        bias = adapters.get("embeddings.patch_embeddings.projection.bias", projection.bias)
        if weight.dim() == 5:
            # Per-sample patch embedders: the convolution is linear in its weights, so mixing the outputs of the
            # two copies is exact and costs one extra (cheap) patch convolution rather than a per-sample conv.
            adversarial = self.adversarial_adapter
            both_w = torch.cat([projection.weight, adversarial[_key("embeddings.patch_embeddings.projection.weight")]])
            both_b = torch.cat([projection.bias, adversarial[_key("embeddings.patch_embeddings.projection.bias")]])
            clean, adv = F.conv2d(pixel_values, both_w, both_b, projection.stride).chunk(2, dim=1)
            b1, b2 = (b.to(clean.dtype).view(-1, 1, 1, 1) for b in sample_betas)
            patches = b1 * clean + b2 * adv
        else:
            patches = F.conv2d(pixel_values, weight, bias, projection.stride)
        grid = patches.shape[-2:]
        patches = patches.flatten(2).transpose(1, 2)
        batch = patches.shape[0]

        cls = adapters.get("embeddings.cls_token", emb.cls_token)
        cls = cls.reshape(-1, 1, cls.shape[-1]).expand(batch, -1, -1)
        pos = adapters.get("embeddings.position_embeddings", emb.position_embeddings)
        pos = pos.reshape(-1, *pos.shape[-2:])
        tokens = torch.cat([cls, patches], dim=1)
        if tokens.shape[1] != pos.shape[1]:
            if not interpolate_pos_encoding:
                raise ValueError(
                    f"Input image size {tuple(pixel_values.shape[-2:])} gives {tokens.shape[1] - 1} patches but the "
                    f"model has {pos.shape[1] - 1} positions (image_size={self.config.image_size}); resize the "
                    "images or pass interpolate_pos_encoding=True."
                )
            pos = self._interpolate_positions(pos, grid)
        return emb.dropout(tokens + pos)

    @staticmethod
    def _interpolate_positions(pos: torch.Tensor, grid) -> torch.Tensor:
        n = pos.shape[1] - 1
        side = int(math.isqrt(n))
        patch_pos = pos[:, 1:].reshape(pos.shape[0], side, side, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos.float(), size=tuple(grid), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.to(pos.dtype).permute(0, 2, 3, 1).flatten(1, 2)
        return torch.cat([pos[:, :1], patch_pos], dim=1)

    @staticmethod
    def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if weight.dim() == 1:
            return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)
        # Per-sample scales and offsets: (batch, hidden) broadcast over the tokens.
        return F.layer_norm(x, norm.normalized_shape, None, None, norm.eps) * weight[:, None] + bias[:, None]

    def _block(self, i: int, hidden_states, adapters, output_attentions: bool):
        layer = self.vit.layers[i]
        rate = self._drop_path_rates[i]
        prefix = f"layers.{i}."
        ln1, ln2 = layer.layernorm_before, layer.layernorm_after
        x = self._layer_norm(
            hidden_states,
            ln1,
            adapters.get(prefix + "layernorm_before.weight", ln1.weight),
            adapters.get(prefix + "layernorm_before.bias", ln1.bias),
        )
        x, attentions = layer.attention(x, None)
        hidden_states = hidden_states + drop_path(layer.dropout(x), rate, self.training)
        x = self._layer_norm(
            hidden_states,
            ln2,
            adapters.get(prefix + "layernorm_after.weight", ln2.weight),
            adapters.get(prefix + "layernorm_after.bias", ln2.bias),
        )
        x = layer.dropout(layer.mlp(x))
        hidden_states = hidden_states + drop_path(x, rate, self.training)
        return hidden_states, attentions

    @property
    def _drop_path_rates(self) -> list[float]:
        n = self.config.num_hidden_layers
        return [self.config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        beta: Beta | None = None,
        beta2: Beta | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images normalized by the model's image processor.
            labels (`torch.LongTensor` of shape `(batch_size,)`, or soft labels `(batch_size, num_labels)`):
                Class indices (cross-entropy, `config.problem_type` honoured as in transformers) or probability
                vectors (soft-target cross-entropy, e.g. from mixup/CutMix).
            beta (`float` or `torch.Tensor` of shape `(batch_size,)`, *optional*):
                Soup weight (Eq. 3): 1 = clean mode, 0 = robust mode, any finite value. Defaults to `config.beta`.
                A tensor gives one soup per sample in the same forward.
            beta2 (`float` or `torch.Tensor`, *optional*):
                Weight of the adversarial copy for the 2-D combination of appendix D
                (`beta * clean + beta2 * adversarial`). Defaults to `1 - beta`.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required.")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError(
                f"output_attentions=True needs eager attention, but this model uses "
                f"{self.config._attn_implementation!r}. Load it with attn_implementation='eager' or call "
                "model.set_attn_implementation('eager')."
            )
        batch = pixel_values.shape[0]
        beta = self._resolve_beta(beta, batch)
        if beta2 is not None:
            beta2 = self._resolve_beta(beta2, batch, "beta2")
        expected_dtype = self.vit.embeddings.patch_embeddings.projection.weight.dtype
        if pixel_values.dtype != expected_dtype:
            pixel_values = pixel_values.to(expected_dtype)

        sample_betas = None
        if isinstance(beta, torch.Tensor) or isinstance(beta2, torch.Tensor):
            # Per-sample weights as (batch,) tensors, needed by the per-sample patch embedder.
            b1 = beta if isinstance(beta, torch.Tensor) else torch.full((batch,), beta, device=pixel_values.device)
            b2 = 1.0 - b1 if beta2 is None else beta2
            b2 = b2 if isinstance(b2, torch.Tensor) else torch.full((batch,), b2, device=pixel_values.device)
            sample_betas = (b1, b2)
            beta, beta2 = b1, b2
        adapters = self.soup_adapter(beta, beta2) if self.config.adapter != "none" else {}
        hidden_states = self._embed(pixel_values, adapters, sample_betas, bool(interpolate_pos_encoding))

        all_hidden, all_attentions = [], []
        for i, layer in enumerate(self.vit.layers):
            if output_hidden_states:
                all_hidden.append(hidden_states)
            if getattr(layer, "gradient_checkpointing", False) and self.training:
                run = getattr(layer, "_gradient_checkpointing_func", None) or partial(checkpoint, use_reentrant=False)
                hidden_states, attentions = run(self._block, i, hidden_states, adapters, output_attentions)
            else:
                hidden_states, attentions = self._block(i, hidden_states, adapters, output_attentions)
            if output_attentions:
                all_attentions.append(attentions)
        if output_hidden_states:
            all_hidden.append(hidden_states)

        norm = self.vit.layernorm
        sequence_output = self._layer_norm(
            hidden_states, norm, adapters.get("layernorm.weight", norm.weight), adapters.get("layernorm.bias", norm.bias)
        )
        pooled = sequence_output[:, 1:].mean(dim=1) if self.config.pooling == "mean" else sequence_output[:, 0]
        logits = self.classifier(pooled)

        loss = self._loss(logits, labels) if labels is not None else None
        hidden = tuple(all_hidden) if output_hidden_states else None
        attentions = tuple(all_attentions) if output_attentions else None
        if not return_dict:
            return tuple(v for v in (loss, logits, hidden, attentions) if v is not None)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden, attentions=attentions)

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

    def export_soup(self, beta: float | None = None, beta2: float | None = None) -> AdvSoupViTForImageClassification:
        """A standalone single-copy model (``adapter="none"``) whose adapters are the soup ``beta * clean + beta2 *
        adversarial``, baked in. It predicts exactly like ``self(x, beta=beta, beta2=beta2)`` and saves, loads and
        fine-tunes like any ViT; ``config.beta`` records the exported ``beta``."""
        beta = validate_beta(self.config.beta if beta is None else beta)
        config = copy.deepcopy(self.config)
        config.adapter = "none"
        config.beta = beta
        exported = type(self)(config).to(device=self.device, dtype=self.dtype)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("adversarial_adapter.")}
        with torch.no_grad():
            for name, value in self.soup_adapter(beta, beta2).items():
                state["vit." + name] = value
        exported.load_state_dict(state, strict=True)
        exported.train(self.training)
        return exported


__all__ = ["AdvSoupViTForImageClassification", "adapter_parameter_names", "soup_weights", "drop_path"]
