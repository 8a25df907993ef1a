"""PatchConvNet: a convolutional trunk with attention-based aggregation

Paper:
* `Augmenting Convolutional networks with attention-based aggregation`
  (Touvron, Cord, El-Nouby, Bojanowski, Joulin, Synnaeve, Jegou; 2021)
  - https://arxiv.org/abs/2112.13692

The released ImageNet checkpoints define the architecture: the state_dict keys
and shapes of this implementation are those of the released files, so they load
with strict key matching (see ``checkpoint_filter_fn``).

Layout, top to bottom:
* ``ConvStem``: four 3x3 stride-2 convolutions (or one linear patch projection),
  the image becomes a grid of patches at stride 16 (or 8 for small images).
* ``TrunkBlock`` (``blocks.i``): a residual column block, constant width and
  resolution: LayerNorm -> 1x1 conv -> GELU -> 3x3 depthwise conv -> GELU ->
  squeeze-excitation -> 1x1 conv, scaled by LayerScale.
* ``AggregationBlock`` (``blocks_token_only.i``): a learned class token (or one
  per class) attends to the patches once (cross-attention, one head by default)
  followed by an MLP; its softmax is the model's attention map.
* ``PatchConvNet``: the model, with the ablations of the paper as constructor
  arguments (norm layer, stem kind, pooling kind, number of aggregation blocks
  and heads, squeeze-excitation, multi-class tokens, stem stride).

One file for one model family, as timm keeps its model files (about 700 lines):
the blocks, the model, the checkpoint filter and the registered variants are read
together when checking the architecture against the released weights.

Internally the trunk keeps the patches as a (B, H, W, C) tensor: the norm acts
on the last dimension and the convolutions see a channels-last NCHW view.
"""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import (
    build_model_with_cfg,
    checkpoint_seq,
    generate_default_cfgs,
    register_model,
    resolve_pretrained_cfg,
)
from timm.models._features import feature_take_indices  # private: timm is pinned below 1.1 for it

from .checkpoint import check_state_dict, checkpoint_classes, unwrap_state_dict
from .family import FAMILY

__all__ = ["PatchConvNet", "ConvStem", "TrunkBlock", "AggregationBlock", "AggregationAttention"]


def init_weights(m: nn.Module) -> None:
    """The released models' init (CaiT's): truncated-normal linears with zero bias, unit LayerNorms.
    The attention-pooling head of the ResNets (pcn.models.pooling) starts the same way."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class ConvStem(nn.Module):
    """Image -> (B, H, W, C) patch grid.

    ``kind='conv'``: four 3x3 convolutions (no bias) with GELU between them, widths
    C/8, C/4, C/2, C, each stride 2 (the last one stride 1 when ``stride=8``).
    Each convolution sits in its own ``nn.Sequential`` so the keys read
    ``proj.{0,2,4,6}.0.weight`` as in the released checkpoints.
    ``kind='linear'``: one convolution with kernel = stride = patch size
    (the "linear patch projection" ablation of the paper).
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 384,
        kind: str = "conv",
        stride: int = 16,
        act_layer=nn.GELU,
    ):
        super().__init__()
        if stride not in (8, 16):
            raise ValueError(f"stem stride must be 8 or 16, got {stride}")
        self.stride = stride
        if kind == "conv":
            widths = [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
            strides = [2, 2, 2, 2 if stride == 16 else 1]
            layers = []
            prev = in_chans
            for i, (w, s) in enumerate(zip(widths, strides, strict=True)):
                if i > 0:
                    layers.append(act_layer())
                layers.append(nn.Sequential(nn.Conv2d(prev, w, 3, stride=s, padding=1, bias=False)))
                prev = w
            self.proj = nn.Sequential(*layers)
        elif kind == "linear":
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=stride, stride=stride)
        else:
            raise ValueError(f"stem must be 'conv' or 'linear', got {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous (B, H, W, C): the residual stream stays channels-last in every block
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


class SqueezeExcite(nn.Module):
    """Squeeze-excitation with 1x1 convolutions (keys ``conv_reduce``, ``conv_expand``)."""

    def __init__(self, dim: int, rd_ratio: float = 0.25):
        super().__init__()
        rd = int(dim * rd_ratio)
        self.conv_reduce = nn.Conv2d(dim, rd, 1)
        self.act = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # On the pooled (B, C) vector the 1x1 convolutions are matmuls; as F.linear their
        # backward is ~4x cheaper on CPU than a convolution's on a 1x1 map.
        s = F.linear(x.mean((2, 3)), self.conv_reduce.weight.flatten(1), self.conv_reduce.bias)
        s = F.linear(self.act(s), self.conv_expand.weight.flatten(1), self.conv_expand.bias)
        return x * s.sigmoid()[:, :, None, None]


class ChannelsLastBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over the last dimension of a (B, H, W, C) tensor (the ``norm='batch'`` ablation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class TrunkBlock(nn.Module):
    """Residual column block on a (B, H, W, C) grid.

    x = x + drop_path(gamma_1 * f(norm1(x))); f = 1x1 conv -> GELU -> 3x3 dw conv
    -> GELU -> SE -> 1x1 conv, stored as ``attn.qkv_pos.{0..5}`` (the released name).
    """

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        layerscale_init: float = 1e-4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),  # noqa: B008 (immutable, timm's idiom)
        act_layer=nn.GELU,
        se: bool = True,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = nn.Module()  # container, keeps the released key names
        self.attn.qkv_pos = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            act_layer(),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            act_layer(),
            SqueezeExcite(dim) if se else nn.Identity(),
            nn.Conv2d(dim, dim, 1),
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.gamma_1 = nn.Parameter(layerscale_init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The 1x1 convolutions run as matmuls on the (B, H, W, C) grid: the same maths
        # as ``qkv_pos(...)`` in NCHW, without the layout reorders that make oneDNN's 1x1
        # convolution on a channels-last view ~3x slower on CPU.
        conv_in, act1, conv_dw, act2, se, conv_out = self.attn.qkv_pos
        y = act1(F.linear(self.norm1(x), conv_in.weight.flatten(1), conv_in.bias))
        y = se(act2(conv_dw(y.permute(0, 3, 1, 2))))
        y = F.linear(y.permute(0, 2, 3, 1), conv_out.weight.flatten(1), conv_out.bias)
        return x + self.drop_path(self.gamma_1 * y)


class AggregationAttention(nn.Module):
    """Cross-attention from class token(s) to the patches.

    ``keys_include_cls=True`` (single token): keys and values are the class token
    followed by the N patches, softmax over N+1 entries.
    ``keys_include_cls=False`` (multi-class): keys and values are the N patches only.
    """

    def __init__(self, dim: int, num_heads: int = 1, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, L, C = t.shape
        return t.reshape(B, L, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(
        self,
        cls: torch.Tensor,
        kv: torch.Tensor,
        return_attn: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """cls: (B, K, C) normalised queries; kv: (B, L, C) normalised keys/values.
        Returns the attended (B, K, C) and, if asked, the softmax (B, heads, K, L)."""
        B, K, C = cls.shape
        q, k, v = self._heads(self.q(cls)), self._heads(self.k(kv)), self._heads(self.v(kv))
        if return_attn:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            out = attn @ v
        else:
            attn = None
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, K, C)
        return self.proj(out), attn


class AggregationBlock(nn.Module):
    """Class token(s) attend to the patches, then an MLP on the class token(s).

    cls = cls + gamma_1 * attn(norm1(cls), norm1([cls,] x))
    cls = cls + gamma_2 * mlp(norm2(cls))
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        mlp_ratio: float = 3.0,
        layerscale_init: float = 1e-4,
        drop_path: float = 0.0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),  # noqa: B008 (immutable, timm's idiom)
        act_layer=nn.GELU,
        keys_include_cls: bool = True,
    ):
        super().__init__()
        self.keys_include_cls = keys_include_cls
        self.norm1 = norm_layer(dim)
        self.attn = AggregationAttention(dim, num_heads=num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        self.gamma_1 = nn.Parameter(layerscale_init * torch.ones(dim))
        self.gamma_2 = nn.Parameter(layerscale_init * torch.ones(dim))

    def forward(
        self,
        x: torch.Tensor,
        cls: torch.Tensor,
        return_attn: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, N, C) patch tokens; cls: (B, K, C). Returns the new cls and, if asked,
        the attention (B, heads, K, N+1) with the class token first, or (B, heads, K, N)."""
        K = cls.shape[1]
        u = self.norm1(torch.cat((cls, x), dim=1))
        kv = u if self.keys_include_cls else u[:, K:]
        y, attn = self.attn(u[:, :K], kv, return_attn=return_attn)
        cls = cls + self.drop_path(self.gamma_1 * y)
        cls = cls + self.drop_path(self.gamma_2 * self.mlp(self.norm2(cls)))
        return cls, attn


class PatchConvNet(nn.Module):
    """PatchConvNet, with the ablations of the paper as options.

    Args:
        img_size: nominal input size (only used for bookkeeping; any size divisible
            by the stem stride works).
        in_chans: input channels.
        num_classes: number of classes (0: no head, ``forward`` returns pooled features).
        embed_dim: width C of the trunk.
        depth: number of trunk blocks.
        mlp_ratio: hidden width of the aggregation MLP, in units of C.
        layerscale_init: initial value of the LayerScale gammas (trunk and aggregation).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, the same rate in every trunk block.
        norm: 'layer' (LayerNorm) or 'batch' (BatchNorm) in the trunk blocks.
        stem: 'conv' (four 3x3 convolutions) or 'linear' (one patch projection).
        stem_stride: 16, or 8 (last stem conv with stride 1; for small images).
        pool: 'attention' (aggregation blocks with class token(s)) or 'avg'
            (average of the patches -> norm -> head).
        agg_blocks: number of aggregation blocks.
        agg_heads: attention heads in the aggregation blocks.
        se: squeeze-excitation in the trunk blocks.
        multiclass: one class token per class; each attends to the patches only,
            head = ``num_classes`` separate Linear(C, 1).
    """

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 60,
        mlp_ratio: float = 3.0,
        layerscale_init: float = 1e-4,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm: str = "layer",
        stem: str = "conv",
        stem_stride: int = 16,
        pool: str = "attention",
        agg_blocks: int = 1,
        agg_heads: int = 1,
        se: bool = True,
        multiclass: bool = False,
        act_layer=nn.GELU,
    ):
        super().__init__()
        if norm not in ("layer", "batch"):
            raise ValueError(f"norm must be 'layer' or 'batch', got {norm!r}")
        if pool not in ("attention", "avg"):
            raise ValueError(f"pool must be 'attention' or 'avg', got {pool!r}")
        if pool == "attention" and agg_blocks < 1:
            raise ValueError("attention pooling needs agg_blocks >= 1")
        if multiclass and num_classes < 1:
            raise ValueError("multiclass needs num_classes >= 1")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        trunk_norm = norm_layer if norm == "layer" else ChannelsLastBatchNorm

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.pool = pool
        self.multiclass = multiclass
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False
        # class tokens in front of the patch tokens in forward_features' output
        self.num_prefix_tokens = 0 if pool == "avg" else (num_classes if multiclass else 1)

        self.patch_embed = ConvStem(in_chans, embed_dim, kind=stem, stride=stem_stride, act_layer=act_layer)
        self.blocks = nn.Sequential(
            *[
                TrunkBlock(
                    embed_dim,
                    drop_path=drop_path_rate,
                    layerscale_init=layerscale_init,
                    norm_layer=trunk_norm,
                    act_layer=act_layer,
                    se=se,
                )
                for _ in range(depth)
            ]
        )
        self.feature_info = [dict(num_chs=embed_dim, reduction=stem_stride, module=f"blocks.{i}") for i in range(depth)]

        if pool == "attention":
            self.cls_token = nn.Parameter(torch.zeros(1, self.num_prefix_tokens, embed_dim))
            self.blocks_token_only = nn.ModuleList(
                [
                    AggregationBlock(
                        embed_dim,
                        num_heads=agg_heads,
                        mlp_ratio=mlp_ratio,
                        layerscale_init=layerscale_init,
                        norm_layer=norm_layer,
                        act_layer=act_layer,
                        keys_include_cls=not multiclass,
                    )
                    for _ in range(agg_blocks)
                ]
            )
        else:
            self.cls_token = None
            self.blocks_token_only = None
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._make_head(num_classes)

        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.multiclass:
            return nn.ModuleList([nn.Linear(self.num_features, 1) for _ in range(num_classes)])
        return nn.Linear(self.num_features, num_classes)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"cls_token"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^cls_token|patch_embed",  # stem and embed
            blocks=[(r"^blocks\.(\d+)", None), (r"^blocks_token_only|^norm", (99999,))],
        )

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        """New classifier. In multi-class models the class tokens follow the number of classes."""
        if global_pool not in (None, "", self.pool, "token" if self.pool == "attention" else self.pool):
            raise ValueError(f"cannot switch pooling of a built model from {self.pool!r} to {global_pool!r}")
        if self.multiclass and num_classes != self.num_classes:
            if num_classes < 1:
                raise ValueError("a multi-class model needs num_classes >= 1")
            old = self.cls_token.data
            new = old.new_empty(1, num_classes, self.embed_dim)
            trunc_normal_(new, std=0.02)
            new[:, : min(num_classes, old.shape[1])] = old[:, :num_classes]
            self.cls_token = nn.Parameter(new)
            self.num_prefix_tokens = num_classes
        self.num_classes = num_classes
        ref = next(self.parameters())
        self.head = self._make_head(num_classes).to(device=ref.device, dtype=ref.dtype)
        self.head.apply(init_weights)
        self.head.train(self.training)

    # --- forward ---------------------------------------------------------------------------

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> (B, H, W, C) after stem and trunk blocks."""
        x = self.patch_embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x

    def _aggregate(
        self,
        x: torch.Tensor,
        return_attn: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, H, W, C) grid -> (B, prefix + N, C) tokens, class token(s) first, not normalised.
        With ``return_attn`` also the softmax of the LAST aggregation block."""
        x = x.flatten(1, 2)
        if self.blocks_token_only is None:
            return x, None
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        attn = None
        last = len(self.blocks_token_only) - 1
        for i, blk in enumerate(self.blocks_token_only):
            cls, attn = blk(x, cls, return_attn=return_attn and i == last)
        return torch.cat((cls, x), dim=1), attn

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> (B, prefix + N, C) tokens: class token(s) (after aggregation) then patches.
        With ``pool='avg'`` there is no prefix. The final norm is applied in forward_head."""
        return self._aggregate(self._trunk(x))[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> logits: pool (class tokens or mean of patches) -> norm -> head."""
        if self.pool == "avg":
            x = x.mean(dim=1)
        else:
            x = x[:, : self.num_prefix_tokens]
            if not self.multiclass:
                x = x[:, 0]
        x = self.head_drop(self.norm(x))
        if pre_logits or isinstance(self.head, nn.Identity):
            return x
        if self.multiclass:
            w = torch.cat([h.weight for h in self.head], dim=0)  # K, C
            b = torch.cat([h.bias for h in self.head], dim=0)
            if x.ndim == 2:  # avg pooling: one vector for every class
                return F.linear(x, w, b)
            return torch.einsum("bkc,kc->bk", x, w) + b  # class k's token through head k
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the aggregation attention map of the last aggregation block,
        averaged over heads: (B, H, W) for one class token (the patch part of the softmax,
        which sums to 1 minus the class token's weight on itself), (B, K, H, W) for the
        multi-class model (one map per class, each sums to 1)."""
        if self.pool != "attention":
            raise RuntimeError("forward_attention needs pool='attention'; an average-pooled model has no map")
        grid = self._trunk(x)
        B, H, W, _ = grid.shape
        tokens, attn = self._aggregate(grid, return_attn=True)
        attn = attn.mean(dim=1)  # B, K, L
        if self.multiclass:
            maps = attn.reshape(B, -1, H, W)
        else:
            maps = attn[:, 0, 1:].reshape(B, H, W)
        return self.forward_head(tokens), maps

    @property
    def single_class_token(self) -> bool:
        """One class token among its own keys: the model that can collapse onto it."""
        return self.pool == "attention" and not self.multiclass

    @torch.no_grad()
    def class_token_self_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) softmax weight the class token puts on its own key in the last aggregation
        block (single-token models). Near 1 for every image, the model's output no longer
        depends on the image: training has collapsed onto the class token."""
        if not self.single_class_token:
            raise RuntimeError("only a single class token attends to itself (multi-class keys are the patches)")
        return 1 - self.forward_attention(x)[1].flatten(1).sum(1)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Trunk block outputs as feature maps (stride = stem stride).

        Args:
            x: input images.
            indices: take the last n blocks if int, all if None, these indices if a sequence.
            norm: apply the final norm to every intermediate.
            stop_early: stop after the last wanted block (only with intermediates_only).
            output_fmt: 'NCHW', 'NHWC' or 'NLC'.
            intermediates_only: return only the intermediates.
        """
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        intermediates = []
        x = self.patch_embed(x)
        blocks = self.blocks[: max_index + 1] if (stop_early and intermediates_only) else self.blocks
        for i, blk in enumerate(blocks):
            x = blk(x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                if output_fmt == "NCHW":
                    y = y.permute(0, 3, 1, 2).contiguous()
                elif output_fmt == "NLC":
                    y = y.flatten(1, 2)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self._aggregate(x)[0], intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the blocks (and head) not needed for the given intermediates."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.blocks_token_only = None
            self.cls_token = None
            self.pool = "avg"
            self.multiclass = False
            self.num_prefix_tokens = 0
            self.num_classes = 0
            self.head = nn.Identity()
        return take_indices


def checkpoint_filter_fn(state_dict: dict, model: PatchConvNet | None = None) -> dict[str, torch.Tensor]:
    """Map a released checkpoint onto this model's keys.

    The released files hold ``{"model": state_dict}`` with our key names already; this
    unwraps it and drops a DistributedDataParallel ``module.`` prefix. Given the model, it
    checks keys and shapes so that a mismatch names the file and the first bad key. When the
    model has another number of classes (fine-tuning), the classifier (and, for the
    multi-class model, the class tokens) is dropped and left to its fresh initialisation.
    """
    source = "checkpoint"
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("file") or cfg.get("url"):
        source = str(cfg.get("file") or cfg.get("url"))
    state_dict = unwrap_state_dict(state_dict, source=source)
    if model is None:
        return state_dict
    allow_missing, allow_shape = [], []
    if model.multiclass and "cls_token" in state_dict:  # its class tokens, whatever head it has
        ckpt_classes = state_dict["cls_token"].shape[1]
    else:
        ckpt_classes = checkpoint_classes(state_dict)
    if ckpt_classes is not None and ckpt_classes != model.num_classes:
        drop = ("head.", "cls_token") if model.multiclass else ("head.",)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(drop)}
        allow_missing += list(drop)
    if model.in_chans != 3:  # timm adapts the first conv from 3 input channels
        allow_shape.append("patch_embed.proj.0.0.weight")
    check_state_dict(model, state_dict, source=source, allow_missing=allow_missing, allow_shape=allow_shape)
    return state_dict


def _create_patchconvnet(variant: str, pretrained: bool = False, **kwargs) -> PatchConvNet:
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant,
            pretrained_cfg=kwargs.get("pretrained_cfg"),
            pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
        )
        if not (cfg.url or cfg.file or cfg.hf_hub_id or cfg.state_dict):
            raise ValueError(
                f"{variant}: no released weights; pass pretrained_cfg_overlay=dict(file=PATH) or use pretrained=False"
            )
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        PatchConvNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _family_args(name: str) -> dict:
    width, depth, layerscale_init = FAMILY[name]
    return dict(embed_dim=width, depth=depth, layerscale_init=layerscale_init)


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj.0.0",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2112.13692",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "patchconvnet_s60.fb_in1k": _cfg(url="https://dl.fbaipublicfiles.com/deit/s60_224_1k.pth"),
        "patchconvnet_s120.fb_in1k": _cfg(url="https://dl.fbaipublicfiles.com/deit/s120_224_1k.pth"),
        "patchconvnet_b60.fb_in1k": _cfg(url="https://dl.fbaipublicfiles.com/deit/b60_224_1k.pth"),
        "patchconvnet_b120.fb_in1k": _cfg(url="https://dl.fbaipublicfiles.com/deit/b120_224_1k.pth"),
        "patchconvnet_l60": _cfg(),  # no ImageNet-1k release
        "patchconvnet_l120": _cfg(),  # no ImageNet-1k release
        # the release's two multi-class models: trained from scratch (81.1) and fine-tuned from
        # the single-class S60 (82.0); the first tag is the default, as the paper's best row
        "patchconvnet_s60_multi.fb_in1k_finetune": _cfg(
            url="https://dl.fbaipublicfiles.com/deit/s60_multi_finetune_1k.pth"
        ),
        "patchconvnet_s60_multi.fb_in1k_scratch": _cfg(
            url="https://dl.fbaipublicfiles.com/deit/s60_multi_scratch_1k.pth"
        ),
        # untrained demo sizes for small images on CPUs (10 classes, 64 px by default)
        "patchconvnet_demo": _cfg(num_classes=10, input_size=(3, 64, 64), crop_pct=1.0),
        "patchconvnet_demo_multi": _cfg(num_classes=10, input_size=(3, 64, 64), crop_pct=1.0),
    }
)


@register_model
def patchconvnet_s60(pretrained=False, **kwargs) -> PatchConvNet:
    model_args = _family_args("patchconvnet_s60")
    return _create_patchconvnet("patchconvnet_s60", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def patchconvnet_s120(pretrained=False, **kwargs) -> PatchConvNet:
    model_args = _family_args("patchconvnet_s120")
    return _create_patchconvnet("patchconvnet_s120", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def patchconvnet_b60(pretrained=False, **kwargs) -> PatchConvNet:
    model_args = _family_args("patchconvnet_b60")
    return _create_patchconvnet("patchconvnet_b60", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def patchconvnet_b120(pretrained=False, **kwargs) -> PatchConvNet:
    model_args = _family_args("patchconvnet_b120")
    return _create_patchconvnet("patchconvnet_b120", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def patchconvnet_l60(pretrained=False, **kwargs) -> PatchConvNet:
    model_args = _family_args("patchconvnet_l60")
    return _create_patchconvnet("patchconvnet_l60", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def patchconvnet_l120(pretrained=False, **kwargs) -> PatchConvNet:
    model_args = _family_args("patchconvnet_l120")
    return _create_patchconvnet("patchconvnet_l120", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def patchconvnet_s60_multi(pretrained=False, **kwargs) -> PatchConvNet:
    model_args = dict(embed_dim=384, depth=60, layerscale_init=1e-4, multiclass=True)
    return _create_patchconvnet("patchconvnet_s60_multi", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def patchconvnet_demo(pretrained=False, **kwargs) -> PatchConvNet:
    model_args = dict(embed_dim=96, depth=8, layerscale_init=1e-4, stem_stride=8)
    return _create_patchconvnet("patchconvnet_demo", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def patchconvnet_demo_multi(pretrained=False, **kwargs) -> PatchConvNet:
    model_args = dict(embed_dim=96, depth=8, layerscale_init=1e-4, stem_stride=8, multiclass=True)
    return _create_patchconvnet("patchconvnet_demo_multi", pretrained=pretrained, **dict(model_args, **kwargs))
