"""hf_advsoup: adversarial co-training with adapters and adversarial model soups for Hugging Face transformers.

Importing the package registers ``AdvSoupViTConfig`` and ``AdvSoupViTForImageClassification`` with the transformers
Auto classes, so ``AutoModelForImageClassification.from_pretrained(path, beta=0.5)`` and
``pipeline("image-classification", model=path)`` work on saved soups.
"""

from transformers import AutoConfig, AutoModelForImageClassification

from .configuration_advsoup import ADAPTER_TYPES, POOLING_TYPES, AdvSoupViTConfig
from .modeling_advsoup import AdvSoupViTForImageClassification, adapter_parameter_names, soup_weights

__version__ = "0.1.0"

AutoConfig.register(AdvSoupViTConfig.model_type, AdvSoupViTConfig, exist_ok=True)
AutoModelForImageClassification.register(AdvSoupViTConfig, AdvSoupViTForImageClassification, exist_ok=True)
# save_pretrained writes `auto_map` and copies the modeling code next to the weights (trust_remote_code loading
# where hf_advsoup is not installed).
AdvSoupViTConfig.register_for_auto_class()
AdvSoupViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "ADAPTER_TYPES",
    "POOLING_TYPES",
    "AdvSoupViTConfig",
    "AdvSoupViTForImageClassification",
    "adapter_parameter_names",
    "soup_weights",
    "__version__",
]
