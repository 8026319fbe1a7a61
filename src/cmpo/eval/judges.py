"""Pairwise judges: "which response is more <attribute>?" -> +1 (A), 0 (tie), −1 (B), or invalid.

Interface (every judge): ``judge(prompt, response_a, response_b, attribute) -> Verdict`` and the batched
``compare(prompts, responses_a, responses_b, attribute, progress) -> list[Verdict]``.

  OpenAIJudge   any OpenAI-compatible chat endpoint with the thesis prompt (App. Table A.2), temperature 0,
                ≤ 10 answer tokens, answer 0/1/2. Both orders are judged; when the two verdicts disagree the
                pair is a tie (position-bias control). A malformed answer makes the pair invalid (counted and
                reported, left out of the win-rate). Requests run in a thread pool with a concurrency limit,
                are retried with exponential backoff on 5xx / 429 / timeouts / connection errors, and every
                answer is cached in sqlite keyed by sha256(judge model, attribute, prompt, both responses,
                order), so a rerun or a crash never repeats a paid call. Token usage is accounted.
  ScorerJudge   compares per-attribute scores from a local scorer (rule raters, the SteerLM APM).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Thesis App. Table A.2 (the line breaks of the original <pre> block restored at its section headers).
JUDGE_TEMPLATE = (
    "### Prompt\n{prompt}\n\n"
    "### Response 1\n{response_1}\n\n"
    "### Response 2\n{response_2}\n\n"
    "### Instructions\n"
    "Indicate which response (Response 1 or Response 2) is {attribute}. "
    "If Response 1 is {attribute} than Response 2, answer with 1. "
    "If Response 2 is {attribute} than Response 1, answer with 2. "
    "If the responses are equally {attribute}, answer with 0. "
    "Then provide a brief justification for your answer. Give your answer in the following format:\n\n"
    "[answer] [brief explanation]\n\n"
    "Remember that your answer must be one of 0, 1 or 2!"
)
TEMPLATE_VERSION = "thesis-A.2-v1"

# {attribute} is filled with a comparative phrase ("more helpful"); unknown attributes get "more <name>".
ADJECTIVES = {
    "helpfulness": "helpful", "correctness": "correct", "coherence": "coherent", "complexity": "complex",
    "verbosity": "verbose", "quality": "high-quality", "humor": "humorous", "toxicity": "toxic",
    "creativity": "creative", "harmlessness": "harmless", "conciseness": "concise", "structure": "structured",
    "enthusiasm": "enthusiastic", "safety": "safe", "honesty": "honest",
}


def attribute_phrase(attribute: str) -> str:
    return f"more {ADJECTIVES.get(attribute, attribute)}"


def prompt_text(prompt) -> str:
    """A conversation (list of messages) or a string -> the text shown to the judge."""
    if isinstance(prompt, str):
        return prompt
    msgs = [m for m in prompt if m.get("role") != "system"]
    if len(msgs) == 1:
        return msgs[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in msgs)


def render_judge_prompt(prompt, response_1: str, response_2: str, attribute: str) -> str:
    return JUDGE_TEMPLATE.format(prompt=prompt_text(prompt), response_1=response_1, response_2=response_2,
                                 attribute=attribute_phrase(attribute))


def parse_answer(text: str | None) -> int | None:
    """The judge's answer -> 0, 1 or 2; anything else (empty, other digits, prose first) -> None.

    Accepted: the first non-space token is ``0``/``1``/``2``, optionally in brackets and followed by
    punctuation or an explanation ("[1] Response 1 is…", "2.", "0").
    """
    if not text:
        return None
    t = text.strip().lstrip("[(*").strip()
    if not t or t[0] not in "012":
        return None
    if len(t) > 1 and t[1].isalnum():  # "10", "1st", "2x"
        return None
    return int(t[0])


@dataclass
class Verdict:
    """``outcome``: +1 response A better, 0 tie, −1 response B better, None invalid."""

    outcome: int | None
    answers: list[int | None] = field(default_factory=list)  # raw answers per order (AB, BA) or scores
    raw: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.outcome is not None


def combine_orders(answer_ab: int | None, answer_ba: int | None) -> int | None:
    """Answers for (A, B) shown as (1, 2) and then as (2, 1) -> outcome for A; disagreement -> tie."""
    if answer_ab is None or answer_ba is None:
        return None
    first = {1: 1, 2: -1, 0: 0}[answer_ab]
    second = {1: -1, 2: 1, 0: 0}[answer_ba]
    return first if first == second else 0


class Judge:
    """Base class. Subclasses implement ``compare``; ``judge`` is one row of it."""

    name = "judge"

    def judge(self, prompt, response_a: str, response_b: str, attribute: str) -> Verdict:
        return self.compare([prompt], [response_a], [response_b], attribute)[0]

    def compare(self, prompts: Sequence, responses_a: Sequence[str], responses_b: Sequence[str], attribute: str,
                progress: bool = False) -> list[Verdict]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name}


# ----------------------------------------------------------------------------- local judges


class ScorerJudge(Judge):
    """A wins when score(A) − score(B) > ``margin``, B when < −margin, else tie. Scores are deterministic,
    so there is no order effect to control."""

    def __init__(self, scorer, margin: float = 0.0):
        self.scorer, self.margin = scorer, margin
        self.name = f"scorer:{getattr(scorer, 'name', type(scorer).__name__)}"

    def compare(self, prompts, responses_a, responses_b, attribute, progress=False,
                finished_a=None, finished_b=None) -> list[Verdict]:
        _check_lengths(prompts, responses_a, responses_b)
        sa = self.scorer.score(prompts, responses_a, attribute, finished=finished_a)
        sb = self.scorer.score(prompts, responses_b, attribute, finished=finished_b)
        out = []
        for a, b in zip(sa, sb):
            d = float(a - b)
            outcome = 1 if d > self.margin else (-1 if d < -self.margin else 0)
            out.append(Verdict(outcome, answers=[float(a), float(b)]))
        return out

    def describe(self) -> dict:
        return {"name": self.name, "margin": self.margin}


class APMScorer:
    """The SteerLM attribute prediction model as a per-attribute scorer: expected Likert score E[rating]."""

    name = "apm"

    def __init__(self, apm, batch_size: int = 8):
        self.apm = apm
        self.attributes = list(apm.attributes)
        self.batch_size = batch_size

    @classmethod
    def load(cls, path) -> APMScorer:
        from cmpo.train.steerlm_apm import APM

        return cls(APM.load(path))

    def supports(self, attribute: str) -> bool:
        return attribute in self.attributes

    def score(self, prompts, responses, attribute, finished=None) -> np.ndarray:
        if attribute not in self.attributes:
            raise KeyError(f"the APM does not predict {attribute!r}; it predicts {self.attributes}")
        _, expected = self.apm.predict(list(prompts), list(responses))
        return np.asarray(expected, dtype=float)[:, self.attributes.index(attribute)]


def _check_lengths(prompts, a, b):
    if not (len(prompts) == len(a) == len(b)):
        raise ValueError(f"{len(prompts)} prompts, {len(a)} responses A, {len(b)} responses B: lengths differ")


# ----------------------------------------------------------------------------- OpenAI-compatible judge


class JudgeCache:
    """sqlite cache of judge answers (each insert is one committed transaction; safe across threads)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, text TEXT, "
                         "prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)")
        self._db.commit()

    @staticmethod
    def key(model: str, attribute: str, prompt: str, first: str, second: str) -> str:
        blob = json.dumps([TEMPLATE_VERSION, model, attribute, prompt, first, second], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> tuple[str, int, int] | None:
        with self._lock:
            row = self._db.execute("SELECT text, prompt_tokens, completion_tokens FROM answers WHERE key=?",
                                   (key,)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def put(self, key: str, text: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                             (key, text, prompt_tokens, completion_tokens, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()


@dataclass
class Usage:
    requests: int = 0  # HTTP attempts, retries included
    completed: int = 0  # answers received from the endpoint
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0  # calls that failed after every retry
    prompt_tokens: int = 0
    completion_tokens: int = 0


class OpenAIJudge(Judge):
    """Judge with an OpenAI-compatible chat endpoint (see module docstring).

    ``base_url``/``model``/``api_key`` default to ``$CMPO_JUDGE_BASE_URL``, ``$CMPO_JUDGE_MODEL`` and
    ``$OPENAI_API_KEY``. ``cache``: a path for the sqlite cache (None disables caching).
    """

    def __init__(self, model: str | None = None, base_url: str | None = None, api_key: str | None = None,
                 cache: str | os.PathLike | None = None, concurrency: int = 8, max_retries: int = 5,
                 backoff: float = 1.0, max_backoff: float = 60.0, timeout: float = 60.0,
                 max_tokens: int = 10, stop: Sequence[str] | None = (".", "\n"), both_orders: bool = True):
        import openai

        self.model = model or os.environ.get("CMPO_JUDGE_MODEL")
        if not self.model:
            raise ValueError("no judge model: pass model=... (--judge-model) or set CMPO_JUDGE_MODEL")
        self.base_url = base_url or os.environ.get("CMPO_JUDGE_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if self.base_url is None:
                raise ValueError("no API key: set OPENAI_API_KEY (or pass api_key=...)")
            key = "none"  # local OpenAI-compatible servers usually need no key
        if concurrency < 1:
            raise ValueError(f"concurrency must be ≥ 1, got {concurrency}")
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout, max_retries=0)
        self.concurrency, self.max_retries = concurrency, max_retries
        self.backoff, self.max_backoff, self.timeout = backoff, max_backoff, timeout
        self.max_tokens, self.stop, self.both_orders = max_tokens, list(stop) if stop else None, both_orders
        self.cache = JudgeCache(cache) if cache is not None else None
        self.usage = Usage()
        self._usage_lock = threading.Lock()
        self.name = f"openai:{self.model}"

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model, "base_url": self.base_url, "temperature": 0,
                "max_tokens": self.max_tokens, "stop": self.stop, "both_orders": self.both_orders,
                "template": TEMPLATE_VERSION, "concurrency": self.concurrency, "max_retries": self.max_retries,
                "usage": asdict(self.usage)}

    def _count(self, **delta) -> None:
        with self._usage_lock:
            for k, v in delta.items():
                setattr(self.usage, k, getattr(self.usage, k) + v)

    def _retryable(self, err: Exception) -> bool:
        import openai

        if isinstance(err, (openai.APITimeoutError, openai.APIConnectionError)):
            return True
        if isinstance(err, openai.APIStatusError):
            return err.status_code == 429 or err.status_code >= 500
        return False

    def ask(self, prompt, first: str, second: str, attribute: str) -> str | None:
        """One judge call (cached). Returns the answer text, or None when every retry failed."""
        ptext = prompt_text(prompt)
        key = JudgeCache.key(self.model, attribute, ptext, first, second)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self._count(cache_hits=1)
                return hit[0]
        content = render_judge_prompt(prompt, first, second, attribute)
        kwargs = {"model": self.model, "messages": [{"role": "user", "content": content}], "temperature": 0,
                  "max_tokens": self.max_tokens}
        if self.stop:
            kwargs["stop"] = self.stop
        for attempt in range(self.max_retries + 1):
            self._count(requests=1)
            try:
                resp = self.client.chat.completions.create(**kwargs)
            except Exception as err:  # noqa: BLE001 - classified below
                if not self._retryable(err) or attempt == self.max_retries:
                    log.warning("judge call failed after %d attempt(s): %s", attempt + 1, err)
                    self._count(failures=1)
                    return None
                delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
                self._count(retries=1)
                time.sleep(delay)
                continue
            text = (resp.choices[0].message.content or "") if resp.choices else ""
            pt = getattr(resp.usage, "prompt_tokens", 0) or 0
            ct = getattr(resp.usage, "completion_tokens", 0) or 0
            self._count(completed=1, prompt_tokens=pt, completion_tokens=ct)
            if self.cache is not None:
                self.cache.put(key, text, pt, ct)
            return text
        return None  # pragma: no cover

    def compare(self, prompts, responses_a, responses_b, attribute, progress=False, **_) -> list[Verdict]:
        _check_lengths(prompts, responses_a, responses_b)
        jobs = []  # (row, order, first, second)
        for i, (_p, a, b) in enumerate(zip(prompts, responses_a, responses_b)):
            jobs.append((i, 0, a, b))
            if self.both_orders:
                jobs.append((i, 1, b, a))
        texts: dict[tuple[int, int], str | None] = {}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc=f"judge {attribute}", unit="call")
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self.ask, prompts[i], first, second, attribute): (i, order)
                       for i, order, first, second in jobs}
            for fut, (i, order) in futures.items():
                texts[(i, order)] = fut.result()
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        out = []
        for i in range(len(prompts)):
            raw = [texts[(i, 0)]] + ([texts[(i, 1)]] if self.both_orders else [])
            answers = [parse_answer(t) for t in raw]
            if self.both_orders:
                outcome = combine_orders(answers[0], answers[1])
            else:
                outcome = None if answers[0] is None else {1: 1, 2: -1, 0: 0}[answers[0]]
            out.append(Verdict(outcome, answers=answers, raw=[t if t is not None else "<failed>" for t in raw]))
        return out


def make_judge(spec: str, cache: str | os.PathLike | None = None, **openai_options) -> tuple[Judge, object]:
    """``rules`` | ``apm:DIR`` | ``openai`` -> (judge, scorer or None)."""
    from cmpo.eval.raters import RuleScorer

    if spec == "rules":
        scorer = RuleScorer()
        return ScorerJudge(scorer), scorer
    if spec.startswith("apm:"):
        scorer = APMScorer.load(spec[4:])
        return ScorerJudge(scorer), scorer
    if spec == "openai":
        return OpenAIJudge(cache=cache, **openai_options), None
    raise ValueError(f"unknown judge {spec!r}: use rules, apm:DIR or openai")


# ----------------------------------------------------------------------------- judge win-rate


def judge_win_rates(em, prompts: Sequence, attributes: Sequence[str], judge: Judge, generations,
                    reference=None, seed: int = 0, progress: bool = False) -> dict:
    """Per attribute: generate from the contestant under the single-attribute condition and from its reference,
    judge (model = A, reference = B), +1/0/−1 averaged over valid verdicts (thesis §5.4).

    Also reports invalid verdicts and mean response lengths (words; length-bias check).
    """
    from cmpo.eval.metrics import Condition, resolve_reference, win_rate

    out = {}
    for attr in attributes:
        if not em.covers(attr):
            continue
        model, cond = em.for_attribute(attr)
        ref = resolve_reference(model, reference)
        texts, fin = generations.get(model, prompts, cond)
        ref_texts, ref_fin = generations.get(ref, prompts, Condition())
        verdicts = judge.compare(prompts, texts, ref_texts, attr, progress=progress,
                                 finished_a=fin, finished_b=ref_fin)
        valid = [v.outcome for v in verdicts if v.valid]
        res = win_rate(valid, seed=seed)
        res.update(
            condition=cond.describe(), invalid=sum(not v.valid for v in verdicts), prompts=len(prompts),
            mean_words_model=float(np.mean([len(t.split()) for t in texts])) if texts else float("nan"),
            mean_words_reference=float(np.mean([len(t.split()) for t in ref_texts])) if texts else float("nan"),
            finished_model=float(np.mean(fin)) if fin else float("nan"),
            finished_reference=float(np.mean(ref_fin)) if ref_fin else float("nan"),
            examples=[{"prompt": prompt_text(prompts[i]), "model": texts[i], "reference": ref_texts[i],
                       "outcome": verdicts[i].outcome} for i in range(min(2, len(prompts)))],
        )
        out[attr] = res
    return out
