"""Text-quality checks on responses, shared by training (on-policy negatives) and evaluation (quality guards)."""

from __future__ import annotations

import re

# a list marker at a line start ("1. ", "2) ", "- ", "* ", "• ") and markdown emphasis: formatting, not content
_LIST_MARKER = re.compile(r"^[ \t]*(?:\d+[.)]|[-*•])[ \t]+", re.MULTILINE)
_EMPHASIS = re.compile(r"[*_#`]")


def is_degenerate(text: str) -> bool:
    """True for an output a reader would not accept as prose: empty, fewer than 40 % letters among its
    non-space characters (e.g. ``"113.1\n-113.1\n-113.1"``), or ≥ 8 words with under half of its word
    bigrams distinct (loops)."""
    chars = [c for c in text if not c.isspace()]
    if not chars or sum(c.isalpha() for c in chars) < 0.4 * len(chars):
        return True
    words = text.lower().split()
    bigrams = list(zip(words, words[1:]))
    return len(words) >= 8 and len(set(bigrams)) < 0.5 * len(bigrams)


def prose_score(text: str) -> float:
    """How much ``text`` reads like prose, in [0, 1]: (share of letters among its non-space characters) ×
    (share of its word bigrams that are distinct; 1 under two bigrams), after dropping line-start list markers
    and markdown emphasis, so a clean list scores like clean prose (≈ 0.95–1.0) while digit runs such as
    ``1. 1.1.1: Use a wet cloth…`` (≈ 0.6) or half-looping text score low. 0 for empty text.
    The continuous counterpart of :func:`is_degenerate`, used to rank candidate outputs."""
    stripped = _EMPHASIS.sub("", _LIST_MARKER.sub("", text))
    chars = [c for c in stripped if not c.isspace()]
    if not chars:
        return 0.0
    letters = sum(c.isalpha() for c in chars) / len(chars)
    words = stripped.lower().split()
    bigrams = list(zip(words, words[1:]))
    distinct = len(set(bigrams)) / len(bigrams) if len(bigrams) >= 2 else 1.0
    return letters * distinct
