"""The paper's seven models, built by name: ``create_model("vgg_spinal", width=0.25)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from torch import nn

from fer_tune.errors import UserError
from fer_tune.models.efficientnet import FerEfficientNetV2
from fer_tune.models.vgg import FerVGG
from fer_tune.models.vit import FROM_SCRATCH, FerViT, check_pretrained_folder


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model name."""

    name: str
    builder: Callable[..., nn.Module]
    recipe: str  # augmentation recipe: vgg | effnet | vit
    base: str | None  # the model whose weights a transfer starts from
    options: tuple[str, ...]  # keyword options create_model accepts
    description: str


def _entry(name, builder, recipe, base, options, description) -> tuple[str, ModelInfo]:
    return name, ModelInfo(name, builder, recipe, base, options, description)


MODELS: Mapping[str, ModelInfo] = MappingProxyType(
    dict(
        [
            _entry(
                "vgg",
                lambda **kw: FerVGG("mlp", **kw),
                "vgg",
                None,
                ("width",),
                "VGGNet (Khaireddin & Chen), 4 conv blocks + MLP, ~29.9 M parameters",
            ),
            _entry(
                "vgg_spinal",
                lambda **kw: FerVGG("spinal", **kw),
                "vgg",
                "vgg",
                ("width",),
                "VGGNet conv blocks + SpinalNet head",
            ),
            _entry(
                "vgg_progressive_spinal",
                lambda **kw: FerVGG("progressive_spinal", **kw),
                "vgg",
                "vgg",
                ("width",),
                "VGGNet conv blocks + ProgressiveSpinalNet head",
            ),
            _entry(
                "effnetv2s",
                lambda **kw: FerEfficientNetV2("linear", **kw),
                "effnet",
                None,
                ("activation",),
                "EfficientNetV2-S (timm efficientnetv2_rw_s, 1792 features), grayscale, from scratch",
            ),
            _entry(
                "effnetv2s_spinal",
                lambda **kw: FerEfficientNetV2("spinal", **kw),
                "effnet",
                "effnetv2s",
                ("activation",),
                "EfficientNetV2-S + SpinalNet head",
            ),
            _entry(
                "vit_l32",
                lambda **kw: FerViT("linear", **kw),
                "vit",
                None,
                ("pretrained_path", "pretrained"),
                "ViT-L/32 (transformers ViTConfig), 224x224, 3 channels",
            ),
            _entry(
                "vit_l32_spinal",
                lambda **kw: FerViT("spinal", **kw),
                "vit",
                "vit_l32",
                ("pretrained_path", "pretrained"),
                "ViT-L/32 + SpinalNet head",
            ),
        ]
    )
)


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name is a :class:`UserError` listing the known ones."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def create_model(name: str, num_classes: int = 7, **options) -> nn.Module:
    """Build a model by name; options not meant for it (e.g. ``width`` for a ViT) are ignored."""
    info = model_info(name)
    kwargs = {k: v for k, v in options.items() if k in info.options and v is not None}
    return info.builder(num_classes=num_classes, **kwargs)


def check_pretrained_choice(model: str, pretrained_path: str | None, where: str) -> None:
    """A ViT trained without a base must say where its start comes from: the paper fine-tunes
    ``google/vit-large-patch32-224-in21k``, and random weights are only taken when asked for."""
    info = model_info(model)
    if info.recipe == "vit" and info.base is None and pretrained_path is None:
        raise UserError(
            f"{where}: {model} starts from pretrained ViT-L/32 weights in the paper, and none were given; "
            "pass --pretrained DIR (a local copy of google/vit-large-patch32-224-in21k, saved with "
            "save_pretrained) or set fixed: {pretrained_path: DIR} in the search space; to train from random "
            "weights on purpose, pass --pretrained from_scratch"
        )
    if info.recipe == "vit" and pretrained_path not in (None, FROM_SCRATCH):
        check_pretrained_folder(pretrained_path)
