"""The tiny, seeded dual-adapter ViT and inputs shared by the model and transfer tests."""

import torch

from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=4,
    num_labels=5,
)


def make_soup_model(seed=0, **overrides) -> AdvSoupViTForImageClassification:
    """A co-trained-looking model in eval mode: the two adapter copies differ by random noise (they start equal,
    and a constant shift would vanish in LayerNorm)."""
    torch.manual_seed(seed)
    model = AdvSoupViTForImageClassification(AdvSoupViTConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for param in model.adversarial_adapter_parameters().values():
            param.add_(torch.randn_like(param) * 0.5)
    return model


def images(n=4, seed=1, size=16):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
