"""Transparent rule raters: 0–4 Likert ratings a reader can check by eye.

Each rater maps one countable feature of a response to a rating through fixed thresholds ``t``:
rating = number of thresholds the feature reaches (``sum(x >= t_i)``), so 0 ≤ rating ≤ 4.

  conciseness   words w; rating = 4 − #{w > 30, w > 60, w > 120, w > 200}; an unfinished response
                (cut off by the token budget) gets 0 — a truncated answer is not concise, it is long
  verbosity     words w; rating = #{w > 30, w > 60, w > 120, w > 200}
  structure     list lines (``-``, ``*``, ``•``, ``1.``, ``2)`` …); rating = #{≥1, ≥2, ≥3, ≥5}
  enthusiasm    exclamation marks; rating = #{≥1, ≥2, ≥3, ≥5}

``RuleScorer`` scores lists of responses on any of these attributes (the interface the steerability
evaluation and :class:`cmpo.eval.judges.ScorerJudge` use; the SteerLM APM scorer has the same interface).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LIST_LINE = re.compile(r"^\s*(?:[-*•+]|\d{1,3}[.)])\s+\S")
WORD_THRESHOLDS = (30, 60, 120, 200)
COUNT_THRESHOLDS = (1, 2, 3, 5)


def word_count(text: str) -> int:
    return len(text.split())


def list_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if LIST_LINE.match(line))


def exclamations(text: str) -> int:
    return text.count("!")


def _reached(x: float, thresholds: Sequence[float]) -> int:
    return sum(x >= t for t in thresholds)


def _exceeded(x: float, thresholds: Sequence[float]) -> int:
    return sum(x > t for t in thresholds)


@dataclass(frozen=True)
class RuleRater:
    """A named feature → Likert rule. ``rate(response, finished)`` -> int in 0..4."""

    name: str
    feature: Callable[[str], float]
    rule: Callable[[float], int]
    description: str
    zero_if_unfinished: bool = False

    def rate(self, response: str, finished: bool = True) -> int:
        if self.zero_if_unfinished and not finished:
            return 0
        return int(self.rule(self.feature(response)))


RULE_RATERS: dict[str, RuleRater] = {
    "conciseness": RuleRater("conciseness", word_count, lambda w: 4 - _exceeded(w, WORD_THRESHOLDS),
                             "4 − #{words > 30, 60, 120, 200}; unfinished → 0", zero_if_unfinished=True),
    "verbosity": RuleRater("verbosity", word_count, lambda w: _exceeded(w, WORD_THRESHOLDS),
                           "#{words > 30, 60, 120, 200}"),
    "structure": RuleRater("structure", list_lines, lambda n: _reached(n, COUNT_THRESHOLDS),
                           "#{list lines ≥ 1, 2, 3, 5}"),
    "enthusiasm": RuleRater("enthusiasm", exclamations, lambda n: _reached(n, COUNT_THRESHOLDS),
                            "#{exclamation marks ≥ 1, 2, 3, 5}"),
}


def get_rater(attribute: str) -> RuleRater:
    if attribute not in RULE_RATERS:
        raise KeyError(f"no rule rater for attribute {attribute!r}; rule raters exist for {sorted(RULE_RATERS)}")
    return RULE_RATERS[attribute]


class RuleScorer:
    """Scores responses with the rule raters. ``score(prompts, responses, attribute, finished) -> [N] float``."""

    name = "rules"

    def __init__(self, raters: dict[str, RuleRater] | None = None):
        self.raters = dict(RULE_RATERS if raters is None else raters)

    @property
    def attributes(self) -> list[str]:
        return list(self.raters)

    def supports(self, attribute: str) -> bool:
        return attribute in self.raters

    def score(self, prompts: Sequence, responses: Sequence[str], attribute: str,
              finished: Sequence[bool] | None = None) -> np.ndarray:
        if attribute not in self.raters:
            raise KeyError(f"no rule rater for attribute {attribute!r}; available: {sorted(self.raters)}")
        rater = self.raters[attribute]
        fin = [True] * len(responses) if finished is None else list(finished)
        return np.array([rater.rate(r, f) for r, f in zip(responses, fin)], dtype=float)

    def describe(self) -> dict[str, str]:
        return {name: r.description for name, r in self.raters.items()}
