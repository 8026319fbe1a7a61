"""Conditioned generation for evaluation: greedy outputs under per-prompt conditions (λ, ACM values or none),
and a cache so win-rates, the effect matrix and the Pareto sweep share them."""

from __future__ import annotations

from collections.abc import Sequence

from cmpo.eval.metrics import Condition


def generate_conditioned(model, prompts: Sequence, conditions: Condition | Sequence[Condition],
                         max_new_tokens: int = 512, batch_size: int = 8, progress: bool = False,
                         mix_conditions: bool = False, **options) -> tuple[list[str], list[bool]]:
    """Greedy (unless ``do_sample=True`` in ``options``) generation under per-prompt conditions.

    Returns ``(texts, finished)``; ``finished[i]`` is False when row i hit ``max_new_tokens`` without EOS or
    a stop string. Rows with equal conditions share batches (one fused head per plural λ), unless
    ``mix_conditions``: then batches are filled in row order with per-row λs — the same greedy outputs, and
    fewer, fuller batches when each condition has fewer rows than ``batch_size`` (CPU decoding cost per row
    falls with the batch).
    """
    from cmpo.serve.generate import GenerationOptions, Row

    n = len(prompts)
    conds = [conditions] * n if isinstance(conditions, Condition) else list(conditions)
    if len(conds) != n:
        raise ValueError(f"{n} prompts but {len(conds)} conditions")
    opts = GenerationOptions(max_new_tokens=max_new_tokens, **options).validate()
    rows = []
    for p, c in zip(prompts, conds):
        vec = model.resolve_weights(list(c.weights) if c.weights is not None else None)
        acm = c.acm_values if model.kind == "steerlm" else None
        rows.append(Row(model.encode_prompt(p, acm), weights=vec, max_new_tokens=max_new_tokens,
                        stop=list(opts.stop)))
    groups: dict[Condition, list[int]] = {}
    for i, c in enumerate(conds):
        groups.setdefault(None if mix_conditions else c, []).append(i)
    chunks = [[rows[i] for i in idx[s:s + batch_size]] for idx in groups.values()
              for s in range(0, len(idx), max(1, batch_size))]
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="generate", unit="batch")
    for chunk in chunks:
        model.generate_rows(chunk, opts)
    return [r.text for r in rows], [r.finish_reason == "stop" for r in rows]


class GenerationCache:
    """Memoised conditioned generations, so win-rates, the effect matrix and the Pareto sweep share outputs.

    Key: (model identity, reference view, condition, prompt index). ``get`` -> (texts, finished).
    """

    def __init__(self, max_new_tokens: int = 512, batch_size: int = 8, progress: bool = False, **options):
        self.max_new_tokens, self.batch_size, self.progress, self.options = (max_new_tokens, batch_size,
                                                                             progress, options)
        self._store: dict[tuple, tuple[str, bool]] = {}
        self._rows: list[dict] = []

    def get(self, model, prompts: Sequence, cond: Condition, keys: Sequence | None = None):
        keys = list(range(len(prompts))) if keys is None else list(keys)
        self.prefetch(model, prompts, [cond], keys)
        tag = self._tag(model, cond)
        got = [self._store[tag + (k,)] for k in keys]
        return [g[0] for g in got], [g[1] for g in got]

    def prefetch(self, model, prompts: Sequence, conds: Sequence[Condition], keys: Sequence | None = None) -> None:
        """Generate every (condition, prompt) not stored yet in one pass whose batches mix the conditions
        (:func:`generate_conditioned` with ``mix_conditions``); later ``get`` calls read the store."""
        keys = list(range(len(prompts))) if keys is None else list(keys)
        is_ref = bool(getattr(model, "is_reference", False))
        todo = [(c, i) for c in dict.fromkeys(conds) for i, k in enumerate(keys)
                if self._tag(model, c) + (k,) not in self._store]
        if not todo:
            return
        texts, fin = generate_conditioned(model, [prompts[i] for _, i in todo], [c for c, _ in todo],
                                          self.max_new_tokens, self.batch_size, self.progress,
                                          mix_conditions=True, **self.options)
        for (c, i), t, f in zip(todo, texts, fin):
            self._store[self._tag(model, c) + (keys[i],)] = (t, f)
            self._rows.append({"model": str(getattr(model, "path", "") or ""), "reference": is_ref,
                               "condition": "reference" if is_ref else c.describe(), "prompt": prompts[i],
                               "response": t, "finished": f})

    @staticmethod
    def _tag(model, cond: Condition) -> tuple:
        return (id(model.model), bool(getattr(model, "is_reference", False)), cond)

    def rows(self) -> list[dict]:
        """Every generation made so far, in order: ``{model, reference, condition, prompt, response, finished}``."""
        return list(self._rows)
