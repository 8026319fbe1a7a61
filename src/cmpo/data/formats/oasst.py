"""OpenAssistant Conversations (OASST1/OASST2) message trees -> records.

Rows are messages (``message_id, parent_id, role, text, labels, deleted, ...``). Conversations are rebuilt from
``parent_id``: every prompter message that has assistant replies is a prompt (the path from the tree root to
it, roles prompter→user), and its sibling assistant replies are the candidate responses.

Ratings: ``labels`` = ``{"name": [...], "value": [...], "count": [...]}``, each value the mean of annotator votes
in [0, 1]. Likert rule: ``rating = 4 * value`` (0 → 0, 0.25 → 1, …, 1 → 4; unrounded, so the mean of several
annotators keeps its precision and fewer pairs tie). A label missing on a reply is NaN (not rated). Higher is
"more of" the attribute for every label, toxicity included.

Filters (counted, not errors): ``deleted`` messages, messages whose parent (or an ancestor) is missing or
deleted, prompter messages without replies that lie on no kept conversation, and a reply whose text repeats a
sibling's (the first one is kept: independent writers sometimes type the same short answer).
"""

from __future__ import annotations

import math

import numpy as np

from cmpo.data.records import DataError, Record, RowStats, check_rating, get, get_text, iter_rows

DEFAULT_ATTRIBUTES = ("quality", "humor", "toxicity", "creativity")  # thesis §5.1.1
ROLE = {"prompter": "user", "assistant": "assistant"}


def _parse(row: dict, where: str) -> dict:
    mid = get(row, "message_id", where)
    if not isinstance(mid, str) or not mid:
        raise DataError(where, "message_id", "wrong_type", "expected a non-empty string")
    parent = get(row, "parent_id", where)
    if parent is not None and not isinstance(parent, str):
        raise DataError(where, "parent_id", "wrong_type", "expected a string or null")
    role = get(row, "role", where)
    if role not in ROLE:
        raise DataError(where, "role", "wrong_type", f"expected 'prompter' or 'assistant', got {role!r}")
    text = get_text(row, "text", where, allow_empty=True)
    if not text.strip():
        raise DataError(where, "text", "empty_response" if role == "assistant" else "empty_text", "empty")
    deleted = row.get("deleted", False)
    if deleted is not None and not isinstance(deleted, bool):
        raise DataError(where, "deleted", "wrong_type", "expected a boolean")
    labels = row.get("labels")
    values = {}
    if labels is not None:
        if not isinstance(labels, dict) or not isinstance(labels.get("name"), list) \
                or not isinstance(labels.get("value"), list) or len(labels["name"]) != len(labels["value"]):
            raise DataError(where, "labels", "wrong_type", "expected {name: [...], value: [...]} of equal length")
        for name, v in zip(labels["name"], labels["value"]):
            if not isinstance(name, str):
                raise DataError(where, "labels.name", "wrong_type", f"label name {name!r} is not a string")
            values[name] = 4.0 * check_rating(v, where, f"labels[{name}]", 0.0, 1.0)
    return {"id": mid, "parent": parent, "role": ROLE[role], "text": text, "deleted": bool(deleted),
            "values": values, "where": where}


def read(data, attributes, stats: RowStats, fmt: str = "oasst1", **_):
    msgs: dict[str, dict] = {}
    seen_labels: set[str] = set()
    for where, row in iter_rows(data):
        stats.read += 1
        try:
            if isinstance(row, DataError):
                raise row
            m = _parse(row, where)
            if m["id"] in msgs:
                raise DataError(where, "message_id", "duplicate_id", f"already seen at {msgs[m['id']]['where']}")
        except DataError as e:
            stats.reject(e)
            continue
        msgs[m["id"]] = m
        seen_labels.update(m["values"])
    if not attributes:
        attributes = list(DEFAULT_ATTRIBUTES)
    unknown = [a for a in attributes if a not in seen_labels]
    if unknown and msgs:
        raise ValueError(f"{data}: no message has label(s) {unknown}; labels seen: {', '.join(sorted(seen_labels))}")

    # Reachability: a message is usable iff it and all its ancestors exist and are not deleted.
    status: dict[str, str] = {}

    def resolve(mid: str) -> None:
        chain, on_chain, cur = [], set(), mid
        while True:
            if cur in status:
                up = status[cur]
                break
            m = msgs.get(cur)
            if m is None:
                up = "missing_parent"
                break
            if cur in on_chain:
                up = "parent_cycle"
                break
            if m["deleted"]:
                status[cur], up = "deleted", "deleted"
                break
            chain.append(cur)
            on_chain.add(cur)
            if m["parent"] is None:
                up = "ok"
                break
            cur = m["parent"]
        up = "deleted_ancestor" if up == "deleted" else up
        for c in chain:
            status[c] = up

    for mid in msgs:
        resolve(mid)
    children: dict[str, list[str]] = {}
    for mid, m in msgs.items():  # file order = sibling order
        if status[mid] == "ok" and m["parent"] is not None:
            children.setdefault(m["parent"], []).append(mid)

    def conversation(mid: str) -> list[dict[str, str]]:
        path = []
        while mid is not None:
            m = msgs[mid]
            path.append({"role": m["role"], "content": m["text"]})
            mid = m["parent"]
        return path[::-1]

    records, used, duplicates = [], set(), set()
    k = len(attributes)
    for mid, m in msgs.items():
        if status[mid] != "ok" or m["role"] != "user":
            continue
        replies = [c for c in children.get(mid, []) if msgs[c]["role"] == "assistant"]
        texts, kept = set(), []
        for c in replies:
            if msgs[c]["text"] in texts:
                duplicates.add(c)
                continue
            texts.add(msgs[c]["text"])
            kept.append(c)
        if not kept:
            continue
        ratings = np.array([[msgs[c]["values"].get(a, math.nan) for a in attributes] for c in kept],
                           dtype=np.float32).reshape(len(kept), k)
        prompt = conversation(mid)
        records.append(Record(prompt, [msgs[c]["text"] for c in kept], ratings=ratings, source=m["where"]))
        used.update(kept)
        p = mid
        while p is not None and p not in used:
            used.add(p)
            p = msgs[p]["parent"]
    for mid, m in msgs.items():
        st = status[mid]
        if mid in used:  # a candidate reply or part of a kept conversation
            stats.used += 1
        elif mid in duplicates:
            stats.filter("duplicate_sibling_reply")
        elif st == "ok":
            stats.filter("prompter_without_reply" if m["role"] == "user" else "reply_not_to_a_prompt")
        else:
            stats.filter(st)
    return records, list(attributes)
