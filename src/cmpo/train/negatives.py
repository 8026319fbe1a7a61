"""On-policy negatives: pairs whose rejected response is the model's own degenerate output.

Preference pairs built from sampled candidates never contain the failure a trained policy drifts into under
greedy decoding — e.g. a structure head that opens every answer with ``1.`` and then loops ``1.1.1.1…`` on prompts
that have no list to write. A round of on-policy negatives finds those outputs and trains against them:

1. for each attribute j and each prompt (the training prompts, plus optional unlabelled ones), generate greedily
   under λ = e_j;
2. every output :func:`cmpo.data.quality.is_degenerate` flags becomes a pair (x, y_c, ŷ, e_j) rejecting the
   model's own output ŷ. The chosen y_c is the chosen response of the prompt's e_j training pair when it has
   one, else the policy's own sampled answer under e_j that is not degenerate (label-free; it keeps the steer),
   else the reference policy's greedy output (:func:`find_negatives`);
3. train on those pairs mixed with ``replay`` × as many original pairs (so the steer is not unlearned).

The loss is the run's preference loss: the policy gives its own greedy loop a higher likelihood than π_ref does
(it produced it), so the pair's implicit reward margin starts low and the gradient pushes the loop down under
its own λ while the chosen side keeps the attribute.
Related: sequence-level unlikelihood on the model's continuations (Welleck et al. 2019) and iterative / online
DPO, which likewise take rejected responses from the current policy.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from cmpo.data.quality import is_degenerate, prose_score

PAIR_FIELDS = ("prompt", "chosen", "rejected", "chosen_finished", "rejected_finished", "weights")
CHOSEN_SELECT = ("first", "cleanest")  # how a sampled chosen is picked among the non-degenerate draws


@dataclass
class NegativeSearch:
    """What one search found: the new pairs and, per attribute, counts of what happened to each output."""

    pairs: list[dict] = field(default_factory=list)  # PAIR_FIELDS rows
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> str:
        return "; ".join(f"{a} {c['degenerate']}/{c['prompts']} → {c['pairs']} pairs (chosen: labelled "
                         f"{c.get('labelled', 0)}, sampled {c.get('sampled', 0)}, reference {c.get('reference', 0)}"
                         + (f"; {c['rejected_samples']} rejected samples" if c.get("rejected_samples") else "") + ")"
                         for a, c in self.counts.items())


def one_hot_rows(weights: list[list[float]], k: int) -> dict[int, list[int]]:
    """Attribute index j -> row indices whose λ is exactly e_j (the single-attribute conditions)."""
    out: dict[int, list[int]] = {j: [] for j in range(k)}
    for i, w in enumerate(weights):
        on = [j for j, v in enumerate(w) if v != 0]
        if len(on) == 1 and w[on[0]] == 1:
            out[on[0]].append(i)
    return out


def _key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _generate(steerable, prompts: list, weights: list, options, batch_size: int, bar=None) -> list:
    """Outputs for ``prompts`` (``weights``: one λ per prompt, or None for the reference) -> [(text, finished)]."""
    from cmpo.serve.generate import Row

    out = []
    for i in range(0, len(prompts), batch_size):
        rows = [Row(steerable.encode_prompt(p), weights=w, max_new_tokens=options.max_new_tokens)
                for p, w in zip(prompts[i:i + batch_size], weights[i:i + batch_size])]
        steerable.generate_rows(rows, options)
        out += [(r.text, r.finish_reason != "length") for r in rows]
        if bar is not None:
            bar.update(len(rows))
    return out


def find_negatives(steerable, rows, attributes: list[str], extra_prompts: list | None = None,
                   max_new_tokens: int = 64, batch_size: int = 16, samples: int = 4, temperature: float = 0.8,
                   seed: int = 0, progress: bool = False, sample_batch_size: int | None = None,
                   reject_samples: bool = False, chosen_select: str = "first") -> NegativeSearch:
    """Search the policy's greedy outputs under each one-hot λ for degenerate ones and pair them.

    ``steerable``: a plural :class:`~cmpo.serve.generate.SteerableModel`; ``rows``: conditioned training pairs
    (``prompt``, ``chosen``, ``weights``, optional ``chosen_finished``); ``extra_prompts``: unlabelled prompts.
    The chosen response of a pair rejecting ŷ (prompt x, λ = e_j), first that exists:

    * ``labelled``: the chosen response of x's e_j training pair;
    * ``sampled``: one of ``samples`` sampled outputs of the policy under e_j (``temperature``, top-p 0.95) that
      is not degenerate — the model's own attribute-j answer without the loop, so the pair removes the failure,
      not the steer. ``chosen_select``: ``"first"`` such output, or ``"cleanest"``: the one with the highest
      :func:`~cmpo.data.quality.prose_score` (first on ties), so a near-loop that passes the guard, such as
      ``1. 1.1.1: Use a wet cloth…``, is not taught as the chosen answer;
    * ``reference``: the reference policy's greedy output, if not degenerate; else no pair.

    ``reject_samples``: the degenerate ones among those sampled outputs (distinct from the greedy one) become
    rejected responses too, against the same chosen — more of the policy's own failures per pair budget.

    ``batch_size``: rows per greedy batch (λs mixed); ``sample_batch_size`` (default ``batch_size``): rows per
    sampling batch — seeded draws depend on how rows are batched, so fixing it keeps the chosens reproducible.
    Counts per attribute: ``prompts`` generated, ``degenerate`` flagged, ``pairs`` made, per chosen source, and
    ``rejected_samples`` (pairs whose rejected side is a sampled output)."""
    from cmpo.serve.generate import GenerationOptions

    if chosen_select not in CHOSEN_SELECT:
        raise ValueError(f"negatives.chosen_select must be one of {CHOSEN_SELECT}, got {chosen_select!r}")
    k = len(attributes)
    one_hot = [[1.0 if i == j else 0.0 for i in range(k)] for j in range(k)]
    labelled: dict[tuple[int, str], int] = {}  # (j, prompt key) -> row of its e_j pair
    for j, idx in one_hot_rows(rows["weights"], k).items():
        for i in idx:
            labelled.setdefault((j, _key(rows[i]["prompt"])), i)
    prompts, seen = [], set()
    for p in list(rows["prompt"]) + list(extra_prompts or []):
        if _key(p) not in seen:
            seen.add(_key(p))
            prompts.append(p)
    greedy = GenerationOptions(max_new_tokens=max_new_tokens).validate()
    sampling = GenerationOptions(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                 top_p=0.95, seed=seed).validate()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=k * len(prompts), desc="on-policy negatives", unit="output")
    flagged: list[tuple[int, object, str, bool]] = []
    found = NegativeSearch(counts={a: {"prompts": len(prompts), "degenerate": 0, "pairs": 0, "labelled": 0,
                                       "sampled": 0, "reference": 0, "rejected_samples": 0} for a in attributes})
    # one list over every (attribute, prompt): batches mix λs (per-row mixing gives the same greedy outputs as
    # one fused λ per batch, and full batches are ~1.5x faster on CPU than one short batch per attribute)
    jobs = [(j, p) for j in range(k) for p in prompts]
    outs = _generate(steerable, [p for _, p in jobs], [one_hot[j] for j, _ in jobs], greedy, batch_size, bar)
    for (j, p), (text, finished) in zip(jobs, outs):
        if is_degenerate(text):
            found.counts[attributes[j]]["degenerate"] += 1
            if text:  # an empty output has no tokens to push down
                flagged.append((j, p, text, finished))
    if bar is not None:
        bar.close()

    chosen: dict[tuple[int, str], tuple[str, bool, str]] = {}  # (j, prompt key) -> (text, finished, source)
    for j, p, _, _ in flagged:
        i = labelled.get((j, _key(p)))
        if i is not None:
            chosen[j, _key(p)] = (rows[i]["chosen"], bool(rows[i].get("chosen_finished", True)), "labelled")
    todo = [(j, p) for j, p, _, _ in flagged if (j, _key(p)) not in chosen]
    more_rejected: dict[tuple[int, str], list[tuple[str, bool]]] = {}
    if todo and samples > 0:
        outs = _generate(steerable, [p for _, p in todo for _ in range(samples)],
                         [one_hot[j] for j, _ in todo for _ in range(samples)], sampling,
                         sample_batch_size or batch_size)
        for n, (j, p) in enumerate(todo):
            drawn = outs[n * samples:(n + 1) * samples]
            ok = [o for o in drawn if o[0] and not is_degenerate(o[0])]
            if ok:
                best = max(ok, key=lambda o: prose_score(o[0])) if chosen_select == "cleanest" else ok[0]
                chosen[j, _key(p)] = (*best, "sampled")
            if reject_samples:
                bad = {o[0]: o for o in drawn if o[0] and is_degenerate(o[0])}  # distinct texts, first kept
                more_rejected[j, _key(p)] = list(bad.values())
    todo = [(j, p) for j, p in todo if (j, _key(p)) not in chosen]
    if todo:
        unique = list({_key(p): p for _, p in todo}.values())
        ref = dict(zip(map(_key, unique), _generate(steerable.reference(), unique, [None] * len(unique), greedy,
                                                     batch_size)))
        for j, p in todo:
            if not is_degenerate(ref[_key(p)][0]):
                chosen[j, _key(p)] = (*ref[_key(p)], "reference")
    for j, p, text, finished in flagged:
        if (j, _key(p)) not in chosen:
            continue
        c_text, c_finished, source = chosen[j, _key(p)]
        rejected = [(text, finished)] + [o for o in more_rejected.get((j, _key(p)), []) if o[0] != text]
        for r_text, r_finished in rejected:
            found.pairs.append({"prompt": p, "chosen": c_text, "rejected": r_text, "chosen_finished": c_finished,
                                "rejected_finished": r_finished, "weights": one_hot[j]})
        c = found.counts[attributes[j]]
        c["pairs"] += len(rejected)
        c[source] += 1
        c["rejected_samples"] += len(rejected) - 1
    return found


def with_replay(negatives: list[dict], rows, replay: float, seed: int) -> list[dict]:
    """The round's training rows (PAIR_FIELDS): the negatives plus ``round(replay · len(negatives))`` original
    rows drawn without replacement (capped at all of them)."""
    if replay < 0:
        raise ValueError(f"negatives.replay must be >= 0, got {replay}")
    n = min(len(rows), round(replay * len(negatives)))
    picked = sorted(random.Random(seed).sample(range(len(rows)), n))
    originals = [{f: rows[i][f] if f in rows[i] else True for f in PAIR_FIELDS} for i in picked]
    for row in originals:  # only the optional *_finished flags may be missing (default: finished)
        if not all(isinstance(row[f], (str, list)) for f in ("prompt", "chosen", "rejected", "weights")):
            raise ValueError("negatives: replayed pairs need 'prompt', 'chosen', 'rejected' and 'weights'")
    return list(negatives) + originals


def read_prompts(path) -> list[list[dict]]:
    """Unlabelled prompts for the search: a JSONL file whose rows have ``prompt`` — a string (one user turn) or
    a conversation ending with a user message (the format ``cmpo generate --input`` reads)."""
    from cmpo.io import read_prompt_rows
    from cmpo.train.data import _check_prompt

    out = []
    for row in read_prompt_rows(path):
        p = row["prompt"]
        p = [{"role": "user", "content": p}] if isinstance(p, str) else p
        _check_prompt(p, f"{path}: row {row['_line']}")
        out.append(p)
    return out
