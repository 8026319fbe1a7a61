"""Generic feedback rows (one file may mix both kinds; prompts may be strings or message lists).

  scalar    ``{"prompt", "responses": [str, ...], "ratings": [{attr: 0–4 or null}, ...]}`` (one dict per
            response; a missing key or null = not rated); optional ``"finished": [bool, ...]`` marks
            responses cut off by a sampling budget (trained and scored without an end-of-turn token)
  pairwise  ``{"prompt", "chosen", "rejected", "attribute"}`` (chosen ≻ rejected on that attribute)

Attributes: ``attributes`` if given (then any other attribute name in the data is a bad row,
``unknown_attribute``, so typos never vanish silently), else every name seen, in order of first appearance.
Rows with the same prompt are merged into one record per kind.
"""

from __future__ import annotations

import math

import numpy as np

from cmpo.data.records import (
    DataError,
    RowStats,
    check_rating,
    check_responses,
    get,
    get_prompt,
    get_text,
    group_records,
    iter_rows,
    prompt_id,
)


def _parse(row: dict, where: str) -> tuple[str, tuple]:
    prompt = get_prompt(row, "prompt", where)
    if "responses" in row or "ratings" in row:
        responses = get(row, "responses", where)
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise DataError(where, "responses", "wrong_type", "expected a list of strings")
        if len(responses) < 1:
            raise DataError(where, "responses", "empty_response", "no responses")
        check_responses(responses, where, [f"responses[{i}]" for i in range(len(responses))])
        ratings = get(row, "ratings", where)
        if not isinstance(ratings, list) or len(ratings) != len(responses):
            raise DataError(where, "ratings", "wrong_type", f"expected a list of {len(responses)} objects (one per response)")
        clean = []
        for i, r in enumerate(ratings):
            if not isinstance(r, dict):
                raise DataError(where, f"ratings[{i}]", "wrong_type", "expected an object {attribute: rating}")
            clean.append({a: math.nan if v is None else check_rating(v, where, f"ratings[{i}].{a}")
                          for a, v in r.items()})
        finished = row.get("finished")
        if finished is not None and (not isinstance(finished, list) or len(finished) != len(responses)
                                     or not all(isinstance(f, bool) for f in finished)):
            raise DataError(where, "finished", "wrong_type",
                            f"expected a list of {len(responses)} booleans (one per response)")
        return "scalar", (prompt, responses, clean, finished)
    chosen = get_text(row, "chosen", where, allow_empty=True)
    rejected = get_text(row, "rejected", where, allow_empty=True)
    check_responses([chosen, rejected], where, ["chosen", "rejected"])
    attr = get_text(row, "attribute", where)
    return "pairwise", (prompt, [chosen, rejected], attr)


def read(data, attributes, stats: RowStats, fmt: str = "generic", **_):
    parsed = []
    for where, row in iter_rows(data):
        stats.read += 1
        try:
            if isinstance(row, DataError):
                raise row
            parsed.append((where, *_parse(row, where)))
        except DataError as e:
            stats.reject(e)
    fixed = bool(attributes)
    if not fixed:
        attributes = []
        for _, kind, p in parsed:
            names = [a for r in p[2] for a in r] if kind == "scalar" else [p[2]]
            attributes.extend(a for a in names if a not in attributes)
    index = {a: j for j, a in enumerate(attributes)}
    scalar, pairwise = [], []
    unfinished: set[tuple[str, str]] = set()           # (prompt id, response) cut off by a budget
    for where, kind, p in parsed:
        names = [(f"ratings[{i}].{a}", a) for i, r in enumerate(p[2]) for a in r] if kind == "scalar" \
            else [("attribute", p[2])]
        bad = next(((f, a) for f, a in names if a not in index), None)
        if bad:
            stats.reject(DataError(where, bad[0], "unknown_attribute",
                                   f"unknown attribute {bad[1]!r}; expected one of {', '.join(attributes)}"))
            continue
        stats.used += 1
        if kind == "scalar":
            prompt, responses, ratings, finished = p
            rows = [[r.get(a, math.nan) for a in attributes] for r in ratings]
            scalar.append((where, prompt, responses, rows, None))
            if finished is not None:
                pid = prompt_id(prompt)
                unfinished.update((pid, y) for y, f in zip(responses, finished) if not f)
        else:
            prompt, responses, attr = p
            pairwise.append((where, prompt, responses, [(0, 1, index[attr])], None))
    k = len(attributes)
    records = group_records(scalar, k, pairwise=False, stats=stats) + group_records(pairwise, k, pairwise=True)
    if unfinished:
        for rec in records:
            if rec.ratings is not None:
                rec.finished = np.array([(rec.prompt_id, y) not in unfinished for y in rec.responses])
    return records, list(attributes)
