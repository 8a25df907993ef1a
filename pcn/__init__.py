"""PatchConvNet reproduction pipeline (Touvron et al., 2021, arXiv:2112.13692).

Importing the package registers the PatchConvNet family (and the ResNet
attention-pooling models) in timm's registry: at once when timm is already
imported, else right after timm is, so that ``timm.create_model`` always finds
them while ``pcn --help`` and the tool verbs never load torch (5 s).
"""

import importlib.abc
import importlib.util
import os
import sys

__version__ = "0.1.0"


def _register() -> None:
    from pcn import models  # noqa: F401  (timm registration side effect)


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when timm is about to be imported, it wraps timm's loader so
    that the models are registered as soon as timm's own module has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)  # once, and not for the lookup below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_timm = spec.loader.exec_module

        def exec_then_register(module):
            exec_timm(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


if "timm" in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterAfterTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTimm())

if os.environ.get("PCN_AUDIT_DIR"):  # the declared-inputs check (pcn.file_audit); off by default
    from pcn import file_audit

    file_audit.install()
