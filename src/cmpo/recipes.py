"""YAML recipes with ``key=value`` overrides -> typed config dataclasses.

A recipe is a YAML mapping whose top-level sections match config dataclasses (for example ``model``,
``data``, ``train``). Overrides use dotted keys and YAML values: ``train.learning_rate=1e-4``,
``data.attributes=[quality,humor]``. Unknown keys are errors (a typo must not be silently ignored).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class RecipeError(ValueError):
    pass


def load_recipe(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.exists():
        raise RecipeError(f"recipe not found: {p}")
    data = _numbers(yaml.safe_load(p.read_text()) or {})
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: a recipe must be a YAML mapping, got {type(data).__name__}")
    return data


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


def _numbers(value):
    """YAML 1.1 reads ``5e-6`` (no dot) as a string; recipes mean a number."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def apply_overrides(recipe: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``recipe`` with each ``a.b.c=value`` applied (value parsed as YAML)."""
    out = _deepcopy(recipe)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        value = _numbers(yaml.safe_load(raw)) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return out


def _deepcopy(d):
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def build(cls: type[T], values: Mapping[str, Any] | None, where: str = "") -> T:
    """Instantiate dataclass ``cls`` from a mapping, recursing into nested dataclasses; unknown keys raise."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise RecipeError(f"unknown key(s) {unknown} in {where or cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        tp = hints.get(name)
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            value = build(tp, value, where=f"{where}.{name}" if where else name)
        elif _is_list_of_str(tp) and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        kwargs[name] = value
    return cls(**kwargs)


def _is_list_of_str(tp) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_list_of_str(a) for a in typing.get_args(tp))
    return origin is list and typing.get_args(tp) == (str,)


def to_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)
