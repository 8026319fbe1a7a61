"""Logits processors for ``generate``: the generated-token repetition penalty and a nucleus (top-p) filter that
does not sort the whole vocabulary.

transformers' ``TopPLogitsWarper`` sorts all V logits of every row at every step. On a CPU with SmolLM2's
V = 49152 that sort is about a quarter of the time of sampling a batch (measured: 8.5 s of 35.7 s for 50 rows ×
80 tokens); the nucleus itself is rarely more than a few hundred tokens. :class:`NucleusFilter` looks for it
among the ``k`` largest logits (``torch.topk``) and sorts the full row only when those hold less than ``top_p``
of the mass. It removes the same tokens as ``TopPLogitsWarper`` (up to float rounding at the boundary), so
seeded sampling draws the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

NUCLEUS_K = 512  # candidates searched for the nucleus before falling back to a full sort


class GeneratedRepetitionPenalty(LogitsProcessor):
    """CTRL-style penalty (logit / p if > 0 else logit · p) on tokens already *generated* in the row; prompt
    tokens (the first ``prompt_len`` columns) and ``exempt`` (EOS) are never penalised."""

    def __init__(self, prompt_len: int, penalty: float, exempt: Sequence[int]):
        self.prompt_len, self.penalty, self.exempt = prompt_len, penalty, list(exempt)

    def __call__(self, input_ids, scores):
        gen = input_ids[:, self.prompt_len:]
        if gen.shape[1] == 0:
            return scores
        picked = scores.gather(1, gen)
        penalised = picked.where(picked < 0, picked / self.penalty)
        penalised = penalised.where(picked >= 0, picked * self.penalty)
        keep = gen.new_zeros(gen.shape, dtype=bool)
        for t in self.exempt:
            keep |= gen == t
        return scores.scatter(1, gen, penalised.where(~keep, picked))


class NucleusFilter(LogitsProcessor):
    """Keep the smallest set of most likely tokens whose probability sums to ≥ ``top_p``; others -> -inf.

    scores [B, V] -> [B, V]. Token at descending rank r is kept iff the mass strictly above it is < top_p
    (rank 0 always), the rule of ``TopPLogitsWarper`` (which removes a token when the ascending cumulative
    mass up to it is ≤ 1 − top_p). Rows whose ``k`` largest probabilities sum to less than ``top_p`` (the
    nucleus may reach past them) go through ``TopPLogitsWarper`` itself.
    """

    def __init__(self, top_p: float, k: int = NUCLEUS_K):
        if not 0 < top_p < 1:
            raise ValueError(f"top_p must be in (0, 1), got {top_p}")
        self.top_p, self.k = float(top_p), int(k)
        self._full = TopPLogitsWarper(top_p=top_p)

    def __call__(self, input_ids, scores):
        k = min(self.k, scores.shape[-1])
        top, idx = scores.topk(k, dim=-1)  # [B, k], descending
        p = (top - scores.logsumexp(-1, keepdim=True)).exp()
        above = p.cumsum(-1) - p  # mass strictly above each of the k tokens
        keep = above < self.top_p
        keep[:, 0] = True
        out = torch.full_like(scores, float("-inf")).scatter(1, idx, top.masked_fill(~keep, float("-inf")))
        wide = p.sum(-1) < self.top_p  # the nucleus may extend past the k largest
        if wide.any():
            out[wide] = self._full(input_ids[wide], scores[wide])
        return out


def make_processors(prompt_len: int, repetition_penalty: float, exempt: Sequence[int], do_sample: bool = False,
                    temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0) -> LogitsProcessorList:
    """Processors ``generate_rows`` passes to ``generate``, in transformers' order (penalty, temperature, top-p).

    With sampling, top-p and no top-k, temperature and the nucleus are applied here, so the caller must set
    the GenerationConfig's ``temperature``/``top_p``/``top_k`` to no-ops (:func:`sampling_in_processors` says
    when); otherwise transformers applies its own warpers after these."""
    out = LogitsProcessorList()
    if repetition_penalty != 1.0:
        out.append(GeneratedRepetitionPenalty(prompt_len, repetition_penalty, exempt))
    if sampling_in_processors(do_sample, top_p, top_k):
        if temperature != 1.0:
            out.append(TemperatureLogitsWarper(temperature))
        out.append(NucleusFilter(top_p, NUCLEUS_K))
    return out


def sampling_in_processors(do_sample: bool, top_p: float, top_k: int) -> bool:
    return do_sample and top_p < 1.0 and not top_k
