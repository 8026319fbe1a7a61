"""Topical-Chat responses with USR human ratings (6 rated responses per dialogue context).

Rows: ``source`` (dialogue history, turns separated by ``" \\n "``), ``context`` (the knowledge fact),
``system_output`` (the rated response), ``scores`` {understandability 0–1, naturalness 1–3, coherence 1–3,
engagingness 1–3, groundedness 0–1, overall 1–5}. Rows are grouped by ``source``. Each score is mapped
linearly onto 0–4: ``4 * (v - lo) / (hi - lo)``. The history alternates speakers and ends with the user's
turn; the fact goes in a system message ``"Fact: {context}"``. When two systems produced the same text for a
context only the first is kept (filter ``duplicate_system_output``).
"""

from __future__ import annotations

from cmpo.data.formats import check_attributes
from cmpo.data.records import (
    DataError,
    RowStats,
    check_rating,
    check_responses,
    get,
    get_text,
    group_records,
    iter_rows,
)

RANGES = {"understandability": (0.0, 1.0), "naturalness": (1.0, 3.0), "coherence": (1.0, 3.0),
          "engagingness": (1.0, 3.0), "groundedness": (0.0, 1.0), "overall": (1.0, 5.0)}


def history_to_messages(source: str, context: str) -> list[dict[str, str]]:
    turns = [t.strip() for t in source.strip().split(" \n ") if t.strip()]
    n = len(turns)
    msgs = [{"role": "user" if (n - 1 - i) % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return ([{"role": "system", "content": f"Fact: {context.strip()}"}] if context.strip() else []) + msgs


def read(data, attributes, stats: RowStats, fmt: str = "usr", **_):
    attributes = check_attributes(fmt, attributes, tuple(RANGES), tuple(RANGES))
    items, seen = [], set()
    for where, row in iter_rows(data):
        stats.read += 1
        try:
            if isinstance(row, DataError):
                raise row
            source = get_text(row, "source", where)
            context = get_text(row, "context", where, allow_empty=True)
            response = get_text(row, "system_output", where, allow_empty=True)
            check_responses([response], where, ["system_output"])
            scores = get(row, "scores", where)
            if not isinstance(scores, dict):
                raise DataError(where, "scores", "wrong_type", "expected an object of scores")
            ratings = []
            for a in attributes:
                lo, hi = RANGES[a]
                v = check_rating(get(scores, a, where) if a in scores else _missing(where, a), where,
                                 f"scores.{a}", lo, hi)
                ratings.append(4.0 * (v - lo) / (hi - lo))
        except DataError as e:
            stats.reject(e)
            continue
        if (source, response.strip()) in seen:  # two systems produced the same text: one response, not a bad row
            stats.filter("duplicate_system_output")
            continue
        seen.add((source, response.strip()))
        stats.used += 1
        items.append((where, history_to_messages(source, context), [response.strip()], [ratings], None))
    return group_records(items, len(attributes), pairwise=False, stats=stats), attributes


def _missing(where, a):
    raise DataError(where, f"scores.{a}", "missing_field", "missing")
