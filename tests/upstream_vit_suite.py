"""transformers' own common model tests (``ModelTesterMixin``), run for ``ViTForImageClassification`` and for
``AdvSoupViTForImageClassification`` in every adapter x pooling configuration (plus ``beta=0.5`` and drop path 0.1).

Not collected by the default test run: ``tests/test_transformers_suite.py`` runs this file with pytest in a
subprocess, once the test sources of the installed transformers version are available (see
:func:`upstream_tests_dir`), and checks that every test that passes for ViT passes for every configuration here.

The tester mirrors upstream's ``tests/models/vit/test_modeling_vit.py`` (``ViTModelTester``: batch 13, 30x30 images,
patch 2, hidden 32, 2 layers, 4 heads, eager attention; the same three ViT-specific overrides). The source
distribution of transformers ships ``tests/test_modeling_common.py`` but not the three helper modules it imports
(``exporters/test_export.py``, ``generation/test_utils.py``, ``utils/test_configuration_utils.py``); they are
replaced by empty stand-ins, so the export tests (``ExportTesterMixin``) run for neither class.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
import unittest

import pytest
import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification

PACKAGE = "_transformers_upstream_tests"
SUITE_DIR_ENV = "HF_ADVSOUP_TRANSFORMERS_TESTS"


def _stub(name: str, **attributes) -> None:
    module = types.ModuleType(name)
    module.__path__ = []  # a package, so that submodules can be registered under it
    module.__dict__.update(attributes)
    sys.modules[name] = module


def import_upstream(directory: str):
    """Import ``test_modeling_common`` and ``test_configuration_common`` from ``directory`` as a package."""
    spec = importlib.util.spec_from_file_location(
        PACKAGE, os.path.join(directory, "__init__.py"), submodule_search_locations=[directory]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    _stub(f"{PACKAGE}.exporters")
    _stub(f"{PACKAGE}.exporters.test_export", ExportTesterMixin=type("ExportTesterMixin", (), {}))
    _stub(f"{PACKAGE}.generation")
    _stub(f"{PACKAGE}.generation.test_utils", GenerationTesterMixin=type("GenerationTesterMixin", (), {}))
    _stub(f"{PACKAGE}.utils")
    _stub(f"{PACKAGE}.utils.test_configuration_utils", config_common_kwargs={})
    common = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    return common, configuration


directory = os.environ.get(SUITE_DIR_ENV)
if not directory or not os.path.exists(os.path.join(directory, "test_modeling_common.py")):
    pytest.skip(f"{SUITE_DIR_ENV} does not point at transformers' tests folder", allow_module_level=True)
if not os.path.exists(os.path.join(directory, "__init__.py")):
    open(os.path.join(directory, "__init__.py"), "w").close()
common, configuration = import_upstream(directory)

# One configuration per test class: (class name suffix, model class, config class, extra config fields).
CONFIGURATIONS = [("ViT", ViTForImageClassification, ViTConfig, {})]
for _adapter in ("cls_token", "layernorm", "pos_embed", "patch_embed", "none"):
    for _pooling in ("mean", "cls"):
        CONFIGURATIONS.append(
            (f"AdvSoup_{_adapter}_{_pooling}", AdvSoupViTForImageClassification, AdvSoupViTConfig,
             {"adapter": _adapter, "pooling": _pooling})
        )
CONFIGURATIONS += [
    ("AdvSoup_cls_token_mean_beta05", AdvSoupViTForImageClassification, AdvSoupViTConfig,
     {"adapter": "cls_token", "beta": 0.5}),
    ("AdvSoup_layernorm_mean_beta05", AdvSoupViTForImageClassification, AdvSoupViTConfig,
     {"adapter": "layernorm", "beta": 0.5}),
    ("AdvSoup_cls_token_mean_droppath", AdvSoupViTForImageClassification, AdvSoupViTConfig,
     {"adapter": "cls_token", "drop_path_rate": 0.1}),
]


class _Tester:
    """upstream's ViTModelTester, for the classification class only."""

    def __init__(self, parent, config_class, extra, batch_size=13, image_size=30, patch_size=2, num_channels=3,
                 hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37):
        self.parent = parent
        self.config_class, self.extra = config_class, extra
        self.batch_size, self.image_size, self.patch_size = batch_size, image_size, patch_size
        self.num_channels, self.hidden_size = num_channels, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.intermediate_size = intermediate_size
        self.is_training, self.use_labels, self.type_sequence_label_size = True, True, 10
        self.seq_length = (image_size // patch_size) ** 2 + 1

    def get_config(self):
        return self.config_class(
            image_size=self.image_size, patch_size=self.patch_size, num_channels=self.num_channels,
            hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
            hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, is_decoder=False,
            initializer_range=0.02, encoder_stride=2, attn_implementation="eager", **self.extra,
        )

    def prepare_config_and_inputs(self):
        pixel_values = common.floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = common.ids_tensor([self.batch_size], self.type_sequence_label_size)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


def make_test_class(suffix, model_class, config_class, extra):
    class Suite(common.ModelTesterMixin, unittest.TestCase):
        all_model_classes = (model_class,)
        fx_compatible = False
        test_resize_embeddings = False
        test_torch_exportable = True

        def setUp(self):
            self.model_tester = _Tester(self, config_class, extra)
            self.config_tester = configuration.ConfigTester(
                self, config_class=config_class, has_text_modality=False, hidden_size=37
            )

        def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
            # Upstream adds class labels for the class names of its image-classification mapping, which cannot list
            # a class from outside transformers: add them here the way it does for ViTForImageClassification.
            inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
            if return_labels and "labels" not in inputs:
                inputs["labels"] = torch.zeros(self.model_tester.batch_size, dtype=torch.long)
            return inputs

        # The three overrides of upstream's ViTModelTest.
        def test_config(self):
            self.config_tester.run_common_tests()

        @unittest.skip(reason="ViT does not use inputs_embeds")
        def test_inputs_embeds(self):
            pass

        def test_model_get_set_embeddings(self):
            config, _ = self.model_tester.prepare_config_and_inputs_for_common()
            for cls in self.all_model_classes:
                model = cls(config)
                self.assertIsInstance(model.get_input_embeddings(), nn.Module)
                x = model.get_output_embeddings()
                self.assertTrue(x is None or isinstance(x, nn.Linear))

        def test_for_image_classification(self):
            config, pixel_values, labels = self.model_tester.prepare_config_and_inputs()
            config.num_labels = self.model_tester.type_sequence_label_size
            model = model_class(config).eval()
            result = model(pixel_values, labels=labels)
            self.assertEqual(result.logits.shape, (self.model_tester.batch_size, config.num_labels))

    Suite.__name__ = Suite.__qualname__ = f"Test_{suffix}"
    return Suite


for _suffix, _model, _config, _extra in CONFIGURATIONS:
    globals()[f"Test_{_suffix}"] = make_test_class(_suffix, _model, _config, _extra)

torch.set_num_threads(1)
