"""The demo's offline feedback: sample varied candidates from the base model, rate them with rule raters.

Candidates differ in style because each is sampled under a different *style instruction* appended to the
user turn (SmolLM2-135M largely ignores style requests in the system prompt, but follows them in the user
turn) and at different temperatures. The instruction is NOT part of the training prompt: the preference
data pairs the plain prompt with the styled answers, so steering must come from λ, not from the prompt.

The ratings are parameterized feedback exactly like HelpSteer's: one 0–4 Likert score per attribute per
response, produced by the transparent rule raters in :mod:`cmpo.eval.raters`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

STYLE_INSTRUCTIONS: dict[str, str] = {
    "plain": "",
    "concise": "Answer in one short sentence.",
    "list": "Answer as a bulleted list.",
    "enthusiastic": "Reply in an excited, cheerful tone! Use at least three exclamation marks!",
}


@dataclass
class DemoPrompts:
    train: list[str]
    heldout: list[str]
    unused: list[str] = field(default_factory=list)  # neither: unlabelled prompts (e.g. for on-policy negatives)


def builtin_prompts(which: str = "prompts") -> list[dict]:
    """The built-in instructions (questions, how-tos, creative asks, advice), with their categories:
    ``"prompts"`` (split per seed into train / held-out / unlabelled) or ``"eval_prompts"`` (evaluation only,
    stored with the categories in turn so that any prefix is balanced)."""
    text = resources.files("cmpo.demo").joinpath("prompts.json").read_text()
    return json.loads(text)[which]


def eval_only_prompts(n: int) -> list[list[dict]]:
    """The first ``n`` built-in evaluation-only prompts, as conversations (like the prepared held-out prompts)."""
    texts = [r["text"] for r in builtin_prompts("eval_prompts")]  # stored so that any prefix is balanced
    if not 0 <= n <= len(texts):
        raise ValueError(f"eval_prompts must be between 0 and {len(texts)} (the built-in ones), got {n}")
    return [[{"role": "user", "content": t}] for t in texts[:n]]


def split_prompts(n_train: int, n_heldout: int, seed: int = 0) -> DemoPrompts:
    """Seeded shuffle of the built-in prompts, stratified so every category is on both sides."""
    rows = builtin_prompts()
    if n_train + n_heldout > len(rows):
        raise ValueError(f"asked for {n_train}+{n_heldout} prompts; {len(rows)} are built in")
    rng = random.Random(seed)
    by_cat: dict[str, list[str]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r["text"])
    for texts in by_cat.values():
        rng.shuffle(texts)
    # interleave categories so any prefix is balanced
    ordered = [t for group in zip(*by_cat.values()) for t in group]
    ordered += [t for texts in by_cat.values() for t in texts[min(map(len, by_cat.values())):]]
    heldout = ordered[:n_heldout]
    train = ordered[n_heldout:n_heldout + n_train]
    return DemoPrompts(train=train, heldout=heldout, unused=ordered[n_heldout + n_train:])


def styled_prompt(prompt: str, style: str) -> str:
    instruction = STYLE_INSTRUCTIONS[style]
    return f"{prompt}\n\n{instruction}" if instruction else prompt


def sample_candidates(model, prompts: list[str], styles: list[str], temperatures: list[float],
                      max_new_tokens: int, seed: int, batch_size: int = 32, progress: bool = True) -> list[dict]:
    """One sampled response per (prompt, style, temperature).

    ``model`` is a :class:`cmpo.serve.generate.SteerableModel`. Returns rows
    ``{"prompt", "style", "temperature", "response", "finished"}``.
    """
    from cmpo.serve.generate import GenerationOptions, Row

    jobs = [(p, s, t) for p in prompts for s in styles for t in temperatures]
    rows: list[dict] = []
    for temp in temperatures:
        batch = [(p, s) for p, s, t in jobs if t == temp]
        opts = GenerationOptions(max_new_tokens=max_new_tokens, do_sample=True, temperature=temp, top_p=0.95,
                                 seed=seed, repetition_penalty=1.1)
        texts = [styled_prompt(p, s) for p, s in batch]
        gen_rows = [Row(model.encode_prompt(t), max_new_tokens=max_new_tokens) for t in texts]
        chunks = [gen_rows[i:i + batch_size] for i in range(0, len(gen_rows), batch_size)]
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"sample (T={temp})", unit="batch")
        for chunk in chunks:
            model.generate_rows(chunk, opts)
        for (p, s), row in zip(batch, gen_rows):
            rows.append({"prompt": p, "style": s, "temperature": temp, "response": row.text.strip(),
                         "finished": row.finish_reason == "stop"})
    return rows


def rate_candidates(rows: list[dict], attributes: list[str]) -> list[dict]:
    """Group candidates by prompt into the generic multi-rating format cmpo prepare reads.

    -> ``[{"prompt", "responses": [...], "ratings": [{attr: 0..4}, ...], "styles": [...]}]``; duplicate and
    empty responses are dropped here (and counted by the caller).
    """
    from cmpo.eval.raters import get_rater

    raters = {a: get_rater(a) for a in attributes}
    grouped: dict[str, dict] = {}
    for r in rows:
        text = r["response"]
        g = grouped.setdefault(r["prompt"], {"prompt": r["prompt"], "responses": [], "ratings": [],
                                             "styles": [], "finished": []})
        if not text or text in g["responses"]:
            continue
        g["responses"].append(text)
        g["ratings"].append({a: float(rt.rate(text, r["finished"])) for a, rt in raters.items()})
        g["styles"].append(r["style"])
        g["finished"].append(r["finished"])
    return [g for g in grouped.values() if len(g["responses"]) >= 2]


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
