"""Tests of the dual-adapter ViT: soups, per-sample modes, HF-native loading and export (tiny seeded models)."""

import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification, pipeline
from transformers.models.vit import ViTImageProcessorPil

from hf_advsoup import ADAPTER_TYPES, AdvSoupViTConfig, AdvSoupViTForImageClassification
from tiny_soup import TINY, images
from tiny_soup import make_soup_model as make_model

ADAPTERS = [a for a in ADAPTER_TYPES if a != "none"]
def with_adapter(model, weights: dict) -> AdvSoupViTForImageClassification:
    """A copy of `model` in clean mode whose clean adapter tensors were set by hand."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in weights.items():
            other.vit.get_parameter(name).copy_(value)
    return other


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("adapter", ADAPTER_TYPES)
def test_shapes_for_every_adapter_and_pooling(adapter, pooling):
    model = make_model(adapter=adapter, pooling=pooling, patch_stride=2)
    out = model(images(3), beta=0.3, output_hidden_states=True)
    assert out.logits.shape == (3, 5)
    # patch 4 stride 2 on 16x16: a 7x7 grid plus the classification token, for every block plus the embeddings.
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1
    assert all(h.shape == (3, 50, 32) for h in out.hidden_states)
    expected = {"cls_token": 32, "layernorm": 2 * 2 * 2 * 32 + 2 * 32, "pos_embed": 50 * 32,
                "patch_embed": 32 * 3 * 4 * 4 + 32, "none": 0}[adapter]
    assert sum(p.numel() for p in model.adversarial_adapter_parameters().values()) == expected


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_modes_and_soups_equal_hand_set_adapters(adapter):
    model = make_model(adapter=adapter)
    x = images()
    clean = {n: p.detach() for n, p in model.clean_adapter().items()}
    adv = {n: p.detach() for n, p in model.adversarial_adapter_parameters().items()}
    with torch.no_grad():
        robust_by_hand = with_adapter(model, adv)(x, beta=1.0).logits
        assert torch.equal(model(x, beta=1.0).logits, with_adapter(model, clean)(x, beta=1.0).logits)
        assert torch.equal(model(x, beta=0.0).logits, robust_by_hand)
        assert not torch.allclose(model(x, beta=1.0).logits, robust_by_hand)
        for b in (0.25, 0.5, 1.05, -0.05):
            by_hand = with_adapter(model, {n: b * clean[n] + (1 - b) * adv[n] for n in clean})
            torch.testing.assert_close(model(x, beta=b).logits, by_hand(x, beta=1.0).logits, rtol=0, atol=1e-5)
        # 2-D combination of appendix D.
        by_hand = with_adapter(model, {n: 0.7 * clean[n] + 0.6 * adv[n] for n in clean})
        torch.testing.assert_close(model(x, beta=0.7, beta2=0.6).logits, by_hand(x).logits, rtol=0, atol=1e-5)


def test_default_beta_comes_from_config():
    model = make_model()
    x = images()
    with torch.no_grad():
        model.config.beta = 0.0
        assert torch.equal(model(x).logits, model(x, beta=0.0).logits)
        assert not torch.allclose(model(x).logits, model(x, beta=1.0).logits)


@pytest.mark.parametrize("adapter", ADAPTER_TYPES)
def test_per_sample_beta_equals_each_sample_alone(adapter):
    model = make_model(adapter=adapter)
    x = images(5)
    betas = [1.0, 0.0, 0.5, 1.05, 0.0]
    with torch.no_grad():
        batched = model(x, beta=torch.tensor(betas)).logits
        alone = torch.cat([model(x[i : i + 1], beta=b).logits for i, b in enumerate(betas)])
        pairs = model(x, beta=torch.tensor(betas), beta2=torch.tensor(betas[::-1])).logits
        pairs_alone = torch.cat(
            [model(x[i : i + 1], beta=b, beta2=b2).logits for i, (b, b2) in enumerate(zip(betas, betas[::-1]))]
        )
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(pairs, pairs_alone, rtol=0, atol=1e-5)


def test_cls_pooling_with_equal_copies_is_the_vanilla_vit():
    torch.manual_seed(0)
    vanilla = ViTForImageClassification(ViTConfig(**TINY)).eval()
    model = AdvSoupViTForImageClassification(AdvSoupViTConfig(**TINY, pooling="cls", adapter="layernorm")).eval()
    missing, unexpected = model.load_state_dict(vanilla.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".adversarial_" in k for k in missing)
    with torch.no_grad():
        for name, param in model.adversarial_adapter_parameters().items():
            param.copy_(model.vit.get_parameter(name))
        x = images()
        for beta in (1.0, 0.0, 0.4):
            torch.testing.assert_close(model(x, beta=beta).logits, vanilla(x).logits, rtol=0, atol=1e-5)
        # Mean pooling reads other tokens: a different head output.
        model.config.pooling = "mean"
        assert not torch.allclose(model(x).logits, vanilla(x).logits, atol=1e-3)


def assert_initialised(model):
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all() and param.abs().max() < 100, f"{name} looks uninitialised"


@pytest.mark.parametrize("adapter", ADAPTER_TYPES)
def test_fresh_model_is_initialised_with_equal_copies(adapter):
    torch.manual_seed(0)
    model = AdvSoupViTForImageClassification(AdvSoupViTConfig(**TINY, adapter=adapter, patch_stride=2))
    assert_initialised(model)
    for name, adv in model.adversarial_adapter_parameters().items():
        assert torch.equal(adv, model.vit.get_parameter(name))
    # The resized (strided) positional embedding is initialised, not left at zero.
    assert model.vit.embeddings.position_embeddings.std() > 1e-3


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_init_from_vanilla_vit_checkpoint_starts_both_copies_pretrained(tmp_path, adapter):
    torch.manual_seed(0)
    vanilla = ViTForImageClassification(ViTConfig(**TINY)).eval()
    with torch.no_grad():  # pretrained-looking, non-default weights everywhere
        for p in vanilla.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    vanilla.save_pretrained(tmp_path)
    model = AdvSoupViTForImageClassification.from_pretrained(tmp_path, adapter=adapter, pooling="cls").eval()
    assert_initialised(model)
    for name, adv in model.adversarial_adapter_parameters().items():
        assert torch.equal(adv, vanilla.vit.get_parameter(name)), name
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x, beta=0.0).logits, vanilla(x).logits, rtol=0, atol=1e-5)


def test_new_head_size_from_vanilla_checkpoint(tmp_path):
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(**TINY)).save_pretrained(tmp_path)
    model = AdvSoupViTForImageClassification.from_pretrained(tmp_path, num_labels=3, ignore_mismatched_sizes=True)
    assert model.classifier.out_features == 3
    assert_initialised(model)


@pytest.mark.parametrize("adapter", ADAPTER_TYPES)
def test_own_checkpoint_round_trip_with_beta_override(tmp_path, adapter):
    model = make_model(adapter=adapter, patch_stride=2, drop_path_rate=0.1)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path, beta=0.3).eval()
    assert type(loaded) is AdvSoupViTForImageClassification and loaded.config.beta == 0.3
    assert_initialised(loaded)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x, beta=0.3).logits, rtol=0, atol=0)
    assert loaded.config.patch_stride == 2 and loaded.config.drop_path_rate == 0.1


def test_remote_code_loads_without_the_package(tmp_path):
    model = make_model(adapter="layernorm")
    model.add_selector(1, 16)
    with torch.no_grad():
        for param in model.selector.parameters():
            param.normal_(0.0, 0.2)
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageClassification"].startswith("modeling_advsoup.")
    assert config["auto_map"]["AutoModel"] == "modeling_advsoup.AdvSoupViTModel"
    assert (tmp_path / "ckpt" / "modeling_advsoup.py").exists()
    x = images(2)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(x, beta=0.5).logits
        expected_auto = model(x, beta="auto")
    script = textwrap.dedent(
        """
        import importlib.abc, sys
        class BlockPackage(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "hf_advsoup" or name.startswith("hf_advsoup."):
                    raise ImportError("hf_advsoup is not installed in this environment")
        sys.meta_path.insert(0, BlockPackage())
        import torch
        from transformers import AutoModelForImageClassification
        from transformers import AutoModel
        model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True, beta=0.5).eval()
        encoder = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True, beta=0.5).eval()
        assert "hf_advsoup" not in sys.modules and type(encoder).__name__ == "AdvSoupViTModel"
        assert all(torch.isfinite(p).all() for p in model.parameters())
        with torch.no_grad():
            x = torch.load(sys.argv[2])
            assert torch.equal(model.classifier(encoder(x).pooler_output), model(x).logits)
            torch.save(model(x).logits, sys.argv[3])
            # beta="auto": the selector, its module and weights, came with the remote code.
            auto = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True, beta="auto")
            out = auto.eval()(x)
            assert type(auto.vit.selector).__name__ == "AdvSoupSelector" and out.beta.shape == (x.shape[0],)
            torch.save({"logits": out.logits, "beta": out.beta}, sys.argv[4])
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "ckpt"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt"),
         str(tmp_path / "auto.pt")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=0, atol=1e-6)
    auto = torch.load(tmp_path / "auto.pt")
    torch.testing.assert_close(auto["logits"], expected_auto.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(auto["beta"], expected_auto.beta, rtol=0, atol=1e-6)
    assert expected_auto.beta.std() > 1e-3  # the images got different soups


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_exported_soup_is_standalone_and_predicts_identically(tmp_path, adapter):
    model = make_model(adapter=adapter)
    exported = model.export_soup(0.3)
    assert exported.config.adapter == "none" and exported.adversarial_adapter_parameters() == {}
    exported.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, model(x, beta=0.3).logits, rtol=0, atol=1e-5)
        # beta has no effect on a single-copy model
        assert torch.equal(reloaded(x, beta=0.0).logits, reloaded(x, beta=1.0).logits)
    assert model.config.adapter == adapter  # the source is untouched


def test_ensemble_is_the_probability_average():
    model = make_model()
    x = images()
    with torch.no_grad():
        p_clean = model(x, beta=1.0).logits.softmax(-1)
        p_robust = model(x, beta=0.0).logits.softmax(-1)
        for b in (0.0, 0.3, 1.0):
            probs = model.ensemble_forward(x, beta=b).logits.exp()
            torch.testing.assert_close(probs, b * p_clean + (1 - b) * p_robust, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="0 <= beta <= 1"):
        model.ensemble_forward(x, beta=1.2)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_gradients_reach_both_copies_in_a_mixed_batch(adapter):
    model = make_model(adapter=adapter).train()
    x = images(4)
    labels = torch.tensor([0, 1, 2, 3])
    loss = model(x, labels=labels, beta=torch.tensor([1.0, 1.0, 0.0, 0.0])).loss
    loss.backward()
    for name, clean in model.clean_adapter().items():
        adv = model.adversarial_adapter_parameters()[name]
        assert clean.grad is not None and clean.grad.abs().sum() > 0, name
        assert adv.grad is not None and adv.grad.abs().sum() > 0, name
    # A clean-only batch gives the adversarial copy a zero gradient (it is in the graph, for DDP).
    model.zero_grad()
    model(x, labels=labels, beta=torch.ones(4)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in model.adversarial_adapter_parameters().values())


def test_soft_labels_use_soft_cross_entropy():
    model = make_model()
    x = images(3)
    hard = torch.tensor([0, 2, 4])
    with torch.no_grad():
        soft = torch.nn.functional.one_hot(hard, 5).float()
        torch.testing.assert_close(model(x, labels=soft).loss, model(x, labels=hard).loss)


def test_drop_path_is_stochastic_in_training_only():
    model = make_model(drop_path_rate=0.5, num_hidden_layers=3)
    assert [layer.drop_path_rate for layer in model.vit.layers] == [0.0, 0.25, 0.5]
    x = images()
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)
        model.train()
        torch.manual_seed(0)
        a = model(x).logits
        torch.manual_seed(1)
        assert not torch.allclose(a, model(x).logits)


def test_hidden_states_and_attentions():
    model = make_model()
    # As for ViT: the default SDPA attention returns no attention weights (transformers logs it), and carries on.
    assert model(images(2), output_attentions=True).logits.shape == (2, 5)
    model.set_attn_implementation("eager")
    out = model(images(2), output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 17, 17)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 2, 17))
    assert len(out.hidden_states) == 3
    as_tuple = model(images(2), return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].shape == (2, 5)


def test_hidden_states_can_be_selected_by_layer():
    model = make_model(num_hidden_layers=3)
    x = images(2)
    every = model(x, beta=0.3, output_hidden_states=True).hidden_states
    chosen = model(x, beta=0.3, output_hidden_states=[0, 2, -1]).hidden_states
    # As for ViT: the tuple keeps every position, with None where a state was not selected.
    assert len(every) == 4 and len(chosen) == 4 and chosen[1] is None
    for i in (0, 2, 3):
        torch.testing.assert_close(chosen[i], every[i], rtol=0, atol=0)
    # The embeddings output (state 0) is the soup's: robust mode's differs from clean mode's.
    assert not torch.allclose(model(x, beta=0.0, output_hidden_states=[0]).hidden_states[0], every[0])


def test_attention_mask_as_in_vit_and_mean_pooling_over_unmasked_patches():
    model = make_model(adapter="layernorm")
    model.set_attn_implementation("eager")
    x = images(2)
    full = torch.ones(2, 17, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(model(x, attention_mask=full, beta=0.4).logits, model(x, beta=0.4).logits,
                                   rtol=0, atol=1e-6)
        mask = full.clone()
        mask[:, 9:] = 0  # tokens 9-16 (the patches of pixel rows 8-15) are padding
        masked = model(x, attention_mask=mask, beta=0.4, output_hidden_states=True)
        assert not torch.allclose(masked.logits, model(x, beta=0.4).logits, atol=1e-4)
        # Padding is neither attended to nor pooled: changing the padded patches changes nothing.
        bottom_rows = (torch.arange(16) >= 8).float()[None, None, :, None]
        other = model(x + 5 * torch.randn_like(x) * bottom_rows, attention_mask=mask, beta=0.4)
        torch.testing.assert_close(other.logits, masked.logits, rtol=0, atol=1e-5)
        final = model.vit.layernorm(masked.hidden_states[-1], model.soup_for(2, 0.4))
        torch.testing.assert_close(masked.logits, model.classifier(final[:, 1:9].mean(1)), rtol=0, atol=1e-5)


def test_pipeline_on_pil_images(tmp_path):
    model = make_model(id2label={i: f"class_{i}" for i in range(5)}, label2id={f"class_{i}": i for i in range(5)})
    model.save_pretrained(tmp_path)
    ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        tmp_path
    )
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8))
    clean = pipeline("image-classification", model=str(tmp_path), model_kwargs={"beta": 1.0})
    robust = pipeline("image-classification", model=str(tmp_path), model_kwargs={"beta": 0.0})
    top_clean, top_robust = clean(image, top_k=5), robust(image, top_k=5)
    assert {r["label"] for r in top_clean} == {f"class_{i}" for i in range(5)}
    assert abs(sum(r["score"] for r in top_clean) - 1) < 1e-5
    assert [r["score"] for r in top_clean] != [r["score"] for r in top_robust]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"adapter": "lnorm"}, "'cls_token', 'layernorm', 'pos_embed', 'patch_embed', 'none'"),
        ({"pooling": "avg"}, "'mean', 'cls'"),
        ({"beta": float("nan")}, "finite"),
        ({"beta": float("inf")}, "finite"),
        ({"drop_path_rate": 1.0}, r"\[0, 1\)"),
    ],
)
def test_invalid_config_values_name_the_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdvSoupViTConfig(**TINY, **kwargs)


def test_beta_far_outside_0_1_warns_with_its_value_and_is_still_allowed(tmp_path):
    import warnings

    model = make_model().eval()
    x = images(3)
    with pytest.warns(UserWarning, match=r"beta=2 is far outside \[0, 1\].*extrapolated 1 beyond a mode"):
        extrapolated = model(x, beta=2.0).logits
    assert torch.isfinite(extrapolated).all()  # documented extrapolation: allowed
    with pytest.warns(UserWarning, match=r"beta=-0\.75 is far outside"):
        model(x, beta=-0.75)
    model.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="beta=2 is far outside"):
        AdvSoupViTForImageClassification.from_pretrained(tmp_path, beta=2)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the paper's extrapolation and appendix D's landscape stay quiet
        for beta in (1.05, -0.05, 1.25, 1.5, -0.5):
            model(x, beta=beta)


def test_invalid_forward_beta(tmp_path):
    model = make_model()
    x = images(3)
    with pytest.raises(ValueError, match="finite"):
        model(x, beta=float("nan"))
    with pytest.raises(ValueError, match="finite"):
        model(x, beta=torch.tensor([1.0, float("inf"), 0.0]))
    with pytest.raises(ValueError, match=r"shape \(batch_size,\)"):
        model(x, beta=torch.ones(2))
    with pytest.raises(TypeError, match="finite number"):
        model(x, beta="half")
    # from_pretrained(..., beta=...) sets the field after the config was built: checked at load.
    model.save_pretrained(tmp_path)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            AdvSoupViTForImageClassification.from_pretrained(tmp_path, beta=bad)
    with pytest.raises(TypeError, match="finite number"):
        AutoModelForImageClassification.from_pretrained(tmp_path, beta="half")


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_gives_the_same_gradients(use_reentrant):
    """Checkpointing runs through the stock layers' own mechanism, and the replay during backward uses the soup of
    the forward it replays (per-sample LayerNorm adapters here), not whatever is current at backward time."""
    model = make_model(adapter="layernorm", drop_path_rate=0.0).train()
    x, labels, beta = images(4), torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    model(x, labels=labels, beta=beta).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert all(layer.gradient_checkpointing for layer in model.vit.layers)
    calls = []
    for layer in model.vit.layers:
        run = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, run=run, **k: calls.append(1) or run(*a, **k)
    model(x, labels=labels, beta=beta).loss.backward()
    assert len(calls) == len(model.vit.layers)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, reference[name], rtol=0, atol=1e-6)


LEGACY = os.path.join(os.path.dirname(__file__), "fixtures", "legacy_checkpoints")


@pytest.mark.parametrize("name", sorted(d for d in os.listdir(LEGACY) if os.path.isdir(os.path.join(LEGACY, d))))
def test_checkpoints_of_the_earlier_layout_load_exactly(tmp_path, name):
    """Checkpoints saved before the adversarial copies moved next to their clean ones (one `adversarial_adapter`
    dict) give the logits they gave then, and are saved again in the current layout."""
    folder = os.path.join(LEGACY, name)
    expected = json.loads(open(os.path.join(folder, "expected.json")).read())
    model, info = AdvSoupViTForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.tensor(expected["pixel_values"])
    with torch.no_grad():
        for beta, logits in expected["logits"].items():
            torch.testing.assert_close(model.eval()(x, beta=float(beta)).logits, torch.tensor(logits), rtol=0, atol=1e-6)
    if model.config.adapter != "none":  # the fixtures' two modes differ
        assert not torch.allclose(torch.tensor(expected["logits"]["1.0"]), torch.tensor(expected["logits"]["0.0"]))
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any(k.startswith("adversarial_adapter") for k in keys)
    assert sum(".adversarial_" in k for k in keys) == len(model.adapter_parameter_names)
    again = AdvSoupViTForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x, beta=0.3).logits, model(x, beta=0.3).logits, rtol=0, atol=0)


@pytest.mark.parametrize("saved, claimed", [("cls_token", "layernorm"), ("layernorm", "cls_token"),
                                            ("patch_embed", "none"), ("pos_embed", "cls_token")])
def test_a_config_whose_adapter_does_not_match_the_weights_is_refused(tmp_path, saved, claimed):
    model = make_model(adapter=saved)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["adapter"] = claimed
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"does not match adapter='{claimed}'.*adversarial"):
        AutoModelForImageClassification.from_pretrained(tmp_path)
    config["adapter"] = saved
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match adapter"):
        AdvSoupViTForImageClassification.from_pretrained(tmp_path, adapter=claimed)
    AdvSoupViTForImageClassification.from_pretrained(tmp_path)  # the right adapter loads


def test_a_single_copy_checkpoint_starts_both_copies_from_its_weights(tmp_path):
    model = make_model(adapter="cls_token")
    model.export_soup(0.3).save_pretrained(tmp_path)
    loaded = AdvSoupViTForImageClassification.from_pretrained(tmp_path, adapter="cls_token")
    assert torch.equal(loaded.vit.embeddings.adversarial_cls_token, loaded.vit.embeddings.cls_token)
    assert torch.allclose(loaded.vit.embeddings.cls_token, model.soup_adapter(0.3)["embeddings.cls_token"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patch_size": 5}, "does not tile the image height of 16 px: the last 1 px"),
        ({"patch_size": 32}, "larger than the image height"),
        ({"patch_size": 4, "patch_stride": 5}, "stride 5 does not tile the image height of 16 px: the last 2 px"),
        ({"patch_stride": 0}, "positive integer"),
    ],
)
def test_patches_that_do_not_tile_the_image_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdvSoupViTConfig(**{**TINY, **kwargs})


def test_geometry_set_at_load_is_checked(tmp_path):
    make_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not tile"):
        AdvSoupViTForImageClassification.from_pretrained(tmp_path, image_size=18)


def test_the_soup_is_set_for_one_forward_only():
    """The embeddings and final LayerNorm read the soup of the forward in progress; outside a forward (e.g. a call
    of `model.vit` itself) they use `config.beta`, and a copy of the model has its own soup state."""
    model = make_model()
    x = images(2)
    with torch.no_grad():
        model(x, beta=0.0)
        assert model.soup_context.get() == (1.0, 0.0)
        torch.testing.assert_close(model.classifier(model.vit(x).last_hidden_state[:, 1:].mean(1)),
                                   model(x).logits, rtol=0, atol=0)
        model.config.beta = 0.25
        assert model.soup_context.get() == (0.25, 0.75)
        twin = copy.deepcopy(model)
        assert twin.soup_context is not model.soup_context and twin.soup_context.config is twin.config
        assert twin.vit.embeddings.soup_context is twin.soup_context
        torch.testing.assert_close(twin(x, beta=0.6).logits, model(x, beta=0.6).logits, rtol=0, atol=0)


def test_package_exports_resolve():
    import hf_advsoup

    for name in hf_advsoup.__all__:
        assert getattr(hf_advsoup, name) is not None
    with pytest.raises(AttributeError):
        hf_advsoup.not_a_name


@pytest.mark.parametrize("adapter", ["cls_token", "patch_embed"])
def test_forward_compiles_as_one_graph(adapter):
    """torch.compile (the Trainer's --torch_compile) traces a soup forward without graph breaks, for a scalar
    and a per-sample beta; the eager backend keeps the test fast, the trace is what matters."""
    model = make_model(adapter=adapter)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = images()
    with torch.no_grad():
        for beta in (0.3, torch.tensor([1.0, 0.0, 1.0, 0.0])):
            torch.testing.assert_close(compiled(x, beta=beta).logits, model(x, beta=beta).logits, rtol=0, atol=1e-6)


def test_split_units_are_modules_whose_forward_runs():
    """FSDP wraps (and device_map splits at) `_no_split_modules`; a unit whose forward never runs would keep its
    weights sharded. The stock ViTModel.forward calls the embeddings and every block."""
    model = make_model()
    assert model._no_split_modules == {"AdvSoupViTEmbeddings", "AdvSoupViTLayer"}
    called = set()
    hooks = [m.register_forward_hook(lambda mod, *_: called.add(type(mod).__name__)) for m in model.modules()]
    with torch.no_grad():
        model(images(1))
    for hook in hooks:
        hook.remove()
    assert model._no_split_modules <= called


# --------------------------------------------------------------------------------------------------- beta="auto"
def make_auto_model(layers=1, mode="soft", **overrides):
    """A soup model with a selector whose scores differ across images (random head weights, larger than at init)."""
    model = make_model(**overrides)
    model.add_selector(layers, 16, mode)
    with torch.no_grad():
        for param in model.selector.parameters():
            param.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_auto_beta_is_the_soup_of_the_selector_read_from_robust_mode(adapter, layers):
    model = make_auto_model(layers, adapter=adapter, pooling="cls")
    x = images(6)
    with torch.no_grad():
        out = model(x, beta="auto")
        assert out.beta.shape == (6,) and ((out.beta > 0) & (out.beta < 1)).all() and out.beta.std() > 1e-3
        torch.testing.assert_close(out.beta, torch.sigmoid(out.selector_logits), rtol=0, atol=0)
        # The selector reads the tokens after `layers` blocks of the robust-mode forward.
        robust_tokens = model(x, beta=0.0, output_hidden_states=True).hidden_states[layers]
        torch.testing.assert_close(out.selector_logits, model.selector(robust_tokens), rtol=0, atol=1e-6)
        # Then one forward at the selected per-sample soups, exactly.
        torch.testing.assert_close(out.logits, model(x, beta=out.beta).logits, rtol=0, atol=0)
        # The prefix is not recorded as hidden states of the auto forward.
        assert len(model(x, beta="auto", output_hidden_states=True).hidden_states) == TINY["num_hidden_layers"] + 1
        # The encoder alone selects the same soups.
        torch.testing.assert_close(model.vit(x, beta="auto").pooler_output, model.vit(x, beta=out.beta).pooler_output,
                                   rtol=0, atol=0)


def test_hard_selector_picks_a_mode_and_passes_the_soft_gradient_through():
    model = make_auto_model(mode="hard")
    x = images(6).requires_grad_(True)
    out = model(x, beta="auto")
    assert set(out.beta.tolist()) <= {0.0, 1.0} and torch.equal(out.beta, (out.selector_logits > 0).float())
    torch.testing.assert_close(out.logits, model(x, beta=out.beta.detach()).logits, rtol=0, atol=0)
    out.beta.sum().backward()  # straight through: the gradient of sigmoid(score)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_auto_beta_needs_a_selector_and_no_beta2():
    model = make_model()
    with pytest.raises(ValueError, match="needs a soup selector.*train_selector.py"):
        model(images(2), beta="auto")
    with pytest.raises(ValueError, match="needs a soup selector"):
        AdvSoupViTConfig(**TINY, beta="auto")
    with pytest.raises(TypeError, match="finite number"):
        model(images(2), beta="automatic")
    auto = make_auto_model()
    with pytest.raises(ValueError, match="beta2"):
        auto(images(2), beta="auto", beta2=0.3)
    with pytest.raises(ValueError, match="chosen per image"):
        auto.soup_for(2, "auto")
    with pytest.raises(TypeError, match="only accepted by the model's forward"):
        auto.ensemble_forward(images(2), beta="auto")


@pytest.mark.parametrize(
    "kwargs, message",
    [({"selector_layers": 3}, r"selector_layers must be an integer in \[0, num_hidden_layers=2\]"),
     ({"selector_layers": 1, "selector_mode": "sharp"}, "'soft', 'hard'"),
     ({"selector_layers": 1, "selector_hidden_size": 0}, "positive integer")],
)
def test_invalid_selector_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdvSoupViTConfig(**TINY, **kwargs)
    model = make_model()
    with pytest.raises(ValueError, match=message):
        model.add_selector(kwargs["selector_layers"], kwargs.get("selector_hidden_size", 16),
                           kwargs.get("selector_mode", "soft"))
    assert model.selector is None and model.config.selector_layers is None  # a refused selector changes nothing


def test_auto_beta_through_from_pretrained_and_pipeline(tmp_path):
    model = make_auto_model(id2label={i: f"class_{i}" for i in range(5)}, label2id={f"class_{i}": i for i in range(5)})
    model.save_pretrained(tmp_path)
    ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path, beta="auto").eval()
    assert loaded.config.beta == "auto" and loaded.config.selector_layers == 1
    x = images(3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x, beta="auto").logits, rtol=0, atol=0)
        torch.testing.assert_close(loaded(x).beta, model(x, beta="auto").beta, rtol=0, atol=0)
    # The pipeline: the processor's pixels, then beta="auto" from the model's config.
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    classify = pipeline("image-classification", model=str(tmp_path), model_kwargs={"beta": "auto"})
    scores = {r["label"]: r["score"] for r in classify(image, top_k=5)}
    pixels = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None] / 255 - 0.5) / 0.5
    with torch.no_grad():
        expected = model(pixels, beta="auto").logits.softmax(-1)[0]
    assert all(abs(scores[f"class_{i}"] - float(expected[i])) < 1e-5 for i in range(5))
    with torch.no_grad():
        assert not torch.allclose(model(pixels, beta=1.0).logits.softmax(-1)[0], expected, atol=1e-4)


def test_a_model_without_a_selector_refuses_auto_at_load(tmp_path):
    make_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="needs a soup selector"):
        AutoModelForImageClassification.from_pretrained(tmp_path, beta="auto")
    # A selector can be added at load; it is initialised (untrained), not left as garbage.
    loaded = AdvSoupViTForImageClassification.from_pretrained(tmp_path, selector_layers=1, beta="auto")
    assert_initialised(loaded)
    assert loaded.selector.proj.weight.std() < 0.1 and loaded(images(2)).beta.shape == (2,)


def test_export_and_convert_drop_the_selector(tmp_path):
    model = make_auto_model()
    exported = model.export_soup(0.4)
    assert exported.selector is None and exported.config.selector_layers is None
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(exported(x).logits, model(x, beta=0.4).logits, rtol=0, atol=1e-5)
    converted = model.convert_adapter("layernorm")
    assert converted.selector is None and converted.config.selector_layers is None
    assert model.selector is not None  # the source keeps its own
