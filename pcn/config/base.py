"""What every params section shares: the scale names, the error type, the merge, the base model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

SCALES = ("demo", "study", "paper")
DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """A params.yaml problem, phrased as one line for the user."""


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` merged into ``base``, dict by dict; neither is changed."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.  No number
    # is infinite or NaN (`lr: .inf` would train to NaN hours later).
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false is not a number: pydantic would take `epochs: true` as 1."""
        annotation = str(cls.model_fields[info.field_name].annotation)
        if isinstance(value, bool) and not ("bool" in annotation or "Any" in annotation):
            raise PydanticCustomError("bool_for_number", "expected a number, not true/false")
        return value


def describe_error(error: dict) -> str:
    loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
    value = error.get("input")
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        return f"unknown key '{loc}' (not in the schema; check the spelling)"
    if error["type"] == "missing":
        return f"missing key '{loc}'"
    if error["type"] == "value_error":  # our validators' messages name their keys themselves
        return msg.removeprefix("Value error, ")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    return f"{loc} = {shown}: {msg[0].lower() + msg[1:]}" if loc else msg
