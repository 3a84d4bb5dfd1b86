"""hf_advsoup: adversarial co-training with adapters and adversarial model soups for Hugging Face transformers.

Importing the package registers ``AdvSoupViTConfig``, ``AdvSoupViTModel`` and ``AdvSoupViTForImageClassification`` with
the transformers Auto classes, so ``AutoModelForImageClassification.from_pretrained(path, beta=0.5)``,
``AutoModel.from_pretrained(path)`` and ``pipeline("image-classification", model=path)`` work on saved soups (and
``beta="auto"`` on a model with a soup selector). The other modules (attacks, data, training, soups, selection, hub,
transfer) load on first use of one of their names, so ``import hf_advsoup`` stays light.
"""

import importlib

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_advsoup import ADAPTER_TYPES, POOLING_TYPES, AdvSoupViTConfig
from .modeling_advsoup import AdvSoupViTForImageClassification, AdvSoupViTModel, adapter_parameter_names, soup_weights

__version__ = "0.1.0"

AutoConfig.register(AdvSoupViTConfig.model_type, AdvSoupViTConfig, exist_ok=True)
AutoModel.register(AdvSoupViTConfig, AdvSoupViTModel, exist_ok=True)
AutoModelForImageClassification.register(AdvSoupViTConfig, AdvSoupViTForImageClassification, exist_ok=True)
# save_pretrained writes `auto_map` and copies the modeling code next to the weights (trust_remote_code loading
# where hf_advsoup is not installed).
AdvSoupViTConfig.register_for_auto_class()
AdvSoupViTModel.register_for_auto_class("AutoModel")
AdvSoupViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")

_LAZY = {
    "attacks": ["AttackConfig", "Normalization", "PRESETS", "PixelSpaceLogits", "attack", "format_epsilon",
                "parse_epsilon"],
    "evaluation": ["RobustnessResult", "evaluate_robustness"],
    "data": ["DATASET_PRESETS", "DataArguments", "DatasetPreset", "DatasetUnavailableError", "build_transforms",
             "collate_fn", "find_preset", "load_digits_dataset", "load_eval_split", "load_image_dataset",
             "set_image_transforms", "to_rgb"],
    "augmentation": ["AugmentationArguments", "BatchAugmenter"],
    "training_args": ["CoTrainingArguments"],
    "training": ["CoTrainer", "EMACallback", "CatastrophicOverfittingCallback", "NonFiniteLossError"],
    "soups": ["SoupEvaluationArguments", "SoupEvaluation", "evaluate_soups", "select_soups"],
    "selection": ["AutoEvaluationArguments", "AutoSoupClassifier", "SelectorTrainer", "SelectorTrainingArguments",
                  "evaluate_auto_soup"],
    "hub": ["render_model_card", "push_folder"],
    "transfer": ["TransferArguments", "TransferRecipe", "run_transfer", "run_sweep"],
    "pipelines": ["AdvSoupImageClassificationPipeline", "soup_pipeline"],
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_WHERE))


__all__ = [
    "ADAPTER_TYPES",
    "POOLING_TYPES",
    "AdvSoupViTConfig",
    "AdvSoupViTForImageClassification",
    "AdvSoupViTModel",
    "adapter_parameter_names",
    "soup_weights",
    "__version__",
    *_WHERE,
]
