"""Anthropic HH-RLHF ``chosen, rejected`` dialogues (one attribute, ``harmlessness`` by default).

Both fields are ``"\\n\\nHuman: …\\n\\nAssistant: …"`` transcripts sharing the dialogue before the final
``\\n\\nAssistant:``; that shared prefix becomes the prompt (Human→user, Assistant→assistant) and the two final
assistant turns the responses, chosen ≻ rejected. Rows whose prefixes differ or whose final turn is empty are
bad rows (a few exist in the real data: use ``on_bad_row="skip"``).
"""

from __future__ import annotations

import re

from cmpo.data.records import DataError, RowStats, check_responses, get_text, group_records, iter_rows

TURN = re.compile(r"\n\n(Human|Assistant):")


def split_dialogue(text: str, where: str, field: str) -> tuple[list[dict[str, str]], str]:
    """-> (messages before the final assistant turn, final assistant text)."""
    cut = text.rfind("\n\nAssistant:")
    if cut < 0:
        raise DataError(where, field, "bad_conversation", "no '\\n\\nAssistant:' turn")
    parts = TURN.split(text[:cut])
    if parts[0].strip():
        raise DataError(where, field, "bad_conversation", "text before the first '\\n\\nHuman:' turn")
    msgs = [{"role": "user" if r == "Human" else "assistant", "content": c.strip()}
            for r, c in zip(parts[1::2], parts[2::2])]
    if not msgs or msgs[-1]["role"] != "user":
        raise DataError(where, field, "prompt_not_user", "the final assistant turn must follow a Human turn")
    return msgs, text[cut + len("\n\nAssistant:"):].strip()


def read(data, attributes, stats: RowStats, fmt: str = "hh-rlhf", **_):
    attributes = attributes or ["harmlessness"]
    if len(attributes) != 1:
        raise ValueError(f"format {fmt!r} has one attribute (the chosen/rejected label); got {attributes}")
    items = []
    for where, row in iter_rows(data):
        stats.read += 1
        try:
            if isinstance(row, DataError):
                raise row
            prompt, chosen = split_dialogue(get_text(row, "chosen", where), where, "chosen")
            prompt_r, rejected = split_dialogue(get_text(row, "rejected", where), where, "rejected")
            if prompt_r != prompt:
                raise DataError(where, "rejected", "prompt_mismatch", "dialogue before the final turn differs from 'chosen'")
            check_responses([chosen, rejected], where, ["chosen", "rejected"])
        except DataError as e:
            stats.reject(e)
            continue
        stats.used += 1
        items.append((where, prompt, [chosen, rejected], [(0, 1, 0)], None))
    return group_records(items, 1, pairwise=True), list(attributes)
