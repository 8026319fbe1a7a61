"""Weight schemes λ for a condition S ⊆ A (the attributes y_c wins on), k = |A|.

  powerset  (eq. 3.2, default)  conditions: every non-empty S ⊆ A_≻;  λ_j = 1/|S| on S, 0 elsewhere
  onehot    (§6.2.1)            conditions: S = {a} for each a ∈ A_≻;   λ = e_a
  negative  (eq. A.1)           conditions as powerset;  λ_j = 1/|S| on S, −1/|S̄| on S̄ = A \\ S
  ratio     (eq. A.2, scalar)   conditions as powerset;  λ_j = (f_j(y_c)+1)/(f_j(y_r)+1) · 1/|S| on S
            (ratings are shifted by +1, i.e. Likert 0–4 → 1–5, so a 0 rating never divides by zero)

Conditions are bitmasks: bit j set ⇔ attribute j ∈ S.
"""

from __future__ import annotations

import numpy as np

SCHEMES = ("powerset", "onehot", "negative", "ratio")
MAX_POWERSET_ATTRIBUTES = 12  # 4095 conditions


def condition_masks(k: int, scheme: str) -> np.ndarray:
    """Candidate conditions as int64 bitmasks, ordered by size then mask: ``[M]``."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown weight scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if scheme == "onehot":
        return (1 << np.arange(k)).astype(np.int64)
    if k > MAX_POWERSET_ATTRIBUTES:
        raise ValueError(f"scheme {scheme!r} over {k} attributes makes 2^{k}-1 conditions per pair; "
                         f"use at most {MAX_POWERSET_ATTRIBUTES} attributes or --scheme onehot")
    masks = np.arange(1, 1 << k, dtype=np.int64)
    return masks[np.lexsort((masks, mask_bits(masks, k).sum(1)))]


def mask_bits(masks: np.ndarray, k: int) -> np.ndarray:
    """``[M]`` bitmasks -> ``[M, k]`` float32 0/1 membership."""
    return ((np.asarray(masks)[:, None] >> np.arange(k)) & 1).astype(np.float32)


def weights(masks: np.ndarray, k: int, scheme: str, chosen_ratings: np.ndarray | None = None,
            rejected_ratings: np.ndarray | None = None) -> np.ndarray:
    """``[E]`` condition masks -> ``[E, k]`` float32 λ. ``ratio`` needs the pair's ratings ``[E, k]``."""
    bits = mask_bits(masks, k)
    size = bits.sum(1, keepdims=True)
    lam = bits / size
    if scheme in ("powerset", "onehot"):
        return lam
    if scheme == "negative":
        rest = k - size
        return lam - (1.0 - bits) / np.where(rest > 0, rest, 1.0)
    if scheme == "ratio":
        if chosen_ratings is None or rejected_ratings is None:
            raise ValueError("scheme 'ratio' needs scalar ratings (eq. A.2); this data has pairwise labels only")
        ratio = (np.nan_to_num(chosen_ratings) + 1.0) / (np.nan_to_num(rejected_ratings) + 1.0)
        return (lam * np.where(bits > 0, ratio, 0.0)).astype(np.float32)
    raise ValueError(f"unknown weight scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
