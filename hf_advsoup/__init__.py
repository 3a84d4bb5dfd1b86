"""hf_advsoup: adversarial co-training with adapters and adversarial model soups for Hugging Face transformers."""

__version__ = "0.1.0"

from .configuration_advsoup import ADAPTER_TYPES, POOLING_TYPES, AdvSoupViTConfig

__all__ = ["ADAPTER_TYPES", "POOLING_TYPES", "AdvSoupViTConfig", "__version__"]
