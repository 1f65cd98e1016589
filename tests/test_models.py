"""The seven models: registry, the paper's exact layer widths (VGGNet conv blocks 64-128-256-512, SpinalNet
heads of four 512-wide layers, EfficientNetV2-S's 1792 and ViT-L/32's 1024 features), parameter counts,
forward/backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fer_tune.errors import UserError
from fer_tune.models import MODELS, create_model
from fer_tune.models.heads import ProgressiveSpinalHead, SpinalHead


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_registry_lists_the_seven_models_and_rejects_unknown():
    assert list(MODELS) == [
        "vgg",
        "vgg_spinal",
        "vgg_progressive_spinal",
        "effnetv2s",
        "effnetv2s_spinal",
        "vit_l32",
        "vit_l32_spinal",
    ]
    with pytest.raises(UserError, match="unknown model 'resnet'.*vgg_spinal"):
        create_model("resnet")


def test_vgg_widths_and_parameter_count():
    model = create_model("vgg")
    convs = [(m.in_channels, m.out_channels) for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [(1, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert _linear_shapes(model.classifier) == [(2048, 4096), (4096, 4096), (4096, 7)]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.2]
    assert _count(model) == 29_890_759  # "about 29.9 M"
    assert model.backbone(torch.zeros(2, 1, 40, 40)).shape == (2, 2048)


def test_spinal_head_widths():
    head = create_model("vgg_spinal").classifier
    assert isinstance(head, SpinalHead)
    assert _linear_shapes(head) == [(1024, 512), (1536, 512), (1536, 512), (1536, 512), (2048, 7)]
    assert all(
        isinstance(layer[0], nn.Dropout) and layer[0].p == 0.5
        for layer in (head.layer1, head.layer2, head.layer3, head.layer4)
    )
    assert isinstance(head.layer1[2], nn.BatchNorm1d)


def test_progressive_spinal_head_widths():
    head = create_model("vgg_progressive_spinal").classifier
    assert isinstance(head, ProgressiveSpinalHead)
    assert _linear_shapes(head) == [(2048, 512), (2560, 512), (3072, 512), (3584, 512), (4096, 7)]


def test_effnet_features_and_spinal_widths():
    model = create_model("effnetv2s_spinal", activation="mish")
    assert model.backbone.num_features == 1792
    assert _linear_shapes(model.classifier) == [(896, 512), (1408, 512), (1408, 512), (1408, 512), (2048, 7)]
    assert model.backbone.conv_stem.in_channels == 1
    assert any(isinstance(m, nn.Mish) for m in model.modules())
    swish = create_model("effnetv2s", activation="swish")
    assert any(isinstance(m, nn.SiLU) for m in swish.modules()) and not any(
        isinstance(m, nn.Mish) for m in swish.modules()
    )
    assert _linear_shapes(swish.backbone.classifier) == [(1792, 7)]


@pytest.mark.slow
def test_vit_l32_config_and_spinal_widths():
    model = create_model("vit_l32_spinal")
    cfg = model.backbone.config
    assert (
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.intermediate_size,
        cfg.patch_size,
        cfg.image_size,
    ) == (1024, 24, 16, 4096, 32, 224)
    assert _linear_shapes(model.classifier) == [(512, 512), (1024, 512), (1024, 512), (1024, 512), (2048, 7)]
    assert 300e6 < _count(model.backbone) < 310e6


@pytest.mark.parametrize("name", ["vgg", "vgg_spinal", "vgg_progressive_spinal", "effnetv2s", "effnetv2s_spinal"])
def test_forward_backward_small_batch(name):
    model = create_model(name, width=0.25)
    x = torch.rand(4, 1, 40, 40)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert model(x).shape == (4, 7)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_vit_forward_backward_small_config():
    """The ViT path with the L/32 code but fewer layers (the full model's forward costs ~5 s per check)."""
    from fer_tune.models.vit import FerViT

    model = FerViT("spinal", num_hidden_layers=2)
    x = torch.rand(2, 3, 224, 224)
    out = model(x)
    assert out.shape == (2, 7)
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert model.backbone.embeddings.patch_embeddings.projection.weight.grad is not None


@pytest.mark.slow
def test_vit_l32_full_forward_on_one_image():
    model = create_model("vit_l32").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 7)


def test_vit_pretrained_from_local_folder_only(tmp_path):
    from transformers import ViTConfig, ViTModel

    from fer_tune.models.vit import VIT_L32

    small = ViTModel(
        ViTConfig(
            **{**VIT_L32, "num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
        ),
        add_pooling_layer=False,
    )
    small.save_pretrained(tmp_path / "vit")
    model = create_model("vit_l32", pretrained_path=str(tmp_path / "vit"))
    w = model.backbone.embeddings.patch_embeddings.projection.weight
    assert torch.equal(w, small.embeddings.patch_embeddings.projection.weight)
    with pytest.raises(UserError, match="no pretrained ViT here"):
        create_model("vit_l32", pretrained_path=str(tmp_path / "missing"))
