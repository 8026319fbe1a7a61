"""The λ-mixed layers of the plural model: :class:`PluralHead` (k LM heads) and :class:`PluralLoRALinear`
(per-attribute LoRA deltas), both reading the current weight vector from a shared :class:`SteeringState`.
See :mod:`cmpo.models.plural` for the maths."""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmpo.models.steering import SteeringError

HeadMode = Literal["full", "lowrank"]


class SteeringState:
    """The weight vector the plural layers read: ``[k]`` (one λ for the batch) or ``[B, k]`` (per example).

    ``reference=True`` makes every plural layer behave like the base model.
    """

    def __init__(self):
        self.weights: torch.Tensor | None = None
        self.reference: bool = False

    def snapshot(self) -> tuple[torch.Tensor | None, bool]:
        return self.weights, self.reference

    @contextlib.contextmanager
    def use(self, weights: torch.Tensor | None = None, reference: bool = False):
        saved = self.snapshot()
        self.weights, self.reference = weights, reference
        try:
            yield self
        finally:
            self.weights, self.reference = saved

    def require(self) -> torch.Tensor:
        if self.weights is None:
            raise SteeringError(
                "no steering weights set: pass weights=... or use `with model.steer(weights):`"
            )
        return self.weights


def _expand(weights: torch.Tensor, lead_shape: torch.Size) -> torch.Tensor:
    """Broadcast λ ([k] or [B, k]) against activations with leading dims ``lead_shape`` -> [..., k]."""
    if weights.dim() == 1:
        return weights.view(*([1] * len(lead_shape)), -1)
    if weights.dim() == 2 and len(lead_shape) >= 1:
        if weights.shape[0] != lead_shape[0]:
            raise SteeringError(
                f"per-example weights have batch {weights.shape[0]} but activations have batch {lead_shape[0]}"
            )
        return weights.view(weights.shape[0], *([1] * (len(lead_shape) - 1)), weights.shape[1])
    if weights.shape[:-1] == lead_shape:
        return weights
    raise SteeringError(f"cannot broadcast weights {tuple(weights.shape)} to activations {tuple(lead_shape)}")


class PluralHead(nn.Module):
    """k LM heads mixed by λ. ``forward(hidden [.., d], weights [k] | [B, k] | None) -> logits [.., V]``.

    Computation runs in the head's dtype (fp32 by default) whatever the trunk's dtype.
    """

    def __init__(self, base_weight: torch.Tensor, k: int, mode: HeadMode, rank: int, alpha: float,
                 state: SteeringState, dtype: torch.dtype = torch.float32, seed: int = 0, share_base: bool = False):
        super().__init__()
        vocab, hidden = base_weight.shape
        self.k, self.mode, self.rank, self.state = k, mode, rank, state
        self.scaling = alpha / rank if mode == "lowrank" else 1.0
        # W0 is frozen: share the base head's storage when nothing else can modify it (saves a V×d copy).
        w0 = base_weight.detach()
        w0 = w0 if (share_base and w0.dtype == dtype) else w0.to(dtype).clone()
        self.base_weight = nn.Parameter(w0, requires_grad=False)
        self._fused_cache: tuple | None = None
        if mode == "full":
            self.heads = nn.Parameter(w0.unsqueeze(0).repeat(k, 1, 1))  # [k, V, d]
        else:
            gen = torch.Generator().manual_seed(seed)
            bound = 1.0 / math.sqrt(hidden)  # peft's LoRA A init: kaiming_uniform(a=√5) == U(±1/√fan_in)
            a = (torch.rand(k, rank, hidden, generator=gen, dtype=torch.float64) * 2 - 1) * bound
            self.A = nn.Parameter(a.to(dtype))  # [k, r, d]
            self.B = nn.Parameter(torch.zeros(vocab, k, rank, dtype=dtype))  # [V, k, r]

    @property
    def vocab_size(self) -> int:
        return self.base_weight.shape[0]

    def base_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden.to(self.base_weight.dtype), self.base_weight)

    def forward(self, hidden: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if self.state.reference and weights is None:
            return self.base_logits(hidden)
        w = self.state.require() if weights is None else weights
        h = hidden.to(self.base_weight.dtype)
        w = _expand(w.to(h.dtype), h.shape[:-1])  # [.., k]
        if self.mode == "full":
            logits = None
            for j in range(self.k):  # one [.., V] buffer at a time
                term = w[..., j : j + 1] * F.linear(h, self.heads[j])
                logits = term if logits is None else logits + term
            return logits
        u = F.linear(h, self.A.view(self.k * self.rank, -1))  # [.., k·r]
        u = (u.view(*u.shape[:-1], self.k, self.rank) * w.unsqueeze(-1)).flatten(-2)
        # logits = (Σλ)·h W0ᵀ + s·u Bᵀ, accumulated in place into one [.., V] buffer (linear's output is not
        # saved for its backward, so the in-place updates are autograd-safe and save two V-sized temporaries)
        logits = F.linear(h, self.base_weight)
        w_sum = w.sum(-1, keepdim=True)
        if not bool((w_sum == 1).all()):
            logits = logits.mul_(w_sum)
        flat = logits.view(-1, self.vocab_size)
        flat.addmm_(u.reshape(-1, u.shape[-1]), self.B.view(self.vocab_size, -1).t(), alpha=self.scaling)
        return logits

    def head_weight(self, j: int) -> torch.Tensor:
        """W_j: [V, d]."""
        if self.mode == "full":
            return self.heads[j]
        return self.base_weight + self.scaling * self.B[:, j, :] @ self.A[j]

    def _param_version(self) -> tuple:
        params = (self.heads,) if self.mode == "full" else (self.A, self.B)
        return tuple((p.data_ptr(), p._version) for p in (self.base_weight, *params))

    @torch.no_grad()
    def fused_weight(self, weights: torch.Tensor) -> torch.Tensor:
        """Σ_j λ_j W_j as one [V, d] matrix (computed in float64 for exactness, returned in head dtype).

        The last result is cached, keyed by λ and the parameters' in-place version counters, so repeated
        generation with the same steering does not rebuild it.
        """
        key = (tuple(weights.detach().cpu().tolist()), self._param_version())
        if self._fused_cache is not None and self._fused_cache[0] == key:
            return self._fused_cache[1]
        fused = self._fused_weight(weights)
        self._fused_cache = (key, fused)
        return fused

    def _fused_weight(self, weights: torch.Tensor) -> torch.Tensor:
        w = weights.to(torch.float64)
        if self.mode == "full":
            fused = torch.einsum("j,jvd->vd", w, self.heads.to(torch.float64))
        else:
            a = self.A.to(torch.float64) * w.view(-1, 1, 1)  # [k, r, d]
            b = self.B.to(torch.float64).view(self.vocab_size, -1)
            fused = w.sum() * self.base_weight.to(torch.float64) + self.scaling * b @ a.view(-1, a.shape[-1])
        return fused.to(self.base_weight.dtype)


class PluralLoRALinear(nn.Module):
    """A linear layer plus per-attribute LoRA deltas mixed by λ: y = x W0ᵀ + s·((x Aᵀ) ⊙ λ) Bᵀ."""

    def __init__(self, base_layer: nn.Linear, k: int, rank: int, alpha: float, state: SteeringState,
                 seed: int = 0):
        super().__init__()
        self.base_layer, self.k, self.rank, self.state = base_layer, k, rank, state
        self.scaling = alpha / rank
        d_out, d_in = base_layer.weight.shape
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(d_in)
        a = (torch.rand(k * rank, d_in, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        dtype = base_layer.weight.dtype
        self.plural_A = nn.Parameter(a.to(dtype))  # [k·r, d_in]
        self.plural_B = nn.Parameter(torch.zeros(d_out, k * rank, dtype=dtype))  # [d_out, k·r]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.state.reference or self.state.weights is None:
            return y
        w = _expand(self.state.weights.to(x.dtype), x.shape[:-1])  # [.., k]
        u = F.linear(x, self.plural_A)
        u = (u.view(*u.shape[:-1], self.k, self.rank) * w.unsqueeze(-1)).flatten(-2)
        return y + self.scaling * F.linear(u, self.plural_B)

    @torch.no_grad()
    def delta_weight(self, weights: torch.Tensor) -> torch.Tensor:
        """s·Σ_j λ_j B_j A_j: [d_out, d_in] (float64)."""
        lam = weights.to(torch.float64).repeat_interleave(self.rank)
        return self.scaling * self.plural_B.to(torch.float64) @ (self.plural_A.to(torch.float64) * lam[:, None])
