"""Text-quality checks on responses, shared by training (on-policy negatives) and evaluation (quality guards)."""

from __future__ import annotations


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
