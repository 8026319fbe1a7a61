"""Preference and SFT losses (thesis eq. 2.10–2.11, 3.3).

Implicit rewards and margin (per pair, all log-probs are response sums [B]):

    r_c = β (log π(y_c|x) − log π_ref(y_c|x)),   r_r = β (log π(y_r|x) − log π_ref(y_r|x)),   Δ = r_c − r_r

``sigmoid`` (cDPO, conservative DPO with label-flip rate ε; ε = 0 is plain DPO):

    L = −(1−ε) · log σ(Δ) − ε · log σ(−Δ)

  With ε > 0 the optimum is finite (Δ* = log((1−ε)/ε)): cDPO caps the margin.

``ipo`` (Azar et al. 2023), with h = Δ/β the un-scaled log-ratio difference:

    L = (h − 1/(2β))²

  It regresses the margin to a target instead of pushing σ(Δ) to 1.

Optional chosen-NLL term (RPO, Pang et al. 2024; TRL's ``rpo_alpha``), α = ``chosen_nll_weight``:

    L += α · (−log π(y_c|x)) / |y_c|

  It keeps the chosen responses likely while the margin grows, a guard against degenerate reward hacking.

For CMPO the log-probs of both responses are computed under the example's own λ; the loss is identical.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LossType = Literal["sigmoid", "ipo"]


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.5,
    epsilon: float = 0.1,
    loss_type: LossType = "sigmoid",
    chosen_nll_weight: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-> (per-pair loss [B], metrics: rewards/chosen, rewards/rejected, rewards/margins [B],
    rewards/accuracies [B] (1 where Δ > 0), and nll/chosen_per_token [B] when ``chosen_nll_weight`` > 0).
    ``chosen_tokens`` [B]: response token counts |y_c| (needed for the NLL term)."""
    if not 0.0 <= epsilon < 0.5:
        raise ValueError(f"epsilon must be in [0, 0.5), got {epsilon}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if chosen_nll_weight < 0:
        raise ValueError(f"chosen_nll_weight must be >= 0, got {chosen_nll_weight}")
    if chosen_nll_weight and chosen_tokens is None:
        raise ValueError("chosen_nll_weight > 0 needs chosen_tokens (the chosen responses' token counts)")
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    delta = chosen - rejected
    if loss_type == "sigmoid":
        loss = -(1 - epsilon) * F.logsigmoid(delta) - epsilon * F.logsigmoid(-delta)
    elif loss_type == "ipo":
        loss = (delta / beta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}: use sigmoid (DPO/cDPO) or ipo")
    metrics = {
        "rewards/chosen": chosen.detach(),
        "rewards/rejected": rejected.detach(),
        "rewards/margins": delta.detach(),
        "rewards/accuracies": (delta.detach() > 0).float(),
    }
    if chosen_nll_weight:
        nll = -policy_chosen / chosen_tokens.clamp(min=1).to(policy_chosen.dtype)
        loss = loss + chosen_nll_weight * nll
        metrics["nll/chosen_per_token"] = nll.detach()
    return loss, metrics


def sft_loss_sum(token_logp: torch.Tensor) -> torch.Tensor:
    """Σ −log p over response tokens (divide by the token count of the whole accumulated batch)."""
    return -token_logp.sum()
