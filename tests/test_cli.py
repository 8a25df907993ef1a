"""The command line: help without torch, and the models registered whatever the import order."""

from __future__ import annotations

import subprocess
import sys


def _python(code: str) -> str:
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.strip()


def test_help_does_not_import_torch():
    """`pcn --help` (and every tool verb's parser) stays fast: torch and timm load only in
    the verbs that use them, after the CLI has set OMP_WAIT_POLICY."""
    out = _python(
        "import sys, pcn.cli; pcn.cli.build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    assert out == "[]"


def test_importing_pcn_registers_the_models_before_or_after_timm():
    for order in ("import pcn, timm", "import timm, pcn", "import pcn.cli, timm.models"):
        assert _python(f"{order}; import timm; print(timm.is_model('patchconvnet_s60'))") == "True", order
