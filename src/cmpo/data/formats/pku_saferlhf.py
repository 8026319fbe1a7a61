"""PKU-SafeRLHF / BeaverTails preference pairs (7-field and 16-field schemas).

Each row: ``prompt, response_0, response_1, is_response_0_safe, is_response_1_safe, better_response_id,
safer_response_id`` (the 16-field schema adds sources, harm categories, severities and hashes, which are
ignored). Attributes: ``helpfulness`` (response ``better_response_id`` ≻ the other) and ``safety``
(``safer_response_id`` ≻ the other).

Filter ``safety_filter="different"`` (default, thesis §5.1.2): keep only rows whose two responses have
different ``is_response_*_safe`` labels; ``"none"`` keeps every row.
"""

from __future__ import annotations

from cmpo.data.formats import check_attributes
from cmpo.data.records import (
    DataError,
    RowStats,
    check_responses,
    get,
    get_prompt,
    get_text,
    group_records,
    iter_rows,
)

ATTRIBUTES = ("helpfulness", "safety")
FIELD = {"helpfulness": "better_response_id", "safety": "safer_response_id"}


def _id(row, name, where) -> int:
    v = get(row, name, where)
    if isinstance(v, bool) or v not in (0, 1):
        raise DataError(where, name, "wrong_type", f"expected 0 or 1, got {v!r}")
    return int(v)


def _bool(row, name, where) -> bool:
    v = get(row, name, where)
    if not isinstance(v, bool):
        raise DataError(where, name, "wrong_type", f"expected true or false, got {v!r}")
    return v


def read(data, attributes, stats: RowStats, fmt: str = "pku-saferlhf", safety_filter: str = "different", **_):
    if safety_filter not in ("different", "none"):
        raise ValueError(f"safety_filter must be 'different' or 'none', got {safety_filter!r}")
    attributes = check_attributes(fmt, attributes, ATTRIBUTES, ATTRIBUTES)
    items = []
    for where, row in iter_rows(data):
        stats.read += 1
        try:
            if isinstance(row, DataError):
                raise row
            prompt = get_prompt(row, "prompt", where)
            responses = [get_text(row, f"response_{i}", where, allow_empty=True) for i in (0, 1)]
            check_responses(responses, where, ["response_0", "response_1"])
            safe = [_bool(row, f"is_response_{i}_safe", where) for i in (0, 1)]
            winners = {a: _id(row, FIELD[a], where) for a in ATTRIBUTES}
        except DataError as e:
            stats.reject(e)
            continue
        if safety_filter == "different" and safe[0] == safe[1]:
            stats.filter("same_safety_label")
            continue
        stats.used += 1
        prefs = [(winners[a], 1 - winners[a], j) for j, a in enumerate(attributes)]
        items.append((where, prompt, responses, prefs, [{"is_safe": s} for s in safe]))
    return group_records(items, len(attributes), pairwise=True), attributes
