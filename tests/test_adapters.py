"""PEFT modules: identity at initialisation, wiring against hand computations, parameter counts."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from cilbench.core.errors import ConfigError
from cilbench.features import FeatureStore
from cilbench.learn.adapters import VIT_ONLY, AdaptedBlock, PeftSettings, apply_peft
from cilbench.testing import synthetic_stream, tiny_backbone, tiny_dinov2_vit


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return tiny_backbone().build_model().eval()


@pytest.fixture(scope="module")
def vit_b16() -> torch.nn.Module:
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)


def _adapted(model: torch.nn.Module, variant: str, **sizes: object) -> torch.nn.Module:
    model = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        apply_peft(model, PeftSettings(peft=variant, **sizes))  # type: ignore[arg-type]
    return model.eval()


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("variant", ["adapter", "lora"])
def test_zero_initialised_updates_keep_the_frozen_features(tiny, variant):
    adapted = _adapted(tiny, variant)
    with torch.no_grad():
        assert torch.allclose(adapted(_images()), tiny(_images()), atol=1e-6, rtol=0)


def test_ssf_at_unit_scale_and_zero_shift_keeps_the_frozen_features(tiny):
    adapted = _adapted(tiny, "ssf")
    with torch.no_grad():
        assert not torch.allclose(adapted(_images()), tiny(_images()), atol=1e-3)  # N(1,.02) init
        _neutral_ssf(adapted)
        assert torch.allclose(adapted(_images()), tiny(_images()), atol=1e-6, rtol=0)


def _neutral_ssf(model: torch.nn.Module) -> None:
    """Set every SSF scale to 1 and shift to 0 (in place, under no_grad)."""
    for name, parameter in model.named_parameters():
        if name.endswith(".scale"):
            parameter.fill_(1.0)
        elif name.endswith(".shift"):
            parameter.zero_()


def test_adapter_is_added_in_parallel_to_the_mlp_on_the_post_attention_stream(tiny):
    adapted = _adapted(tiny, "adapter")
    wrapper = adapted.blocks[0]
    assert isinstance(wrapper, AdaptedBlock)
    torch.nn.init.normal_(wrapper.adapter.up.weight)
    block, adapter = tiny.blocks[0], wrapper.adapter
    tokens = torch.randn(2, 17, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        middle = tokens + block.attn(block.norm1(tokens))  # the residual stream before the MLP
        down = torch.relu(middle @ adapter.down.weight.T + adapter.down.bias)
        expected = middle + block.mlp(block.norm2(middle)) + 0.1 * (down @ adapter.up.weight.T)
        assert torch.allclose(wrapper(tokens), expected, atol=1e-5)


@pytest.mark.parametrize("deep", [False, True])
def test_vpt_appends_prompts_after_the_patch_tokens(tiny, deep):
    adapted = _adapted(tiny, "vpt-deep" if deep else "vpt-shallow", vpt_tokens=3)
    prompts = adapted.blocks.prompts
    with torch.no_grad():
        prompts.normal_()
        x = tiny.norm_pre(tiny._pos_embed(tiny.patch_embed(_images())))
        for i, block in enumerate(tiny.blocks):
            if deep or i == 0:
                x = torch.cat([x, prompts[i if deep else 0].expand(len(x), -1, -1)], dim=1)
            x = block(x)
            if deep or i == len(tiny.blocks) - 1:
                x = x[:, :-3]
        expected = tiny.forward_head(tiny.norm(x))
        assert torch.allclose(adapted(_images()), expected, atol=1e-5)
        assert not torch.allclose(adapted(_images()), tiny(_images()), atol=1e-3)


def test_only_peft_parameters_train(tiny):
    is_peft = {
        "adapter": lambda name: ".adapter." in name,
        "ssf": lambda name: name.endswith((".scale", ".shift")),
        "lora": lambda name: ".lora_" in name,
    }
    for variant, check in is_peft.items():
        names = [n for n, p in _adapted(tiny, variant).named_parameters() if p.requires_grad]
        assert names and all(check(n) for n in names), variant
    names = [n for n, p in _adapted(tiny, "vpt-deep").named_parameters() if p.requires_grad]
    assert names == ["blocks.prompts"]
    finetuned = _adapted(tiny, "finetune")
    assert all(p.requires_grad for p in finetuned.parameters())


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_parameter_counts_on_vit_b16_match_the_formulas(vit_b16):
    dim, hidden, depth = 768, 3072, 12
    assert _trainable(_adapted(vit_b16, "adapter")) == 12 * 99_136 == 1_189_632
    per_block_ssf = 2 * (3 * dim + dim + hidden + dim + dim + dim)  # qkv proj fc1 fc2 norm1 norm2
    assert _trainable(_adapted(vit_b16, "ssf")) == depth * per_block_ssf + 2 * dim + 2 * dim
    rank = 8
    per_block_lora = rank * (dim + 3 * dim) + rank * (dim + dim)
    assert _trainable(_adapted(vit_b16, "lora")) == depth * per_block_lora == 442_368
    assert _trainable(_adapted(vit_b16, "vpt-shallow")) == 5 * dim
    assert _trainable(_adapted(vit_b16, "vpt-deep", vpt_tokens=30)) == depth * 30 * dim
    assert _trainable(_adapted(vit_b16, "finetune")) == sum(p.numel() for p in vit_b16.parameters())


@pytest.mark.parametrize("variant", [*VIT_ONLY, "finetune"])
def test_variants_work_on_a_dinov2_shaped_vit_at_any_image_size(variant):
    """Patch 14, LayerScale and `dynamic_img_size` (the offline DINOv2 preset's traits): every
    variant runs at two input sizes and, with its updates at their neutral values, gives the
    pre-trained features (VPT's prompts take part in attention, so it only keeps the shape)."""
    dinov2 = tiny_dinov2_vit()
    adapted = _adapted(dinov2, variant)
    with torch.no_grad():
        if variant == "ssf":
            _neutral_ssf(adapted)
        for side in (28, 42):
            x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(side))
            if variant.startswith("vpt"):
                assert adapted(x).shape == (2, 32)
            else:
                assert torch.allclose(adapted(x), dinov2(x), atol=1e-5, rtol=0), side


def test_vit_only_variants_refuse_other_backbones_and_name_them():
    with torch.device("meta"):
        convnet = timm.create_model("tf_efficientnet_lite0")
    for variant in VIT_ONLY:
        with pytest.raises(ConfigError, match="needs a ViT") as error:
            apply_peft(copy.deepcopy(convnet), PeftSettings(peft=variant))
        assert all(name in str(error.value) for name in VIT_ONLY)
        assert "finetune" in str(error.value)
    assert apply_peft(convnet, PeftSettings(peft="finetune"))
    with pytest.raises(ConfigError, match="peft must be one of"):
        apply_peft(convnet, PeftSettings(peft="prefix"))


def test_derived_backbone_caches_the_adapted_features_under_their_own_key(tmp_path):
    backbone = tiny_backbone()
    adapted = _adapted(backbone.build_model(), "finetune")
    with torch.no_grad():
        adapted.patch_embed.proj.weight.mul_(2)
    derived = backbone.derive(adapted, "test")
    source = synthetic_stream().test_sets[0].source
    frozen_store = FeatureStore(backbone, tmp_path)
    store = FeatureStore(derived, tmp_path)
    assert store.cache_key(source)[0] != frozen_store.cache_key(source)[0]
    features = store.source_features(source)
    image = backbone.preprocessing.sample_transform()(source.load(3))
    with torch.no_grad():
        direct = adapted(backbone.prepare(image[None]))
    assert torch.allclose(features[3], direct[0], atol=1e-5)
    assert not torch.allclose(features, frozen_store.source_features(source), atol=1e-3)
    again = FeatureStore(backbone.derive(copy.deepcopy(adapted), "test"), tmp_path)
    assert torch.equal(again.source_features(source), features)
    assert (again.cache_hits, again.images_forwarded) == (1, 0)
