"""PatchConvNet reproduction pipeline (Touvron et al., 2021, arXiv:2112.13692).

``import pcn.models`` registers the PatchConvNet family (and the ResNet attention-pooling
models) in timm's registry, through ``@register_model`` in each model file; ``import pcn``
loads neither torch nor timm, so ``pcn --help`` and the tool verbs stay fast.
"""

from pcn.dag import file_audit  # noqa: F401  (records the files a stage opens when PCN_AUDIT_DIR is set)

__version__ = "0.1.0"
