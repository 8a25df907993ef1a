"""Models: PatchConvNet (registered in timm as ``patchconvnet_*``), the attention-pooling
head for any convnet, and ResNets with that head (``resnet50_attnpool``, ``resnet_demo*``).
Importing this package registers the models with timm."""

from .checkpoint import CheckpointError, check_state_dict, load_checkpoint, unwrap_state_dict
from .patchconvnet import PatchConvNet, checkpoint_filter_fn
from .pooling import AttentionPoolHead
from .resnet import ResNetAttnPool

__all__ = [
    "AttentionPoolHead",
    "CheckpointError",
    "PatchConvNet",
    "ResNetAttnPool",
    "check_state_dict",
    "checkpoint_filter_fn",
    "load_checkpoint",
    "unwrap_state_dict",
]
