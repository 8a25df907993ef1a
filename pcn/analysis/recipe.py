"""paper/recipe.yaml: the paper-scale recipe, each value with where it comes from.

Every entry names the params.yaml key(s) it sets (dotted, as resolved at scale
``paper``; null where the schema has no key), the value, and its source: the
paper, the official code (file:line), or "not stated; chosen because ...".  An entry
no source here confirms says so in ``unverified``: what would confirm it.
:func:`load_recipe` refuses an entry without a source (or with an empty
``unverified``) in one line naming it; :func:`disagreements` lists each keyed value
that differs from the resolved paper-scale params, so the table and ``scales.paper``
cannot drift apart; the report renders :func:`table_rows` (the unverified ones
flagged in their own column) and ``pcn dryrun`` lists :func:`unverified` before
its cost table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pcn.io import read_yaml

RECIPE_PATH = Path("paper/recipe.yaml")
COLUMNS = ["topic", "params.yaml key (scale paper)", "value", "source", "unverified: what would confirm it"]
UNSTATED = "not stated"
# The unverified values listed first, in this order: the drop path heads the list, since the
# first author names it as the value to adapt to each model size (facebookresearch/deit#185)
# and one rate trains every size here (S60 and every depth x width point).
FIRST = ("drop_path",)


class RecipeError(ValueError):
    """A paper/recipe.yaml problem, phrased as one line for the user."""


@dataclass(frozen=True)
class Entry:
    topic: str
    keys: tuple[str, ...]  # empty: no schema key, the value is recorded only
    value: Any
    source: str
    check: str | None = None
    unverified: str | None = None  # no source here confirms the value: what would confirm it

    def expected(self) -> list[tuple[str, Any]]:
        """(key, value) pairs: a list value spread over a key list of the same length, else one value per key."""
        if len(self.keys) > 1 and isinstance(self.value, list) and len(self.value) == len(self.keys):
            return list(zip(self.keys, self.value))
        return [(k, self.value) for k in self.keys]


def _entry(raw: Any, where: str) -> Entry:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping with topic, key, value, source")
    topic = raw.get("topic")
    if not isinstance(topic, str) or not topic.strip():
        raise RecipeError(f"{where}: missing 'topic'")
    where = f"{where} ({topic})"
    if "value" not in raw:
        raise RecipeError(f"{where}: missing 'value' (write null for 'no value')")
    key = raw.get("key")
    keys = () if key is None else (key,) if isinstance(key, str) else tuple(key) if isinstance(key, list) else None
    if keys is None or not all(isinstance(k, str) and k for k in keys):
        raise RecipeError(f"{where}: key = {key!r}: expected null, a dotted params key or a list of them")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise RecipeError(
            f"{where}: no 'source' (the paper's section/table, the official code's file:line, "
            f"or 'not stated; chosen because ...')"
        )
    if source.lower().startswith(UNSTATED) and "chosen because" not in source:
        raise RecipeError(
            f"{where}: source {source!r} says the value is not stated but not why it was chosen "
            f"('not stated; chosen because ...')"
        )
    unknown = set(raw) - {"topic", "key", "value", "source", "check", "unverified"}
    if unknown:
        raise RecipeError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for name in ("check", "unverified"):
        text = raw.get(name)
        if name in raw and not (isinstance(text, str) and text.strip()):
            raise RecipeError(
                f"{where}: {name} = {text!r}: expected a non-empty string"
                + (" (what would confirm the value), or no 'unverified' field" if name == "unverified" else "")
            )
    check, unverified = (raw[n].strip() if n in raw else None for n in ("check", "unverified"))
    return Entry(topic.strip(), keys, raw["value"], source.strip(), check, unverified)


def load_recipe(path: str | Path = RECIPE_PATH) -> list[Entry]:
    path = Path(path)
    doc = read_yaml(path, RecipeError)
    entries = (doc or {}).get("entries") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{path}: expected a non-empty list under 'entries'")
    return [_entry(raw, f"{path}: entries[{i}]") for i, raw in enumerate(entries)]


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, tuple):
        return list(value)
    return value


def same(a: Any, b: Any) -> bool:
    """Equal as YAML values (floats to 1e-12 relative: 1.0e-05 in YAML is 1e-05 in Python)."""
    a, b = _plain(a), _plain(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def disagreements(entries: list[Entry], params) -> list[str]:
    """One line per keyed value that differs from ``params`` (resolved at scale paper)."""
    out = []
    for e in entries:
        for key, want in e.expected():
            try:
                got = params.section(key)
            except (AttributeError, KeyError, TypeError):
                out.append(f"{e.topic}: {key} is not a key of the resolved paper-scale params")
                continue
            if not same(got, want):
                out.append(f"{e.topic}: {key} = {_plain(got)!r} in params.yaml (scale paper), {want!r} in the recipe")
    return out


def check_recipe(entries: list[Entry], params, source: str = str(RECIPE_PATH)) -> None:
    """Raise :class:`RecipeError` naming the first disagreement (and how many there are)."""
    bad = disagreements(entries, params)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise RecipeError(f"{source}: {bad[0]}{more}")


def format_value(value: Any, outer: bool = True) -> str:
    """A value as one line: a top-level list as 'a, b', a nested one as '[a, b]', a mapping as '{k: v}'."""
    value = _plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        inner = ", ".join(format_value(v, False) for v in value)
        return inner if outer else f"[{inner}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v, False)}" for k, v in value.items()) + "}"
    return str(value)


def unverified(entries: list[Entry]) -> list[Entry]:
    """The entries no source here confirms: those keyed to a :data:`FIRST` name first (in
    that order), then the others in the recipe's order."""

    def rank(e: Entry) -> int:
        names = [k.rsplit(".", 1)[-1] for k in e.keys]
        return next((i for i, name in enumerate(FIRST) if name in names), len(FIRST))

    return sorted((e for e in entries if e.unverified), key=rank)


def keys_text(entry: Entry) -> str:
    return ", ".join(entry.keys) if entry.keys else "(no key)"


def table_rows(entries: list[Entry]) -> list[list[str]]:
    """Rows under :data:`COLUMNS`: a point not checked against the paper's text follows its
    source as 'check: ...'; an unverified value says what would confirm it in the last column."""
    rows = []
    for e in entries:
        source = e.source + (f" (check: {e.check})" if e.check else "")
        rows.append([e.topic, keys_text(e), format_value(e.value), source, e.unverified or ""])
    return rows


def to_markdown(entries: list[Entry]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in table_rows(entries):
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |")
    return "\n".join(lines) + "\n"
