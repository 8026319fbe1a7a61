"""Switch off one attribute's learned parts of a trained plural model, to see which part carries an effect.

For attribute j the learned parts are its head delta (``lowrank``: B_j, so W_j = W0 + s·B_j A_j; ``full``:
W_j itself) and, with ``adapter="plural"``, its adapter deltas B_j in every wrapped projection. Inside
``with ablated(plural, "structure", parts=("head",)):`` those are reset to their initial values (B_j = 0,
W_j = W0), so under λ = e_j the model runs with the other part only; with both parts ablated it is exactly
the reference model. Parameters are changed in place under ``no_grad`` (which bumps their version counters,
so the head's fused-weight cache is rebuilt) and restored on exit, also on error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from cmpo.models.layers import PluralLoRALinear

PARTS = ("head", "adapters")


def _slices(plural, j: int, parts: Sequence[str]) -> list[tuple[torch.Tensor, tuple, torch.Tensor]]:
    """(parameter, index, initial value) for attribute j's learned parts."""
    out = []
    if "head" in parts:
        head = plural.head
        if head.mode == "full":
            out.append((head.heads, (j,), head.base_weight.detach()))
        else:
            out.append((head.B, (slice(None), j), torch.zeros(())))
    if "adapters" in parts:
        if plural.config.adapter != "plural":
            raise ValueError(f"ablating 'adapters' needs adapter='plural' (this model's adapter is "
                             f"{plural.config.adapter!r}: a shared adapter is not one attribute's part)")
        for m in plural.model.modules():
            if isinstance(m, PluralLoRALinear):
                out.append((m.plural_B, (slice(None), slice(j * m.rank, (j + 1) * m.rank)), torch.zeros(())))
    return out


@contextlib.contextmanager
def ablated(plural, attribute: str, parts: Sequence[str] = PARTS) -> Iterator[None]:
    """Reset ``attribute``'s ``parts`` (a subset of ``("head", "adapters")``) to their initial values."""
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {list(parts)}")
    if attribute not in plural.attributes:
        raise ValueError(f"unknown attribute {attribute!r}; the model's attributes are {plural.attributes}")
    slices = _slices(plural, plural.attributes.index(attribute), parts)
    saved = [param[idx].clone() for param, idx, _ in slices]
    try:
        with torch.no_grad():
            for param, idx, init in slices:
                param[idx] = init.to(param.dtype)
        yield
    finally:
        with torch.no_grad():
            for (param, idx, _), value in zip(slices, saved):
                param[idx] = value
