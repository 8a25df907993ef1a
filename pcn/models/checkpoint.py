"""Loading checkpoints in the released format, with errors that say what is wrong.

The released PatchConvNet files hold ``{"model": state_dict}``. ``load_checkpoint``
reads such a file with ``torch.load(..., weights_only=True)`` (no pickled code is
executed), unwraps it, checks every key and shape against the model and only then
loads it. Any problem raises ``CheckpointError`` (a ``ValueError``) whose message
names the file and the first bad key.
"""

import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn as nn

__all__ = [
    "CheckpointError",
    "read_checkpoint",
    "unwrap_state_dict",
    "checkpoint_classes",
    "check_state_dict",
    "load_checkpoint",
]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
_PICKLE_PROTOCOL = 0x80  # the legacy format starts with a pickle protocol opcode


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model."""


def read_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with one line per way a file can be bad:
    "not a PyTorch checkpoint", "truncated", or "refused: contains code (<global>)" (torch's
    own messages run over several paragraphs and name none of these plainly)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != _ZIP_MAGIC and (not head or head[0] != _PICKLE_PROTOCOL):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({'empty file' if not head else 'unknown format'})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except EOFError:
        raise CheckpointError(f"{path}: truncated (the file ends inside the checkpoint)") from None
    except RuntimeError as e:
        if "central directory" in str(e) or "zip archive" in str(e):
            raise CheckpointError(f"{path}: truncated (its zip archive is incomplete)") from None
        raise CheckpointError(f"{path}: cannot read checkpoint ({str(e).splitlines()[0]})") from None
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = found.group(1) if found else (re.search(r"Unsupported operand \S+", str(e)) or [None])[0]
        if found:
            raise CheckpointError(
                f"{path}: refused: contains code ({what}); a checkpoint must hold only tensors and plain values"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({what or 'unreadable pickle'})") from None


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """``{"model": sd}`` / ``{"state_dict": sd}`` / ``sd`` -> sd, without a ``module.`` prefix."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(
                f"{source}: entry {k!r} is a {type(v).__name__}, expected a tensor (not a state_dict?)"
            )
        out[k[len("module.") :] if k.startswith("module.") else k] = v
    _check_finite(out, source)
    return out


def _check_finite(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """A NaN or inf weight makes the first loss NaN, which reads as a training problem
    ("lower the lr?"): name the input file and its first bad key instead."""
    for k, v in state_dict.items():
        if (v.is_floating_point() or v.is_complex()) and not v.is_meta:
            if not bool(torch.isfinite(v).all()):
                bad = "NaN" if bool(torch.isnan(v).any()) else "inf"
                raise CheckpointError(
                    f"{source}: holds non-finite values ({bad}) in key {k!r}; expected finite weights "
                    "(a diverged or damaged checkpoint)"
                )


def checkpoint_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """The classes a PatchConvNet state dict was trained on: rows of ``head.weight``, or for
    a multi-class model (one class token and one ``head.<c>`` per class) its tokens; None
    for a state dict without a head."""
    if "head.weight" in state_dict:
        return int(state_dict["head.weight"].shape[0])
    if "head.0.weight" in state_dict and "cls_token" in state_dict:
        return int(state_dict["cls_token"].shape[1])
    return None


def check_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    strict: bool = True,
    allow_missing: Iterable[str] = (),
    allow_shape: Iterable[str] = (),
) -> None:
    """Raise ``CheckpointError`` naming the first key that is missing, unexpected or of the
    wrong shape. ``allow_missing``: key prefixes that may be absent; ``allow_shape``: keys whose
    shape may differ (e.g. a stem adapted to other input channels). With ``strict=False``
    only shapes are checked."""
    allow_missing = tuple(allow_missing)
    allow_shape = set(allow_shape)
    expected = model.state_dict()
    for k, v in expected.items():
        if k not in state_dict:
            if strict and not (allow_missing and k.startswith(allow_missing)):
                raise CheckpointError(f"{source}: missing key {k!r} (expected shape {tuple(v.shape)})")
            continue
        got = state_dict[k]
        if tuple(got.shape) != tuple(v.shape) and k not in allow_shape:
            raise CheckpointError(
                f"{source}: wrong shape for key {k!r}: checkpoint has {tuple(got.shape)}, "
                f"model expects {tuple(v.shape)}"
            )
    if strict:
        for k in state_dict:
            if k not in expected:
                raise CheckpointError(f"{source}: unexpected key {k!r} (shape {tuple(state_dict[k].shape)})")


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    strict: bool = True,
    filter_fn: Callable[[dict], dict] | None = None,
) -> nn.Module:
    """Load a checkpoint file (released format ``{"model": state_dict}`` or a bare state_dict)
    into ``model``. ``filter_fn(state_dict, model)`` may remap keys first. Returns the model."""
    path = os.fspath(path)
    state_dict = unwrap_state_dict(read_checkpoint(path), source=path)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, None)
    check_state_dict(model, state_dict, source=path, strict=strict)
    model.load_state_dict(state_dict, strict=strict)
    return model
