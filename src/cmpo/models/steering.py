"""Steering weight vectors λ: parse and validate user input against a model's attribute names.

Accepted forms (all give a list of k floats in the model's attribute order):
  ``{"helpfulness": 0.7, "humor": 0.3}``   missing names get 0
  ``"helpfulness=0.7,humor=0.3"``          the CLI form
  ``[0.7, 0.3]`` / a tensor of length k    positional
Negative weights are allowed (subtracting an attribute, as in proxy tuning). NaN/inf, unknown names, a wrong
length and the all-zero vector are rejected with :class:`SteeringError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


class SteeringError(ValueError):
    """A weight vector that cannot steer this model."""


def parse_weight_string(spec: str) -> dict[str, float]:
    """``"a=0.7,b=0.3"`` -> ``{"a": 0.7, "b": 0.3}``."""
    out: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise SteeringError(f"bad weight {part!r}: expected name=value, e.g. helpfulness=0.7")
        name, value = part.split("=", 1)
        name = name.strip()
        if name in out:
            raise SteeringError(f"attribute {name!r} given twice")
        try:
            out[name] = float(value)
        except ValueError:
            raise SteeringError(f"bad weight for {name!r}: {value!r} is not a number") from None
    if not out:
        raise SteeringError("empty weight specification")
    return out


def resolve_weights(
    weights: Mapping[str, float] | Sequence[float] | torch.Tensor | str,
    attributes: Sequence[str],
    allow_zero: bool = False,
) -> list[float]:
    """Validate ``weights`` and return them as a list aligned with ``attributes``."""
    k = len(attributes)
    if isinstance(weights, str):
        weights = parse_weight_string(weights)
    if isinstance(weights, Mapping):
        unknown = [n for n in weights if n not in attributes]
        if unknown:
            raise SteeringError(f"unknown attribute(s) {unknown}; this model has {list(attributes)}")
        vec = [float(weights.get(a, 0.0)) for a in attributes]
    else:
        if isinstance(weights, torch.Tensor):
            weights = weights.detach().flatten().tolist()
        vec = [float(w) for w in weights]
        if len(vec) != k:
            raise SteeringError(f"expected {k} weights for {list(attributes)}, got {len(vec)}")
    bad = [a for a, w in zip(attributes, vec) if not math.isfinite(w)]
    if bad:
        raise SteeringError(f"non-finite weight for {bad}")
    if not allow_zero and all(w == 0.0 for w in vec):
        raise SteeringError("all weights are zero: the mixed head would output uniform logits")
    return vec


def one_hot(attribute: str, attributes: Sequence[str]) -> list[float]:
    if attribute not in attributes:
        raise SteeringError(f"unknown attribute {attribute!r}; this model has {list(attributes)}")
    return [1.0 if a == attribute else 0.0 for a in attributes]


def format_weights(vec: Sequence[float], attributes: Sequence[str]) -> str:
    """Inverse of :func:`parse_weight_string` (zeros omitted)."""
    return ",".join(f"{a}={w:g}" for a, w in zip(attributes, vec) if w != 0.0)
