"""ResNets with attention-based pooling (Touvron et al. 2021, arXiv:2112.13692, Table 1:
ResNet-50 with average pooling vs attention pooling).

``ResNetAttnPool`` is timm's ``ResNet`` with global average pooling + ``fc`` replaced by an
``AttentionPoolHead`` (``head.*``); the trunk and its keys are untouched, so a model with
average pooling and its attention-pooled twin differ only in the head.

Registered: ``resnet50_attnpool`` (timm's resnet50 trunk), ``resnet_demo`` (small BasicBlock
ResNet for CPU demos, average pooling) and ``resnet_demo_attnpool`` (same trunk, attention).
"""

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from .pooling import AttentionPoolHead

__all__ = ["ResNetAttnPool"]


class ResNetAttnPool(ResNet):
    """timm ResNet whose classifier is an attention-pooling head.

    Args (besides timm ResNet's):
        attn_heads: heads of the pooling attention.
        attn_mlp_ratio: MLP width of the pooling block in units of the feature width.
        layerscale_init: initial LayerScale of the pooling block.
    """

    def __init__(
        self,
        *args,
        num_classes: int = 1000,
        global_pool: str = "attention",
        drop_rate: float = 0.0,
        attn_heads: int = 1,
        attn_mlp_ratio: float = 3.0,
        layerscale_init: float = 1e-4,
        **kwargs,
    ):
        if global_pool not in ("attention", ""):
            raise ValueError(f"ResNetAttnPool pools with attention, got global_pool={global_pool!r}")
        super().__init__(*args, num_classes=0, global_pool="", drop_rate=drop_rate, **kwargs)
        self.num_classes = num_classes
        self.head = AttentionPoolHead(
            self.num_features,
            num_classes,
            num_heads=attn_heads,
            mlp_ratio=attn_mlp_ratio,
            layerscale_init=layerscale_init,
            drop_rate=drop_rate,
        )
        self.head_hidden_size = self.num_features

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"head.cls_token"}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset_classifier(num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the pooling attention over the last feature map, (B, H, W)."""
        return self.head(self.forward_features(x), return_attn=True)


def _create(variant: str, cls, pretrained: bool = False, **kwargs) -> nn.Module:
    if pretrained and not kwargs.get("pretrained_cfg_overlay"):
        raise ValueError(f"{variant}: no released weights; pass pretrained_cfg_overlay=dict(file=PATH)")
    return build_model_with_cfg(cls, variant, pretrained, **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "head.fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "resnet50_attnpool": _cfg(),
        # untrained demo sizes for small images on CPUs (10 classes, 64 px, output stride 16: 4x4 maps)
        "resnet_demo": _cfg(num_classes=10, input_size=(3, 64, 64), pool_size=(8, 8), crop_pct=1.0, classifier="fc"),
        "resnet_demo_attnpool": _cfg(num_classes=10, input_size=(3, 64, 64), pool_size=(8, 8), crop_pct=1.0),
    }
)


@register_model
def resnet50_attnpool(pretrained=False, **kwargs) -> ResNetAttnPool:
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create("resnet50_attnpool", ResNetAttnPool, pretrained, **dict(model_args, **kwargs))


@register_model
def resnet_demo(pretrained=False, **kwargs) -> ResNet:
    model_args = dict(
        block=BasicBlock, layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=32, output_stride=16
    )
    return _create("resnet_demo", ResNet, pretrained, **dict(model_args, **kwargs))


@register_model
def resnet_demo_attnpool(pretrained=False, **kwargs) -> ResNetAttnPool:
    model_args = dict(
        block=BasicBlock, layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=32, output_stride=16
    )
    return _create("resnet_demo_attnpool", ResNetAttnPool, pretrained, **dict(model_args, **kwargs))
