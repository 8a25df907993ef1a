"""Attention-based pooling as a head for any convnet (Touvron et al. 2021, arXiv:2112.13692, Sec. 3).

``AttentionPoolHead`` replaces global average pooling + classifier: a learned class token
attends once to the positions of a (B, C, H, W) feature map (one head, keys and values are
the class token and the H*W positions), an MLP refines it, then norm and a linear layer
give the logits. It is the aggregation block of PatchConvNet, reused as is.

Use on a timm convnet::

    model = timm.create_model('convnext_tiny', num_classes=0, global_pool='')
    head = AttentionPoolHead(model.num_features, num_classes=1000)
    logits = head(model.forward_features(images))
    logits, maps = head(model.forward_features(images), return_attn=True)  # maps: B x H x W
"""

from functools import partial

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from .patchconvnet import AggregationBlock, init_weights

__all__ = ["AttentionPoolHead"]


class AttentionPoolHead(nn.Module):
    """(B, C, H, W) features -> logits, optionally with the attention map (B, H, W).

    Args:
        in_chans: channels C of the feature map.
        num_classes: classes (0: return the pooled, normalised C-vector).
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP in units of C.
        layerscale_init: initial LayerScale of the attention and MLP branches.
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        in_chans: int,
        num_classes: int = 1000,
        num_heads: int = 1,
        mlp_ratio: float = 3.0,
        layerscale_init: float = 1e-4,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.in_chans = self.num_features = in_chans
        self.num_classes = num_classes
        self.cls_token = nn.Parameter(torch.zeros(1, 1, in_chans))
        self.block = AggregationBlock(
            in_chans,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            layerscale_init=layerscale_init,
            norm_layer=norm_layer,
            keys_include_cls=True,
        )
        self.norm = norm_layer(in_chans)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_chans, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def reset_classifier(self, num_classes: int):
        ref = self.cls_token
        self.num_classes = num_classes
        self.fc = nn.Linear(self.in_chans, num_classes) if num_classes > 0 else nn.Identity()
        self.fc.apply(init_weights)
        self.fc.to(device=ref.device, dtype=ref.dtype)

    def forward(
        self,
        x: torch.Tensor,
        pre_logits: bool = False,
        return_attn: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # B, HW, C
        cls, attn = self.block(tokens, self.cls_token.expand(B, -1, -1), return_attn=return_attn)
        out = self.head_drop(self.norm(cls[:, 0]))
        if not pre_logits:
            out = self.fc(out)
        if return_attn:
            # patch part of the softmax (the class token's weight on itself left out), mean over heads
            return out, attn.mean(dim=1)[:, 0, 1:].reshape(B, H, W)
        return out
