"""Sequence log-probabilities without materialising full-vocabulary logits.

    log π(y | x) = Σ_{t ∈ response} log softmax(z_{t-1})[y_t]          z_{t-1} = head(h_{t-1}) ∈ R^V

Only the hidden states at response positions are gathered ([N, d], N = number of response tokens in the
batch); the head + log-softmax run on chunks of ``chunk_size`` of them under ``torch.utils.checkpoint``, so at
most one [chunk, V] fp32 logit block is alive at a time, in the forward *and* in the backward pass. A naive
``model(...).logits.float().log_softmax(-1)`` holds [B, T, V] (plus its softmax copy for backward): 8×256×49152
fp32 = 403 MB per copy for SmolLM2; a 1024-token chunk is 201 MB once (see docs/training.md for the measurement).

Works with a :class:`cmpo.models.plural.PluralLM` (λ-mixed heads, per-example ``weights`` [B, k]) and with a
plain Hugging Face causal LM, peft-wrapped or not.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint


def _is_plural(model) -> bool:
    from cmpo.models.plural import PluralLM

    return isinstance(model, PluralLM)


def _unwrap_peft(model):
    """(HF model with any LoRA layers injected, peft wrapper or None)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return model, None
    if isinstance(model, PeftModel):
        return model.get_base_model(), model
    return model, None


def _hidden_and_head(model, input_ids, attention_mask, weights, reference):
    """-> (hidden [B, T, d], head_fn(hidden [n, d], weights [n, k] | None) -> logits [n, V], context)."""
    if _is_plural(model):
        hidden = model.hidden_states(input_ids, attention_mask, weights=weights, reference=reference)
        head = model.head
        if reference:
            return hidden, lambda h, w: head.base_logits(h)
        return hidden, lambda h, w: head(h, w)
    if weights is not None:
        raise ValueError("per-example weights need a PluralLM; got a plain causal LM")
    hf, peft_model = _unwrap_peft(model)
    ctx = peft_model.disable_adapter() if (reference and peft_model is not None) else contextlib.nullcontext()
    with ctx:
        trunk = getattr(hf, hf.base_model_prefix)
        out = trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    head = hf.get_output_embeddings()

    def head_fn(h, w):
        return head(h.to(head.weight.dtype))

    return hidden, head_fn


def _chunk_logprobs(head_fn, h: torch.Tensor, w: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets) for one chunk: h [n, d], targets [n] -> [n] (fp32)."""
    logits = head_fn(h, w).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _chunk_logprobs_unlikelihood(head_fn, h, w, targets, cand, cand_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(targets) [n], Σ_c −log(1 − p(c)) [n]) for one chunk; cand [n, M] token ids, cand_mask [n, M]."""
    logits = head_fn(h, w).float()
    logz = torch.logsumexp(logits, dim=-1, keepdim=True)
    logp = (logits.gather(-1, targets.unsqueeze(-1)) - logz).squeeze(-1)
    p_cand = (logits.gather(-1, cand) - logz).exp().clamp(max=1 - 1e-6)
    return logp, -(torch.log1p(-p_cand) * cand_mask).sum(-1)


def previous_token_candidates(tokens: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unlikelihood candidates (Welleck et al. 2019): for response token i of a row, the distinct tokens
    earlier in the same response, minus token i itself.

    ``tokens`` [B, M] (response tokens, left-aligned), ``valid`` [B, M] -> (candidate ids [B, M, M] (row j of
    position i is ``tokens[b]``), mask [B, M, M] with mask[b, i, j] = j < i, token j is the first occurrence
    of its id, and tokens[b, j] ≠ tokens[b, i]).
    """
    m = tokens.shape[1]
    earlier = torch.ones(m, m, dtype=torch.bool, device=tokens.device).tril(-1)  # [i, j]: j < i
    same = tokens.unsqueeze(2) == tokens.unsqueeze(1)  # [B, i, j]
    first = ~(same & earlier).any(-1) & valid  # [B, j]: no equal token before j
    mask = earlier & first.unsqueeze(1) & ~same & valid.unsqueeze(2)
    return tokens.unsqueeze(1).expand(-1, m, -1), mask


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    reference: bool = False,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the response tokens, flattened.

    Returns ``(logp [N], row [N])``: ``logp[i]`` = log p(token t | <t) for the i-th response token (row-major
    order over [B, T]) and ``row[i]`` its batch index. ``response_mask[:, 0]`` must be 0 (nothing predicts it).
    """
    logp, _, rows = _token_terms(model, input_ids, attention_mask, response_mask, weights, reference, chunk_size,
                                 unlikelihood=False)
    return logp, rows


def token_logprobs_unlikelihood(model, input_ids, attention_mask, response_mask, weights=None,
                                chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`token_logprobs` plus each response token's unlikelihood term, from the same forward pass.

    Returns ``(logp [N], unlikelihood [N], row [N])`` with unlikelihood[i] = Σ_{c ∈ C_i} −log(1 − p(c | <t)),
    C_i = the distinct tokens earlier in the same response except token i itself (token-level unlikelihood,
    Welleck et al. 2019: it lowers the probability of repeating what the response already said, the failure
    behind greedy loops such as ``1.1.1.1…``).
    """
    return _token_terms(model, input_ids, attention_mask, response_mask, weights, False, chunk_size,
                        unlikelihood=True)


def _token_terms(model, input_ids, attention_mask, response_mask, weights, reference, chunk_size, unlikelihood):
    """-> (logp [N], unlikelihood [N] or None, rows [N]): one trunk pass, the head + softmax run per chunk."""
    if input_ids.shape != attention_mask.shape or input_ids.shape != response_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and "
                         f"response_mask {tuple(response_mask.shape)} must have the same [B, T] shape")
    if response_mask[:, 0].any():
        raise ValueError("response_mask[:, 0] is set: the first token has no prediction (prompt must be non-empty)")
    if _is_plural(model) and not reference and weights is None:
        weights = model.state.require()  # pin λ now: checkpoint recomputation runs outside any `steer` block
    hidden, head_fn = _hidden_and_head(model, input_ids, attention_mask, weights, reference)
    sel = response_mask[:, 1:].bool()  # position t-1 predicts token t
    h = hidden[:, :-1][sel]  # [N, d]
    targets = input_ids[:, 1:][sel]  # [N]
    rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(sel)[sel]
    w = weights[rows] if (weights is not None and weights.dim() == 2) else weights
    if w is not None:
        w = w.to(h.device)
    extra = ()
    if unlikelihood:  # per response token: the ids of its row's earlier tokens [N, M] and which count [N, M]
        pos = (sel.cumsum(1) - 1)[sel]
        m = int(sel.sum(1).max()) if sel.any() else 0
        tok = targets.new_zeros(input_ids.shape[0], m)
        valid = torch.zeros_like(tok, dtype=torch.bool)
        tok[rows, pos], valid[rows, pos] = targets, True
        cand, cand_mask = previous_token_candidates(tok, valid)
        extra = (cand[rows, pos], cand_mask[rows, pos].float())
    fn = _chunk_logprobs_unlikelihood if unlikelihood else _chunk_logprobs
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in _head_params(model)))
    pieces = []
    for start in range(0, h.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        wc = w[sl] if (w is not None and w.dim() == 2) else w
        args = (head_fn, h[sl], wc, targets[sl], *(x[sl] for x in extra))
        pieces.append(checkpoint(fn, *args, use_reentrant=False) if needs_grad else fn(*args))
    empty = h.new_zeros(0, dtype=torch.float32)
    if not unlikelihood:
        return (torch.cat(pieces) if pieces else empty), None, rows
    if not pieces:
        return empty, empty, rows
    return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces]), rows


def _head_params(model):
    if _is_plural(model):
        return model.head.parameters()
    hf, _ = _unwrap_peft(model)
    return hf.get_output_embeddings().parameters()


def sequence_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    reference: bool = False,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Σ_{t: response_mask[b,t]=1} log p(input_ids[b,t] | input_ids[b,<t]) -> [B] (fp32).

    ``weights``: λ ([k] or [B, k]) for a PluralLM; ``reference=True`` scores with π_ref exactly (PluralLM:
    adapters off + base head; peft model: adapters disabled).
    """
    logp, rows = token_logprobs(model, input_ids, attention_mask, response_mask, weights, reference, chunk_size)
    out = torch.zeros(input_ids.shape[0], dtype=logp.dtype, device=logp.device)
    return out.index_add(0, rows, logp)


def mean_logprobs(model, input_ids, attention_mask, response_mask, weights=None, reference=False,
                  chunk_size: int = 1024) -> torch.Tensor:
    """Per-token mean of the response log-probs -> [B] (rows with no response token give 0)."""
    total = sequence_logprobs(model, input_ids, attention_mask, response_mask, weights, reference, chunk_size)
    return total / response_mask[:, 1:].sum(1).clamp(min=1).to(total.dtype)


def collate_sequences(prompts: list[list[int]], responses: list[list[int]], pad_id: int = 0,
                      max_length: int | None = None) -> dict[str, torch.Tensor]:
    """(prompt_ids, response_ids) lists -> right-padded ``input_ids``, ``attention_mask``, ``response_mask`` [B, T].

    Masks come from lengths, never from token ids (pad = eos for SmolLM2; the final ``<|im_end|>`` of the
    response stays in ``response_mask``). ``max_length`` truncates the response end.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    seqs, plens = [], []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if len(p) == 0:
            raise ValueError(f"row {i}: empty prompt (the first response token would have no prediction)")
        s = list(p) + list(r)
        if max_length is not None:
            s = s[:max_length]
        seqs.append(s)
        plens.append(min(len(p), len(s)))
    width = max(len(s) for s in seqs) if seqs else 0
    b = len(seqs)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, width), dtype=torch.long)
    response_mask = torch.zeros((b, width), dtype=torch.long)
    for i, (s, pl) in enumerate(zip(seqs, plens)):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
        response_mask[i, pl : len(s)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}
