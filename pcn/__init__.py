"""PatchConvNet reproduction pipeline (Touvron et al., 2021, arXiv:2112.13692).

Importing the package registers the PatchConvNet family (and the ResNet
attention-pooling models) in timm's registry.
"""

from pcn import models  # noqa: F401  (timm registration side effect)

__version__ = "0.1.0"
